"""The unit of work for one message, run inside the store's transaction.

Reads as the list of stages DESIGN.md draws: dedup on (MSH-3, MSH-4, MSH-10)
→ raw message → orders or observations → rules → alert reconciliation →
outbox rows (`outbox.enqueue_change`). Orders and results also keep the
liver-test schedules (`overdue`), and a merge announces the alerts it folded
(`lifecycle.announce_folded`), in the same unit. Everything it touches goes
through the `store.Transaction` it is given, so the whole message commits or
none of it does; what it returns is what the ACK will say. No SQL, no
asyncio, no clock: the caller passes time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog

from hl7_alerts import dispenses
from hl7_alerts.alerts import AlertChange, Source, reconcile
from hl7_alerts.lifecycle import announce_folded
from hl7_alerts.model import (
    AckCode,
    MedicationOrder,
    MergeMessage,
    Message,
    Observation,
    OrderControl,
    OrderMessage,
    OrderState,
    PatientContext,
    PatientDemographics,
    PatientKey,
    ResultMessage,
    ResultStatus,
)
from hl7_alerts.orders import apply_event
from hl7_alerts.outbox import enqueue_change
from hl7_alerts.overdue import advance_schedules, schedule_orders
from hl7_alerts.rules.engine import Finding, PanelVerdict, assess, evaluate_orders
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import DedupKey, Transaction
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
    resend) and to segment-end style: CR, LF or CRLF, with or without the
    CR before the frame's end, blank lines between segments. The canonical
    form is the segments joined by CR with one CR after the last: what a
    message written that way (most are) hashed to before this normalisation,
    so the digests already in a store still recognise their resends."""
    segments = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    text = b"\r".join(s for s in segments if s) + b"\r"
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
    prior = tx.prior_message(key, raw_digest)
    if prior is not None and prior.digest == raw_digest:
        return Outcome(ack_code=prior.ack_code, ack_text=prior.ack_text, duplicate=True)
    if prior is not None:
        # Same (MSH-3, MSH-4, MSH-10), other content: not a resend but a sender
        # reusing control IDs (counters reset, test feeds). Dropping it would
        # lose a result, so it is processed; alert identity keeps it from
        # alerting twice on the same evidence.
        log.warning("control_id_reused")
    message_id = tx.insert_message(
        key, header, raw, digest=raw_digest, received_at=received_at, ack_code=AckCode.AA, ack_text=""
    )
    if isinstance(message, OrderMessage):
        started: list[OrderState] = []
        events: list[tuple[MedicationOrder, OrderState]] = []
        for order in message.orders:
            if order.control is OrderControl.DISPENSE:
                opened = _dispense(tx, message.patient, order, message_id, settings)
                if opened is not None:
                    started.append(opened)  # counts as a new order (decision 14)
                    events.append((order, opened))
                continue
            known = _order_on_file(tx, message.patient, order.order_id)
            state = apply_event(known, order)
            tx.put_order(message.patient, state, message_id)
            events.append((order, state))
            if order.control is OrderControl.NEW and known is None:
                started.append(state)  # a resent or repeated NW is not a new order
        changes, ctx = _evaluate_orders(tx, message, started, received_at=received_at, settings=settings)
        changes += _evaluate_late(tx, message, started, ctx, received_at=received_at, settings=settings)
        changes += schedule_orders(
            tx, message, events, received_at=received_at, settings=settings,
            on_file=_on_file(ctx, started),
        )
        return Outcome(ack_code=AckCode.AA, changes=_announced(changes))
    if isinstance(message, ResultMessage):
        # A correction or cancellation replaces the stored value it names
        # before anything reads the patient's history.
        tx.supersede(message.patient, [o for o in message.observations if o.status in _REPLACING])
        tx.insert_observations(message_id, message.patient, message.observations)
        if not has_thiopurine_order(tx, message.patient, settings):
            # Every rule and every schedule needs a thiopurine order, current or past.
            return Outcome(ack_code=AckCode.AA)
        changes = _evaluate(tx, message, received_at=received_at, settings=settings)
        changes += advance_schedules(tx, message, received_at=received_at, settings=settings)
        return Outcome(ack_code=AckCode.AA, changes=_announced(changes))
    if isinstance(message, MergeMessage):
        folded = tx.merge_patient(message.prior, message.patient)
        for alert_id in folded:
            announce_folded(tx, alert_id, settings=settings, at=received_at)
        log.info("patients_merged", alerts_folded=len(folded))
    return Outcome(ack_code=AckCode.AA)


def _order_on_file(tx: Transaction, patient: PatientKey, order_id: str) -> OrderState | None:
    """The order an event is about; for one opened by dispenses, the latest
    of the orders its dispenses opened (`dispenses.current`)."""
    known = tx.get_order(patient, order_id)
    if known is not None and known.dispensed is not None:
        return dispenses.current(tx.patient_orders(patient), order_id)
    return known


def _dispense(
    tx: Transaction, patient: PatientKey, event: MedicationOrder, message_id: int, settings: PipelineSettings
) -> OrderState | None:
    """Apply one dispense (decision 14); return the order it opened, if any."""
    rules = settings.rules
    change = dispenses.apply_dispense(
        tx.patient_orders(patient),
        event,
        lapse=settings.dispense_lapse,
        watched=rules.thiopurines | rules.xanthine_oxidase_inhibitors.keys(),
    )
    for state in change.writes:
        tx.put_order(patient, state, message_id)
    return change.opened


def _announced(changes: Sequence[AlertChange]) -> tuple[AlertChange, ...]:
    """The changes that went out as events (a silent one is only stored)."""
    return tuple(c for c in changes if not c.silent)


def arrival(message: OrderMessage, received_at: datetime) -> datetime:
    """When an order message arrived, as the feed tells it: MSH-7, else our
    clock. (A replayed archive keeps its own time; a live feed stamps now.)"""
    return message.header.message_time or received_at


def _on_file(
    ctx: PatientContext | None, started: Sequence[OrderState]
) -> tuple[datetime, tuple[Observation, ...]] | None:
    """The results the order context read, and from when they are complete:
    its history holds every result since before the earliest new start."""
    starts = [o.start for o in started if o.start is not None]
    return None if ctx is None or not starts else (min(starts), ctx.history)


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
    pgx = [o for o in tx.latest_results(patient, near, None, analytes=_PGX) if o not in older]
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
    """Panel rules on a result message of a patient with a thiopurine order."""
    patient = message.patient
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
) -> tuple[list[AlertChange], PatientContext | None]:
    """Order rules (PGx on file, allopurinol) for the orders this message started.
    Results and orders that came before the thiopurine order are on file, so
    the patients skipped until then are still judged in full now. Returns the
    context too (None: no new order of a patient with a thiopurine order):
    its history covers the new orders' starts, which is all the late results
    and the liver-test schedule need."""
    if not started:
        return [], None
    patient = message.patient
    orders = tx.patient_orders(patient)
    if not any(o.ingredient in settings.rules.thiopurines for o in orders):
        return [], None
    starts = [o.start for o in started if o.start is not None] or [received_at]
    ctx = _context(tx, patient, orders, message.demographics, earliest=min(starts), settings=settings)
    findings = evaluate_orders(ctx, started, settings.rules, arrived_at=arrival(message, received_at))
    changes = _reconcile(tx, message, findings, (), {}, received_at=received_at, settings=settings, ctx=ctx)
    return changes, ctx


def _evaluate_late(
    tx: Transaction,
    message: OrderMessage,
    started: Sequence[OrderState],
    ctx: PatientContext | None,
    *,
    received_at: datetime,
    settings: PipelineSettings,
) -> list[AlertChange]:
    """Decision 18: a thiopurine order whose start precedes results already on
    file (pharmacy feeds lag) evaluates those results when it arrives, from
    its start and at most ``late_order_days`` before its arrival. The alerts
    are dated by their results. Results another order already judged find
    their alerts open (nothing new on the page: no event) or closed (history).
    ``ctx`` is the order rules' context, whose history starts before the new
    orders' starts: a new patient costs no extra query."""
    starts = [o.start for o in started if o.ingredient in settings.rules.thiopurines and o.start is not None]
    if ctx is None or not starts:
        return []
    since = max(min(starts), arrival(message, received_at) - timedelta(days=settings.rules.late_order_days))
    results = [o for o in ctx.history if o.observed_at >= since]
    if not results:
        return []
    # The order rules may have raised alerts since the context was read.
    ctx = replace(ctx, alerts=tx.alert_history(message.patient))
    assessment = assess(ctx, results, settings.rules)
    return _reconcile(
        tx, message, assessment.findings, assessment.verdicts, {}, received_at=received_at,
        settings=settings, ctx=ctx,
    )


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
        source=Source.of(message.header),
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
