"""SQLite: the embedded default store, for one daemon on one machine.

WAL mode with ``synchronous=FULL`` on the writer thread of `BatchingStore` (`writer.py`)
(``BEGIN IMMEDIATE`` takes the write lock for the whole batch, so there is
nothing to serialize between units: `lock` is a no-op). The ingredients
ordered per patient are kept in memory (`ordered_ingredients`): loaded at
open, fed by TEMP triggers on `orders`, folded in only once the COMMIT that
covers the write has returned, and reloaded when another connection (the
CLI's `orders import`) has committed since the last look.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import structlog

from hl7_alerts.files import make_private_file, narrow_to_owner
from hl7_alerts.model import PatientKey
from hl7_alerts.store.base import StoreError
from hl7_alerts.store.queries import SqlTransaction
from hl7_alerts.store.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Dialect,
    check_current,
    check_version,
    statements,
)
from hl7_alerts.store.writer import BatchingStore

log = structlog.get_logger("hl7_alerts.store")

_ORDER_WRITTEN = "hl7_alerts_order_written"
_SIDE_FILES = ("-wal", "-shm")  # SQLite's, beside the database file

# Every write to `orders`, whoever makes it (an upsert, a merge moving orders
# between patients), reports (patient, ingredient) to the in-memory index.
# TEMP triggers live on the writer's connection only: no schema change.
_ORDER_TRIGGERS = (
    f"CREATE TEMP TRIGGER IF NOT EXISTS orders_index_insert AFTER INSERT ON main.orders "
    f"WHEN NEW.ingredient IS NOT NULL BEGIN SELECT {_ORDER_WRITTEN}(NEW.patient, NEW.ingredient); END",
    f"CREATE TEMP TRIGGER IF NOT EXISTS orders_index_update AFTER UPDATE ON main.orders "
    f"WHEN NEW.ingredient IS NOT NULL BEGIN SELECT {_ORDER_WRITTEN}(NEW.patient, NEW.ingredient); END",
)


def narrow_store(path: Path) -> None:
    """The store and its side files (those there) owner-only: a process
    that opens a store someone left readable by others narrows it first,
    or SQLite makes its -wal and -shm as readable."""
    for file in (path, *(path.with_name(path.name + side) for side in _SIDE_FILES)):
        narrow_to_owner(file)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the file's schema up to `SCHEMA_VERSION`, one transaction a version."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    check_version(row[0] or 0, "store.path")
    for version in range((row[0] or 0) + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        # Another process (the CLI, a second daemon) may have migrated while
        # we waited for the write lock: look again under it.
        if (conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0) >= version:
            conn.execute("ROLLBACK")
            continue
        try:
            for statement in statements(MIGRATIONS[version - 1].render(Dialect.SQLITE)):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("store_migrated", version=version)


class SqliteTransaction(SqlTransaction):
    """`Transaction` over the writer's SQLite connection, with the in-memory
    ordered-ingredients index. It only grows, like the rules' "current or
    past order" test; a unit rolled back to its savepoint, or a batch whose
    COMMIT fails, leaves no trace in it."""

    _ANALYTE_INDEX: ClassVar[str] = "INDEXED BY observations_latest"
    EARLIER: ClassVar[str] = "julianday({col}) < julianday(?)"

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self._ordered: dict[str, set[str]] = {}
        self._unit_orders: list[tuple[str, str]] = []
        self._batch_orders: list[tuple[str, str]] = []
        self._data_version = -1
        self.refresh_if_changed()
        conn.create_function(_ORDER_WRITTEN, 2, self._order_written)
        for trigger in _ORDER_TRIGGERS:
            conn.execute(trigger)

    def refresh_if_changed(self) -> None:
        """Reload the index when another connection has committed since the
        last look (`hl7-alerts orders import` while the daemon runs, say):
        SQLite's data_version moves only for other connections' commits, so
        this costs one pragma per batch and a reload only when it matters."""
        version = self.connection.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        ordered: dict[str, set[str]] = {}
        for patient, ingredient in self.connection.execute(
            "SELECT DISTINCT patient, ingredient FROM orders WHERE ingredient IS NOT NULL"
        ):
            ordered.setdefault(patient, set()).add(ingredient)
        self._ordered = ordered

    def batch_begun(self, *, alone: bool) -> None:
        self.refresh_if_changed()

    def _order_written(self, patient: str, ingredient: str) -> None:
        self._unit_orders.append((patient, ingredient))

    def unit_released(self) -> None:
        self._batch_orders += self._unit_orders
        self._unit_orders.clear()

    def unit_rolled_back(self) -> None:
        self._unit_orders.clear()

    def batch_committed(self) -> None:
        for patient, ingredient in self._batch_orders:
            self._ordered.setdefault(patient, set()).add(ingredient)
        self._batch_orders.clear()

    def batch_rolled_back(self) -> None:
        self._unit_orders.clear()
        self._batch_orders.clear()

    def ordered_ingredients(self, patient: PatientKey) -> frozenset[str]:
        key = patient.key
        committed = self._ordered.get(key, ())
        pending = [i for p, i in (*self._batch_orders, *self._unit_orders) if p == key]
        return frozenset(committed).union(pending) if pending else frozenset(committed)


class SqliteStore(BatchingStore):
    """`Store` on one SQLite file, one writer thread, grouped commits."""

    _DB_ERRORS: ClassVar[tuple[type[Exception], ...]] = (sqlite3.Error,)
    _BEGIN: ClassVar[str] = "BEGIN IMMEDIATE"
    # A commit is on disk when it returns: what ACK-after-commit rests on.
    _SYNCHRONOUS: ClassVar[str] = "FULL"

    def __init__(self, path: Path, *, max_batch: int = 512, create: bool = True) -> None:
        super().__init__(max_batch=max_batch)
        self.path = path
        self.create = create

    @classmethod
    async def open(cls, path: Path | str, *, max_batch: int = 512, create: bool = True) -> SqliteStore:
        """Open (creating and migrating as needed) and start the writer.
        ``create=False``: a missing file is a `StoreError`, not a new store
        (commands that act on what a daemon stored)."""
        store = cls(Path(path), max_batch=max_batch, create=create)
        await store._start()
        return store

    def _connect(self) -> SqliteTransaction:
        if not self.create and not self.path.is_file():
            raise StoreError(f"no store at {self.path} (store.path)")
        try:
            # Owner-only before SQLite opens it: its -wal and -shm take the
            # database file's mode, whatever the umask. Side files an older
            # version left wider are narrowed too.
            make_private_file(self.path)
            narrow_store(self.path)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename and exc.filename != str(self.path) else ""
            raise StoreError(f"{self.path} (store.path): {where}{exc.strerror or exc}") from exc
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._SYNCHRONOUS}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            migrate(conn)
            return SqliteTransaction(conn)
        except sqlite3.DatabaseError as exc:
            # Say which file: "file is not a database" alone names nothing.
            conn.close()
            raise StoreError(f"{self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise

    def _in_transaction(self, tx: SqlTransaction) -> bool:
        conn: Any = tx.connection
        return bool(conn.in_transaction)


class ScratchSqliteStore(SqliteStore):
    """A throwaway SQLite store for the offline tools (`backtest`, `check`):
    the same schema, queries and writer as the daemon's, without fsync
    (``synchronous=OFF``). A crash may lose or corrupt it, which costs
    nothing: it is deleted when the run ends, and nothing is acknowledged
    from it. Never what `open_store` opens."""

    _SYNCHRONOUS: ClassVar[str] = "OFF"


class ReadOnlySqliteStore(SqliteStore):
    """The store as the read-only commands see it (`alerts list`, `codes`,
    ...): opened ``mode=ro``, so a mistyped ``store.path`` is an error, never
    a new empty store and folders, and nothing is migrated. Its batches
    begin deferred: a reader never takes the write lock a daemon needs."""

    _BEGIN: ClassVar[str] = "BEGIN"

    def __init__(self, path: Path, *, max_batch: int = 512, create: bool = False) -> None:
        super().__init__(path, max_batch=max_batch, create=False)

    def _connect(self) -> SqliteTransaction:
        if not self.path.is_file():
            raise StoreError(f"no store at {self.path} (store.path)")
        conn = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=True
        )
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            try:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path} is not an hl7-alerts store: {exc}") from None
            if "schema_version" not in tables:
                raise StoreError(f"{self.path} is not an hl7-alerts store (it has no schema_version table)")
            check_current(conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0,
                          "store.path")
            return SqliteTransaction(conn)
        except BaseException:
            conn.close()
            raise
