"""The unit of work for one message, run inside the store's transaction.

Reads as the list of stages DESIGN.md draws: dedup on (MSH-3, MSH-4, MSH-10)
→ raw message → orders or observations → rules → alert reconciliation →
outbox rows. Everything it touches goes through the `store.Transaction` it is
given, so the whole message commits or none of it does; what it returns is
what the ACK will say. No SQL, no asyncio, no clock: the caller passes time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog

from hl7_alerts.alerts import (
    AckOutcome,
    AckRequest,
    Alert,
    AlertChange,
    AlertEvent,
    AlertState,
    ReminderPolicy,
    Source,
    acknowledge,
    carried_payload,
    payload,
    reconcile,
    remind,
    reminder_due,
    resolve,
    topic,
)
from hl7_alerts.model import (
    AckCode,
    Header,
    MedicationOrder,
    MergeMessage,
    Message,
    OrderControl,
    OrderMessage,
    OrderState,
    PatientContext,
    PatientDemographics,
    PatientKey,
    ResultMessage,
    ResultStatus,
)
from hl7_alerts.orders import STOPPING, apply_event
from hl7_alerts.rules.engine import Finding, PanelVerdict, assess, evaluate_orders
from hl7_alerts.rules.ids import MONITORING_OVERDUE
from hl7_alerts.rules.monitoring import ScheduleState, next_due, overdue_finding
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import AlertRecord, DedupKey, OutboxItem, ScheduleRow, Transaction
from hl7_alerts.terminology import Analyte

log = structlog.get_logger("hl7_alerts.pipeline")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What the ACK will say, and what happened (for logs and metrics)."""

    ack_code: AckCode
    ack_text: str = ""
    duplicate: bool = False
    changes: tuple[AlertChange, ...] = ()


def digest(raw: bytes) -> str:
    """Content hash of a message, blind to MSH-7 (some engines restamp it on
    resend) and to segment-end style."""
    text = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    msh, _, rest = text.partition(b"\r")
    if msh.startswith(b"MSH") and len(msh) > 3:
        fields = msh.split(msh[3:4])
        if len(fields) > 6:
            fields[6] = b""
        msh = msh[3:4].join(fields)
    return hashlib.blake2b(msh + b"\r" + rest, digest_size=16).hexdigest()


def process(
    tx: Transaction,
    message: Message,
    raw: bytes,
    *,
    received_at: datetime,
    settings: PipelineSettings,
) -> Outcome:
    """Store one parsed message and everything it causes; return the answer."""
    header = message.header
    key = DedupKey.of(header)
    # Daemons sharing a store: one of them at a time handles this dedup key
    # and these patients, so a message sent to two of them is processed once
    # and a patient's orders, results and alerts are read as committed.
    tx.lock(message=key, patients=_patients(message))
    raw_digest = digest(raw)
    seen = tx.find_messages(key)
    for prior in seen:
        if prior.digest == raw_digest:
            return Outcome(ack_code=prior.ack_code, ack_text=prior.ack_text, duplicate=True)
    if seen:
        # Same (MSH-3, MSH-4, MSH-10), other content: not a resend but a sender
        # reusing control IDs (counters reset, test feeds). Dropping it would
        # lose a result, so it is processed; alert identity keeps it from
        # alerting twice on the same evidence.
        log.warning("control_id_reused", previous_messages=len(seen))
    message_id = tx.insert_message(
        key, header, raw, digest=raw_digest, received_at=received_at, ack_code=AckCode.AA, ack_text=""
    )
    if isinstance(message, OrderMessage):
        started: list[OrderState] = []
        events: list[tuple[MedicationOrder, OrderState]] = []
        for order in message.orders:
            known = tx.get_order(message.patient, order.order_id)
            state = apply_event(known, order)
            tx.put_order(message.patient, state, message_id)
            events.append((order, state))
            if order.control is OrderControl.NEW and known is None:
                started.append(state)  # a resent or repeated NW is not a new order
        changes = _evaluate_orders(tx, message, started, received_at=received_at, settings=settings)
        changes += schedule_orders(tx, message, events, received_at=received_at, settings=settings)
        return Outcome(ack_code=AckCode.AA, changes=tuple(changes))
    if isinstance(message, ResultMessage):
        # A correction or cancellation replaces the stored value it names
        # before anything reads the patient's history.
        tx.supersede(message.patient, [o for o in message.observations if o.status in _REPLACING])
        tx.insert_observations(message_id, message.patient, message.observations)
        changes = _evaluate(tx, message, received_at=received_at, settings=settings)
        changes += advance_schedules(tx, message, received_at=received_at, settings=settings)
        return Outcome(ack_code=AckCode.AA, changes=tuple(changes))
    if isinstance(message, MergeMessage):
        folded = tx.merge_patient(message.prior, message.patient)
        for alert_id in folded:
            _announce_folded(tx, alert_id, settings=settings, at=received_at)
        log.info("patients_merged", alerts_folded=len(folded))
    return Outcome(ack_code=AckCode.AA)


def _patients(message: Message) -> tuple[PatientKey, ...]:
    if isinstance(message, MergeMessage):
        return (message.prior, message.patient)
    if isinstance(message, ResultMessage | OrderMessage):
        return (message.patient,)
    return ()


_REPLACING = frozenset({ResultStatus.CORRECTED, ResultStatus.CANCELLED, ResultStatus.DELETED})
_PGX = (Analyte.TPMT.value, Analyte.NUDT15.value)


def _context(
    tx: Transaction,
    patient: PatientKey,
    orders: tuple[OrderState, ...],
    demographics: PatientDemographics,
    *,
    earliest: datetime,
    settings: PipelineSettings,
) -> PatientContext:
    """What the rules may know: orders, past alerts, and the results they read:
    everything from the Hy's law window before ``earliest`` on, plus the
    latest result of each analyte before that (a previous panel, within
    ``history_days``) and the latest TPMT/NUDT15 ever (a genotype does not
    expire). Loading only this keeps a long history from costing every
    message."""
    near = earliest - timedelta(hours=settings.rules.hys_law_window_hours)
    recent = tx.patient_history(patient, near)
    older = tx.latest_results(patient, near, earliest - timedelta(days=settings.history_days))
    pgx = [o for o in tx.latest_results(patient, near, None) if o.analyte in _PGX and o not in older]
    return PatientContext(
        patient=patient,
        orders=orders,
        history=(*pgx, *older, *recent),
        demographics=demographics,
        alerts=tx.alert_history(patient),
    )


def _evaluate(
    tx: Transaction, message: ResultMessage, *, received_at: datetime, settings: PipelineSettings
) -> list[AlertChange]:
    patient = message.patient
    if not has_thiopurine_order(tx, message.patient, settings):
        return []  # every rule needs a thiopurine order, current or past
    orders = tx.patient_orders(patient)
    earliest = min(o.observed_at for o in message.observations) if message.observations else received_at
    ctx = _context(tx, patient, orders, message.demographics, earliest=earliest, settings=settings)
    assessment = assess(ctx, message.observations, settings.rules)
    corrected: dict[datetime, set[str]] = {}
    for o in message.observations:
        if o.status in _REPLACING and o.analyte is not None:
            corrected.setdefault(o.observed_at, set()).add(o.analyte)
    return _reconcile(
        tx, message, assessment.findings, assessment.verdicts, corrected, received_at=received_at,
        settings=settings, ctx=ctx,
    )


def _evaluate_orders(
    tx: Transaction,
    message: OrderMessage,
    started: Sequence[OrderState],
    *,
    received_at: datetime,
    settings: PipelineSettings,
) -> list[AlertChange]:
    """Order rules (PGx on file, allopurinol) for the orders this message started.
    Results and orders that came before the thiopurine order are on file, so
    the patients skipped until then are still judged in full now."""
    if not started:
        return []
    patient = message.patient
    orders = tx.patient_orders(patient)
    if not any(o.ingredient in settings.rules.thiopurines for o in orders):
        return []
    starts = [o.start for o in started if o.start is not None] or [received_at]
    ctx = _context(tx, patient, orders, message.demographics, earliest=min(starts), settings=settings)
    findings = evaluate_orders(ctx, started, settings.rules)
    return _reconcile(tx, message, findings, (), {}, received_at=received_at, settings=settings, ctx=ctx)


def _reconcile(
    tx: Transaction,
    message: ResultMessage | OrderMessage,
    findings: Sequence[Finding],
    verdicts: Sequence[PanelVerdict],
    corrected: dict[datetime, set[str]],
    *,
    received_at: datetime,
    settings: PipelineSettings,
    ctx: PatientContext,
) -> list[AlertChange]:
    if not findings and not verdicts and not corrected:
        return []
    open_alerts = tx.open_alerts(message.patient)
    if not findings and not open_alerts:
        return []
    changes = reconcile(
        findings,
        open_alerts,
        patient=message.patient,
        source=_source(message.header),
        next_episode=tx.next_episodes(message.patient),
        verdicts=verdicts,
        corrected=corrected,
        resolved_at=_resolved_at(ctx),
    )
    for change in changes:
        enqueue_change(tx, change, message.demographics, settings=settings, at=received_at)
    return changes


def _resolved_at(ctx: PatientContext) -> dict[str, datetime]:
    """Per rule, the observation time of the panel that closed its last
    episode (withdrawn episodes are not in the context)."""
    out: dict[str, datetime] = {}
    for a in ctx.alerts:
        if not a.open and (a.rule not in out or a.evidence_at > out[a.rule]):
            out[a.rule] = a.evidence_at
    return out


def has_thiopurine_order(tx: Transaction, patient: PatientKey, settings: PipelineSettings) -> bool:
    """Whether the patient has, or had, a thiopurine order: from the store's
    in-memory index, so most results (patients on no thiopurine) cost only
    their write. Their results stay on file for rules an order triggers later."""
    return not tx.ordered_ingredients(patient).isdisjoint(settings.rules.thiopurines)


def enqueue_change(
    tx: Transaction,
    change: AlertChange,
    demographics: PatientDemographics | None,
    *,
    settings: PipelineSettings,
    at: datetime,
) -> None:
    """Persist an alert's new state and its outbox row, in the caller's transaction."""
    body = payload(change, demographics=demographics, phi=settings.phi)
    tx.save_alert(change.alert, body)
    tx.enqueue(
        OutboxItem(
            alert_id=change.alert.alert_id,
            version=change.alert.version,
            event=change.event,
            topic=topic(settings.topic_prefix, change.alert),
            payload=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
            patient=change.alert.patient.key,
        ),
        at,
    )


def _source(header: Header) -> Source:
    return Source(
        control_id=header.control_id,
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
    )


# ---------------------------------------------------------------------------
# Units of work for alert events that come without a new finding. They carry
# the alert's last payload forward (no rules re-run) and go out through the
# same outbox, so ordering, audit and retries are the same as for findings.


def acknowledge_alert(
    tx: Transaction, request: AckRequest, *, settings: PipelineSettings, at: datetime
) -> str:
    """Record a pager's acknowledgement once; return what happened
    (an `AckOutcome`, or ``unknown_alert``). Repeats change nothing."""
    record = tx.alert_record(request.alert_id)
    if record is None:
        return "unknown_alert"
    # Another daemon may be recording the same ack or changing the alert:
    # read it again under its patient's lock.
    record = _locked_record(tx, record)
    if record is None:
        return "unknown_alert"
    alert, outcome = acknowledge(record.alert, record.tracking, request)
    if alert is None:
        tx.audit("ack_ignored", request.alert_id, at, detail=str(outcome))
        return str(outcome)
    tx.record_ack(alert.alert_id, request)
    tx.audit(
        "acknowledged", alert.alert_id, at, version=alert.version, event=str(AlertEvent.ACKNOWLEDGED),
        detail=json.dumps({"by": request.by, "at": request.at.isoformat()}, ensure_ascii=False),
    )
    body = carried_payload(record.payload, alert, AlertEvent.ACKNOWLEDGED, acknowledged=request)
    _enqueue_carried(tx, record, alert, AlertEvent.ACKNOWLEDGED, body, settings=settings, at=at)
    return str(AckOutcome.ACKNOWLEDGED)


def send_reminders(
    tx: Transaction, *, policy: ReminderPolicy, settings: PipelineSettings, now: datetime
) -> list[str]:
    """Enqueue a ``reminder`` for every alert whose reminder is due at ``now``;
    return their alert ids."""
    due = tx.reminder_candidates(
        [str(s) for s in policy.severities],
        policy.max_reminders,
        now - timedelta(seconds=policy.after_seconds),
    )
    sent: list[str] = []
    for candidate in due:
        # Read again under the patient's lock: another daemon's message may
        # have resolved or acknowledged it since the candidates were read.
        record = _locked_record(tx, candidate)
        if record is None:
            continue
        alert = remind(record.alert, record.tracking, policy, now=now)
        if alert is None:
            continue
        number = record.tracking.reminders_sent + 1
        tx.record_reminder(alert.alert_id)
        body = carried_payload(
            record.payload, alert, AlertEvent.REMINDER, reminder=number, reminder_max=policy.max_reminders
        )
        _enqueue_carried(tx, record, alert, AlertEvent.REMINDER, body, settings=settings, at=now)
        sent.append(alert.alert_id)
    return sent


def _locked_record(tx: Transaction, record: AlertRecord) -> AlertRecord | None:
    """The alert as committed, read under its patient's lock. An ADT^A40
    merge committed meanwhile may have moved it to another patient: then
    that patient's lock is taken and it is read again."""
    while True:
        tx.lock(patients=[record.alert.patient])
        fresh = tx.alert_record(record.alert.alert_id)
        if fresh is None or fresh.alert.patient == record.alert.patient:
            return fresh
        record = fresh


def next_reminder(tx: Transaction, *, policy: ReminderPolicy) -> datetime | None:
    """When the earliest pending reminder falls due (None: nothing pending)."""
    candidates = tx.reminder_candidates([str(s) for s in policy.severities], policy.max_reminders, None)
    times = [t for r in candidates if (t := reminder_due(r.alert, r.tracking, policy)) is not None]
    return min(times, default=None)


def _announce_folded(tx: Transaction, alert_id: str, *, settings: PipelineSettings, at: datetime) -> None:
    """A merge closed the prior record's alert in favour of the survivor's open
    one of the same rule: pagers holding it get its ``resolved`` event, or it
    would stay firing on their screens for ever."""
    record = tx.alert_record(alert_id)
    if record is None:
        return
    alert = replace(record.alert, state=AlertState.RESOLVED, version=record.alert.version + 1)
    body = carried_payload(record.payload, alert, AlertEvent.RESOLVED)
    body["patient"] = {**body.get("patient", {}), "id": alert.patient.id, "id_type": alert.patient.id_type,
                       "authority": alert.patient.authority}
    body["summary"] = "Patient records merged (ADT^A40): continued in the surviving record's open alert"
    _enqueue_carried(tx, record, alert, AlertEvent.RESOLVED, body, settings=settings, at=at)


def _enqueue_carried(
    tx: Transaction,
    record: AlertRecord,
    alert: Alert,
    event: AlertEvent,
    body: dict[str, object],
    *,
    settings: PipelineSettings,
    at: datetime,
) -> None:
    tx.save_alert(alert, body)
    tx.enqueue(
        OutboxItem(
            alert_id=alert.alert_id,
            version=alert.version,
            event=event,
            topic=topic(settings.topic_prefix, alert),
            payload=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
            patient=record.alert.patient.key,
        ),
        at,
    )


# ---------------------------------------------------------------------------
# aza.monitoring.overdue: the liver-test schedule of each thiopurine order
# (rules/monitoring.py computes the due times). Orders and results maintain
# it inside their message's unit of work; the scheduler's timer raises the
# overdue alert in its own unit of work, marking the row fired for that due
# time in the same transaction, so a restart never raises it twice.

_SCHEDULER_SOURCE = Source(control_id="", sending_application="hl7-alerts", sending_facility="")


def schedule_orders(
    tx: Transaction,
    message: OrderMessage,
    events: Sequence[tuple[MedicationOrder, OrderState]],
    *,
    received_at: datetime,
    settings: PipelineSettings,
) -> list[AlertChange]:
    """Start, pause, resume or stop the schedule of each thiopurine order the
    message touched. NW starts one (a new order is a start or reintroduction);
    HD pauses it, RL resumes it; DC/OD/CA/OC stop it. XO/SC keep it. An
    overdue alert no active order still supports is resolved."""
    m = settings.monitoring
    if not m.enabled:
        return []
    patient = message.patient
    rows = {r.order_id: r for r in tx.patient_schedules(patient)}
    touched = False
    at = received_at
    for event, state in events:
        if state.ingredient not in settings.rules.thiopurines:
            continue
        at = max(at, event.transaction_time or received_at)
        row = rows.get(state.order_id)
        if event.control in STOPPING:
            if row is not None and row.state is not ScheduleState.STOPPED:
                rows[state.order_id] = row = replace(row, state=ScheduleState.STOPPED)
                tx.put_schedule(row)
                touched = True
            continue
        if row is None:
            start = state.start or event.transaction_time or received_at
            due = next_due(start, None, m)
            row = ScheduleRow(
                patient=patient, order_id=state.order_id, start=start, last_panel=None, due=due.due,
                fires_at=due.fires_at, fired_due=None, state=ScheduleState.ACTIVE,
            )
        if row.state is ScheduleState.STOPPED:
            continue
        held = any(h.end is None for h in state.holds)
        row = replace(row, state=ScheduleState.PAUSED if held else ScheduleState.ACTIVE)
        rows[state.order_id] = row
        tx.put_schedule(row)
        touched = True
    return _settle_overdue(tx, message, at, settings, received_at=received_at) if touched else []


def advance_schedules(
    tx: Transaction, message: ResultMessage, *, received_at: datetime, settings: PipelineSettings
) -> list[AlertChange]:
    """A liver panel (any result for a configured liver analyte, not a
    cancellation) moves the schedule of every open order on to its next due
    time and resolves an overdue alert it answers."""
    m = settings.monitoring
    if not m.enabled or not has_thiopurine_order(tx, message.patient, settings):
        return []
    times = [
        o.observed_at for o in message.observations
        if o.analyte in m.liver_analytes and o.status not in (ResultStatus.CANCELLED, ResultStatus.DELETED)
    ]
    if not times:
        return []
    panel_at = max(times)
    moved = False
    for row in tx.patient_schedules(message.patient):
        reference = row.last_panel or row.start
        if row.state is ScheduleState.STOPPED or panel_at <= reference:
            continue  # an older panel is history: the schedule counts from the latest
        due = next_due(row.start, panel_at, m)
        tx.put_schedule(replace(row, last_panel=panel_at, due=due.due, fires_at=due.fires_at))
        moved = True
    return _settle_overdue(tx, message, panel_at, settings, received_at=received_at) if moved else []


def _settle_overdue(
    tx: Transaction,
    message: ResultMessage | OrderMessage,
    at: datetime,
    settings: PipelineSettings,
    *,
    received_at: datetime,
) -> list[AlertChange]:
    """Resolve the patient's open overdue alert (as of ``at``, the panel's or
    order event's time) when no active schedule is still overdue (fired for
    its current due time)."""
    alert = tx.open_alerts(message.patient).get(MONITORING_OVERDUE)
    if alert is None:
        return []
    if any(r.state is ScheduleState.ACTIVE and r.fired for r in tx.patient_schedules(message.patient)):
        return []
    change = resolve(alert, at, _source(message.header))
    enqueue_change(tx, change, message.demographics, settings=settings, at=received_at)
    return [change]


def fire_overdue(tx: Transaction, *, settings: PipelineSettings, now: datetime) -> list[str]:
    """Raise `aza.monitoring.overdue` for every active schedule whose alert
    time has passed and that has not fired for its due time; mark each fired
    in the same transaction. Return the alert ids raised or updated.

    Due times are recomputed with the settings in force (a reload that
    shortens an interval applies at the next tick), so every pending row is
    read: one small indexed table, once per tick."""
    m = settings.monitoring
    if not m.enabled:
        return []
    raised: list[str] = []
    for candidate in tx.due_schedules(None):
        guess = next_due(candidate.start, candidate.last_panel, m)
        if (guess.due, guess.fires_at) == (candidate.due, candidate.fires_at) and not guess.overdue(now):
            continue  # nothing to write: no lock taken (most schedules, most ticks)
        # Read again under the patient's lock: another daemon may have moved
        # this schedule on (a panel) since the candidates were read.
        tx.lock(patients=[candidate.patient])
        stored = next(
            (r for r in tx.patient_schedules(candidate.patient) if r.order_id == candidate.order_id), None
        )
        if stored is None or stored.state is not ScheduleState.ACTIVE or stored.fired:
            continue
        due = next_due(stored.start, stored.last_panel, m)
        row = replace(stored, due=due.due, fires_at=due.fires_at)
        if row != stored:
            tx.put_schedule(row)
        if not due.overdue(now):
            continue
        tx.put_schedule(replace(row, fired_due=due.due))
        order = tx.get_order(row.patient, row.order_id)
        if order is None or not order.active_at(now):
            continue  # stopped or held without our seeing it: nothing to remind about
        existing = tx.open_alerts(row.patient).get(MONITORING_OVERDUE)
        changes = reconcile(
            [overdue_finding(order, due)],
            {} if existing is None else {MONITORING_OVERDUE: existing},
            patient=row.patient,
            source=replace(_SCHEDULER_SOURCE, sending_facility=row.patient.authority),
            next_episode=tx.next_episodes(row.patient),
        )
        for change in changes:
            enqueue_change(tx, change, None, settings=settings, at=now)
            raised.append(change.alert.alert_id)
    return raised


def next_overdue(tx: Transaction, *, settings: PipelineSettings) -> datetime | None:
    """When the earliest unfired schedule raises its alert, with the settings
    in force (None: none pending)."""
    m = settings.monitoring
    if not m.enabled:
        return None
    times = [next_due(r.start, r.last_panel, m).fires_at for r in tx.due_schedules(None)]
    return min(times, default=None)
