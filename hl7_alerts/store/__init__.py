"""The store: one interface, two backends.

SQLite (`SqliteStore`) is the embedded default, for one daemon; PostgreSQL
(`PostgresStore`) lets several daemons share orders, dedup keys, alerts, the
outbox and the timers. `open_store` picks one from the `StoreSettings`
(config.yaml's ``store`` section). Callers see only `Store` and
`Transaction` (`base.py`); SQL and its dialects stay in this package.
"""

from __future__ import annotations

from hl7_alerts.settings import StoreSettings
from hl7_alerts.store.base import (
    PAGING_EVENTS,
    AlertRecord,
    AuditRow,
    CodeCount,
    DedupKey,
    LockBusy,
    OutboxBacklog,
    OutboxItem,
    OutboxRow,
    PriorAck,
    Pruned,
    RejectedMessage,
    ScheduleRow,
    SchemaTooNewError,
    Store,
    StoreError,
    Transaction,
    describe_db_error,
)
from hl7_alerts.store.schema import MIGRATIONS, SCHEMA_VERSION, Dialect, Migration
from hl7_alerts.store.sqlite import ReadOnlySqliteStore, ScratchSqliteStore, SqliteStore


async def open_store(settings: StoreSettings, *, create: bool = True, read_only: bool = False) -> Store:
    """The store the settings name: PostgreSQL when ``dsn`` is set, else
    SQLite at ``path``. Migrates it first; a schema newer than this code
    knows is refused (`SchemaTooNewError`).

    ``create=False`` (commands that act on what a daemon stored): a store
    that is not there is a `StoreError`, never a new empty one. ``read_only``
    (commands that only look): that, and nothing is migrated or written;
    the store must be at this code's schema."""
    if settings.dsn is not None:
        from hl7_alerts.store.postgres import PostgresStore  # noqa: PLC0415 (psycopg only when asked for)

        return await PostgresStore.open(
            settings.dsn,
            owner=settings.owner,
            lease_seconds=settings.lease_seconds,
            writers=settings.writers,
            create=create,
            read_only=read_only,
        )
    if read_only:
        return await ReadOnlySqliteStore.open(settings.path)
    return await SqliteStore.open(settings.path, create=create)

__all__ = [
    "MIGRATIONS",
    "PAGING_EVENTS",
    "SCHEMA_VERSION",
    "AlertRecord",
    "AuditRow",
    "CodeCount",
    "DedupKey",
    "Dialect",
    "LockBusy",
    "Migration",
    "OutboxBacklog",
    "OutboxItem",
    "OutboxRow",
    "PriorAck",
    "Pruned",
    "ReadOnlySqliteStore",
    "RejectedMessage",
    "ScheduleRow",
    "SchemaTooNewError",
    "ScratchSqliteStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "Transaction",
    "describe_db_error",
    "open_store",
]
