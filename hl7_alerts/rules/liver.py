"""Liver rules: hepatotoxicity while on a thiopurine.

Source: shared/seed (discontinue azathioprine if enzymes rise above 3×ULN) and
the DILI consensus criteria. Evaluated per panel at the panel's observation
time, against the orders active then.
"""

from __future__ import annotations

from hl7_alerts.model import PatientContext, Severity
from hl7_alerts.rules.common import (
    Finding,
    Panel,
    RuleSettings,
    active_thiopurine,
    evidence,
    fmt,
    r_ratio,
    x_uln,
)
from hl7_alerts.terminology import Analyte

HEPATOTOXICITY_STOP = "aza.hepatotoxicity.stop"

_STOP_ACTIONS = (
    "Discontinue azathioprine now",
    "Repeat ALT, AST, ALP, GGT, total and direct bilirubin",
    "Check albumin and PT/INR",
    "Assess for jaundice, right upper quadrant pain, fatigue, nausea",
    "Exclude viral hepatitis, alcohol and other hepatotoxic drugs",
)
_STOP_REFERENCES = (
    "Discontinue azathioprine immediately if liver enzymes rise above 3x ULN (shared/seed)",
    "International DILI Expert Working Group, Aithal et al. 2011",
)


def hepatotoxicity_stop(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    """Active thiopurine and ALT or AST ≥ 3×ULN → critical."""
    order = active_thiopurine(ctx, panel.observed_at, settings)
    if order is None:
        return None
    sex = ctx.demographics.sex
    hits = []
    for analyte in (Analyte.ALT, Analyte.AST):
        obs = panel.get(analyte)
        if obs is None:
            continue
        ratio = x_uln(obs, settings, sex)
        if ratio is not None and ratio >= settings.hepatotoxicity_x_uln:
            hits.append((analyte, obs, ratio))
    if not hits:
        return None
    worst = max(hits, key=lambda hit: hit[2])
    drug = order.ingredient or "thiopurine"
    title = f"{drug.capitalize()} hepatotoxicity: {worst[0].value} {fmt(worst[2])} × ULN"
    described = "; ".join(f"{a.value} {fmt(o.value or 0)} {o.unit} ({fmt(r)} × ULN)" for a, o, r in hits)
    shown = [panel.get(a) for a in (Analyte.ALT, Analyte.AST, Analyte.ALP, Analyte.GGT, Analyte.BILI_TOTAL)]
    return Finding(
        rule=HEPATOTOXICITY_STOP,
        severity=Severity.CRITICAL,
        title=title,
        summary=f"{described} on active {drug}: stop {drug} and repeat liver panel",
        evidence=tuple(evidence(o, settings, sex) for o in shown if o is not None),
        order=order,
        recommendations=_STOP_ACTIONS,
        references=_STOP_REFERENCES,
        occurred_at=panel.observed_at,
        pattern=r_ratio(panel, settings, sex),
    )
