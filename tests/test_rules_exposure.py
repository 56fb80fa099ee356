"""Exposure and follow-up (CLINICAL.md decisions 3, 9 and 16; issue 19 items
1 and 3) as tables: who is judged when, both sides of each boundary, and
what the page says about a held or stopped drug."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hl7_alerts.model import OrderStatus, Severity
from hl7_alerts.rules.common import RuleSettings
from hl7_alerts.rules.engine import assess, evaluate
from hl7_alerts.rules.exposure import exposure
from hl7_alerts.terminology import Analyte
from tests.support.rulekit import T0, context, obs, order, past

A = Analyte
S = Severity
D = timedelta(days=1)
SEC = timedelta(seconds=1)
SETTINGS = RuleSettings()

STOP, HYS, CHOL, MILD = "aza.hepatotoxicity.stop", "aza.hys_law", "aza.cholestasis", "aza.liver.mild"
SYN, MYELO, HYPERBILI = "aza.synthetic_function", "aza.myelosuppression", "aza.hyperbilirubinemia"


def stopped(before: timedelta, *alerts: object) -> tuple:
    """An order stopped ``before`` T0 (started long before), with ``alerts``."""
    return (order(start=T0 - 400 * D, stop=T0 - before),), tuple(alerts)


ALT_5X = [obs(A.ALT, 280, ref="7-56")]
NEUTROPHILS_LOW = [obs(A.NEUTROPHILS, 1.2)]

CASES = [
    # id, orders, past alerts, observations, expected [(rule, severity)]
    ("active", (order(),), (), ALT_5X, [(STOP, S.CRITICAL)]),
    ("held", (order(holds=((T0 - D, None),)),), (), ALT_5X, [(STOP, S.CRITICAL)]),
    ("held-at-the-result-time", (order(holds=((T0, None),)),), (), ALT_5X, [(STOP, S.CRITICAL)]),
    ("released-before", (order(holds=((T0 - 2 * D, T0 - D),)),), (), ALT_5X, [(STOP, S.CRITICAL)]),
    ("stopped-at-the-result", *stopped(timedelta(0)), ALT_5X, [(STOP, S.CRITICAL)]),
    ("stopped-30-days-before", *stopped(30 * D), ALT_5X, [(STOP, S.CRITICAL)]),
    ("stopped-30-days-and-a-second-before", *stopped(30 * D + SEC), ALT_5X, []),
    ("stopped-after-the-result", (order(stop=T0 + SEC),), (), ALT_5X, [(STOP, S.CRITICAL)]),
    ("order-starts-after-the-result-baseline", (order(start=T0 + SEC),), (), ALT_5X, []),
    # Follow-up: a stopped drug is followed while a liver alert is open, 90 days at most.
    ("followed-31-days-liver-alert-open", *stopped(31 * D, past(MILD, T0 - 40 * D, open=True)), ALT_5X,
     [(STOP, S.CRITICAL)]),
    ("followed-90-days", *stopped(90 * D, past(STOP, T0 - 95 * D, open=True)), ALT_5X, [(STOP, S.CRITICAL)]),
    ("followed-90-days-and-a-second", *stopped(90 * D + SEC, past(STOP, T0 - 95 * D, open=True)), ALT_5X, []),
    ("not-followed-when-the-alert-is-closed", *stopped(31 * D, past(STOP, T0 - 40 * D)), ALT_5X, []),
    ("liver-not-followed-for-a-marrow-alert", *stopped(31 * D, past(MYELO, T0 - 40 * D, open=True)), ALT_5X, []),
    # The worsening after a stop (item 1): a stop alert open, bilirubin now rises -> Hy's law.
    ("stop-to-hys-law-after-the-stop", *stopped(45 * D, past(STOP, T0 - 46 * D, open=True)),
     [obs(A.ALT, 900, ref="7-56"), obs(A.AST, 700, ref="10-40"), obs(A.BILI_TOTAL, 5.0, ref="0.1-1.2"),
      obs(A.INR, 2.2), obs(A.ALBUMIN, 2.6, ref="3.5-5.0")],
     [(HYS, S.CRITICAL), (SYN, S.HIGH)]),
    # Marrow: exposed alike; followed only for an open marrow alert.
    ("marrow-held", (order(holds=((T0 - D, None),)),), (), NEUTROPHILS_LOW, [(MYELO, S.HIGH)]),
    ("marrow-stopped-10-days", *stopped(10 * D), NEUTROPHILS_LOW, [(MYELO, S.HIGH)]),
    ("marrow-followed-45-days", *stopped(45 * D, past(MYELO, T0 - 50 * D, open=True)), NEUTROPHILS_LOW,
     [(MYELO, S.HIGH)]),
    ("marrow-not-followed-for-a-liver-alert", *stopped(45 * D, past(STOP, T0 - 50 * D, open=True)),
     NEUTROPHILS_LOW, []),
    # Synthetic function (decision 6: exposed) and the other injury rules alike.
    ("synthetic-held", (order(holds=((T0 - D, None),)),), (past(STOP, T0 - 2 * D, open=True),),
     [obs(A.INR, 1.6)], [(SYN, S.HIGH)]),
    ("cholestasis-stopped-5-days", *stopped(5 * D), [obs(A.ALP, 300, ref="42-141")], [(CHOL, S.HIGH)]),
    ("mild-held", (order(holds=((T0 - D, None),)),), (), [obs(A.ALT, 60, ref="7-56")], [(MILD, S.WARNING)]),
    ("hyperbilirubinemia-stopped-5-days", *stopped(5 * D), [obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2")],
     [(HYPERBILI, S.HIGH)]),
]


@pytest.mark.parametrize(("orders", "alerts", "observations", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_who_is_judged(orders: tuple, alerts: tuple, observations: list, expected: list) -> None:
    findings = evaluate(context(*orders, alerts=alerts), observations, SETTINGS)
    assert [(f.rule, f.severity) for f in findings] == expected


@pytest.mark.parametrize(("holds", "stop", "status", "first", "state"), [
    ((), None, OrderStatus.ACTIVE, "Discontinue azathioprine now", "on azathioprine"),
    (((T0 - 2 * D, None),), None, OrderStatus.HELD,
     "Azathioprine on hold since 2026-10-18: urgent clinical review; keep it held", "held since 2026-10-18"),
    ((), T0 - 3 * D, OrderStatus.STOPPED, "Azathioprine stopped on 2026-10-17: urgent clinical review",
     "after azathioprine was stopped on 2026-10-17"),
], ids=["active", "held", "stopped"])
def test_the_page_says_where_the_drug_stands_and_never_stops_a_stopped_drug(
    holds: tuple, stop: object, status: OrderStatus, first: str, state: str
) -> None:
    """Decision 16: held or stopped, the alert says so and since when, and
    never advises stopping a drug that is stopped."""
    ctx = context(order(holds=holds, stop=stop), alerts=(past(STOP, T0 - 5 * D, open=True),))
    panel = [obs(A.ALT, 280, ref="7-56"), obs(A.ALP, 300, ref="42-141"), obs(A.NEUTROPHILS, 1.2),
             obs(A.INR, 1.6)]
    findings = evaluate(ctx, panel, SETTINGS)
    assert {f.rule for f in findings} == {STOP, CHOL, SYN, MYELO}
    for f in findings:
        assert f.order is not None
        assert f.order.status_at(f.occurred_at) is status
        text = " ".join((f.title, f.summary, *f.recommendations))
        if status is OrderStatus.ACTIVE:
            continue
        assert state in f.summary, f.rule
        assert f"({'held' if status is OrderStatus.HELD else 'stopped'})" in f.title, f.rule
        for stopping in ("Discontinue", "Hold azathioprine", "hold azathioprine"):
            assert stopping not in text, f.rule
    stop_finding = next(f for f in findings if f.rule == STOP)
    assert stop_finding.recommendations[0] == first


@pytest.mark.parametrize(("alt", "held"), [(300, True), (168, True), (167, False), (40, False)],
                         ids=["well-above", "at-3x", "below-3x", "normal"])
def test_unexposed_panels_still_judge_values_for_open_alerts(alt: float, held: bool) -> None:
    """Decision 3: stopping never resolves; the values decide. Beyond
    follow-up, a panel sends nothing, yet says whether the open alert's rule
    still holds on it (so only values below its thresholds resolve it)."""
    ctx = context(*stopped(100 * D)[0], alerts=(past(STOP, T0 - 101 * D, open=True),))
    assessment = assess(ctx, [obs(A.ALT, alt, ref="7-56")], SETTINGS)
    assert assessment.findings == ()
    (verdict,) = assessment.verdicts
    assert (STOP in verdict.held) is held


@pytest.mark.parametrize(("settings", "before", "expected"), [
    (RuleSettings(exposure_days=10), 10 * D, True), (RuleSettings(exposure_days=10), 10 * D + SEC, False),
    (RuleSettings(exposure_days=0), timedelta(0), True), (RuleSettings(exposure_days=0), SEC, False),
], ids=["10-days-at", "10-days-past", "0-days-at", "0-days-past"])
def test_exposure_days_comes_from_settings(settings: RuleSettings, before: timedelta, expected: bool) -> None:
    orders, _ = stopped(before)
    assert (exposure(context(*orders), T0, settings) is not None) is expected


def test_follow_up_days_comes_from_settings() -> None:
    orders, alerts = stopped(50 * D, past(STOP, T0 - 60 * D, open=True))
    ctx = context(*orders, alerts=alerts)
    assert exposure(ctx, T0, RuleSettings(follow_up_days=50), followed={STOP}) is not None
    assert exposure(ctx, T0, RuleSettings(follow_up_days=49), followed={STOP}) is None
    assert exposure(ctx, T0, RuleSettings(follow_up_days=50), followed={MYELO}) is None


def test_the_active_order_wins_over_a_held_or_stopped_one() -> None:
    ctx = context(order(order_id="OLD", start=T0 - 90 * D, stop=T0 - 5 * D),
                  order(order_id="HELD", start=T0 - 60 * D, holds=((T0 - D, None),)),
                  order(order_id="NOW", start=T0 - 3 * D))
    found = exposure(ctx, T0, SETTINGS)
    assert found is not None
    assert (found.order.order_id, found.status) == ("NOW", OrderStatus.ACTIVE)
    held_first = exposure(context(*ctx.orders[:2]), T0, SETTINGS)
    assert held_first is not None
    assert (held_first.order.order_id, held_first.status, held_first.since) == ("HELD", OrderStatus.HELD, T0 - D)
