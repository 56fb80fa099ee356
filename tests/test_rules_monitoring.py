"""aza.monitoring.overdue, the pure part: the seed's schedule as a table, both
sides of every boundary (phase changes at day 30 and day 90, grace periods),
and how order events move a schedule (`transition`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from hl7_alerts.model import OrderControl, Severity
from hl7_alerts.rules.ids import MONITORING_OVERDUE
from hl7_alerts.rules.monitoring import (
    MonitoringSettings,
    ScheduleState,
    next_due,
    overdue_finding,
    transition,
)
from tests.support.rulekit import order

START = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
S = MonitoringSettings()
D = timedelta(days=1)
EPS = timedelta(seconds=1)


def day(n: float) -> datetime:
    return START + n * D


# (id, last panel, phase, due, alert time)
SCHEDULE = [
    ("no-panel-yet", None, "weekly", day(7), day(9)),
    ("panel-before-start-ignored", day(-3), "weekly", day(7), day(9)),
    ("panel-at-start", day(0), "weekly", day(7), day(9)),
    ("day-7-panel", day(7), "weekly", day(14), day(16)),
    ("last-second-of-month-1", day(30) - EPS, "weekly", day(37) - EPS, day(39) - EPS),
    ("month-2-begins", day(30), "twice_monthly", day(44), day(47)),
    ("last-second-of-month-3", day(90) - EPS, "twice_monthly", day(104) - EPS, day(107) - EPS),
    ("monthly-begins", day(90), "monthly", day(120), day(127)),
    ("a-year-on", day(365), "monthly", day(395), day(402)),
]


@pytest.mark.parametrize(("last", "phase", "due", "fires"), [c[1:] for c in SCHEDULE],
                         ids=[c[0] for c in SCHEDULE])
def test_next_due_follows_the_seed_schedule(
    last: datetime | None, phase: str, due: datetime, fires: datetime
) -> None:
    d = next_due(START, last, S)
    assert (d.phase, d.due, d.fires_at) == (phase, due, fires)


# (id, last panel, now, overdue?)
GRACE = [
    ("weekly-due-not-overdue", None, day(7), False),
    ("weekly-last-second-of-grace", None, day(9) - EPS, False),
    ("weekly-grace-over", None, day(9), True),
    ("twice-monthly-last-second-of-grace", day(30), day(47) - EPS, False),
    ("twice-monthly-grace-over", day(30), day(47), True),
    ("monthly-last-second-of-grace", day(90), day(127) - EPS, False),
    ("monthly-grace-over", day(90), day(127), True),
]


@pytest.mark.parametrize(("last", "now", "overdue"), [c[1:] for c in GRACE], ids=[c[0] for c in GRACE])
def test_overdue_only_after_the_grace_period(last: datetime | None, now: datetime, overdue: bool) -> None:
    assert next_due(START, last, S).overdue(now) is overdue


def test_settings_change_the_schedule() -> None:
    tight = MonitoringSettings(weekly_interval=timedelta(days=3), weekly_grace=timedelta(hours=12))
    d = next_due(START, None, tight)
    assert (d.due, d.fires_at) == (day(3), day(3.5))


def test_the_finding_is_a_warning_with_the_catalog_recommendation() -> None:
    o = order(start=START)
    f = overdue_finding(o, next_due(START, None, S))
    assert f.rule == MONITORING_OVERDUE == "aza.monitoring.overdue"
    assert f.severity is Severity.WARNING
    assert f.recommendations == ("Order ALT, AST, ALP, GGT, bilirubin",)
    assert f.occurred_at == day(7)
    assert f.order == o
    assert "start of the order" in f.summary
    later = overdue_finding(o, next_due(START, day(7), S))
    assert "last liver panel" in later.summary


def test_the_finding_says_when_the_last_panel_was_and_names_the_drug() -> None:
    """Issue 19 item 10: not "No liver panel since the last liver panel"."""
    later = overdue_finding(order(start=START), next_due(START, day(7), S))
    assert later.summary == (f"The last liver panel was on {day(7).date()}; "
                             f"the next was due {day(14).date()} (weekly schedule)")
    assert later.title == "Azathioprine monitoring overdue: liver tests"
    mp = overdue_finding(replace(order(start=START), ingredient="mercaptopurine"), next_due(START, None, S))
    assert mp.title == "Mercaptopurine monitoring overdue: liver tests"
    assert "azathioprine" not in (mp.title + mp.summary).lower()
    assert not any("shared/" in r or "CLINICAL" in r for r in later.references)


@pytest.mark.parametrize(("seen_after", "due_after"), [
    (timedelta(days=90), timedelta(days=7)),  # at the end of months 2-3: the schedule runs from the start
    (timedelta(days=90, seconds=1), timedelta(days=120, seconds=1)),  # later: monthly from first seen
], ids=["seen-90-days-after-start", "seen-later"])
def test_an_order_first_seen_late_is_monthly_from_then(seen_after: timedelta, due_after: timedelta) -> None:
    d = next_due(START, None, S, first_seen=START + seen_after)
    assert d.due - START == due_after


ACTIVE, PAUSED, STOPPED = ScheduleState.ACTIVE, ScheduleState.PAUSED, ScheduleState.STOPPED
C = OrderControl

# (id, state before, order event, order on hold after it, state to record or None)
TRANSITIONS = [
    ("nw-starts", None, C.NEW, False, ACTIVE),
    ("nw-of-a-held-order-starts-paused", None, C.NEW, True, PAUSED),
    ("resent-nw-keeps-active", ACTIVE, C.NEW, False, ACTIVE),
    ("resent-nw-keeps-a-hold", PAUSED, C.NEW, True, PAUSED),
    ("hd-pauses", ACTIVE, C.HOLD, True, PAUSED),
    ("hd-without-a-time-opens-no-hold", ACTIVE, C.HOLD, False, ACTIVE),
    ("rl-resumes", PAUSED, C.RELEASE, False, ACTIVE),
    ("xo-keeps-active", ACTIVE, C.CHANGE, False, ACTIVE),
    ("sc-keeps-paused", PAUSED, C.STATUS_CHANGED, True, PAUSED),
    ("first-seen-mid-stream-on-hold", None, C.HOLD, True, PAUSED),
    ("first-seen-mid-stream-xo", None, C.CHANGE, False, ACTIVE),
    ("dc-stops-active", ACTIVE, C.DISCONTINUE, False, STOPPED),
    ("od-stops-paused", PAUSED, C.DISCONTINUED, True, STOPPED),
    ("ca-stops", ACTIVE, C.CANCEL, False, STOPPED),
    ("oc-stops", ACTIVE, C.CANCELLED, False, STOPPED),
    ("stop-of-an-unscheduled-order-starts-nothing", None, C.DISCONTINUE, False, None),
    ("stopped-again-records-nothing", STOPPED, C.DISCONTINUE, False, None),
    ("stopped-is-final-nw", STOPPED, C.NEW, False, None),
    ("stopped-is-final-rl", STOPPED, C.RELEASE, False, None),
]


@pytest.mark.parametrize(("state", "control", "on_hold", "expected"), [c[1:] for c in TRANSITIONS],
                         ids=[c[0] for c in TRANSITIONS])
def test_order_events_move_the_schedule(
    state: ScheduleState | None, control: OrderControl, on_hold: bool, expected: ScheduleState | None
) -> None:
    assert transition(state, control, on_hold=on_hold) is expected


def test_schedule_states_keep_their_stored_text() -> None:
    assert [str(s) for s in ScheduleState] == ["active", "paused", "stopped"]
