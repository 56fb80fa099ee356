"""`aza.monitoring.overdue`: when a thiopurine order's next liver panel is due.

Pure. The seed's schedule counts from the order's start (a new NW order is a
start or a reintroduction: each order has its own schedule): a liver panel
weekly while the time since start is under ``weekly_until`` (month 1), every
``twice_monthly_interval`` while under ``twice_monthly_until`` (months 2-3),
then every ``monthly_interval``. The next panel is due one interval after the
reference time (the latest liver panel observed after the start, else the
start), with the interval of the phase the reference falls in; the alert
fires when the due time plus that phase's grace period has passed without a
panel. A *liver panel* is any result for one of ``liver_analytes`` (ALT or
AST by default): what the rest of the panel holds does not matter. How an
order's events move its schedule between active, paused and stopped is
`transition`, a pure function of the state and the event.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from hl7_alerts.model import OrderControl, OrderState, Severity
from hl7_alerts.orders import STOPPING
from hl7_alerts.rules.advice import SEED
from hl7_alerts.rules.common import Finding
from hl7_alerts.rules.ids import MONITORING_OVERDUE
from hl7_alerts.terminology import Analyte

RECOMMENDATION = "Order ALT, AST, ALP, GGT, bilirubin"
REFERENCE = f"Liver enzymes weekly for the first month, twice monthly in months 2-3, then monthly: {SEED}"


class ScheduleState(enum.StrEnum):
    """Where an order's liver-test schedule stands."""

    ACTIVE = "active"
    PAUSED = "paused"  # the order is on hold
    STOPPED = "stopped"


def transition(state: ScheduleState | None, control: OrderControl, *, on_hold: bool) -> ScheduleState | None:
    """The schedule state to record after one event of a thiopurine order, or
    None when there is nothing to record.

    ``state`` is the schedule's state before the event (None: the order has
    no schedule yet); ``on_hold`` says whether the order is on hold after the
    event (HD opens a hold, RL closes it, see `orders.apply_event`). A stop
    (DC, OD, CA, OC) stops a schedule, and starts none. Any other event (NW;
    XO, SC, HD or RL of an order first seen mid-stream) starts one if there
    is none; from then on the schedule is paused while the order is on hold
    and active otherwise. Stopped is final: no later event revives it.
    """
    if state is ScheduleState.STOPPED:
        return None
    if control in STOPPING:
        return None if state is None else ScheduleState.STOPPED
    return ScheduleState.PAUSED if on_hold else ScheduleState.ACTIVE


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitoringSettings:
    """The schedule (config.yaml `rules.monitoring`)."""

    enabled: bool = True
    weekly_until: timedelta = timedelta(days=30)
    weekly_interval: timedelta = timedelta(days=7)
    weekly_grace: timedelta = timedelta(days=2)
    twice_monthly_until: timedelta = timedelta(days=90)
    twice_monthly_interval: timedelta = timedelta(days=14)
    twice_monthly_grace: timedelta = timedelta(days=3)
    monthly_interval: timedelta = timedelta(days=30)
    monthly_grace: timedelta = timedelta(days=7)
    liver_analytes: frozenset[str] = frozenset({Analyte.ALT.value, Analyte.AST.value})


@dataclass(frozen=True, slots=True, kw_only=True)
class Due:
    """When the next liver panel is due, and when missing it raises the alert."""

    phase: str
    """``weekly``, ``twice_monthly`` or ``monthly``: the phase of the reference time."""
    reference: datetime
    due: datetime
    fires_at: datetime
    first_seen: bool = False
    """The reference is when a long-running order was first seen, not a panel."""

    def overdue(self, now: datetime) -> bool:
        """Overdue once the grace period after the due time has passed."""
        return now >= self.fires_at


def next_due(
    start: datetime,
    last_panel: datetime | None,
    settings: MonitoringSettings,
    first_seen: datetime | None = None,
) -> Due:
    """The schedule of an order started at ``start`` whose latest liver panel
    was observed at ``last_panel`` (None, or before the start: none yet).
    An order first seen (``first_seen``) after the twice-monthly phase was
    over (long-running therapy at go-live, a feed joined mid-stream) is on
    the monthly schedule from when it was first seen, not overdue since
    years before (CLINICAL.md's overdue row)."""
    reference = last_panel if last_panel is not None and last_panel > start else start
    seen_late = first_seen is not None and first_seen - start > settings.twice_monthly_until
    if first_seen is not None and seen_late and first_seen > reference:
        reference = first_seen
    else:
        seen_late = False
    elapsed = reference - start
    if elapsed < settings.weekly_until:
        phase, interval, grace = "weekly", settings.weekly_interval, settings.weekly_grace
    elif elapsed < settings.twice_monthly_until:
        phase, interval, grace = (
            "twice_monthly", settings.twice_monthly_interval, settings.twice_monthly_grace
        )
    else:
        phase, interval, grace = "monthly", settings.monthly_interval, settings.monthly_grace
    due = reference + interval
    return Due(phase=phase, reference=reference, due=due, fires_at=due + grace, first_seen=seen_late)


def overdue_finding(order: OrderState, due: Due) -> Finding:
    """The alert for an order whose liver panel is overdue (severity warning;
    nothing time-driven raises it further, decision 5): when the last panel
    was, and when this one was due."""
    drug = order.ingredient or "thiopurine"
    when = due.due.date().isoformat()
    phase = due.phase.replace("_", "-")
    reference = due.reference.date().isoformat()
    if due.first_seen:
        since = f"No liver panel since the order was first seen on {reference}"
    elif order.start is not None and due.reference == order.start:
        since = f"No liver panel since the start of the order on {reference}"
    else:
        since = f"The last liver panel was on {reference}"
    return Finding(
        rule=MONITORING_OVERDUE,
        severity=Severity.WARNING,
        title=f"{drug.capitalize()} monitoring overdue: liver tests",
        summary=f"{since}; the next was due {when} ({phase} schedule)",
        evidence=(),
        order=order,
        recommendations=(RECOMMENDATION,),
        references=(REFERENCE,),
        occurred_at=due.due,
    )
