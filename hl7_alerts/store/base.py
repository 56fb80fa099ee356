"""The store's interface: what a unit of work may do, what a backend offers.

Every backend (SQLite, the embedded default; PostgreSQL, for sites running
several daemons) implements `Store` and hands units of work a `Transaction`.
Callers never see SQL: they pass a plain function of a `Transaction`, the
store runs it inside its write transaction and answers once that is durable.
This module holds the contract and the values that cross it: `rows.py` maps
them to and from rows, `queries.py` is every query (one transaction class),
`writer.py` runs units of work with grouped commits, and `sqlite.py` and
`postgres.py` are the two dialects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from hl7_alerts.alerts import AckRequest, Alert, AlertEvent, Tracking
from hl7_alerts.model import AckCode, Header, Observation, OrderState, PastAlert, PatientKey
from hl7_alerts.rules.monitoring import ScheduleState

T = TypeVar("T")


class StoreError(Exception):
    """The store could not do what was asked (disk full, locked, corrupt).

    Transient from the sender's point of view: answer AR so it resends.
    """


# SQLSTATE classes whose primary message may quote the data that failed
# (22: "invalid input syntax for type double precision: \"...\"").
_QUOTING_SQLSTATE_CLASSES = ("22",)


def describe_db_error(exc: BaseException) -> str:
    """A database error as a log line may show it: what failed and where,
    never the data. PostgreSQL's full message adds DETAIL lines that quote
    rows and keys (``Key (patient)=(H0001) already exists``), and data
    errors quote the value in the message itself: only the SQLSTATE, the
    primary message (except for data errors) and the table, column and
    constraint names are kept. SQLite's messages name columns, never values,
    as do psycopg's own (client-side) errors and the operating system's. Any
    other exception (a defect in a unit of work) is named by its type only:
    its message may quote anything."""
    name = type(exc).__name__
    module = type(exc).__module__
    if isinstance(exc, StoreError | OSError) or module == "sqlite3":
        return str(exc).strip() or name
    if not module.startswith("psycopg"):
        return f"{name} (message withheld)"
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    if not isinstance(sqlstate, str) or diag is None:
        return str(exc).strip() or name
    parts = [f"{name} (SQLSTATE {sqlstate})"]
    primary = getattr(diag, "message_primary", None)
    if primary and not sqlstate.startswith(_QUOTING_SQLSTATE_CLASSES):
        parts.append(str(primary))
    for label in ("table_name", "column_name", "constraint_name"):
        where = getattr(diag, label, None)
        if where:
            parts.append(f"{label.removesuffix('_name')} {where}")
    return ": ".join(parts[:2]) + "".join(f", {p}" for p in parts[2:])


class SchemaTooNewError(StoreError):
    """The database was written by a newer hl7-alerts; refuse to touch it."""


class LockBusy(Exception):
    """Another daemon holds a lock this unit needs, and waiting for it while
    this transaction holds others could deadlock. The runner rolls the unit
    back to its savepoint and runs it again in a transaction of its own,
    where it may wait. Never escapes the store."""


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
    """An alert event to publish, as a unit of work queues it.

    ``quiet`` (a reason) marks an event that is recorded but never published
    (`PipelineSettings.quiet`): it is audited with the reason, gets no outbox
    row, and does not start the reminder clock."""

    alert_id: str
    version: int
    event: AlertEvent
    topic: str
    payload: str
    patient: str
    quiet: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRow:
    """A queued alert event, as the publisher reads it back."""

    id: int
    alert_id: str
    version: int
    event: AlertEvent
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

    ``fired_due`` is the due time an overdue alert was last raised for, so the
    timer raises one alert per due time however often it runs or restarts."""

    patient: PatientKey
    order_id: str
    start: datetime
    last_panel: datetime | None
    due: datetime
    fires_at: datetime
    fired_due: datetime | None
    state: ScheduleState
    first_seen: datetime | None = None
    """When the order was first seen (its first message): a long-running order
    first seen late is on the monthly schedule from then."""

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


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeCount:
    """How many stored results carry one OBX-3 code, and the analyte they
    were mapped to when stored (None: no analyte; `hl7-alerts codes`)."""

    code: str
    system: str
    text: str  # one OBX-3 text seen with the code
    results: int
    analyte: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectedMessage:
    """A message answered AE/AR and kept raw, and what its last resend
    (`hl7-alerts rejected resend`) came to. ``raw`` (patient data) is read
    only for one message, never for a listing (None there)."""

    id: int
    sending_application: str | None
    sending_facility: str | None
    control_id: str | None
    received_at: str
    ack_code: str
    reason: str
    size: int
    resent_at: str | None = None
    resend_ack: str | None = None
    resend_text: str | None = None
    raw: bytes | None = field(default=None, repr=False)


# Events that page someone: they (re)start the reminder clock.
PAGING_EVENTS = frozenset({AlertEvent.FIRING, AlertEvent.UPDATED, AlertEvent.ESCALATED, AlertEvent.REMINDER})


class Transaction(Protocol):
    """What a unit of work may do inside the store's transaction."""

    def lock(self, *, message: DedupKey | None = None, patients: Iterable[PatientKey] = ()) -> None:
        """Serialize with other daemons sharing the store: hold, until this
        transaction ends, the lock of a dedup key and of patients. A unit
        takes its locks first, before it reads what they protect. One writer
        (SQLite) has nothing to serialize with: a no-op there. May raise
        `LockBusy`, which the store handles."""
        ...

    def try_timers(self) -> bool:
        """Take the timers lock if no other daemon holds it; False when one
        does (it is ticking: this tick has nothing to add). Always True with
        one writer."""
        ...

    def prior_message(self, key: DedupKey, digest: str) -> PriorAck | None:
        """The message already stored under ``key`` with this ``digest`` (a
        resend), else one stored under ``key`` with another digest (the
        sender reused the control ID), else None. At most two index probes,
        however many messages share the key."""
        ...

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
        keep_rows: int | None = None,
    ) -> int:
        """Keep a rejected frame; with ``keep_rows``, delete the oldest rows
        beyond that many. Returns how many it deleted."""
        ...

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
        self,
        patient: PatientKey,
        before: datetime,
        since: datetime | None,
        *,
        analytes: Sequence[str] | None = None,
    ) -> tuple[Observation, ...]:
        """Per analyte (every one, or only ``analytes``), the latest evaluable
        result observed before ``before`` (and at or after ``since``, when
        given): what "the previous result" and "on file" need, without
        loading the whole history. One statement."""
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

    # Called with the seconds from BEGIN to a durable COMMIT of each batch
    # that wrote; must be cheap and thread-safe.
    commit_observer: Callable[[float], None] | None

    @property
    def commit_failure(self) -> str | None:
        """Why the store failed the last batch that wrote (None: it committed,
        or nothing failed). The health probe's writes neither set nor clear it."""
        ...

    async def transact(self, unit: Callable[[Transaction], T]) -> T:
        """Run ``unit`` in a write transaction; return once it is durable."""
        ...

    async def transact_each(self, units: Sequence[Callable[[Transaction], T]]) -> list[T | Exception]:
        """Run ``units`` in the order given, each in its own savepoint (one
        that fails rolls back alone), all in one writer's transactions; return
        once every one is durable or failed, with each one's result or the
        exception that failed it. Once the store fails one (`StoreError`),
        the later ones are not run and fail with `StoreError` too: they are
        never applied out of order. A batch of messages in one frame."""
        ...

    async def read(self, unit: Callable[[Transaction], T]) -> T:
        """Run a read-only unit (no durability to wait for)."""
        ...

    async def pending_outbox(self, limit: int, *, after_id: int = 0) -> list[OutboxRow]:
        """Undelivered outbox rows for this process to publish, oldest first:
        those with ids above ``after_id`` (the ones at or below it are in
        flight). Where several daemons share the store, the rows are claimed
        for this one under a lease, a patient's rows by one daemon at a time."""
        ...

    async def release_outbox(self) -> None:
        """Give up this process's claims on undelivered rows (its broker
        connection ended): another daemon may publish them at once."""
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

    async def prune(
        self, before: datetime, *, rejected_before: datetime | None = None, chunk: int = 500
    ) -> Pruned:
        """Retention: remove messages and observations older than ``before``,
        and rejected messages older than ``rejected_before`` (default
        ``before``)."""
        ...

    async def last_run(self, task: str) -> datetime | None: ...

    async def mark_run(self, task: str, at: datetime) -> None: ...

    async def list_schedules(self, *, include_stopped: bool = False) -> list[ScheduleRow]:
        """Liver-test schedules, earliest alert time first (stopped ones only when asked)."""
        ...

    async def list_alerts(self, *, include_closed: bool = False, limit: int = 100) -> list[AlertRecord]:
        """Alerts, newest first (open ones only unless ``include_closed``)."""
        ...

    async def alert_detail(self, alert_id: str) -> tuple[AlertRecord, list[AuditRow]] | None:
        """One alert and its audit trail, oldest line first."""
        ...

    async def code_counts(self) -> list[CodeCount]:
        """Stored results per OBX-3 (code, system) and the analyte they were
        mapped to, most results first."""
        ...

    async def list_rejected(self, *, limit: int = 100) -> list[RejectedMessage]:
        """Rejected messages, newest first, without their raw bytes."""
        ...

    async def rejected_message(self, rejected_id: int) -> RejectedMessage | None:
        """One rejected message with its raw bytes."""
        ...

    async def record_resend(self, rejected_id: int, at: datetime, ack_code: str, text: str) -> None:
        """What resending a rejected message came to (the ACK code it got and why)."""
        ...

    async def close(self) -> None: ...


# -- the web view's values (`web.py` has their queries) ---------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertFilter:
    """Which alerts a list shows: by severity, rule and acknowledgement
    (None: any), open ones only unless ``include_closed``."""

    severity: str | None = None
    rule: str | None = None
    acknowledged: bool | None = None
    include_closed: bool = False
    limit: int = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRow:
    """One event of an alert as it went out: its outbox row, and whether (and
    when) the broker confirmed it."""

    outbox_id: int
    version: int
    event: AlertEvent
    created_at: str
    delivered_at: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientAlert:
    """An alert of a patient, as the trend chart marks it."""

    alert_id: str
    rule: str
    severity: str
    state: str
    opened_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRow:
    """One line of the web view's access audit: who looked at (or did) what,
    when and from where. Append-only, like `audit`."""

    id: int
    at: str
    username: str
    via: str
    peer: str
    action: str
    alert_id: str | None
    patient: str | None
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSession:
    """A signed-in browser: the hash of its cookie's token (the token itself
    is never stored), whose it is, how they signed in, its CSRF token."""

    token_hash: str
    username: str
    via: str
    csrf: str
    created_ts: float
    seen_ts: float
