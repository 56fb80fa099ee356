"""Read-only connections to the store, for processes beside the daemon.

The web view reads alerts, results and orders here, never through a writer:
on SQLite each connection opens the file read-only (``mode=ro``) and reads
the WAL as the daemon commits it (readers never block the daemon's writer,
nor it them); on PostgreSQL each is a connection of its own in read-only
transactions. A small pool of them serves reads from worker threads, one
thread per connection at a time, each read in one transaction (one
consistent snapshot). The store must exist: a reader creates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from hl7_alerts.settings import StoreSettings
from hl7_alerts.store.base import StoreError
from hl7_alerts.store.queries import SqlTransaction

T = TypeVar("T")


class StoreReader:
    """``size`` read-only connections to the store the settings name."""

    def __init__(self, settings: StoreSettings, *, size: int = 4) -> None:
        self._settings = settings
        self._size = size
        self._idle: queue.SimpleQueue[SqlTransaction] = queue.SimpleQueue()
        self._all: list[SqlTransaction] = []

    @classmethod
    async def open(cls, settings: StoreSettings, *, size: int = 4) -> StoreReader:
        reader = cls(settings, size=size)
        await asyncio.to_thread(reader._open_all)
        return reader

    def _open_all(self) -> None:
        try:
            for _ in range(self._size):
                tx = self._connect()
                self._all.append(tx)
                self._idle.put(tx)
        except BaseException:
            self._close_all()
            raise

    def _connect(self) -> SqlTransaction:
        s = self._settings
        if s.dsn is not None:
            import psycopg  # noqa: PLC0415 (only for a PostgreSQL store)

            from hl7_alerts.store.postgres import PgTransaction  # noqa: PLC0415

            try:
                conn = psycopg.connect(
                    s.dsn,
                    autocommit=True,
                    connect_timeout=10,  # BEGIN and ROLLBACK are ours
                    application_name=f"hl7-alerts {s.owner} reader"[:63],
                    options="-c default_transaction_read_only=on",
                )
            except psycopg.Error as exc:
                raise StoreError(f"cannot connect to store.dsn: {exc}".strip()) from exc
            return PgTransaction(conn, owner=s.owner, lease_seconds=s.lease_seconds)
        if not s.path.is_file():
            raise StoreError(f"no store at {s.path}")
        try:
            db = sqlite3.connect(
                f"{s.path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,  # one thread at a time: the pool hands it out
            )
            db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {s.path}: {exc}") from exc
        return SqlTransaction(db)

    async def read(self, unit: Callable[[SqlTransaction], T]) -> T:
        """Run ``unit`` in one read-only transaction, on a worker thread."""
        return await asyncio.to_thread(self._run, unit)

    def _run(self, unit: Callable[[SqlTransaction], T]) -> T:
        if not self._all:
            raise StoreError("store reader is closed")
        tx = self._idle.get()
        try:
            tx = self._usable(tx)
            tx.execute("BEGIN")
            try:
                return unit(tx)
            finally:
                with contextlib.suppress(Exception):
                    tx.execute("ROLLBACK")
        except self._errors() as exc:
            raise StoreError(str(exc)) from exc
        finally:
            self._idle.put(tx)

    def _usable(self, tx: SqlTransaction) -> SqlTransaction:
        """A PostgreSQL connection the server dropped is replaced."""
        conn: Any = tx.connection
        if self._settings.dsn is None or not (conn.closed or conn.broken):
            return tx
        with contextlib.suppress(Exception):
            conn.close()
        fresh = self._connect()
        self._all[self._all.index(tx)] = fresh
        return fresh

    def _errors(self) -> tuple[type[Exception], ...]:
        """The driver's errors: the store's failure, said as `StoreError`."""
        if self._settings.dsn is None:
            return (sqlite3.Error,)
        import psycopg  # noqa: PLC0415

        return (psycopg.Error,)

    def _close_all(self) -> None:
        for tx in self._all:
            with contextlib.suppress(Exception):
                tx.connection.close()
        self._all = []

    async def close(self) -> None:
        await asyncio.to_thread(self._close_all)
