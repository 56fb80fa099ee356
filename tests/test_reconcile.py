"""alerts.reconcile as a table: what findings and panel verdicts do to open
alerts (CLINICAL.md decisions 2, 3 and 4, and no spurious `updated`)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hl7_alerts.alerts import Alert, AlertChange, AlertState, Source, reconcile
from hl7_alerts.model import ResultStatus, Severity
from hl7_alerts.rules.common import RuleSettings
from hl7_alerts.rules.engine import Assessment, assess
from hl7_alerts.terminology import Analyte
from tests.support.rulekit import PATIENT, T0, context, obs, order, past

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


# -- Decision 19: updated only when the page changes; hys_law supersedes stop.

def test_same_values_later_are_stored_silently() -> None:
    """A repeat panel with the same values is no news: the alert takes its
    evidence (so a late normal result older than it cannot resolve it) but
    keeps its version, and nothing is announced."""
    (change,) = run([obs(A.ALT, 190, ref="7-56", at=T0 + D, specimen="S2")], STOP_OPEN)
    assert change.silent
    assert (change.alert.version, change.alert.evidence_at) == (1, T0 + D)
    # The late normal panel between the two is history now.
    assert run([obs(A.ALT, 40, ref="7-56", at=T0 + D / 2, specimen="S9")], {STOP: change.alert}) == []


@pytest.mark.parametrize(("second", "silent"), [
    (obs(A.ALT, 190, ref="7-56", status=ResultStatus.FINAL), True),  # P -> F, same value
    (obs(A.ALT, 190, ref="7-56", status=ResultStatus.CORRECTED), False),  # a correction is on the page
    (obs(A.ALT, 191, ref="7-56"), False),  # another value
    (obs(A.ALT, 190, ref="7-60"), False),  # another x ULN
    (obs(A.ALT, 190, ref="7-56", unit="IU/L"), False),  # another unit on the page
], ids=["p-to-f", "corrected", "value", "x-uln", "unit"])
def test_what_counts_as_a_change_of_the_page(second, silent: bool) -> None:
    first = opened([obs(A.ALT, 190, ref="7-56", status=ResultStatus.PRELIMINARY)])
    (change,) = run([second], first)
    assert change.silent is silent
    assert str(change.event) == "updated"
    assert change.alert.version == (1 if silent else 2)
    assert not change.alert.title.startswith("Preliminary")


STOP, HYS = "aza.hepatotoxicity.stop", "aza.hys_law"
HYS_PANEL = [obs(A.ALT, 900, ref="7-56", at=T0 + D, specimen="S2"), obs(A.BILI_TOTAL, 5.0, ref="0.1-1.2", at=T0 + D,
                                                                        specimen="S2")]


def test_hys_law_supersedes_an_open_stop_alert() -> None:
    changes = run(HYS_PANEL, STOP_OPEN)
    assert [(c.alert.rule, str(c.event), c.finding.reason) for c in changes] == [
        (HYS, "firing", None), (STOP, "resolved", "superseded by aza.hys_law")]
    assert changes[1].alert.alert_id == STOP_OPEN[STOP].alert_id


def test_a_stop_finding_folds_into_an_open_hys_law_alert() -> None:
    hys_open = opened(HYS_PANEL)
    assert set(hys_open) == {HYS}
    # ALT still 5x two days later, no bilirubin on the panel (none within 48 h):
    # Hy's law stays open and speaks for it; no second critical alert.
    later = [obs(A.ALT, 280, ref="7-56", at=T0 + 4 * D, specimen="S3")]
    assert [c for c in run(later, hys_open) if not c.silent] == []
    # A panel that carries both and no longer meets Hy's law resolves it; stop fires.
    both = [obs(A.ALT, 280, ref="7-56", at=T0 + 5 * D, specimen="S4"),
            obs(A.BILI_TOTAL, 1.0, ref="0.1-1.2", at=T0 + 5 * D, specimen="S4")]
    assert [(c.alert.rule, str(c.event)) for c in run(both, hys_open)] == [(STOP, "firing"), (HYS, "resolved")]


# -- Decisions 3 and 16: stopping never resolves; the values decide.

def run_stopped(observations: list, open_alerts: dict[str, Alert], *, days_since_stop: int) -> list[AlertChange]:
    at = observations[0].observed_at
    ctx = context(order(start=T0 - 90 * D, stop=at - days_since_stop * D),
                  alerts=tuple(past(r, a.opened_at, open=True) for r, a in open_alerts.items()))
    a = assess(ctx, observations, SETTINGS)
    return reconcile(a.findings, open_alerts, patient=PATIENT, source=SOURCE, next_episode={},
                     verdicts=a.verdicts)


@pytest.mark.parametrize(("days", "alt", "expected"), [
    (5, 900, [("updated", 2)]),  # exposed: still over the threshold
    (45, 900, [("updated", 2)]),  # followed (an open liver alert): still over
    (120, 900, []),  # beyond follow-up: nothing sent, and not resolved either
    (5, 40, [("resolved", 2)]),  # below the threshold: the values resolve it
    (120, 40, [("resolved", 2)]),
], ids=["exposed-worse", "followed-worse", "beyond-follow-up-worse", "exposed-normal", "beyond-follow-up-normal"])
def test_stopping_never_resolves(days: int, alt: float, expected: list) -> None:
    later = [obs(A.ALT, alt, ref="7-56", at=T0 + 130 * D, specimen="S2")]
    changes = [c for c in run_stopped(later, STOP_OPEN, days_since_stop=days) if c.alert.rule == STOP]
    assert [(str(c.event), c.alert.version) for c in changes] == expected


def test_mild_worsening_after_a_stop_escalates() -> None:
    """Item 1's shape at reconcile level: the same analyte above ULN on the
    next panel after the stop is the second consecutive mild panel."""
    mild = MILD_OPEN
    ctx = context(order(start=T0 - 90 * D, stop=T0 + D), history=(obs(A.ALT, 60, ref="7-56"),),
                  alerts=(past("aza.liver.mild", T0, open=True),))
    a = assess(ctx, [obs(A.ALT, 150, ref="7-56", at=T0 + 5 * D, specimen="S2")], SETTINGS)
    changes = reconcile(a.findings, mild, patient=PATIENT, source=SOURCE, next_episode={}, verdicts=a.verdicts)
    assert [(c.alert.rule, str(c.event), str(c.alert.severity)) for c in changes] == [
        ("aza.liver.mild", "escalated", "high")]
