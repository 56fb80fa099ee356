"""PostgreSQL: the store for sites running several daemons on one database.

Same `Transaction` queries as SQLite (`queries.py`), same writer (`writer.py`: one thread,
one connection, grouped commits, a SAVEPOINT per unit), and PostgreSQL's own
transactions and locks for what several writers need:

- **Units serialize per patient and per dedup key** with transaction-level
  advisory locks (`lock`). The first unit of a transaction may wait for one
  (it holds nothing yet, so it cannot be part of a deadlock); a later unit
  only *tries*, and when another daemon holds the lock it is rolled back to
  its savepoint and run again alone once the batch has committed (`LockBusy`).
  Locks asked for together are taken in ascending order. A deadlock the server
  still detects (row locks, say) sends the unit the same way.
- **Outbox rows are claimed** (`pending_outbox`) by one daemon at a time,
  with ``FOR UPDATE SKIP LOCKED`` under a lease on the database's clock, and
  only when every earlier undelivered row of the same patient is this
  daemon's: per patient, alerts go out in order whichever daemon sends them.
  A daemon that dies leaves its claims to expire; another takes them then.
- **Migrations** run under a session advisory lock, so two daemons starting
  together migrate once.

Statements are written with ``?`` marks (shared with SQLite) and turned into
psycopg's ``%s`` once per statement text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, ClassVar

import psycopg
import structlog
from psycopg import errors
from psycopg.pq import TransactionStatus

from hl7_alerts.model import Observation, OrderState, PatientKey
from hl7_alerts.store.base import DedupKey, LockBusy, OutboxRow, StoreError
from hl7_alerts.store.queries import SqlTransaction
from hl7_alerts.store.rows import (
    OBSERVATION_COLUMNS,
    OBSERVATION_INSERT,
    OBSERVATION_TYPES,
    OUTBOX_COLUMNS,
    observation_from_row,
    observation_rows,
    outbox_from_row,
)
from hl7_alerts.store.schema import MIGRATIONS, SCHEMA_VERSION, Dialect, check_current, check_version
from hl7_alerts.store.writer import BatchingStore
from hl7_alerts.terminology import Analyte

log = structlog.get_logger("hl7_alerts.store")


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name (never Python's hash())."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


_MIGRATION_LOCK = lock_key("hl7-alerts:migrations")
_OUTBOX_LOCK = lock_key("hl7-alerts:outbox-claims")
_TIMERS_LOCK = lock_key("hl7-alerts:timers")

# Waiting longer than this for a lock means something is wrong with the
# holder; the unit fails (AR upstream, the sender resends) instead of hanging.
LOCK_TIMEOUT_MS = 10_000

_INSERT_OBSERVATIONS = (
    f"INSERT INTO observations ({OBSERVATION_INSERT}) SELECT * FROM unnest("  # noqa: S608 (constants)
    + ", ".join(f"?::{kind}[]" for _, kind in OBSERVATION_TYPES)
    + ")"
)

_CONTENDED = (errors.DeadlockDetected, errors.SerializationFailure, errors.LockNotAvailable)


def text_safe(values: Sequence[Any]) -> Sequence[Any]:
    """PostgreSQL text cannot hold NUL (SQLite's can): a sender's stray 0x00 in
    a field would otherwise fail the message's every resend (AR for ever).
    It becomes U+FFFD, as undecodable bytes do; the raw bytes (BYTEA) keep
    the original. The common case, no NUL anywhere, returns ``values`` as is."""
    if not any(_has_nul(v) for v in values):
        return values
    return [_without_nul(v) for v in values]


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    return isinstance(value, list) and any(_has_nul(v) for v in value)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def migrate(conn: psycopg.Connection[Any]) -> None:
    """Bring the database's schema up to `SCHEMA_VERSION`, one transaction a
    version, under a session lock: a second daemon starting now waits, then
    finds nothing left to do."""
    conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        current = (row[0] if row else None) or 0
        check_version(current, "store.dsn")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with conn.transaction():
                conn.execute(MIGRATIONS[version - 1].render(Dialect.POSTGRESQL).encode())
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            log.info("store_migrated", version=version)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))


def _schema_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version of an existing hl7-alerts database; a database
    without one is a `StoreError` (the commands that must not create a store)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not (row and row[0]):
        raise StoreError("store.dsn: the database has no hl7-alerts schema (no schema_version table)")
    found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int((found[0] if found else None) or 0)


class PgTransaction(SqlTransaction):
    """`Transaction` over the writer's PostgreSQL connection."""

    EARLIER: ClassVar[str] = "{col}::timestamptz < ?::timestamptz"

    def __init__(self, conn: psycopg.Connection[Any], *, owner: str, lease_seconds: float) -> None:
        super().__init__(conn)
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._sql: dict[str, str] = {}
        self._ingredients: dict[str, frozenset[str]] = {}
        self._alone = False
        self._first = True
        self._holds_locks = False

    def _pg(self, sql: str) -> str:
        """The statement with psycopg's ``%s`` marks, converted once per text."""
        text = self._sql.get(sql)
        if text is None:
            text = self._sql[sql] = sql.replace("?", "%s")
        return text

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.connection.execute(self._pg(sql), text_safe(params))

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(self._pg(sql), [text_safe(r) for r in rows])

    def insert_observations(
        self, message_id: int, patient: PatientKey, observations: Sequence[Observation]
    ) -> None:
        # A panel in one statement of one array per column: one prepared
        # statement and one round trip, where executemany costs a pipeline
        # sync and a parameter conversion per row.
        rows = observation_rows(message_id, patient, observations)
        if rows:
            self.execute(_INSERT_OBSERVATIONS, [list(column) for column in zip(*rows, strict=True)])

    def ordered_ingredients(self, patient: PatientKey) -> frozenset[str]:
        # Asked twice per result message (rules, schedules): the answer holds
        # for the unit, under its patient's lock, until it writes an order.
        known = self._ingredients.get(patient.key)
        if known is None:
            known = self._ingredients[patient.key] = super().ordered_ingredients(patient)
        return known

    def put_order(self, patient: PatientKey, order: OrderState, message_id: int) -> None:
        self._ingredients.clear()
        super().put_order(patient, order, message_id)

    def merge_patient(self, prior: PatientKey, surviving: PatientKey) -> list[str]:
        self._ingredients.clear()
        return super().merge_patient(prior, surviving)

    def latest_results(
        self,
        patient: PatientKey,
        before: datetime,
        since: datetime | None,
        *,
        analytes: Sequence[str] | None = None,
    ) -> tuple[Observation, ...]:
        # The same indexed probe per analyte as SQLite's, in one statement
        # whose text does not depend on how many analytes are asked for (one
        # prepared statement).
        rows = self.execute(
            f"SELECT o.* FROM unnest(?::text[]) AS a(analyte) CROSS JOIN LATERAL ("  # noqa: S608 (constants)
            f"SELECT {OBSERVATION_COLUMNS} FROM observations WHERE patient = ? AND analyte = a.analyte "
            "AND observed_ts < ? AND observed_ts >= ? AND superseded = 0 AND status IN ('F', 'C', 'P') "
            "ORDER BY observed_ts DESC, id DESC LIMIT 1) AS o",
            (
                [a.value for a in Analyte] if analytes is None else list(analytes),
                patient.key,
                before.timestamp(),
                since.timestamp() if since is not None else float("-inf"),
            ),
        ).fetchall()
        return tuple(sorted((observation_from_row(r) for r in rows), key=lambda o: o.observed_at))

    # -- locks between daemons ---------------------------------------------------

    def batch_begun(self, *, alone: bool) -> None:
        self._alone = alone
        self._holds_locks = False

    def unit_begun(self, *, first: bool) -> None:
        self._first = first
        self._ingredients.clear()

    def lock(self, *, message: DedupKey | None = None, patients: Iterable[PatientKey] = ()) -> None:
        names = [f"patient:{p.key}" for p in patients]
        if message is not None:
            names.append(
                f"message:{message.sending_application}|{message.sending_facility}|{message.control_id}"
            )
        keys = [lock_key(n) for n in names]
        self._lock_keys(keys)

    def try_timers(self) -> bool:
        # Never waits: a daemon whose tick finds another ticking skips its own
        # (and the batch it is in is not held up behind it).
        self._holds_locks = True
        row = self.execute("SELECT pg_try_advisory_xact_lock(?)", (_TIMERS_LOCK,)).fetchone()
        return bool(row[0])

    def _lock_keys(self, keys: Iterable[int]) -> None:
        ordered = sorted(set(keys))
        if not ordered:
            return
        may_wait = self._alone or (self._first and not self._holds_locks)
        # Held until the transaction ends, even when only some were taken.
        self._holds_locks = True
        if may_wait:
            # unnest yields the array in order: the locks are taken ascending.
            self.execute(
                "SELECT pg_advisory_xact_lock(k) FROM unnest(?::bigint[]) AS k", (ordered,)
            ).fetchall()
            return
        row = self.execute(
            "SELECT bool_and(pg_try_advisory_xact_lock(k)) FROM unnest(?::bigint[]) AS k", (ordered,)
        ).fetchone()
        if not row[0]:
            raise LockBusy("another daemon holds a lock this unit needs")

    # -- the outbox, shared ------------------------------------------------------

    def pending_outbox(self, limit: int, after_id: int) -> list[OutboxRow]:
        """Claim up to ``limit`` rows for this daemon and return them, oldest
        first. Rows at or below ``after_id`` that this daemon claimed are in
        flight: their lease is renewed, they are not returned again. A row is
        claimable when unclaimed, its lease has run out, or it is a stale
        claim of ours; and only when every earlier undelivered row of its
        patient is claimed with it or in flight here. Claimers take one lock
        in turn, so two of them never split a patient's rows between them."""
        self._lock_keys([_OUTBOX_LOCK])
        now = self.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
        until = now + self.lease_seconds
        me = self.owner
        self.execute(
            "UPDATE outbox SET claimed_until = ? WHERE claimed_by = ? AND delivered_at IS NULL AND id <= ?",
            (until, me, after_id),
        )
        rows = self.execute(
            "WITH c AS ("  # noqa: S608 (constant columns)
            " SELECT o.id, o.patient FROM outbox o"
            " WHERE o.delivered_at IS NULL"
            " AND (o.claimed_by IS NULL OR o.claimed_until <= ? OR (o.claimed_by = ? AND o.id > ?))"
            " AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.patient = o.patient AND e.delivered_at IS NULL"
            "  AND e.claimed_by <> ? AND e.claimed_until > ?)"
            " ORDER BY o.id LIMIT ? FOR UPDATE OF o SKIP LOCKED"
            "), ok AS ("
            " SELECT c.id FROM c WHERE NOT EXISTS (SELECT 1 FROM outbox e WHERE e.patient = c.patient"
            "  AND e.delivered_at IS NULL AND e.id < c.id AND e.id NOT IN (SELECT id FROM c)"
            "  AND (e.claimed_by IS DISTINCT FROM ? OR e.id > ?))"
            ") UPDATE outbox SET claimed_by = ?, claimed_until = ? FROM ok WHERE outbox.id = ok.id"
            " RETURNING " + ", ".join(f"outbox.{c}" for c in OUTBOX_COLUMNS.split(", ")),
            (now, me, after_id, me, now, limit, me, after_id, me, until),
        ).fetchall()
        return sorted((outbox_from_row(r) for r in rows), key=lambda r: r.id)

    def release_outbox(self) -> None:
        self.execute(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL "
            "WHERE claimed_by = ? AND delivered_at IS NULL",
            (self.owner,),
        )


class PostgresStore(BatchingStore):
    """`Store` on a PostgreSQL database that several daemons may share."""

    _DB_ERRORS: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)
    # A statement to the server per unit saved; a batch's at most 64 nested
    # savepoints are what PostgreSQL keeps in memory anyway (`max_batch`).
    _RELEASE_UNITS: ClassVar[bool] = False
    _CLAIMS: ClassVar[bool] = True

    def __init__(
        self,
        dsn: str,
        *,
        owner: str,
        lease_seconds: float = 30.0,
        writers: int = 2,
        max_batch: int = 64,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        # A batch's writing units each take a subtransaction id; past 64 in one
        # transaction PostgreSQL's snapshots overflow to disk (pg_subtrans).
        super().__init__(max_batch=min(max_batch, 64), writers=1 if read_only else writers)
        self.dsn = dsn
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.create = create and not read_only
        self.read_only = read_only

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        owner: str = "hl7-alerts",
        lease_seconds: float = 30.0,
        writers: int = 2,
        max_batch: int = 64,
        create: bool = True,
        read_only: bool = False,
    ) -> PostgresStore:
        """Connect (migrating as needed) and start ``writers`` writers, one
        connection each. ``owner`` names this daemon's outbox claims (its
        MQTT client id): unique per daemon sharing the database.
        ``create=False``: a database without the hl7-alerts schema is a
        `StoreError` (it is migrated when older). ``read_only``: one
        connection whose transactions are read-only, nothing migrated, the
        schema must be this code's."""
        store = cls(
            dsn, owner=owner, lease_seconds=lease_seconds, writers=writers, max_batch=max_batch,
            create=create, read_only=read_only,
        )
        await store._start()
        return store

    def _connect(self) -> PgTransaction:
        try:
            conn = psycopg.connect(
                self.dsn,
                autocommit=True,  # the writer says BEGIN and COMMIT itself
                connect_timeout=10,
                application_name=f"hl7-alerts {self.owner}"[:63],
                options=f"-c lock_timeout={LOCK_TIMEOUT_MS}"
                + (" -c default_transaction_read_only=on" if self.read_only else ""),
                # A peer that vanished (a cable, a host) is noticed in seconds.
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to store.dsn: {exc}".strip()) from exc
        try:
            if not self.create:
                version = _schema_version(conn)
                if self.read_only:
                    check_current(version, "store.dsn")
            if not self.read_only:
                migrate(conn)
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"store.dsn: {exc}".strip()) from exc
        except BaseException:
            conn.close()
            raise
        return PgTransaction(conn, owner=self.owner, lease_seconds=self.lease_seconds)

    def _reconnect_if_broken(self, tx: SqlTransaction) -> SqlTransaction:
        conn: psycopg.Connection[Any] = tx.connection
        if not (conn.closed or conn.broken):
            return tx
        log.warning("store_reconnecting")
        conn.close()
        return self._connect()

    def _in_transaction(self, tx: SqlTransaction) -> bool:
        conn: psycopg.Connection[Any] = tx.connection
        return conn.info.transaction_status != TransactionStatus.IDLE

    def _committed(self, cursor: Any) -> bool:
        # COMMIT of a transaction an error aborted answers ROLLBACK, no error.
        return bool(cursor.statusmessage == "COMMIT")

    def _contended(self, exc: BaseException) -> bool:
        return isinstance(exc, _CONTENDED)
