"""The store: one interface, two backends.

SQLite (`SqliteStore`) is the embedded default, for one daemon; PostgreSQL
(`PostgresStore`) lets several daemons share orders, dedup keys, alerts, the
outbox and the timers. `open_store` picks one from the config's ``store``
section. Callers see only `Store` and `Transaction` (`base.py`); SQL and its
dialects stay in this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hl7_alerts.store.base import (
    PAGING_EVENTS,
    AlertRecord,
    AuditRow,
    DedupKey,
    LockBusy,
    OutboxBacklog,
    OutboxItem,
    OutboxRow,
    PriorAck,
    Pruned,
    ScheduleRow,
    SchemaTooNewError,
    Store,
    StoreError,
    Transaction,
)
from hl7_alerts.store.schema import MIGRATIONS, SCHEMA_VERSION, Dialect, Migration
from hl7_alerts.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from hl7_alerts.config import Config


async def open_store(config: Config) -> Store:
    """The store the config names: PostgreSQL when ``store.dsn`` is set, else
    SQLite at ``store.path``. Migrates it first; a schema newer than this
    code knows is refused (`SchemaTooNewError`)."""
    if config.store.dsn is not None:
        from hl7_alerts.store.postgres import PostgresStore  # noqa: PLC0415 (psycopg only when asked for)

        # The MQTT client id is unique per daemon (the broker insists): it
        # names this daemon's outbox claims too.
        return await PostgresStore.open(
            config.store.dsn,
            owner=config.mqtt.client_id,
            lease_seconds=config.store.lease_seconds,
            writers=config.store.writers,
        )
    return await SqliteStore.open(config.store.path)

__all__ = [
    "MIGRATIONS",
    "PAGING_EVENTS",
    "SCHEMA_VERSION",
    "AlertRecord",
    "AuditRow",
    "DedupKey",
    "Dialect",
    "LockBusy",
    "Migration",
    "OutboxBacklog",
    "OutboxItem",
    "OutboxRow",
    "PriorAck",
    "Pruned",
    "ScheduleRow",
    "SchemaTooNewError",
    "SqliteStore",
    "Store",
    "StoreError",
    "Transaction",
    "open_store",
]
