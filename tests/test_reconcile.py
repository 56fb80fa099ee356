"""alerts.reconcile as a table: what findings and panel verdicts do to open
alerts (CLINICAL.md decisions 2, 3 and 4, and no spurious `updated`)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hl7_alerts.alerts import Alert, AlertChange, AlertState, Source, reconcile
from hl7_alerts.model import Severity
from hl7_alerts.rules.common import RuleSettings
from hl7_alerts.rules.engine import Assessment, assess
from hl7_alerts.terminology import Analyte
from tests.support.rulekit import PATIENT, T0, context, obs, order

A = Analyte
D = timedelta(days=1)
SOURCE = Source(control_id="L1", sending_application="LAB", sending_facility="GENHOSP")
SETTINGS = RuleSettings()


def run(observations: list, open_alerts: dict[str, Alert] | None = None,
        corrected: dict | None = None) -> list[AlertChange]:
    ctx = context(order(start=T0 - 60 * D))
    a: Assessment = assess(ctx, observations, SETTINGS)
    return reconcile(a.findings, open_alerts or {}, patient=PATIENT, source=SOURCE, next_episode={},
                     verdicts=a.verdicts, corrected=corrected)


def opened(observations: list) -> dict[str, Alert]:
    return {c.alert.rule: c.alert for c in run(observations)}


STOP_PANEL = [obs(A.ALT, 190, ref="7-56")]
STOP_OPEN = opened(STOP_PANEL)
MILD_OPEN = opened([obs(A.ALT, 60, ref="7-56")])

CASES = [
    # id, observations, open alerts, corrected, expected [(rule, event, severity, version)]
    ("first-finding-fires", STOP_PANEL, {}, None, [("aza.hepatotoxicity.stop", "firing", "critical", 1)]),
    ("identical-evidence-no-update", STOP_PANEL, STOP_OPEN, None, []),
    ("new-value-same-time-updates", [obs(A.ALT, 250, ref="7-56")], STOP_OPEN, None,
     [("aza.hepatotoxicity.stop", "updated", "critical", 2)]),
    # Decision 19: a later panel updates when its values differ (the same values again are stored
    # silently: test_same_values_later_are_stored_silently). This row used ALT 190 again before.
    ("later-panel-updates", [obs(A.ALT, 250, ref="7-56", at=T0 + D, specimen="S2")], STOP_OPEN, None,
     [("aza.hepatotoxicity.stop", "updated", "critical", 2)]),
    ("older-finding-is-history", [obs(A.ALT, 300, ref="7-56", at=T0 - D, specimen="S0")], STOP_OPEN, None, []),
    ("mild-again-without-history-updates", [obs(A.ALT, 62, ref="7-56", at=T0 + D, specimen="S2")],
     {"aza.liver.mild": MILD_OPEN["aza.liver.mild"]}, None, [("aza.liver.mild", "updated", "warning", 2)]),
    ("later-normal-panel-resolves", [obs(A.ALT, 40, ref="7-56", at=T0 + D, specimen="S2")], STOP_OPEN, None,
     [("aza.hepatotoxicity.stop", "resolved", "critical", 2)]),
    ("later-panel-still-above-3x-keeps-open", [obs(A.ALT, 170, ref="7-56", at=T0 + D, specimen="S2")], STOP_OPEN,
     None, [("aza.hepatotoxicity.stop", "updated", "critical", 2)]),
    ("later-mild-panel-resolves-stop-and-opens-mild", [obs(A.ALT, 60, ref="7-56", at=T0 + D, specimen="S2")],
     STOP_OPEN, None, [("aza.liver.mild", "firing", "warning", 1), ("aza.hepatotoxicity.stop", "resolved", "critical", 2)]),
    ("older-normal-panel-never-resolves", [obs(A.ALT, 40, ref="7-56", at=T0 - D, specimen="S0")], STOP_OPEN, None, []),
    ("same-time-normal-panel-never-resolves", [obs(A.ALT, 40, ref="7-56", specimen="S9")], STOP_OPEN, None, []),
    ("panel-without-its-analyte-never-resolves", [obs(A.AST, 20, ref="10-40", at=T0 + D, specimen="S2")],
     STOP_OPEN, None, []),
    ("correction-removing-it-withdraws", [obs(A.ALT, 19, ref="7-56")], STOP_OPEN, {T0: {"ALT"}},
     [("aza.hepatotoxicity.stop", "withdrawn", "critical", 2)]),
    ("cancellation-withdraws", [], STOP_OPEN, {T0: {"ALT"}}, [("aza.hepatotoxicity.stop", "withdrawn", "critical", 2)]),
    ("correction-of-another-analyte-keeps", [obs(A.ALP, 50, ref="42-141")], STOP_OPEN, {T0: {"ALP"}}, []),
    ("correction-of-another-panel-keeps", [], STOP_OPEN, {T0 - D: {"ALT"}}, []),
]


@pytest.mark.parametrize(("observations", "open_alerts", "corrected", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_reconcile(observations: list, open_alerts: dict, corrected: dict | None, expected: list) -> None:
    changes = [c for c in run(observations, open_alerts, corrected) if not c.silent]
    assert [(c.alert.rule, str(c.event), str(c.alert.severity), c.alert.version) for c in changes] == expected
    for c in changes:
        if str(c.event) in ("resolved", "withdrawn"):
            assert c.alert.state is AlertState(str(c.event))
            assert c.alert.alert_id == open_alerts[c.alert.rule].alert_id


def test_closed_alert_reopens_as_new_episode() -> None:
    """Decision 2: after resolved/withdrawn, a new alert_id (the store hands
    out the next episode number)."""
    finding = run(STOP_PANEL)[0].finding
    (change,) = reconcile([finding], {}, patient=PATIENT, source=SOURCE, next_episode={"aza.hepatotoxicity.stop": 2})
    assert change.alert.episode == 2
    assert change.alert.alert_id != STOP_OPEN["aza.hepatotoxicity.stop"].alert_id


def test_escalation_on_second_consecutive_mild_panel() -> None:
    ctx = context(order(start=T0 - 60 * D), history=(obs(A.ALT, 60, ref="7-56"),))
    a = assess(ctx, [obs(A.ALT, 62, ref="7-56", at=T0 + 7 * D, specimen="S2")], SETTINGS)
    (change,) = reconcile(a.findings, MILD_OPEN, patient=PATIENT, source=SOURCE, next_episode={},
                          verdicts=a.verdicts)
    assert (str(change.event), change.alert.severity, change.alert.version) == ("escalated", Severity.HIGH, 2)
    assert change.alert.alert_id == MILD_OPEN["aza.liver.mild"].alert_id
