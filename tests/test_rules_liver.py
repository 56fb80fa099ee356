"""aza.hepatotoxicity.stop as a table: both sides of every threshold. (The
other rules a row may also raise are tabled in test_rules_catalog.py.)"""

from __future__ import annotations

from datetime import timedelta

import pytest

from hl7_alerts.model import ResultStatus, Severity
from hl7_alerts.rules.common import RuleSettings
from hl7_alerts.rules.engine import evaluate
from hl7_alerts.terminology import Analyte
from tests.support.rulekit import T0, context, obs, order

A = Analyte
SETTINGS = RuleSettings()

CASES = [
    # id, orders, observations, expected (rule ids)
    ("alt-at-3x-fires", [order()], [obs(A.ALT, 168, ref="7-56")], ["aza.hepatotoxicity.stop"]),
    # Decision 17: ×ULN is rounded to two decimals and compared as shown. 167.6/56 = 2.99;
    # 167.9/56 = 2.998 shows as 3.00 and fires (this row used 167.9 before the decision).
    ("alt-just-below-3x-silent", [order()], [obs(A.ALT, 167.6, ref="7-56")], []),
    ("alt-2.998x-shows-3.00x-fires", [order()], [obs(A.ALT, 167.9, ref="7-56")], ["aza.hepatotoxicity.stop"]),
    ("ukat-3.3-over-1.1-is-3.00x-fires", [order()], [obs(A.ALT, 3.3, unit="ukat/L", ref="0.1-1.1")],
     ["aza.hepatotoxicity.stop"]),
    ("ast-above-3x-fires", [order()], [obs(A.AST, 121, ref="10-40")], ["aza.hepatotoxicity.stop"]),
    ("ast-below-3x-silent", [order()], [obs(A.AST, 119, ref="10-40")], []),
    ("alp-high-is-not-this-rule", [order()], [obs(A.ALP, 900, ref="42-141")], []),
    ("range-with-spaces-and-units", [order()], [obs(A.ALT, 130, ref="0 - 40 U/L")], ["aza.hepatotoxicity.stop"]),
    ("upper-bound-only-range", [order()], [obs(A.ALT, 120, ref="<40")], ["aza.hepatotoxicity.stop"]),
    ("default-range-when-obx7-empty", [order()], [obs(A.ALT, 168)], ["aza.hepatotoxicity.stop"]),
    ("default-range-below", [order()], [obs(A.ALT, 167)], []),
    ("ukat-converted-for-default-range", [order()], [obs(A.ALT, 2.9, unit="ukat/L")], ["aza.hepatotoxicity.stop"]),
    ("ukat-below-after-conversion", [order()], [obs(A.ALT, 2.7, unit="ukat/L")], []),
    ("unknown-unit-no-range-silent", [order()], [obs(A.ALT, 500, unit="furlongs")], []),
    ("comparator-uses-the-bound", [order()], [obs(A.ALT, 1000, ref="7-56", comparator=">")], ["aza.hepatotoxicity.stop"]),
    ("no-order-silent", [], [obs(A.ALT, 500, ref="7-56")], []),
    ("other-drug-silent", [order(ingredient="allopurinol")], [obs(A.ALT, 500, ref="7-56")], []),
    ("mercaptopurine-not-watched-by-default", [order(ingredient="mercaptopurine")], [obs(A.ALT, 500, ref="7-56")], []),
    ("order-starts-after-result-silent", [order(start=T0 + timedelta(hours=1))], [obs(A.ALT, 500, ref="7-56")], []),
    ("order-starts-at-result-fires", [order(start=T0)], [obs(A.ALT, 500, ref="7-56")], ["aza.hepatotoxicity.stop"]),
    # Decision 16: stopped at most rules.exposure_days (30) before the result is still exposed.
    ("stopped-before-result-silent", [order(start=T0 - timedelta(days=90), stop=T0 - timedelta(days=30, seconds=1))],
     [obs(A.ALT, 500, ref="7-56")], []),
    ("stopped-at-result-fires", [order(stop=T0)], [obs(A.ALT, 500, ref="7-56")], ["aza.hepatotoxicity.stop"]),
    ("stopped-30-days-before-fires", [order(start=T0 - timedelta(days=90), stop=T0 - timedelta(days=30))],
     [obs(A.ALT, 500, ref="7-56")], ["aza.hepatotoxicity.stop"]),
    ("stopped-after-result-fires", [order(stop=T0 + timedelta(seconds=1))], [obs(A.ALT, 500, ref="7-56")],
     ["aza.hepatotoxicity.stop"]),
    # Decisions 9 and 16: held is still exposed; the alert says "while held" (this row expected silence before).
    ("on-hold-fires", [order(holds=((T0 - timedelta(days=1), None),))], [obs(A.ALT, 500, ref="7-56")],
     ["aza.hepatotoxicity.stop"]),
    ("released-hold-fires", [order(holds=((T0 - timedelta(days=2), T0 - timedelta(days=1)),))],
     [obs(A.ALT, 500, ref="7-56")], ["aza.hepatotoxicity.stop"]),
    ("pending-status-silent", [order()], [obs(A.ALT, 500, ref="7-56", status=ResultStatus.PENDING)], []),
    ("cancelled-status-silent", [order()], [obs(A.ALT, 500, ref="7-56", status=ResultStatus.CANCELLED)], []),
    ("preliminary-evaluated", [order()], [obs(A.ALT, 500, ref="7-56", status=ResultStatus.PRELIMINARY)],
     ["aza.hepatotoxicity.stop"]),
    ("one-finding-per-panel", [order()], [obs(A.ALT, 500, ref="7-56"), obs(A.AST, 500, ref="10-40")],
     ["aza.hepatotoxicity.stop"]),
    ("two-panels-two-findings", [order()],
     [obs(A.ALT, 500, ref="7-56"), obs(A.ALT, 400, ref="7-56", specimen="S2", at=T0 + timedelta(days=1))],
     ["aza.hepatotoxicity.stop", "aza.hepatotoxicity.stop"]),
]


@pytest.mark.parametrize(("orders", "observations", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hepatotoxicity_stop(orders: list, observations: list, expected: list[str]) -> None:
    findings = [f for f in evaluate(context(*orders), observations, SETTINGS) if f.rule == "aza.hepatotoxicity.stop"]
    assert [f.rule for f in findings] == expected
    for f in findings:
        assert f.severity is Severity.CRITICAL
        assert f.order is not None
        if f.order.status_at(f.occurred_at) == "active":
            assert f.recommendations[0] == "Discontinue azathioprine now"
        else:  # never advise stopping a drug that is held or stopped (decision 16)
            assert f.recommendations[0].startswith(("Azathioprine on hold since", "Azathioprine stopped on"))
            assert "urgent clinical review" in f.recommendations[0]
            assert not any(r.startswith("Discontinue") for r in f.recommendations)


def test_threshold_comes_from_settings() -> None:
    strict = RuleSettings(hepatotoxicity_x_uln=2.0)
    assert [f.rule for f in evaluate(context(order()), [obs(A.ALT, 120, ref="7-56")], strict)] == [
        "aza.hepatotoxicity.stop"
    ]
    assert [f.rule for f in evaluate(context(order()), [obs(A.ALT, 120, ref="7-56")], SETTINGS)] == [
        "aza.liver.mild"
    ]


def test_finding_carries_evidence_and_pattern() -> None:
    (finding,) = evaluate(
        context(order()), [obs(A.ALT, 280, ref="7-56"), obs(A.ALP, 141, ref="42-141")], SETTINGS
    )
    assert finding.title == "Azathioprine hepatotoxicity: ALT 5.0 × ULN"
    assert [(e.observation.analyte, e.x_uln) for e in finding.evidence] == [("ALT", 5.0), ("ALP", 1.0)]
    assert finding.pattern is not None
    assert (finding.pattern.r_ratio, finding.pattern.type) == (5.0, "hepatocellular")
    assert finding.occurred_at == T0
