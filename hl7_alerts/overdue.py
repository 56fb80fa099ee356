"""Units of work of `aza.monitoring.overdue`: the liver-test schedule of each
thiopurine order, and the alert when a panel is overdue.

Orders and results keep the schedules inside their own message's unit of
work (`schedule_orders`, `advance_schedules`, called by `pipeline.process`);
the pure parts are in `rules/monitoring.py`: due times (`next_due`) and how
an order event moves a schedule (`transition`). The scheduler's timer raises
the overdue alert in its own unit of work (`fire_overdue`), marking the row
fired for that due time in the same transaction, so a restart never raises
it twice. No SQL, no asyncio, no clock: the caller passes time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from hl7_alerts.alerts import AlertChange, Source, reconcile, resolve
from hl7_alerts.model import (
    MedicationOrder,
    Observation,
    OrderMessage,
    OrderState,
    ResultMessage,
    ResultStatus,
)
from hl7_alerts.outbox import enqueue_change
from hl7_alerts.rules.ids import MONITORING_OVERDUE
from hl7_alerts.rules.monitoring import ScheduleState, next_due, overdue_finding, transition
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import ScheduleRow, Transaction

_SCHEDULER_SOURCE = Source(control_id="", sending_application="hl7-alerts", sending_facility="")


def schedule_orders(
    tx: Transaction,
    message: OrderMessage,
    events: Sequence[tuple[MedicationOrder, OrderState]],
    *,
    received_at: datetime,
    settings: PipelineSettings,
    on_file: tuple[datetime, Sequence[Observation]] | None = None,
) -> list[AlertChange]:
    """Start, pause, resume or stop the schedule of each thiopurine order the
    message touched (`monitoring.transition`). NW starts one (a new order is
    a start or reintroduction); HD pauses it, RL resumes it; DC/OD/CA/OC stop
    it. XO/SC keep it. An overdue alert no active order still supports is
    resolved. ``on_file`` is (t, every result on file observed since t), when
    the caller has read them: a new schedule starting at or after t needs no
    query of its own."""
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
        on_hold = any(h.end is None for h in state.holds)
        new = transition(None if row is None else row.state, event.control, on_hold=on_hold)
        if new is None:
            continue
        if row is None:
            start = state.start or event.transaction_time or received_at
            first_seen = message.header.message_time or received_at
            # Results already on file count (a pharmacy feed lags the lab's).
            last = _latest_liver_panel(tx, message, start, m.liver_analytes, on_file)
            due = next_due(start, last, m, first_seen)
            row = ScheduleRow(
                patient=patient, order_id=state.order_id, start=start, last_panel=last, due=due.due,
                fires_at=due.fires_at, fired_due=None, state=new, first_seen=first_seen,
            )
        else:
            row = replace(row, state=new)
        rows[state.order_id] = row
        tx.put_schedule(row)
        touched = True
    if not touched:
        return []
    reason = "the thiopurine order was stopped or put on hold"
    return _settle_overdue(tx, message, at, settings, received_at=received_at, reason=reason)


def _latest_liver_panel(
    tx: Transaction,
    message: OrderMessage,
    start: datetime,
    analytes: frozenset[str],
    on_file: tuple[datetime, Sequence[Observation]] | None,
) -> datetime | None:
    """The latest liver panel on file observed after ``start``, if any (from
    ``on_file`` when it covers ``start``)."""
    if on_file is not None and on_file[0] <= start:
        results = on_file[1]
    else:
        results = tx.patient_history(message.patient, start, analytes=sorted(analytes))
    times = [
        o.observed_at
        for o in results
        if o.analyte in analytes and o.observed_at > start
        and o.status not in (ResultStatus.CANCELLED, ResultStatus.DELETED)
    ]
    return max(times, default=None)


def advance_schedules(
    tx: Transaction, message: ResultMessage, *, received_at: datetime, settings: PipelineSettings
) -> list[AlertChange]:
    """A liver panel (any result for a configured liver analyte, not a
    cancellation) moves the schedule of every open order on to its next due
    time and resolves an overdue alert it answers. Only patients with a
    thiopurine order have schedules: the caller skips the others."""
    m = settings.monitoring
    if not m.enabled:
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
        due = next_due(row.start, panel_at, m, row.first_seen)
        tx.put_schedule(replace(row, last_panel=panel_at, due=due.due, fires_at=due.fires_at))
        moved = True
    if not moved:
        return []
    reason = "a liver panel arrived"
    return _settle_overdue(tx, message, panel_at, settings, received_at=received_at, reason=reason)


def _settle_overdue(
    tx: Transaction,
    message: ResultMessage | OrderMessage,
    at: datetime,
    settings: PipelineSettings,
    *,
    received_at: datetime,
    reason: str,
) -> list[AlertChange]:
    """Resolve the patient's open overdue alert (as of ``at``, the panel's or
    order event's time) when no active schedule is still overdue (fired for
    its current due time), saying why."""
    alert = tx.open_alerts(message.patient).get(MONITORING_OVERDUE)
    if alert is None:
        return []
    if any(r.state is ScheduleState.ACTIVE and r.fired for r in tx.patient_schedules(message.patient)):
        return []
    change = resolve(alert, at, Source.of(message.header), reason=reason)
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
        guess = next_due(candidate.start, candidate.last_panel, m, candidate.first_seen)
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
        due = next_due(stored.start, stored.last_panel, m, stored.first_seen)
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
    times = [next_due(r.start, r.last_panel, m, r.first_seen).fires_at for r in tx.due_schedules(None)]
    return min(times, default=None)
