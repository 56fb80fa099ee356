"""`aza.result.unscored`: a flagged abnormal result no rule can score is never silent.

When the lab flags a watched analyte abnormal in OBX-8 (H, HH, L, LL, A,
AA) for an exposed patient, but the rules cannot compare it with its limits
(its unit does not convert and OBX-7 gives no readable range, or its value
is not a number), this rule says so: review it by hand. Warning; high for
HH, LL and AA. A result some rule *can* score is that rule's business, even
when no rule fires on it.
"""

from __future__ import annotations

from hl7_alerts.model import Observation, PatientContext, Severity
from hl7_alerts.rules.common import Finding, Panel, RuleSettings, evidence, reference
from hl7_alerts.rules.exposure import Exposure
from hl7_alerts.rules.ids import RESULT_UNSCORED
from hl7_alerts.rules.marrow import COUNTS, count
from hl7_alerts.terminology import LIVER_ENZYMES, Analyte

WATCHED = (*LIVER_ENZYMES, Analyte.BILI_TOTAL, Analyte.ALBUMIN, Analyte.INR, *COUNTS)
"""The analytes some rule compares with a limit."""
ABNORMAL_FLAGS = frozenset({"H", "HH", "L", "LL", "A", "AA"})
CRITICAL_FLAGS = frozenset({"HH", "LL", "AA"})


def scorable(obs: Observation, settings: RuleSettings, sex: str) -> bool:
    """Whether the rules can compare this result with their limits."""
    if obs.analyte is None or obs.value is None:
        return False
    analyte = Analyte(obs.analyte)
    if analyte in COUNTS:
        return count(obs) is not None  # counts compare with fixed limits in 10⁹/L
    if analyte is Analyte.INR:
        return True  # compared as a number (rules.synthetic_inr_above)
    value, low, high = reference(obs, settings, sex)
    if analyte is Analyte.ALBUMIN:
        return value is not None and low is not None  # compared with its LLN
    return value is not None and high is not None and high > 0  # compared as × ULN


def _why(obs: Observation) -> str:
    if obs.value is None:
        return "the value is not a number"
    if obs.ref_text and obs.ref_low is None and obs.ref_high is None:
        return f"the range {obs.ref_text!r} cannot be read and the unit {_unit(obs)!r} does not convert"
    return f"no range given and the unit {_unit(obs)!r} does not convert"


def _unit(obs: Observation) -> str:
    return obs.unit.strip() or "(none)"


def result_unscored(
    ctx: PatientContext, panel: Panel, settings: RuleSettings, exp: Exposure
) -> Finding | None:
    sex = ctx.demographics.sex
    unscored = [
        (analyte, obs)
        for analyte in WATCHED
        if (obs := panel.get(analyte)) is not None
        and obs.flag in ABNORMAL_FLAGS
        and not scorable(obs, settings, sex)
    ]
    if not unscored:
        return None
    critical = any(obs.flag in CRITICAL_FLAGS for _, obs in unscored)
    described = ", ".join(
        f"{a.label} {obs.value_text or '(empty)'} {obs.unit.strip()}".strip() + f" flagged {obs.flag}"
        for a, obs in unscored
    )
    reasons = "; ".join(f"{a.label}: {_why(obs)}" for a, obs in unscored)
    return Finding(
        rule=RESULT_UNSCORED,
        severity=Severity.HIGH if critical else Severity.WARNING,
        title=f"Flagged result not scored on {exp.drug}: {described}",
        summary=f"{described} {exp.state}: not compared with its limits ({reasons}); review by hand",
        evidence=tuple(evidence(obs, settings, sex) for _, obs in unscored),
        order=exp.order,
        recommendations=(
            "Review this result by hand: it could not be compared with its limits",
            "Ask the laboratory for the unit and reference range if they are missing",
        ),
        references=(),
        occurred_at=panel.observed_at,
        rests_on=tuple(a.value for a, _ in unscored),
    )
