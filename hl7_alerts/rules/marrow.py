"""Marrow rule: myelosuppression on a thiopurine.

Shared-care thresholds (CLINICAL.md; BSR/BHPR 2017): WBC < 3.5, neutrophils
< 1.6 or platelets < 140 ×10⁹/L → high; neutrophils < 1.0 or platelets < 50
→ critical. Counts are compared in 10⁹/L after unit conversion, at the
precision they were reported (decision 17); a count in a unit we do not know
is not compared (`aza.result.unscored` speaks for it when the lab flagged it).
The patient's `Exposure` comes from the engine (decision 16).
"""

from __future__ import annotations

import math

from hl7_alerts.model import Observation, OrderStatus, PatientContext, Severity
from hl7_alerts.rules import advice
from hl7_alerts.rules.common import Finding, Panel, RuleSettings, evidence, fmt
from hl7_alerts.rules.exposure import Exposure
from hl7_alerts.rules.ids import MYELOSUPPRESSION
from hl7_alerts.terminology import Analyte, conversion_factor, reported_decimals

COUNTS = (Analyte.WBC, Analyte.NEUTROPHILS, Analyte.PLATELETS)
_CPIC_LINE = (
    "Patients with low or absent TPMT or NUDT15 activity are at increased risk of severe myelosuppression"
)


def count(obs: Observation) -> float | None:
    """The count in 10⁹/L, rounded to the precision it was reported at (a
    count in /uL keeps three more decimals), or None when it cannot be read."""
    if obs.value is None or obs.analyte is None:
        return None
    factor = conversion_factor(Analyte(obs.analyte), obs.unit)
    if factor is None:
        return None
    extra = max(0, round(-math.log10(factor)))
    return round(obs.value * factor, reported_decimals(obs.value_text) + extra)


def myelosuppression(
    ctx: PatientContext, panel: Panel, settings: RuleSettings, exp: Exposure
) -> Finding | None:
    limits = {
        Analyte.WBC: (settings.wbc_below, None),
        Analyte.NEUTROPHILS: (settings.neutrophils_below, settings.neutrophils_critical_below),
        Analyte.PLATELETS: (settings.platelets_below, settings.platelets_critical_below),
    }
    low: list[tuple[Analyte, Observation, float]] = []
    critical = False
    neutropenic = False
    for analyte, (below, critical_below) in limits.items():
        obs = panel.get(analyte)
        value = None if obs is None else count(obs)
        if obs is None or value is None or value >= below:
            continue
        low.append((analyte, obs, value))
        if critical_below is not None and value < critical_below:
            critical = True
            neutropenic = neutropenic or analyte is Analyte.NEUTROPHILS
    if not low:
        return None
    drug = exp.drug
    described = ", ".join(f"{a.label} {fmt(v)} ×10⁹/L" for a, _, v in low)
    shown = [o for a in limits if (o := panel.get(a)) is not None]
    actions = [
        f"{exp.hold_advice()} (shared-care thresholds)",
        "Repeat full blood count",
        "Check TPMT and NUDT15 status",
        _CPIC_LINE,
    ]
    if neutropenic:
        actions.insert(
            0, "Neutrophils below 1.0 ×10⁹/L: if febrile or unwell, treat as neutropenic sepsis now"
        )
    act = "hold and review" if exp.active else "review"
    return Finding(
        rule=MYELOSUPPRESSION,
        severity=Severity.CRITICAL if critical else Severity.HIGH,
        title=f"Myelosuppression on {drug}: {described}"
        + ("" if exp.active else f" ({'held' if exp.status is OrderStatus.HELD else 'stopped'})"),
        summary=f"{described} {exp.state}: {act}; check TPMT/NUDT15",
        evidence=tuple(evidence(o, settings, ctx.demographics.sex) for o in shown),
        order=exp.order,
        recommendations=tuple(advice.named(a, drug) for a in actions),
        references=(advice.SHARED_CARE, advice.CPIC),
        occurred_at=panel.observed_at,
        rests_on=tuple(a.value for a, _, _ in low),
    )
