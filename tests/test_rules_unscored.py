"""aza.result.unscored (issue 19 item 5): a flagged abnormal result that no
rule can score is never silent; one a rule can score is that rule's."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from hl7_alerts.model import Observation, Severity
from hl7_alerts.rules.common import RuleSettings
from hl7_alerts.rules.engine import evaluate
from hl7_alerts.terminology import Analyte
from tests.support.rulekit import T0, context, obs, order

A = Analyte
S = Severity
D = timedelta(days=1)
SETTINGS = RuleSettings()
UNSCORED, STOP, MYELO = "aza.result.unscored", "aza.hepatotoxicity.stop", "aza.myelosuppression"
ON = context(order())


def flagged(o: Observation, flag: str, *, value_text: str | None = None) -> Observation:
    """``o`` with OBX-8 ``flag`` (and, for a non-number, its text)."""
    if value_text is not None:
        return replace(o, flag=flag, value=None, value_text=value_text)
    return replace(o, flag=flag)


CASES = [
    # id, context, observations, expected [(rule, severity)]
    ("alt-hh-no-unit-no-range-high", ON, [flagged(obs(A.ALT, 400, unit=" "), "HH")], [(UNSCORED, S.HIGH)]),
    ("alt-h-unknown-unit-warning", ON, [flagged(obs(A.ALT, 400, unit="furlongs"), "H")], [(UNSCORED, S.WARNING)]),
    ("alt-aa-unknown-unit-high", ON, [flagged(obs(A.ALT, 400, unit="furlongs"), "AA")], [(UNSCORED, S.HIGH)]),
    ("alt-hh-units-per-l-scored", ON, [flagged(obs(A.ALT, 400, unit="Units/L"), "HH")], [(STOP, S.CRITICAL)]),
    ("alt-hh-iu-scored", ON, [flagged(obs(A.ALT, 400, unit="IU"), "HH")], [(STOP, S.CRITICAL)]),
    ("alt-hh-at-37c-scored", ON, [flagged(obs(A.ALT, 400, unit="U/L@37C"), "HH")], [(STOP, S.CRITICAL)]),
    ("alt-hh-unknown-unit-with-range-scored", ON,
     [flagged(obs(A.ALT, 400, unit="furlongs", ref="7-56"), "HH")], [(STOP, S.CRITICAL)]),
    ("alt-not-a-number-flagged-h", ON, [flagged(obs(A.ALT, 0), "H", value_text="see comment")],
     [(UNSCORED, S.WARNING)]),
    ("alt-unreadable-range-unknown-unit", ON,
     [flagged(replace(obs(A.ALT, 400, unit="furlongs"), ref_text="ask the lab"), "H")], [(UNSCORED, S.WARNING)]),
    ("alt-unflagged-unknown-unit-silent", ON, [obs(A.ALT, 400, unit="furlongs")], []),
    ("alt-flag-n-silent", ON, [flagged(obs(A.ALT, 400, unit="furlongs"), "N")], []),
    ("neutrophils-ll-in-an-unknown-unit-high", ON, [flagged(obs(A.NEUTROPHILS, 0.4, unit="cells/hpf"), "LL")],
     [(UNSCORED, S.HIGH)]),
    ("neutrophils-ll-x10e9-scored", ON, [flagged(obs(A.NEUTROPHILS, 0.4, unit="x10E9/L"), "LL")],
     [(MYELO, S.CRITICAL)]),
    ("albumin-l-unknown-unit", ON, [flagged(obs(A.ALBUMIN, 30, unit="mmol/L"), "L")], [(UNSCORED, S.WARNING)]),
    ("inr-h-is-a-number-scored", ON, [flagged(obs(A.INR, 1.4, unit="sec"), "H")], []),
    ("pt-is-not-watched", ON, [flagged(obs(A.PT, 20, unit="furlongs"), "H")], []),
    ("no-thiopurine-silent", context(), [flagged(obs(A.ALT, 400, unit=" "), "HH")], []),
    ("stopped-10-days-exposed", context(order(start=T0 - 90 * D, stop=T0 - 10 * D)),
     [flagged(obs(A.ALT, 400, unit=" "), "HH")], [(UNSCORED, S.HIGH)]),
    ("stopped-31-days-silent", context(order(start=T0 - 90 * D, stop=T0 - 31 * D)),
     [flagged(obs(A.ALT, 400, unit=" "), "HH")], []),
    ("held-exposed", context(order(holds=((T0 - D, None),))), [flagged(obs(A.ALT, 400, unit=" "), "H")],
     [(UNSCORED, S.WARNING)]),
]


@pytest.mark.parametrize(("ctx", "observations", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_unscored(ctx, observations: list, expected: list) -> None:
    findings = evaluate(ctx, observations, SETTINGS)
    assert [(f.rule, f.severity) for f in findings] == expected


def test_the_page_says_what_could_not_be_read() -> None:
    (finding,) = evaluate(ON, [flagged(obs(A.ALT, 400, unit=" "), "HH"),
                               flagged(obs(A.NEUTROPHILS, 0, unit="cells/hpf"), "LL", value_text="clumped")],
                          SETTINGS)
    assert finding.rests_on == ("ALT", "neutrophils")
    assert finding.title == "Flagged result not scored on azathioprine: ALT 400 flagged HH, neutrophils clumped cells/hpf flagged LL"
    assert "no range given and the unit '(none)' does not convert" in finding.summary
    assert "neutrophils: the value is not a number" in finding.summary
    assert finding.recommendations[0] == "Review this result by hand: it could not be compared with its limits"
