"""A store backend for one test: SQLite in the test's folder, or a fresh
PostgreSQL database on the session's server (the ``backend`` fixture picks)."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from hl7_alerts.store import SqliteStore
from hl7_alerts.store.postgres import PostgresStore


@dataclass
class Backend:
    """One store backend for a test: SQLite in the test's folder, or a fresh
    PostgreSQL database on the session's server. Tests that take the
    `backend` fixture run once on each."""

    name: str
    folder: Path
    dsn: str | None = None

    def store_section(self) -> dict[str, Any]:
        """The config's ``store:`` section that selects this backend."""
        return {"dsn": self.dsn} if self.dsn else {"path": str(self.folder / "store.sqlite3")}

    async def open(self, *, owner: str = "test", lease_seconds: float = 30.0) -> Any:
        if self.dsn is None:
            return await SqliteStore.open(self.folder / "store.sqlite3")
        return await PostgresStore.open(self.dsn, owner=owner, lease_seconds=lease_seconds)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the store behind the daemon's back (``?`` marks on both backends)."""
        if self.dsn is None:
            with contextlib.closing(sqlite3.connect(self.folder / "store.sqlite3")) as db:
                rows = db.execute(sql, params).fetchall()
                db.commit()
                return rows
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()  # type: ignore[arg-type]


