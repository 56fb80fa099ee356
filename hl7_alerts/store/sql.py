"""The SQL both backends share: the unit of work's transaction and the writer.

`SqlTransaction` is every `Transaction` query, written once in the SQL that
SQLite and PostgreSQL both speak (``?`` marks; the PostgreSQL subclass turns
them into ``%s``). What differs (the ordered-ingredients index, locks
between daemons, claiming outbox rows, a hint or a date function) is a hook
the dialect overrides.

`BatchingStore` is the writer both use: one thread, one connection, units
queued while a commit is in progress run together and commit together
(group commit), each inside its own SAVEPOINT so one failing unit rolls back
alone. A unit's awaiter is answered only after the COMMIT that covers it has
returned: that is what makes ACK-after-commit true. A unit that would have
to wait for another daemon's lock while its batch holds locks (`LockBusy`)
is rolled back to its savepoint and run again alone, after the batch commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from hl7_alerts.alerts import AckRequest, Alert, AlertEvent
from hl7_alerts.model import (
    AckCode,
    Header,
    Observation,
    OrderState,
    PastAlert,
    PatientKey,
)
from hl7_alerts.store.base import (
    _ALERT_COLUMNS,
    _RECORD_COLUMNS,
    _SCHEDULE_COLUMNS,
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
    StoreError,
    Transaction,
    _alert_from_row,
    _observation_from_row,
    _order_from_row,
    _record_from_row,
    _schedule_from_row,
    log,
)
from hl7_alerts.terminology import Analyte
from hl7_alerts.timeutil import from_iso, to_iso, utc_stamp

T = TypeVar("T")


# What `_observation_from_row` reads, in its order.
OBSERVATION_COLUMNS = (
    "analyte, code, code_system, text, value_type, value_text, value, comparator, unit, "
    "ref_low, ref_high, ref_text, flag, status, observed_at, specimen_id, set_id"
)


def _ts(value: datetime) -> float:
    return value.timestamp()


# The columns a new observation row fills, and each one's PostgreSQL type.
_OBSERVATION_TYPES = (
    ("message_id", "bigint"), ("patient", "text"), ("analyte", "text"), ("code", "text"),
    ("code_system", "text"), ("text", "text"), ("value_type", "text"), ("value_text", "text"),
    ("value", "float8"), ("comparator", "text"), ("unit", "text"), ("ref_low", "float8"),
    ("ref_high", "float8"), ("ref_text", "text"), ("flag", "text"), ("status", "text"),
    ("observed_at", "text"), ("observed_ts", "float8"), ("specimen_id", "text"), ("set_id", "text"),
)
_OBSERVATION_INSERT = ", ".join(name for name, _ in _OBSERVATION_TYPES)


def _observation_rows(
    message_id: int, patient: PatientKey, observations: Sequence[Observation]
) -> list[tuple[Any, ...]]:
    """New observation rows, in `_OBSERVATION_TYPES` order."""
    return [
        (
            message_id, patient.key, o.analyte, o.code, o.code_system, o.text, o.value_type, o.value_text,
            o.value, o.comparator, o.unit, o.ref_low, o.ref_high, o.ref_text, o.flag, str(o.status),
            to_iso(o.observed_at), _ts(o.observed_at), o.specimen_id, o.set_id,
        )
        for o in observations
    ]


class SqlTransaction:
    """`Transaction` over one DB-API connection (writer thread only)."""

    # SQLite picks the per-analyte index only when told; PostgreSQL's planner
    # needs no hint (and has no syntax for one).
    _ANALYTE_INDEX: ClassVar[str] = ""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.enqueued = 0

    # -- dialect hooks ---------------------------------------------------------

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute one statement; return its cursor."""
        return self._conn.execute(sql, params)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def batch_begun(self, *, alone: bool) -> None:
        """A transaction has begun; ``alone``: it runs one deferred unit."""

    def unit_begun(self, *, first: bool) -> None:
        """A unit is about to run; ``first``: nothing ran before it in this transaction."""

    def unit_released(self) -> None:
        """The unit's savepoint was released (its work stays in the batch)."""

    def unit_rolled_back(self) -> None:
        """The unit was rolled back to its savepoint."""

    def batch_committed(self) -> None:
        """The COMMIT covering the batch has returned."""

    def batch_rolled_back(self) -> None:
        """Nothing of the batch will commit."""

    def lock(self, *, message: DedupKey | None = None, patients: Iterable[PatientKey] = ()) -> None:
        """One writer has nothing to serialize with (see `Transaction.lock`)."""

    def try_timers(self) -> bool:
        return True

    def ordered_ingredients(self, patient: PatientKey) -> frozenset[str]:
        rows = self._x(
            "SELECT DISTINCT ingredient FROM orders WHERE patient = ? AND ingredient IS NOT NULL",
            (patient.key,),
        ).fetchall()
        return frozenset(r[0] for r in rows)

    def pending_outbox(self, limit: int, after_id: int) -> list[OutboxRow]:
        """Undelivered rows above ``after_id``, oldest first (one publisher: no claims)."""
        rows = self._x(
            "SELECT id, alert_id, version, event, topic, payload, created_at FROM outbox "
            "WHERE delivered_at IS NULL AND id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [_outbox_row(r) for r in rows]

    def release_outbox(self) -> None:
        """One publisher holds no claims."""

    # -- queries -----------------------------------------------------------------

    def find_messages(self, key: DedupKey) -> list[PriorAck]:
        rows = self._x(
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
        cursor = self._x(
            "INSERT INTO messages (sending_application, sending_facility, control_id, message_type, "
            "version, received_at, digest, raw, ack_code, ack_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
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
        row = cursor.fetchone()
        assert row is not None
        return int(row[0])

    def insert_rejected(
        self,
        header: Header | None,
        raw: bytes,
        *,
        received_at: datetime,
        ack_code: AckCode,
        reason: str,
    ) -> None:
        self._x(
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
        self._many(
            f"INSERT INTO observations ({_OBSERVATION_INSERT}) "  # noqa: S608 (constants)
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _observation_rows(message_id, patient, observations),
        )

    def get_order(self, patient: PatientKey, order_id: str) -> OrderState | None:
        row = self._x(
            "SELECT order_id, ingredient, drug_text, dose, start, stop, holds FROM orders "
            "WHERE patient = ? AND order_id = ?",
            (patient.key, order_id),
        ).fetchone()
        return None if row is None else _order_from_row(row)

    def put_order(self, patient: PatientKey, order: OrderState, message_id: int) -> None:
        holds = json.dumps([[to_iso(h.start), to_iso(h.end)] for h in order.holds])
        self._x(
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
        rows = self._x(
            "SELECT order_id, ingredient, drug_text, dose, start, stop, holds FROM orders WHERE patient = ? "
            "ORDER BY start",
            (patient.key,),
        ).fetchall()
        return tuple(_order_from_row(r) for r in rows)

    def patient_history(
        self, patient: PatientKey, since: datetime | None, *, analytes: Sequence[str] | None = None
    ) -> tuple[Observation, ...]:
        sql = (
            f"SELECT {OBSERVATION_COLUMNS} FROM observations WHERE patient = ? AND superseded = 0"  # noqa: S608
        )
        params: list[Any] = [patient.key]
        if since is not None:
            sql += " AND observed_ts >= ?"
            params.append(_ts(since))
        if analytes is not None:
            sql += f" AND analyte IN ({', '.join('?' for _ in analytes)})"
            params.extend(analytes)
        rows = self._x(sql + " ORDER BY observed_ts, id", params).fetchall()
        return tuple(_observation_from_row(r) for r in rows)

    def latest_results(
        self, patient: PatientKey, before: datetime, since: datetime | None
    ) -> tuple[Observation, ...]:
        # One indexed probe per analyte: a long history costs nothing here.
        rows = []
        for analyte in Analyte:
            row = self._x(
                f"SELECT {OBSERVATION_COLUMNS} FROM observations {self._ANALYTE_INDEX} "  # noqa: S608 (constants)
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
            cursor = self._x(
                "UPDATE observations SET superseded = 1 WHERE patient = ? AND code = ? AND specimen_id = ? "
                "AND observed_ts = ? AND superseded = 0",
                (patient.key, o.code, o.specimen_id, _ts(o.observed_at)),
            )
            count += cursor.rowcount
        return count

    def alert_history(self, patient: PatientKey) -> tuple[PastAlert, ...]:
        rows = self._x(
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
                r[0] for r in self._x(f"SELECT DISTINCT patient FROM {table}")  # noqa: S608
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
        self._x("UPDATE observations SET patient = ? WHERE patient = ?", (new, old))
        # The surviving record's own version of an order wins over the prior's.
        self._x(
            "UPDATE orders SET patient = ? WHERE patient = ? AND NOT EXISTS "
            "(SELECT 1 FROM orders s WHERE s.patient = ? AND s.order_id = orders.order_id)",
            (new, old, new),
        )
        self._x("DELETE FROM orders WHERE patient = ?", (old,))
        self._x(
            "UPDATE monitoring SET patient = ?, patient_id = ?, patient_id_type = ?, "
            "patient_authority = ? WHERE patient = ? AND NOT EXISTS "
            "(SELECT 1 FROM monitoring s WHERE s.patient = ? AND s.order_id = monitoring.order_id)",
            (new, surviving.id, surviving.id_type, surviving.authority, old, new),
        )
        self._x("DELETE FROM monitoring WHERE patient = ?", (old,))
        open_rules = {
            r[0] for r in self._x(
                "SELECT rule FROM alerts WHERE patient = ? AND state = 'open'", (new,)
            )
        }
        next_episode = dict(
            self._x(
                "SELECT rule, max(episode) FROM alerts WHERE patient = ? GROUP BY rule", (new,)
            )
        )
        moved = self._x(
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
            self._x(
                "UPDATE alerts SET patient = ?, patient_id = ?, patient_id_type = ?, patient_authority = ?, "
                "episode = ?, state = ? WHERE alert_id = ?",
                (new, surviving.id, surviving.id_type, surviving.authority, episode, state, alert_id),
            )
        self._x("UPDATE outbox SET patient = ? WHERE patient = ?", (new, old))
        return folded

    def open_alerts(self, patient: PatientKey) -> dict[str, Alert]:
        rows = self._x(
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE patient = ? AND state = 'open'",  # noqa: S608
            (patient.key,),
        ).fetchall()
        return {r[4]: _alert_from_row(r) for r in rows}

    def next_episodes(self, patient: PatientKey) -> dict[str, int]:
        rows = self._x(
            "SELECT rule, max(episode) FROM alerts WHERE patient = ? GROUP BY rule", (patient.key,)
        ).fetchall()
        return {rule: episode + 1 for rule, episode in rows}

    def save_alert(self, alert: Alert, payload: dict[str, Any]) -> None:
        self._x(
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
        cursor = self._x(
            "INSERT INTO outbox (alert_id, version, event, topic, payload, patient, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
            outbox_id=int(cursor.fetchone()[0]), detail=item.topic,
        )
        if item.event == AlertEvent.ESCALATED:
            # Severity rose: the earlier acknowledgement was for a lesser alert.
            self._x(
                "UPDATE alerts SET acknowledged_by = NULL, acknowledged_at = NULL, reminders_sent = 0 "
                "WHERE alert_id = ?",
                (item.alert_id,),
            )
        if item.event in PAGING_EVENTS:
            self._x(
                "UPDATE alerts SET notified_at = ?, notified_ts = ? WHERE alert_id = ?",
                (to_iso(created_at), _ts(created_at), item.alert_id),
            )

    def alert_record(self, alert_id: str) -> AlertRecord | None:
        sql = f"SELECT {_RECORD_COLUMNS} FROM alerts WHERE alert_id = ?"  # noqa: S608 (constant columns)
        row = self._x(sql, (alert_id,)).fetchone()
        return None if row is None else _record_from_row(row)

    def record_ack(self, alert_id: str, request: AckRequest) -> None:
        self._x(
            "UPDATE alerts SET acknowledged_by = ?, acknowledged_at = ? WHERE alert_id = ?",
            (request.by, to_iso(request.at), alert_id),
        )

    def record_reminder(self, alert_id: str) -> None:
        self._x(
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
        rows = self._x(sql + " ORDER BY notified_ts, alert_id", args).fetchall()
        return [_record_from_row(r) for r in rows]

    def put_schedule(self, row: ScheduleRow) -> None:
        p = row.patient
        self._x(
            "INSERT INTO monitoring (patient, order_id, patient_id, patient_id_type, "
            "patient_authority, start, last_panel, due, fires_at, fires_ts, fired_due, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (patient, order_id) DO UPDATE SET "
            "patient_id = excluded.patient_id, patient_id_type = excluded.patient_id_type, "
            "patient_authority = excluded.patient_authority, start = excluded.start, "
            "last_panel = excluded.last_panel, due = excluded.due, fires_at = excluded.fires_at, "
            "fires_ts = excluded.fires_ts, fired_due = excluded.fired_due, state = excluded.state",
            (
                p.key, row.order_id, p.id, p.id_type, p.authority, to_iso(row.start), to_iso(row.last_panel),
                to_iso(row.due), to_iso(row.fires_at), _ts(row.fires_at), to_iso(row.fired_due), row.state,
            ),
        )

    def patient_schedules(self, patient: PatientKey) -> list[ScheduleRow]:
        rows = self._x(
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
        rows = self._x(sql + " ORDER BY fires_ts, patient, order_id", args).fetchall()
        return [_schedule_from_row(r) for r in rows]

    def list_schedules(self, *, include_stopped: bool = False) -> list[ScheduleRow]:
        where = "" if include_stopped else "WHERE state != 'stopped' "
        rows = self._x(
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
        self._x(
            "INSERT INTO audit (at, kind, alert_id, version, event, outbox_id, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (utc_stamp(at), kind, alert_id, version, event, outbox_id, detail),
        )

    def _audit_outbox(self, ids: Sequence[int], kind: str, at: datetime, detail: str) -> None:
        self._many(
            "INSERT INTO audit (at, kind, alert_id, version, event, outbox_id, detail) "
            "SELECT ?, ?, alert_id, version, event, id, ? FROM outbox WHERE id = ?",
            [(utc_stamp(at), kind, detail, i) for i in ids],
        )

    def list_alerts(self, *, include_closed: bool = False, limit: int = 100) -> list[AlertRecord]:
        where = "" if include_closed else "WHERE state = 'open' "
        rows = self._x(
            f"SELECT {_RECORD_COLUMNS} FROM alerts {where}ORDER BY opened_at DESC, alert_id LIMIT ?",  # noqa: S608
            (limit,),
        ).fetchall()
        return [_record_from_row(r) for r in rows]

    def audit_trail(self, alert_id: str) -> list[AuditRow]:
        rows = self._x(
            "SELECT id, at, kind, alert_id, version, event, outbox_id, detail FROM audit "
            "WHERE alert_id = ? ORDER BY id",
            (alert_id,),
        ).fetchall()
        return [
            AuditRow(id=r[0], at=r[1], kind=r[2], alert_id=r[3], version=r[4], event=r[5], outbox_id=r[6],
                     detail=r[7])
            for r in rows
        ]




def _outbox_row(r: Sequence[Any]) -> OutboxRow:
    return OutboxRow(
        id=r[0], alert_id=r[1], version=r[2], event=r[3], topic=r[4], payload=r[5], created_at=r[6]
    )


# ---------------------------------------------------------------------------
# The writer


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


class BatchingStore(ABC):
    """`Store` with writer threads and grouped commits; a dialect supplies
    the connection (`_connect`, `_in_transaction`) and its errors.

    SQLite has one writer (it has one write lock). PostgreSQL may have
    several, each its own connection taking batches from the same queue: a
    writer spends most of its time waiting for the server, and the locks that
    keep several daemons apart keep a daemon's writers apart just as well.
    Messages on one MLLP connection still go one at a time (the next is read
    only once the previous one is answered)."""

    # The driver's errors: a unit failing with one of these is the store's
    # failure (StoreError, AR upstream), not a defect of ours.
    _DB_ERRORS: ClassVar[tuple[type[Exception], ...]] = ()
    _BEGIN: ClassVar[str] = "BEGIN"
    # "column is before the parameter", both ISO 8601 texts, as a date.
    _EARLIER: ClassVar[str] = "{col} < ?"
    # Release each unit's savepoint once it succeeded. Not releasing nests the
    # next unit's savepoint inside it, which is as correct ("ROLLBACK TO unit"
    # goes back to the newest of that name) and saves a round trip a unit.
    _RELEASE_UNITS: ClassVar[bool] = True
    # Several publishers share the outbox: taking rows is a claim (a write).
    _CLAIMS: ClassVar[bool] = False

    def __init__(self, *, max_batch: int = 512, writers: int = 1) -> None:
        self._max_batch = max_batch
        self._writers = writers
        self._threads: list[threading.Thread] = []
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._outbox_event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commit_observer: Callable[[float], None] | None = None

    async def _start(self) -> None:
        """Connect (creating and migrating as needed) and start the writers,
        one after the other: the first one migrates."""
        self._loop = asyncio.get_running_loop()
        for number in range(self._writers):
            ready: asyncio.Future[None] = self._loop.create_future()
            name = "store-writer" if number == 0 else f"store-writer-{number + 1}"
            thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
            thread.start()
            try:
                await ready
            except BaseException:
                await self.close()
                raise
            self._threads.append(thread)

    # -- dialect hooks ---------------------------------------------------------

    @abstractmethod
    def _connect(self) -> SqlTransaction:
        """Open the connection, migrate, and return the transaction object."""

    def _reconnect_if_broken(self, tx: SqlTransaction) -> SqlTransaction:
        """Before a batch: a connection the server dropped is replaced."""
        return tx

    @abstractmethod
    def _in_transaction(self, tx: SqlTransaction) -> bool:
        """Whether the connection is inside a transaction (to roll back)."""

    def _close_connection(self, tx: SqlTransaction) -> None:
        tx._conn.close()

    def _committed(self, cursor: Any) -> bool:
        """Whether the COMMIT statement committed (SQLite raises when not)."""
        return True

    def _contended(self, exc: BaseException) -> bool:
        """A unit's error that means "another daemon got in the way" (a
        deadlock the server broke): the unit is run again alone."""
        return False

    # -- the Store interface -----------------------------------------------------

    def outbox_signal(self) -> asyncio.Event:
        return self._outbox_event

    async def transact(self, unit: Callable[[Transaction], T]) -> T:
        return await self._submit(unit, write=True)

    async def read(self, unit: Callable[[Transaction], T]) -> T:
        """Run a read-only unit on the writer's connection (no commit needed)."""
        return await self._submit(unit, write=False)

    async def pending_outbox(self, limit: int, *, after_id: int = 0) -> list[OutboxRow]:
        def unit(tx: Transaction) -> list[OutboxRow]:
            return _sql(tx).pending_outbox(limit, after_id)

        return await (self.transact(unit) if self._CLAIMS else self.read(unit))

    async def release_outbox(self) -> None:
        if self._CLAIMS:
            await self.transact(lambda tx: _sql(tx).release_outbox())

    async def mark_delivered(self, ids: Sequence[int], at: datetime) -> None:
        def unit(tx: Transaction) -> None:
            sql = _sql(tx)
            sql._many(
                "UPDATE outbox SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
                [(to_iso(at), i) for i in ids],
            )
            sql._audit_outbox(ids, "delivered", at, "")

        await self.transact(unit)

    async def outbox_backlog(self) -> OutboxBacklog:
        def unit(tx: Transaction) -> OutboxBacklog:
            sql = _sql(tx)
            depth, oldest_id = sql._x(
                "SELECT count(*), min(id) FROM outbox WHERE delivered_at IS NULL"
            ).fetchone()
            oldest = None
            if oldest_id is not None:
                row = sql._x("SELECT created_at FROM outbox WHERE id = ?", (oldest_id,)).fetchone()
                oldest = from_iso(row[0])
            return OutboxBacklog(depth=depth, oldest_created_at=oldest)

        return await self.read(unit)

    async def probe_write(self, at: datetime) -> None:
        """Write (and commit) one row: proves the store takes writes now."""

        def unit(tx: Transaction) -> None:
            _sql(tx)._x(
                "INSERT INTO health_probe (id, at) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (to_iso(at),),
            )

        await self.transact(unit)

    async def last_run(self, task: str) -> datetime | None:
        """When the periodic ``task`` last ran (`mark_run`), if ever."""

        def unit(tx: Transaction) -> datetime | None:
            row = _sql(tx)._x("SELECT last_run FROM maintenance WHERE task = ?", (task,)).fetchone()
            return None if row is None else from_iso(row[0])

        return await self.read(unit)

    async def mark_run(self, task: str, at: datetime) -> None:
        def unit(tx: Transaction) -> None:
            _sql(tx)._x(
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
                return int(_sql(tx)._x(sql, params).rowcount)

            return unit

        async def repeat(sql: str, params: tuple[Any, ...]) -> int:
            total = 0
            while True:
                n = await self.transact(run(sql, (*params, chunk)))
                total += n
                if n < chunk:
                    return total

        earlier = self._EARLIER
        observations = await repeat(
            # Genotypes do not expire: a TPMT/NUDT15 result is what stands
            # between a poor metabolizer's next order and a full dose.
            "DELETE FROM observations WHERE id IN (SELECT id FROM observations WHERE observed_ts < ? "
            "AND coalesce(analyte, '') NOT IN ('TPMT', 'NUDT15') ORDER BY observed_ts LIMIT ?)",
            (cutoff_ts,),
        )
        old = earlier.format(col="m.received_at")
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
            f"UPDATE messages SET raw = ? WHERE id IN (SELECT m.id FROM messages m WHERE {old} "  # noqa: S608
            f"AND length(m.raw) > 0 AND {referenced} ORDER BY m.id LIMIT ?)",
            (b"", cutoff),
        )
        rejected = await repeat(
            f"DELETE FROM rejected_messages WHERE id IN (SELECT id FROM rejected_messages "  # noqa: S608
            f"WHERE {earlier.format(col='received_at')} ORDER BY id LIMIT ?)",
            (cutoff,),
        )
        return Pruned(
            observations=observations, messages=messages, raw_cleared=raw_cleared, rejected_messages=rejected
        )

    async def record_delivery(self, ids: Sequence[int], kind: str, at: datetime, detail: str = "") -> None:
        await self.transact(lambda tx: _sql(tx)._audit_outbox(ids, kind, at, detail))

    async def list_schedules(self, *, include_stopped: bool = False) -> list[ScheduleRow]:
        """Liver-test schedules, earliest alert time first (stopped ones only when asked)."""
        return await self.read(lambda tx: _sql(tx).list_schedules(include_stopped=include_stopped))

    async def list_alerts(self, *, include_closed: bool = False, limit: int = 100) -> list[AlertRecord]:
        """Alerts, newest first (open ones only unless ``include_closed``)."""
        return await self.read(lambda tx: _sql(tx).list_alerts(include_closed=include_closed, limit=limit))

    async def alert_detail(self, alert_id: str) -> tuple[AlertRecord, list[AuditRow]] | None:
        """One alert and its audit trail, oldest line first."""

        def unit(tx: Transaction) -> tuple[AlertRecord, list[AuditRow]] | None:
            record = tx.alert_record(alert_id)
            return None if record is None else (record, _sql(tx).audit_trail(alert_id))

        return await self.read(unit)

    async def close(self) -> None:
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(_STOP)  # each writer takes one and ends
        for thread in threads:
            await asyncio.to_thread(thread.join)

    async def _submit(self, unit: Callable[[Transaction], T], *, write: bool) -> T:
        if not self._threads or self._loop is None:
            raise StoreError("store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(unit=unit, future=future, loop=self._loop, write=write))
        return await future

    # -- writer thread -------------------------------------------------------

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            tx = self._connect()
        except BaseException as exc:
            loop.call_soon_threadsafe(
                _resolve, ready, None, exc if isinstance(exc, StoreError) else StoreError(str(exc))
            )
            return
        loop.call_soon_threadsafe(_resolve, ready, None, None)
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
                tx = self._reconnect_if_broken(tx)
            except Exception as exc:
                self._fail_all(batch, exc)
                continue
            deferred = self._guarded_batch(tx, batch, alone=False)
            # A deferred unit runs alone: first in its transaction, it may
            # wait for the other daemon's lock without risking a deadlock.
            for job in deferred:
                for again in self._guarded_batch(tx, [job], alone=True):
                    self._fail_all([again], StoreError("lock contention persisted; try again"))
        with contextlib.suppress(Exception):
            self._close_connection(tx)

    def _guarded_batch(self, tx: SqlTransaction, batch: list[_Job], *, alone: bool) -> list[_Job]:
        try:
            return self._run_batch(tx, batch, alone=alone)
        except Exception as exc:
            # Never let the writer thread die: every later message would
            # wait forever for a commit and its sender for an ACK.
            log.exception("store_batch_crashed")
            self._abandon(tx, batch, exc)
            return []

    def _abandon(self, tx: SqlTransaction, batch: list[_Job], exc: BaseException) -> None:
        """Nothing of this batch will commit: roll back what is left of its
        transaction and answer every unit in it with a StoreError."""
        tx.batch_rolled_back()
        if self._in_transaction(tx):
            with contextlib.suppress(Exception):
                tx._x("ROLLBACK")
        self._fail_all(batch, exc)

    def _run_batch(self, tx: SqlTransaction, batch: list[_Job], *, alone: bool = False) -> list[_Job]:
        """Run and commit one batch; return the units deferred for contention."""
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        deferred: list[_Job] = []
        tx.enqueued = 0
        started = time.perf_counter()
        tx.batch_rolled_back()
        try:
            tx._x(self._BEGIN)
            tx.batch_begun(alone=alone)
        except self._DB_ERRORS as exc:
            self._abandon(tx, batch, exc)
            return []
        first = True
        for job in batch:
            try:
                tx._x("SAVEPOINT unit")
            except self._DB_ERRORS as exc:
                # PostgreSQL aborts the whole transaction on a failed
                # statement, this one included: nothing of the batch may be
                # answered as committed.
                log.error("store_savepoint_failed", error=str(exc))
                self._abandon(tx, batch, exc)
                return []
            tx.unit_begun(first=first)
            try:
                result = job.unit(tx)
            except Exception as exc:
                tx.unit_rolled_back()
                failure = StoreError(str(exc)) if isinstance(exc, self._DB_ERRORS) else exc
                try:
                    tx._x("ROLLBACK TO unit")
                    if self._RELEASE_UNITS:
                        tx._x("RELEASE unit")
                except self._DB_ERRORS as rollback_exc:
                    # The server already rolled the whole transaction back
                    # (disk full, I/O error, connection lost): nothing of this
                    # batch will commit, so every unit in it fails (AR).
                    log.error("store_savepoint_lost", error=str(rollback_exc))
                    self._abandon(tx, batch, rollback_exc)
                    return []
                if not alone and (isinstance(exc, LockBusy) or self._contended(exc)):
                    deferred.append(job)
                    continue
                outcomes.append((job, None, failure))
            else:
                if self._RELEASE_UNITS:
                    tx._x("RELEASE unit")
                tx.unit_released()
                outcomes.append((job, result, None))
                first = False
        commit_failures: tuple[type[Exception], ...] = (StoreError, *self._DB_ERRORS)
        try:
            if not self._committed(tx._x("COMMIT")):
                # The server ended an aborted transaction with a ROLLBACK: an
                # error went unseen. Nothing may be answered as committed.
                raise StoreError("the transaction was rolled back at COMMIT")
        except commit_failures as exc:
            tx.batch_rolled_back()
            try:
                tx._x("ROLLBACK")
            except self._DB_ERRORS:
                log.exception("store_rollback_failed")
            self._fail_all(batch, exc)
            return []
        observer = self.commit_observer
        if observer is not None and any(job.write for job in batch):
            observer(time.perf_counter() - started)
        tx.batch_committed()
        # One wake-up of the event loop per batch, not one per unit: each
        # call_soon_threadsafe writes to the loop's self-pipe.
        outbox_event = self._outbox_event if tx.enqueued else None
        if outcomes:
            batch[0].loop.call_soon_threadsafe(_resolve_all, outcomes, outbox_event)
        return deferred

    @staticmethod
    def _fail_all(batch: Iterable[_Job], exc: BaseException) -> None:
        log.error("store_commit_failed", error=str(exc))
        for job in batch:
            job.loop.call_soon_threadsafe(_resolve, job.future, None, StoreError(str(exc)))


def _sql(tx: Transaction) -> SqlTransaction:
    assert isinstance(tx, SqlTransaction)
    return tx
