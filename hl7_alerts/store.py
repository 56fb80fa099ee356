"""The store: one interface, SQLite behind it (PostgreSQL later).

Owns the schema and its migrations, the write transaction that covers a whole
message (dedup key, raw bytes, orders or observations, alerts, outbox rows),
and the queries that read a patient's context back. It does not evaluate
rules: callers hand it a *unit of work*, a plain function of a `Transaction`,
and it runs that function inside the transaction. SQL dialect stays in here.

SQLite runs in WAL mode with ``synchronous=FULL`` on one writer thread. Units
queued while a commit is in progress are run together and committed together
(group commit), each inside its own SAVEPOINT so one failing unit rolls back
alone. A unit's awaiter is answered only after the COMMIT that covers it has
returned: that is what makes ACK-after-commit true.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from hl7_alerts.alerts import AckRequest, Alert, AlertEvent, AlertState, Tracking
from hl7_alerts.model import (
    AckCode,
    Header,
    HoldPeriod,
    Observation,
    OrderState,
    PastAlert,
    PatientKey,
    ResultStatus,
    Severity,
)
from hl7_alerts.terminology import Analyte
from hl7_alerts.timeutil import from_iso, to_iso, utc_stamp

T = TypeVar("T")

log = structlog.get_logger("hl7_alerts.store")


class StoreError(Exception):
    """The store could not do what was asked (disk full, locked, corrupt).

    Transient from the sender's point of view: answer AR so it resends.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class DedupKey:
    """(MSH-3, MSH-4, MSH-10): what makes a resend recognisable."""

    sending_application: str
    sending_facility: str
    control_id: str

    @classmethod
    def of(cls, header: Header) -> DedupKey:
        return cls(
            sending_application=header.sending_application,
            sending_facility=header.sending_facility,
            control_id=header.control_id,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PriorAck:
    """How a message was answered the first time it was received."""

    message_id: int
    ack_code: AckCode
    ack_text: str
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxItem:
    alert_id: str
    version: int
    event: str
    topic: str
    payload: str
    patient: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRow:
    id: int
    alert_id: str
    version: int
    event: str
    topic: str
    payload: str
    created_at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxBacklog:
    """Undelivered outbox rows: how many, and when the oldest was queued."""

    depth: int
    oldest_created_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pruned:
    """What one retention run removed."""

    observations: int = 0
    messages: int = 0
    raw_cleared: int = 0
    rejected_messages: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRecord:
    """An alert as stored: its state, lifecycle tracking and last payload."""

    alert: Alert
    tracking: Tracking
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRow:
    """The liver-test schedule of one thiopurine order (`aza.monitoring.overdue`).

    ``state`` is ``active``, ``paused`` (order on hold) or ``stopped``;
    ``fired_due`` is the due time an overdue alert was last raised for, so the
    timer raises one alert per due time however often it runs or restarts."""

    patient: PatientKey
    order_id: str
    start: datetime
    last_panel: datetime | None
    due: datetime
    fires_at: datetime
    fired_due: datetime | None
    state: str

    @property
    def fired(self) -> bool:
        return self.fired_due is not None and self.fired_due == self.due


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRow:
    """One line of the append-only audit trail (no patient data)."""

    id: int
    at: str
    kind: str
    alert_id: str
    version: int | None
    event: str | None
    outbox_id: int | None
    detail: str


# Events that page someone: they (re)start the reminder clock.
PAGING_EVENTS = frozenset({AlertEvent.FIRING, AlertEvent.UPDATED, AlertEvent.ESCALATED, AlertEvent.REMINDER})


class Transaction(Protocol):
    """What a unit of work may do inside the store's transaction."""

    def find_messages(self, key: DedupKey) -> list[PriorAck]: ...

    def insert_message(
        self,
        key: DedupKey,
        header: Header,
        raw: bytes,
        *,
        digest: str,
        received_at: datetime,
        ack_code: AckCode,
        ack_text: str,
    ) -> int: ...

    def insert_rejected(
        self,
        header: Header | None,
        raw: bytes,
        *,
        received_at: datetime,
        ack_code: AckCode,
        reason: str,
    ) -> None: ...

    def insert_observations(
        self, message_id: int, patient: PatientKey, observations: Sequence[Observation]
    ) -> None: ...

    def get_order(self, patient: PatientKey, order_id: str) -> OrderState | None: ...

    def put_order(self, patient: PatientKey, order: OrderState, message_id: int) -> None: ...

    def patient_orders(self, patient: PatientKey) -> tuple[OrderState, ...]: ...

    def ordered_ingredients(self, patient: PatientKey) -> frozenset[str]:
        """Every ingredient the patient has (or had) an order for, as this
        transaction sees it, answered from memory: the fast path that lets a
        result for a patient without a thiopurine order cost only its write."""
        ...


    def patient_history(
        self, patient: PatientKey, since: datetime | None, *, analytes: Sequence[str] | None = None
    ) -> tuple[Observation, ...]:
        """Results observed at or after ``since`` (all, when None), optionally
        only of ``analytes``; superseded (corrected, cancelled) ones left out."""
        ...

    def latest_results(
        self, patient: PatientKey, before: datetime, since: datetime | None
    ) -> tuple[Observation, ...]:
        """Per analyte, the latest evaluable result observed before ``before``
        (and at or after ``since``, when given): what "the previous result"
        and "on file" need, without loading the whole history."""
        ...

    def supersede(self, patient: PatientKey, corrections: Sequence[Observation]) -> int:
        """Mark the stored results that corrections/cancellations (OBX-11 C, X,
        D) replace: same code, specimen and observation time. Returns how many."""
        ...

    def alert_history(self, patient: PatientKey) -> tuple[PastAlert, ...]:
        """Every alert the patient had, open or resolved (withdrawn ones left out)."""
        ...

    def find_patients(self, patient_id: str, id_type: str) -> list[PatientKey]:
        """Every stored patient key with this identifier and type (any authority)."""
        ...

    def merge_patient(self, prior: PatientKey, surviving: PatientKey) -> list[str]:
        """ADT^A40: move results, orders and alerts of ``prior`` to ``surviving``.
        Returns the ids of the prior's open alerts folded into (closed in favour
        of) the survivor's open alert of the same rule: the caller announces them."""
        ...

    def open_alerts(self, patient: PatientKey) -> dict[str, Alert]: ...

    def next_episodes(self, patient: PatientKey) -> dict[str, int]: ...

    def save_alert(self, alert: Alert, payload: dict[str, Any]) -> None: ...

    def enqueue(self, item: OutboxItem, created_at: datetime) -> None: ...

    def alert_record(self, alert_id: str) -> AlertRecord | None: ...

    def record_ack(self, alert_id: str, request: AckRequest) -> None: ...

    def record_reminder(self, alert_id: str) -> None: ...

    def reminder_candidates(
        self, severities: Iterable[str], max_reminders: int, notified_before: datetime | None
    ) -> list[AlertRecord]: ...

    def put_schedule(self, row: ScheduleRow) -> None:
        """Insert or replace the schedule of (patient, order)."""
        ...

    def patient_schedules(self, patient: PatientKey) -> list[ScheduleRow]: ...

    def due_schedules(self, fires_before: datetime | None) -> list[ScheduleRow]:
        """Active schedules not yet fired for their due time whose alert time
        is at or before ``fires_before`` (all such, when None), earliest first."""
        ...

    def audit(
        self,
        kind: str,
        alert_id: str,
        at: datetime,
        *,
        version: int | None = None,
        event: str | None = None,
        outbox_id: int | None = None,
        detail: str = "",
    ) -> None: ...


class Store(Protocol):
    """The store every backend implements."""

    async def transact(self, unit: Callable[[Transaction], T]) -> T:
        """Run ``unit`` in a write transaction; return once it is durable."""
        ...

    async def pending_outbox(self, limit: int, *, after_id: int = 0) -> list[OutboxRow]:
        """Undelivered outbox rows with ids above ``after_id``, oldest first."""
        ...

    async def mark_delivered(self, ids: Sequence[int], at: datetime) -> None:
        """Mark rows delivered (PUBACK received) and audit each delivery."""
        ...

    async def record_delivery(self, ids: Sequence[int], kind: str, at: datetime, detail: str = "") -> None:
        """Audit a publish attempt or failure of outbox rows."""
        ...

    def outbox_signal(self) -> asyncio.Event:
        """Set after every commit that added outbox rows."""
        ...

    async def outbox_backlog(self) -> OutboxBacklog:
        """How many outbox rows are undelivered and when the oldest was queued."""
        ...

    async def probe_write(self, at: datetime) -> None:
        """Commit one tiny write; raises `StoreError` when the store cannot take writes."""
        ...

    async def prune(self, before: datetime, *, chunk: int = 500) -> Pruned:
        """Retention: remove messages and observations older than ``before``."""
        ...

    async def last_run(self, task: str) -> datetime | None: ...

    async def mark_run(self, task: str, at: datetime) -> None: ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------------------
# Schema

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        sending_application TEXT NOT NULL,
        sending_facility TEXT NOT NULL,
        control_id TEXT NOT NULL,
        message_type TEXT NOT NULL,
        version TEXT NOT NULL,
        received_at TEXT NOT NULL,
        digest TEXT NOT NULL,
        raw BLOB NOT NULL,
        ack_code TEXT NOT NULL,
        ack_text TEXT NOT NULL DEFAULT '',
        UNIQUE (sending_application, sending_facility, control_id, digest)
    );
    CREATE TABLE rejected_messages (
        id INTEGER PRIMARY KEY,
        sending_application TEXT,
        sending_facility TEXT,
        control_id TEXT,
        received_at TEXT NOT NULL,
        raw BLOB NOT NULL,
        ack_code TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE observations (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        patient TEXT NOT NULL,
        analyte TEXT,
        code TEXT NOT NULL,
        code_system TEXT NOT NULL,
        text TEXT NOT NULL,
        value_type TEXT NOT NULL,
        value_text TEXT NOT NULL,
        value REAL,
        comparator TEXT NOT NULL,
        unit TEXT NOT NULL,
        ref_low REAL,
        ref_high REAL,
        ref_text TEXT NOT NULL,
        flag TEXT NOT NULL,
        status TEXT NOT NULL,
        observed_at TEXT NOT NULL,
        observed_ts REAL NOT NULL,
        specimen_id TEXT NOT NULL,
        set_id TEXT NOT NULL
    );
    CREATE INDEX observations_patient ON observations (patient, observed_ts);
    CREATE TABLE orders (
        patient TEXT NOT NULL,
        order_id TEXT NOT NULL,
        ingredient TEXT,
        drug_text TEXT NOT NULL,
        dose TEXT NOT NULL,
        start TEXT,
        stop TEXT,
        holds TEXT NOT NULL,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        PRIMARY KEY (patient, order_id)
    );
    CREATE TABLE alerts (
        alert_id TEXT PRIMARY KEY,
        patient TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        patient_id_type TEXT NOT NULL,
        patient_authority TEXT NOT NULL,
        rule TEXT NOT NULL,
        episode INTEGER NOT NULL,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        version INTEGER NOT NULL,
        opened_at TEXT NOT NULL,
        evidence_at TEXT NOT NULL,
        payload TEXT NOT NULL,
        UNIQUE (patient, rule, episode)
    );
    CREATE UNIQUE INDEX alerts_one_open ON alerts (patient, rule) WHERE state = 'open';
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        alert_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        event TEXT NOT NULL,
        topic TEXT NOT NULL,
        payload TEXT NOT NULL,
        patient TEXT NOT NULL,
        created_at TEXT NOT NULL,
        delivered_at TEXT
    );
    CREATE INDEX outbox_pending ON outbox (id) WHERE delivered_at IS NULL;
    """,
    # 2: corrections supersede results; alerts remember what they rest on
    """
    ALTER TABLE observations ADD COLUMN superseded INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE alerts ADD COLUMN rests_on TEXT NOT NULL DEFAULT '';
    ALTER TABLE alerts ADD COLUMN evidence_key TEXT NOT NULL DEFAULT '';
    CREATE INDEX observations_code ON observations (patient, code, specimen_id, observed_ts);
    CREATE INDEX observations_analyte ON observations (patient, analyte, observed_ts);
    """,
    # 3: operations. Retention deletes messages, and every delete checks the
    # foreign keys that point at them: without these indexes each check would
    # scan the whole table. `maintenance` remembers when a periodic task last
    # ran (so a daemon restarted often still prunes daily); `health_probe` is
    # the row /healthz writes to prove the store takes writes.
    """
    CREATE INDEX observations_message ON observations (message_id);
    CREATE INDEX observations_observed ON observations (observed_ts);
    CREATE INDEX orders_message ON orders (message_id);
    CREATE TABLE maintenance (
        task TEXT PRIMARY KEY,
        last_run TEXT NOT NULL
    );
    CREATE TABLE health_probe (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        at TEXT NOT NULL
    );
    """,
    # 4: acknowledgement, reminder clock, and the append-only audit trail
    """
    ALTER TABLE alerts ADD COLUMN acknowledged_by TEXT;
    ALTER TABLE alerts ADD COLUMN acknowledged_at TEXT;
    ALTER TABLE alerts ADD COLUMN notified_at TEXT;
    ALTER TABLE alerts ADD COLUMN notified_ts REAL;
    ALTER TABLE alerts ADD COLUMN reminders_sent INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX alerts_reminders ON alerts (notified_ts)
        WHERE state = 'open' AND acknowledged_at IS NULL;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        alert_id TEXT NOT NULL,
        version INTEGER,
        event TEXT,
        outbox_id INTEGER,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_alert ON audit (alert_id, id);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
    """,
    # 5: the liver-test schedule of each thiopurine order (aza.monitoring.overdue)
    """
    CREATE TABLE monitoring (
        patient TEXT NOT NULL,
        order_id TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        patient_id_type TEXT NOT NULL,
        patient_authority TEXT NOT NULL,
        start TEXT NOT NULL,
        last_panel TEXT,
        due TEXT NOT NULL,
        fires_at TEXT NOT NULL,
        fires_ts REAL NOT NULL,
        fired_due TEXT,
        state TEXT NOT NULL,
        PRIMARY KEY (patient, order_id)
    );
    CREATE INDEX monitoring_due ON monitoring (fires_ts) WHERE state = 'active';
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(StoreError):
    """The database was written by a newer hl7-alerts; refuse to touch it."""


def _statements(script: str) -> list[str]:
    """Split a migration into statements; a trigger's body keeps its ';'."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        out.append(pending.strip())
    return out


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    current = row[0] or 0
    if current > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"store schema version {current} is newer than this hl7-alerts knows ({SCHEMA_VERSION}); "
            "upgrade hl7-alerts or point store.path elsewhere"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        # Another process (the CLI, a second daemon) may have migrated while
        # we waited for the write lock: look again under it.
        if (conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0) >= version:
            conn.execute("ROLLBACK")
            continue
        try:
            for statement in _statements(MIGRATIONS[version - 1]):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("store_migrated", version=version)


# ---------------------------------------------------------------------------
# SQLite transaction


def _ts(value: datetime) -> float:
    return value.timestamp()


_ORDER_WRITTEN = "hl7_alerts_order_written"

# Every write to `orders`, whoever makes it (an upsert, a merge moving orders
# between patients), reports (patient, ingredient) to the in-memory index.
# TEMP triggers live on the writer's connection only: no schema change.
_ORDER_TRIGGERS = (
    f"CREATE TEMP TRIGGER IF NOT EXISTS orders_index_insert AFTER INSERT ON main.orders "
    f"WHEN NEW.ingredient IS NOT NULL BEGIN SELECT {_ORDER_WRITTEN}(NEW.patient, NEW.ingredient); END",
    f"CREATE TEMP TRIGGER IF NOT EXISTS orders_index_update AFTER UPDATE ON main.orders "
    f"WHEN NEW.ingredient IS NOT NULL BEGIN SELECT {_ORDER_WRITTEN}(NEW.patient, NEW.ingredient); END",
)


class _SqliteTransaction:
    """`Transaction` over one SQLite connection (writer thread only).

    Keeps the ingredients ordered per patient in memory (`ordered_ingredients`):
    loaded at open, fed by triggers on `orders`, and folded into the committed
    index only once the COMMIT that covers the write has returned. A unit
    rolled back to its savepoint, or a batch whose COMMIT fails, leaves no
    trace in it. It only grows, like the rules' "current or past order" test.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.enqueued = 0
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
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        ordered: dict[str, set[str]] = {}
        for patient, ingredient in self._conn.execute(
            "SELECT DISTINCT patient, ingredient FROM orders WHERE ingredient IS NOT NULL"
        ):
            ordered.setdefault(patient, set()).add(ingredient)
        self._ordered = ordered

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

    def find_messages(self, key: DedupKey) -> list[PriorAck]:
        rows = self._conn.execute(
            "SELECT id, ack_code, ack_text, digest FROM messages "
            "WHERE sending_application = ? AND sending_facility = ? AND control_id = ? ORDER BY id",
            (key.sending_application, key.sending_facility, key.control_id),
        ).fetchall()
        return [PriorAck(message_id=r[0], ack_code=AckCode(r[1]), ack_text=r[2], digest=r[3]) for r in rows]

    def insert_message(
        self,
        key: DedupKey,
        header: Header,
        raw: bytes,
        *,
        digest: str,
        received_at: datetime,
        ack_code: AckCode,
        ack_text: str,
    ) -> int:
        cursor = self._conn.execute(
            "INSERT INTO messages (sending_application, sending_facility, control_id, message_type, "
            "version, received_at, digest, raw, ack_code, ack_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key.sending_application,
                key.sending_facility,
                key.control_id,
                header.type_code,
                header.version,
                to_iso(received_at),
                digest,
                raw,
                str(ack_code),
                ack_text,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def insert_rejected(
        self,
        header: Header | None,
        raw: bytes,
        *,
        received_at: datetime,
        ack_code: AckCode,
        reason: str,
    ) -> None:
        self._conn.execute(
            "INSERT INTO rejected_messages (sending_application, sending_facility, control_id, "
            "received_at, raw, ack_code, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                header.sending_application if header else None,
                header.sending_facility if header else None,
                header.control_id if header else None,
                to_iso(received_at),
                raw,
                str(ack_code),
                reason,
            ),
        )

    def insert_observations(
        self, message_id: int, patient: PatientKey, observations: Sequence[Observation]
    ) -> None:
        self._conn.executemany(
            "INSERT INTO observations (message_id, patient, analyte, code, code_system, text, value_type, "
            "value_text, value, comparator, unit, ref_low, ref_high, ref_text, flag, status, observed_at, "
            "observed_ts, specimen_id, set_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    message_id,
                    patient.key,
                    o.analyte,
                    o.code,
                    o.code_system,
                    o.text,
                    o.value_type,
                    o.value_text,
                    o.value,
                    o.comparator,
                    o.unit,
                    o.ref_low,
                    o.ref_high,
                    o.ref_text,
                    o.flag,
                    str(o.status),
                    to_iso(o.observed_at),
                    _ts(o.observed_at),
                    o.specimen_id,
                    o.set_id,
                )
                for o in observations
            ],
        )

    def get_order(self, patient: PatientKey, order_id: str) -> OrderState | None:
        row = self._conn.execute(
            "SELECT order_id, ingredient, drug_text, dose, start, stop, holds FROM orders "
            "WHERE patient = ? AND order_id = ?",
            (patient.key, order_id),
        ).fetchone()
        return None if row is None else _order_from_row(row)

    def put_order(self, patient: PatientKey, order: OrderState, message_id: int) -> None:
        holds = json.dumps([[to_iso(h.start), to_iso(h.end)] for h in order.holds])
        self._conn.execute(
            "INSERT INTO orders "
            "(patient, order_id, ingredient, drug_text, dose, start, stop, holds, message_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (patient, order_id) DO UPDATE SET "
            "ingredient = excluded.ingredient, drug_text = excluded.drug_text, dose = excluded.dose, "
            "start = excluded.start, stop = excluded.stop, holds = excluded.holds, "
            "message_id = excluded.message_id",
            (
                patient.key,
                order.order_id,
                order.ingredient,
                order.drug_text,
                order.dose,
                to_iso(order.start),
                to_iso(order.stop),
                holds,
                message_id,
            ),
        )

    def patient_orders(self, patient: PatientKey) -> tuple[OrderState, ...]:
        rows = self._conn.execute(
            "SELECT order_id, ingredient, drug_text, dose, start, stop, holds FROM orders WHERE patient = ? "
            "ORDER BY start",
            (patient.key,),
        ).fetchall()
        return tuple(_order_from_row(r) for r in rows)

    def patient_history(
        self, patient: PatientKey, since: datetime | None, *, analytes: Sequence[str] | None = None
    ) -> tuple[Observation, ...]:
        sql = (
            "SELECT analyte, code, code_system, text, value_type, value_text, value, comparator, unit, "
            "ref_low, ref_high, ref_text, flag, status, observed_at, specimen_id, set_id FROM observations "
            "WHERE patient = ? AND superseded = 0"
        )
        params: list[Any] = [patient.key]
        if since is not None:
            sql += " AND observed_ts >= ?"
            params.append(_ts(since))
        if analytes is not None:
            sql += f" AND analyte IN ({', '.join('?' for _ in analytes)})"
            params.extend(analytes)
        rows = self._conn.execute(sql + " ORDER BY observed_ts, id", params).fetchall()
        return tuple(_observation_from_row(r) for r in rows)

    def latest_results(
        self, patient: PatientKey, before: datetime, since: datetime | None
    ) -> tuple[Observation, ...]:
        # One indexed probe per analyte: a long history costs nothing here.
        rows = []
        for analyte in Analyte:
            row = self._conn.execute(
                "SELECT analyte, code, code_system, text, value_type, value_text, value, comparator, unit, "
                "ref_low, ref_high, ref_text, flag, status, observed_at, specimen_id, set_id "
                "FROM observations INDEXED BY observations_analyte "
                "WHERE patient = ? AND analyte = ? AND observed_ts < ? AND observed_ts >= ? "
                "AND superseded = 0 AND status IN ('F', 'C', 'P') ORDER BY observed_ts DESC, id DESC LIMIT 1",
                (patient.key, analyte.value, _ts(before), _ts(since) if since is not None else float("-inf")),
            ).fetchone()
            if row is not None:
                rows.append(row)
        return tuple(sorted((_observation_from_row(r) for r in rows), key=lambda o: o.observed_at))

    def supersede(self, patient: PatientKey, corrections: Sequence[Observation]) -> int:
        count = 0
        for o in corrections:
            cursor = self._conn.execute(
                "UPDATE observations SET superseded = 1 WHERE patient = ? AND code = ? AND specimen_id = ? "
                "AND observed_ts = ? AND superseded = 0",
                (patient.key, o.code, o.specimen_id, _ts(o.observed_at)),
            )
            count += cursor.rowcount
        return count

    def alert_history(self, patient: PatientKey) -> tuple[PastAlert, ...]:
        rows = self._conn.execute(
            "SELECT rule, state, opened_at, evidence_at FROM alerts "
            "WHERE patient = ? AND state != 'withdrawn' ORDER BY opened_at",
            (patient.key,),
        ).fetchall()
        out = []
        for rule, state, opened, evidence in rows:
            opened_at, evidence_at = from_iso(opened), from_iso(evidence)
            assert opened_at is not None
            assert evidence_at is not None
            out.append(
                PastAlert(rule=rule, open=state == "open", opened_at=opened_at, evidence_at=evidence_at)
            )
        return tuple(out)

    def find_patients(self, patient_id: str, id_type: str) -> list[PatientKey]:
        keys = set()
        for table in ("orders", "observations"):
            keys |= {
                r[0] for r in self._conn.execute(f"SELECT DISTINCT patient FROM {table}")  # noqa: S608
            }
        found = []
        for key in sorted(keys):
            authority, _, rest = key.partition("|")
            kind, _, ident = rest.partition("|")
            if ident == patient_id and kind == id_type:
                found.append(PatientKey(id=ident, id_type=kind, authority=authority))
        return found

    def merge_patient(self, prior: PatientKey, surviving: PatientKey) -> list[str]:
        old, new = prior.key, surviving.key
        if old == new:
            return []
        folded: list[str] = []
        self._conn.execute("UPDATE observations SET patient = ? WHERE patient = ?", (new, old))
        # The surviving record's own version of an order wins over the prior's.
        self._conn.execute("UPDATE OR IGNORE orders SET patient = ? WHERE patient = ?", (new, old))
        self._conn.execute("DELETE FROM orders WHERE patient = ?", (old,))
        self._conn.execute(
            "UPDATE OR IGNORE monitoring SET patient = ?, patient_id = ?, patient_id_type = ?, "
            "patient_authority = ? WHERE patient = ?",
            (new, surviving.id, surviving.id_type, surviving.authority, old),
        )
        self._conn.execute("DELETE FROM monitoring WHERE patient = ?", (old,))
        open_rules = {
            r[0] for r in self._conn.execute(
                "SELECT rule FROM alerts WHERE patient = ? AND state = 'open'", (new,)
            )
        }
        next_episode = dict(
            self._conn.execute(
                "SELECT rule, max(episode) FROM alerts WHERE patient = ? GROUP BY rule", (new,)
            )
        )
        moved = self._conn.execute(
            "SELECT alert_id, rule, state FROM alerts WHERE patient = ? ORDER BY episode", (old,)
        ).fetchall()
        for alert_id, rule, was in moved:
            episode = next_episode.get(rule, 0) + 1
            next_episode[rule] = episode
            state = was
            if was == "open" and rule in open_rules:
                # The surviving identifier already has this alert open: keep
                # one open episode per rule; the prior one is folded into it.
                state = "resolved"
                folded.append(alert_id)
            elif was == "open":
                open_rules.add(rule)
            self._conn.execute(
                "UPDATE alerts SET patient = ?, patient_id = ?, patient_id_type = ?, patient_authority = ?, "
                "episode = ?, state = ? WHERE alert_id = ?",
                (new, surviving.id, surviving.id_type, surviving.authority, episode, state, alert_id),
            )
        self._conn.execute("UPDATE outbox SET patient = ? WHERE patient = ?", (new, old))
        return folded

    def open_alerts(self, patient: PatientKey) -> dict[str, Alert]:
        rows = self._conn.execute(
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE patient = ? AND state = 'open'",  # noqa: S608
            (patient.key,),
        ).fetchall()
        return {r[4]: _alert_from_row(r) for r in rows}

    def next_episodes(self, patient: PatientKey) -> dict[str, int]:
        rows = self._conn.execute(
            "SELECT rule, max(episode) FROM alerts WHERE patient = ? GROUP BY rule", (patient.key,)
        ).fetchall()
        return {rule: episode + 1 for rule, episode in rows}

    def save_alert(self, alert: Alert, payload: dict[str, Any]) -> None:
        self._conn.execute(
            "INSERT INTO alerts (alert_id, patient, patient_id, patient_id_type, patient_authority, rule, "
            "episode, state, severity, version, opened_at, evidence_at, payload, rests_on, evidence_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id) DO UPDATE SET "
            "state = excluded.state, severity = excluded.severity, version = excluded.version, "
            "evidence_at = excluded.evidence_at, payload = excluded.payload, "
            "rests_on = excluded.rests_on, evidence_key = excluded.evidence_key",
            (
                alert.alert_id,
                alert.patient.key,
                alert.patient.id,
                alert.patient.id_type,
                alert.patient.authority,
                alert.rule,
                alert.episode,
                str(alert.state),
                str(alert.severity),
                alert.version,
                to_iso(alert.opened_at),
                to_iso(alert.evidence_at),
                json.dumps(payload, separators=(",", ":")),
                ",".join(alert.rests_on),
                alert.evidence_key,
            ),
        )

    def enqueue(self, item: OutboxItem, created_at: datetime) -> None:
        cursor = self._conn.execute(
            "INSERT INTO outbox (alert_id, version, event, topic, payload, patient, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                item.alert_id,
                item.version,
                item.event,
                item.topic,
                item.payload,
                item.patient,
                to_iso(created_at),
            ),
        )
        self.enqueued += 1
        # Every alert event passes here, whichever unit of work made it: the
        # audit trail and the reminder clock are kept in one place.
        self.audit(
            "event", item.alert_id, created_at, version=item.version, event=item.event,
            outbox_id=cursor.lastrowid, detail=item.topic,
        )
        if item.event == AlertEvent.ESCALATED:
            # Severity rose: the earlier acknowledgement was for a lesser alert.
            self._conn.execute(
                "UPDATE alerts SET acknowledged_by = NULL, acknowledged_at = NULL, reminders_sent = 0 "
                "WHERE alert_id = ?",
                (item.alert_id,),
            )
        if item.event in PAGING_EVENTS:
            self._conn.execute(
                "UPDATE alerts SET notified_at = ?, notified_ts = ? WHERE alert_id = ?",
                (to_iso(created_at), _ts(created_at), item.alert_id),
            )

    def alert_record(self, alert_id: str) -> AlertRecord | None:
        sql = f"SELECT {_RECORD_COLUMNS} FROM alerts WHERE alert_id = ?"  # noqa: S608 (constant columns)
        row = self._conn.execute(sql, (alert_id,)).fetchone()
        return None if row is None else _record_from_row(row)

    def record_ack(self, alert_id: str, request: AckRequest) -> None:
        self._conn.execute(
            "UPDATE alerts SET acknowledged_by = ?, acknowledged_at = ? WHERE alert_id = ?",
            (request.by, to_iso(request.at), alert_id),
        )

    def record_reminder(self, alert_id: str) -> None:
        self._conn.execute(
            "UPDATE alerts SET reminders_sent = reminders_sent + 1 WHERE alert_id = ?", (alert_id,)
        )

    def reminder_candidates(
        self, severities: Iterable[str], max_reminders: int, notified_before: datetime | None
    ) -> list[AlertRecord]:
        wanted = sorted(severities)
        marks = ", ".join("?" for _ in wanted)
        sql = (
            f"SELECT {_RECORD_COLUMNS} FROM alerts WHERE state = 'open' "  # noqa: S608 (constants, '?' marks)
            f"AND acknowledged_at IS NULL AND notified_ts IS NOT NULL AND reminders_sent < ? "
            f"AND severity IN ({marks})"
        )
        args: list[Any] = [max_reminders, *wanted]
        if notified_before is not None:
            sql += " AND notified_ts <= ?"
            args.append(_ts(notified_before))
        rows = self._conn.execute(sql + " ORDER BY notified_ts, alert_id", args).fetchall()
        return [_record_from_row(r) for r in rows]

    def put_schedule(self, row: ScheduleRow) -> None:
        p = row.patient
        self._conn.execute(
            "INSERT OR REPLACE INTO monitoring (patient, order_id, patient_id, patient_id_type, "
            "patient_authority, start, last_panel, due, fires_at, fires_ts, fired_due, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                p.key, row.order_id, p.id, p.id_type, p.authority, to_iso(row.start), to_iso(row.last_panel),
                to_iso(row.due), to_iso(row.fires_at), _ts(row.fires_at), to_iso(row.fired_due), row.state,
            ),
        )

    def patient_schedules(self, patient: PatientKey) -> list[ScheduleRow]:
        rows = self._conn.execute(
            f"SELECT {_SCHEDULE_COLUMNS} FROM monitoring WHERE patient = ? ORDER BY order_id",  # noqa: S608
            (patient.key,),
        ).fetchall()
        return [_schedule_from_row(r) for r in rows]

    def due_schedules(self, fires_before: datetime | None) -> list[ScheduleRow]:
        sql = (
            f"SELECT {_SCHEDULE_COLUMNS} FROM monitoring WHERE state = 'active' "  # noqa: S608
            "AND (fired_due IS NULL OR fired_due != due)"
        )
        args: list[Any] = []
        if fires_before is not None:
            sql += " AND fires_ts <= ?"
            args.append(_ts(fires_before))
        rows = self._conn.execute(sql + " ORDER BY fires_ts, patient, order_id", args).fetchall()
        return [_schedule_from_row(r) for r in rows]

    def list_schedules(self, *, include_stopped: bool = False) -> list[ScheduleRow]:
        where = "" if include_stopped else "WHERE state != 'stopped' "
        rows = self._conn.execute(
            f"SELECT {_SCHEDULE_COLUMNS} FROM monitoring {where}ORDER BY fires_ts, patient, order_id"  # noqa: S608
        ).fetchall()
        return [_schedule_from_row(r) for r in rows]

    def audit(
        self,
        kind: str,
        alert_id: str,
        at: datetime,
        *,
        version: int | None = None,
        event: str | None = None,
        outbox_id: int | None = None,
        detail: str = "",
    ) -> None:
        self._conn.execute(
            "INSERT INTO audit (at, kind, alert_id, version, event, outbox_id, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (utc_stamp(at), kind, alert_id, version, event, outbox_id, detail),
        )

    def _audit_outbox(self, ids: Sequence[int], kind: str, at: datetime, detail: str) -> None:
        self._conn.executemany(
            "INSERT INTO audit (at, kind, alert_id, version, event, outbox_id, detail) "
            "SELECT ?, ?, alert_id, version, event, id, ? FROM outbox WHERE id = ?",
            [(utc_stamp(at), kind, detail, i) for i in ids],
        )

    def list_alerts(self, *, include_closed: bool = False, limit: int = 100) -> list[AlertRecord]:
        where = "" if include_closed else "WHERE state = 'open' "
        rows = self._conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM alerts {where}ORDER BY opened_at DESC, alert_id LIMIT ?",  # noqa: S608
            (limit,),
        ).fetchall()
        return [_record_from_row(r) for r in rows]

    def audit_trail(self, alert_id: str) -> list[AuditRow]:
        rows = self._conn.execute(
            "SELECT id, at, kind, alert_id, version, event, outbox_id, detail FROM audit "
            "WHERE alert_id = ? ORDER BY id",
            (alert_id,),
        ).fetchall()
        return [
            AuditRow(id=r[0], at=r[1], kind=r[2], alert_id=r[3], version=r[4], event=r[5], outbox_id=r[6],
                     detail=r[7])
            for r in rows
        ]


_SCHEDULE_COLUMNS = (
    "patient_id, patient_id_type, patient_authority, order_id, start, last_panel, due, fires_at, "
    "fired_due, state"
)


def _schedule_from_row(r: Sequence[Any]) -> ScheduleRow:
    def when(text: str) -> datetime:
        value = from_iso(text)
        assert value is not None
        return value

    return ScheduleRow(
        patient=PatientKey(id=r[0], id_type=r[1], authority=r[2]),
        order_id=r[3],
        start=when(r[4]),
        last_panel=from_iso(r[5]),
        due=when(r[6]),
        fires_at=when(r[7]),
        fired_due=from_iso(r[8]),
        state=r[9],
    )


def _order_from_row(row: Sequence[Any]) -> OrderState:
    holds = tuple(
        HoldPeriod(start=start, end=from_iso(end))
        for s, end in json.loads(row[6])
        if (start := from_iso(s)) is not None
    )
    return OrderState(
        order_id=row[0],
        ingredient=row[1],
        drug_text=row[2],
        dose=row[3],
        start=from_iso(row[4]),
        stop=from_iso(row[5]),
        holds=holds,
    )


def _observation_from_row(r: Sequence[Any]) -> Observation:
    observed = from_iso(r[14])
    assert observed is not None
    return Observation(
        analyte=r[0],
        code=r[1],
        code_system=r[2],
        text=r[3],
        value_type=r[4],
        value_text=r[5],
        value=r[6],
        comparator=r[7],
        unit=r[8],
        ref_low=r[9],
        ref_high=r[10],
        ref_text=r[11],
        flag=r[12],
        status=ResultStatus(r[13]),
        observed_at=observed,
        specimen_id=r[15],
        set_id=r[16],
    )


# What `_alert_from_row` reads, in its order: the same list as `open_alerts`
# selects. Keep the two in step (tests/test_audit.py compares them).
# What `_alert_from_row` reads, in its order.
_ALERT_COLUMNS = (
    "alert_id, patient_id, patient_id_type, patient_authority, rule, episode, state, severity, version, "
    "opened_at, evidence_at, rests_on, evidence_key, payload"
)
_RECORD_COLUMNS = f"acknowledged_by, acknowledged_at, notified_at, reminders_sent, payload, {_ALERT_COLUMNS}"


def _record_from_row(r: Sequence[Any]) -> AlertRecord:
    return AlertRecord(
        alert=_alert_from_row(r[5:]),
        tracking=Tracking(
            acknowledged_by=r[0],
            acknowledged_at=from_iso(r[1]),
            notified_at=from_iso(r[2]),
            reminders_sent=r[3],
        ),
        payload=json.loads(r[4]),
    )


def _alert_from_row(r: Sequence[Any]) -> Alert:
    opened, evidence = from_iso(r[9]), from_iso(r[10])
    assert opened is not None
    assert evidence is not None
    return Alert(
        alert_id=r[0],
        patient=PatientKey(id=r[1], id_type=r[2], authority=r[3]),
        rule=r[4],
        episode=r[5],
        state=AlertState(r[6]),
        severity=Severity(r[7]),
        version=r[8],
        opened_at=opened,
        evidence_at=evidence,
        rests_on=tuple(a for a in r[11].split(",") if a) if len(r) > 11 else (),
        evidence_key=r[12] if len(r) > 12 else "",
        title=str(json.loads(r[13]).get("title", "")) if len(r) > 13 else "",
    )


# ---------------------------------------------------------------------------
# SQLite store


@dataclass(slots=True)
class _Job:
    unit: Callable[[Any], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    write: bool


_STOP = object()


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # the awaiter went away (cancelled); the work is done regardless
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _resolve_all(
    outcomes: list[tuple[_Job, Any, BaseException | None]], outbox_event: asyncio.Event | None
) -> None:
    for job, result, error in outcomes:
        _resolve(job.future, result, error)
    if outbox_event is not None:
        outbox_event.set()


class SqliteStore:
    """`Store` on one SQLite file, one writer thread, grouped commits."""

    def __init__(self, path: Path, *, max_batch: int = 512) -> None:
        self.path = path
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._outbox_event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        # Called on the writer thread with the seconds from BEGIN to a durable
        # COMMIT of each batch that wrote; must be cheap and thread-safe.
        self.commit_observer: Callable[[float], None] | None = None

    @classmethod
    async def open(cls, path: Path | str, *, max_batch: int = 512) -> SqliteStore:
        """Open (creating and migrating as needed) and start the writer."""
        store = cls(Path(path), max_batch=max_batch)
        store._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = store._loop.create_future()
        store._thread = threading.Thread(target=store._run, args=(ready,), name="store-writer", daemon=True)
        store._thread.start()
        await ready
        return store

    def outbox_signal(self) -> asyncio.Event:
        return self._outbox_event

    async def transact(self, unit: Callable[[Transaction], T]) -> T:
        return await self._submit(unit, write=True)

    async def read(self, unit: Callable[[Transaction], T]) -> T:
        """Run a read-only unit on the writer's connection (no commit needed)."""
        return await self._submit(unit, write=False)

    async def pending_outbox(self, limit: int, *, after_id: int = 0) -> list[OutboxRow]:
        def unit(tx: Transaction) -> list[OutboxRow]:
            assert isinstance(tx, _SqliteTransaction)
            rows = tx._conn.execute(
                "SELECT id, alert_id, version, event, topic, payload, created_at FROM outbox "
                "WHERE delivered_at IS NULL AND id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
            return [
                OutboxRow(
                    id=r[0],
                    alert_id=r[1],
                    version=r[2],
                    event=r[3],
                    topic=r[4],
                    payload=r[5],
                    created_at=r[6],
                )
                for r in rows
            ]

        return await self.read(unit)

    async def mark_delivered(self, ids: Sequence[int], at: datetime) -> None:
        def unit(tx: Transaction) -> None:
            assert isinstance(tx, _SqliteTransaction)
            tx._conn.executemany(
                "UPDATE outbox SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
                [(to_iso(at), i) for i in ids],
            )
            tx._audit_outbox(ids, "delivered", at, "")

        await self.transact(unit)

    async def outbox_backlog(self) -> OutboxBacklog:
        def unit(tx: Transaction) -> OutboxBacklog:
            assert isinstance(tx, _SqliteTransaction)
            depth, oldest_id = tx._conn.execute(
                "SELECT count(*), min(id) FROM outbox WHERE delivered_at IS NULL"
            ).fetchone()
            oldest = None
            if oldest_id is not None:
                row = tx._conn.execute("SELECT created_at FROM outbox WHERE id = ?", (oldest_id,)).fetchone()
                oldest = from_iso(row[0])
            return OutboxBacklog(depth=depth, oldest_created_at=oldest)

        return await self.read(unit)

    async def probe_write(self, at: datetime) -> None:
        """Write (and commit) one row: proves the store takes writes now."""

        def unit(tx: Transaction) -> None:
            assert isinstance(tx, _SqliteTransaction)
            tx._conn.execute(
                "INSERT INTO health_probe (id, at) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (to_iso(at),),
            )

        await self.transact(unit)

    async def last_run(self, task: str) -> datetime | None:
        """When the periodic ``task`` last ran (`mark_run`), if ever."""

        def unit(tx: Transaction) -> datetime | None:
            assert isinstance(tx, _SqliteTransaction)
            row = tx._conn.execute("SELECT last_run FROM maintenance WHERE task = ?", (task,)).fetchone()
            return None if row is None else from_iso(row[0])

        return await self.read(unit)

    async def mark_run(self, task: str, at: datetime) -> None:
        def unit(tx: Transaction) -> None:
            assert isinstance(tx, _SqliteTransaction)
            tx._conn.execute(
                "INSERT INTO maintenance (task, last_run) VALUES (?, ?) "
                "ON CONFLICT (task) DO UPDATE SET last_run = excluded.last_run",
                (task, to_iso(at)),
            )

        await self.transact(unit)

    async def prune(self, before: datetime, *, chunk: int = 500) -> Pruned:
        """Retention: remove what is older than ``before``.

        Observations observed before it; rejected messages and messages
        received before it. A message that an order or a kept observation
        still references stays (foreign keys hold) but loses its raw bytes.
        TPMT and NUDT15 results, orders, alerts, the outbox and every audit
        table are never touched.
        Work goes in chunks, each its own transaction, so messages arriving
        meanwhile are not held up behind one long delete.
        """
        cutoff_ts = before.timestamp()
        cutoff = to_iso(before)

        def run(sql: str, params: tuple[Any, ...]) -> Callable[[Transaction], int]:
            def unit(tx: Transaction) -> int:
                assert isinstance(tx, _SqliteTransaction)
                return tx._conn.execute(sql, params).rowcount

            return unit

        async def repeat(sql: str, params: tuple[Any, ...]) -> int:
            total = 0
            while True:
                n = await self.transact(run(sql, (*params, chunk)))
                total += n
                if n < chunk:
                    return total

        observations = await repeat(
            # Genotypes do not expire: a TPMT/NUDT15 result is what stands
            # between a poor metabolizer's next order and a full dose.
            "DELETE FROM observations WHERE id IN (SELECT id FROM observations WHERE observed_ts < ? "
            "AND coalesce(analyte, '') NOT IN ('TPMT', 'NUDT15') ORDER BY observed_ts LIMIT ?)",
            (cutoff_ts,),
        )
        old = "julianday(m.received_at) < julianday(?)"
        referenced = (
            "(EXISTS (SELECT 1 FROM observations o WHERE o.message_id = m.id) "
            "OR EXISTS (SELECT 1 FROM orders r WHERE r.message_id = m.id))"
        )
        messages = await repeat(
            f"DELETE FROM messages WHERE id IN (SELECT m.id FROM messages m WHERE {old} "  # noqa: S608
            f"AND NOT {referenced} ORDER BY m.id LIMIT ?)",
            (cutoff,),
        )
        raw_cleared = await repeat(
            f"UPDATE messages SET raw = X'' WHERE id IN (SELECT m.id FROM messages m WHERE {old} "  # noqa: S608
            f"AND length(m.raw) > 0 AND {referenced} ORDER BY m.id LIMIT ?)",
            (cutoff,),
        )
        rejected = await repeat(
            "DELETE FROM rejected_messages WHERE id IN (SELECT id FROM rejected_messages "
            "WHERE julianday(received_at) < julianday(?) ORDER BY id LIMIT ?)",
            (cutoff,),
        )
        return Pruned(
            observations=observations, messages=messages, raw_cleared=raw_cleared, rejected_messages=rejected
        )

    async def record_delivery(self, ids: Sequence[int], kind: str, at: datetime, detail: str = "") -> None:
        def unit(tx: Transaction) -> None:
            assert isinstance(tx, _SqliteTransaction)
            tx._audit_outbox(ids, kind, at, detail)

        await self.transact(unit)

    async def list_schedules(self, *, include_stopped: bool = False) -> list[ScheduleRow]:
        """Liver-test schedules, earliest alert time first (stopped ones only when asked)."""

        def unit(tx: Transaction) -> list[ScheduleRow]:
            assert isinstance(tx, _SqliteTransaction)
            return tx.list_schedules(include_stopped=include_stopped)

        return await self.read(unit)

    async def list_alerts(self, *, include_closed: bool = False, limit: int = 100) -> list[AlertRecord]:
        """Alerts, newest first (open ones only unless ``include_closed``)."""

        def unit(tx: Transaction) -> list[AlertRecord]:
            assert isinstance(tx, _SqliteTransaction)
            return tx.list_alerts(include_closed=include_closed, limit=limit)

        return await self.read(unit)

    async def alert_detail(self, alert_id: str) -> tuple[AlertRecord, list[AuditRow]] | None:
        """One alert and its audit trail, oldest line first."""

        def unit(tx: Transaction) -> tuple[AlertRecord, list[AuditRow]] | None:
            assert isinstance(tx, _SqliteTransaction)
            record = tx.alert_record(alert_id)
            return None if record is None else (record, tx.audit_trail(alert_id))

        return await self.read(unit)

    async def close(self) -> None:
        if self._thread is None:
            return
        self._jobs.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def _submit(self, unit: Callable[[Transaction], T], *, write: bool) -> T:
        if self._thread is None or self._loop is None:
            raise StoreError("store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(unit=unit, future=future, loop=self._loop, write=write))
        return await future

    # -- writer thread -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            self._conn = self._connect()
            _migrate(self._conn)
            tx = _SqliteTransaction(self._conn)
        except BaseException as exc:
            loop.call_soon_threadsafe(
                _resolve, ready, None, exc if isinstance(exc, StoreError) else StoreError(str(exc))
            )
            self._thread = None
            return
        loop.call_soon_threadsafe(_resolve, ready, None, None)
        conn = self._conn
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is _STOP:
                break
            batch: list[_Job] = [first]  # type: ignore[list-item]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)  # type: ignore[arg-type]
            try:
                self._run_batch(conn, tx, batch)
            except Exception as exc:
                # Never let the writer thread die: every later message would
                # wait forever for a commit and its sender for an ACK.
                log.exception("store_batch_crashed")
                tx.batch_rolled_back()
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                self._fail_all(batch, exc)
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, tx: _SqliteTransaction, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        tx.enqueued = 0
        started = time.perf_counter()
        tx.batch_rolled_back()
        try:
            conn.execute("BEGIN IMMEDIATE")
            tx.refresh_if_changed()
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._fail_all(batch, exc)
            return
        for job in batch:
            try:
                conn.execute("SAVEPOINT unit")
            except sqlite3.Error as exc:
                outcomes.append((job, None, StoreError(str(exc))))
                continue
            try:
                result = job.unit(tx)
            except Exception as exc:
                tx.unit_rolled_back()
                failure = StoreError(str(exc)) if isinstance(exc, sqlite3.Error) else exc
                try:
                    conn.execute("ROLLBACK TO unit")
                    conn.execute("RELEASE unit")
                except sqlite3.Error as rollback_exc:
                    # SQLite already rolled the whole transaction back (disk
                    # full, I/O error): nothing of this batch will commit, so
                    # every unit in it fails and is answered AR.
                    log.error("store_savepoint_lost", error=str(rollback_exc))
                    tx.batch_rolled_back()
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    self._fail_all(batch, rollback_exc)
                    return
                outcomes.append((job, None, failure))
            else:
                conn.execute("RELEASE unit")
                tx.unit_released()
                outcomes.append((job, result, None))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            tx.batch_rolled_back()
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("store_rollback_failed")
            self._fail_all(batch, exc)
            return
        observer = self.commit_observer
        if observer is not None and any(job.write for job in batch):
            observer(time.perf_counter() - started)
        tx.batch_committed()
        # One wake-up of the event loop per batch, not one per unit: each
        # call_soon_threadsafe writes to the loop's self-pipe.
        outbox_event = self._outbox_event if tx.enqueued else None
        batch[0].loop.call_soon_threadsafe(_resolve_all, outcomes, outbox_event)

    @staticmethod
    def _fail_all(batch: Iterable[_Job], exc: BaseException) -> None:
        log.error("store_commit_failed", error=str(exc))
        for job in batch:
            job.loop.call_soon_threadsafe(_resolve, job.future, None, StoreError(str(exc)))
