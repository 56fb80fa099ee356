"""Marrow rule: myelosuppression on a thiopurine.

Shared-care thresholds (CLINICAL.md): WBC < 3.5, neutrophils < 1.6 or
platelets < 140 ×10⁹/L → high; neutrophils < 1.0 or platelets < 50 →
critical. Values are compared in 10⁹/L after unit conversion (10*3/uL, K/uL
and /uL convert); a count in a unit we do not know is not compared.
"""

from __future__ import annotations

from hl7_alerts.model import Observation, PatientContext, Severity
from hl7_alerts.rules.common import Finding, Panel, RuleSettings, active_thiopurine, evidence, fmt
from hl7_alerts.rules.ids import MYELOSUPPRESSION
from hl7_alerts.terminology import Analyte, to_canonical

_ACTIONS = (
    "Hold azathioprine and review (shared-care thresholds)",
    "Repeat full blood count",
    "Check TPMT and NUDT15 status",
    "Patients with low or absent TPMT or NUDT15 activity are at increased risk of severe myelosuppression",
)
_REFERENCES = (
    "Patients with low or absent TPMT or NUDT15 activity are at increased risk for severe "
    "myelosuppression (shared/seed)",
    "CPIC guideline for thiopurines and TPMT/NUDT15",
)
_NAMES = {Analyte.WBC: "WBC", Analyte.NEUTROPHILS: "neutrophils", Analyte.PLATELETS: "platelets"}


def myelosuppression(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    order = active_thiopurine(ctx, panel.observed_at, settings)
    if order is None:
        return None
    limits = {
        Analyte.WBC: (settings.wbc_below, None),
        Analyte.NEUTROPHILS: (settings.neutrophils_below, settings.neutrophils_critical_below),
        Analyte.PLATELETS: (settings.platelets_below, settings.platelets_critical_below),
    }
    low: list[tuple[Analyte, Observation, float]] = []
    critical = False
    for analyte, (below, critical_below) in limits.items():
        obs = panel.get(analyte)
        if obs is None or obs.value is None:
            continue
        value = to_canonical(analyte, obs.value, obs.unit)
        if value is None or value >= below:
            continue
        low.append((analyte, obs, value))
        critical = critical or (critical_below is not None and value < critical_below)
    if not low:
        return None
    drug = order.ingredient or "thiopurine"
    described = ", ".join(f"{_NAMES[a]} {fmt(v)} ×10⁹/L" for a, _, v in low)
    shown = [o for a in limits if (o := panel.get(a)) is not None]
    return Finding(
        rule=MYELOSUPPRESSION,
        severity=Severity.CRITICAL if critical else Severity.HIGH,
        title=f"Myelosuppression on {drug}: {described}",
        summary=f"{described} on active {drug}: hold and review; check TPMT/NUDT15",
        evidence=tuple(evidence(o, settings, ctx.demographics.sex) for o in shown),
        order=order,
        recommendations=_ACTIONS,
        references=_REFERENCES,
        occurred_at=panel.observed_at,
        rests_on=tuple(a.value for a, _, _ in low),
    )
