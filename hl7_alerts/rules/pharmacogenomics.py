"""Pharmacogenomics rules: TPMT and NUDT15 status (CPIC thiopurine guideline).

A result is read as a metabolizer status from, in order: a phenotype text
(poor, intermediate, possible/likely intermediate, normal, rapid, ultrarapid
metabolizer; for CWE the text component), a star-allele diplotype (CPIC
no-function alleles: two → poor, one → intermediate), or a TPMT activity
below the configured cut-offs (CLINICAL.md decision 11). What none of these
reads is unknown, never guessed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from datetime import datetime

from hl7_alerts.model import Observation, OrderState, PatientContext, Severity
from hl7_alerts.rules.common import Evidence, Finding, Panel, RuleSettings, active_thiopurine
from hl7_alerts.rules.ids import PGX_MISSING, PGX_POOR_METABOLIZER
from hl7_alerts.terminology import Analyte

GENES = (Analyte.TPMT, Analyte.NUDT15)

NO_FUNCTION: dict[Analyte, frozenset[str]] = {
    Analyte.TPMT: frozenset({"*2", "*3A", "*3B", "*3C", "*4"}),
    Analyte.NUDT15: frozenset({"*2", "*3"}),
}


class Metabolizer(enum.StrEnum):
    POOR = "poor"
    INTERMEDIATE = "intermediate"
    NORMAL = "normal"


_DIPLOTYPE = re.compile(r"(\*\d+[A-Za-z]?)\s*/\s*(\*\d+[A-Za-z]?)")
_NORMAL_WORDS = re.compile(r"\b(?:normal|rapid|ultrarapid|ultra-rapid|extensive)\b", re.I)


def metabolizer(obs: Observation, settings: RuleSettings) -> Metabolizer | None:
    """What one TPMT or NUDT15 result says, or None when it says nothing we read."""
    if obs.analyte not in (Analyte.TPMT, Analyte.NUDT15):
        return None
    text = obs.value_text
    lowered = text.lower()
    if "poor" in lowered:
        return Metabolizer.POOR
    if "intermediate" in lowered:
        return Metabolizer.INTERMEDIATE
    if _NORMAL_WORDS.search(text):
        return Metabolizer.NORMAL
    if m := _DIPLOTYPE.search(text):
        no_function = NO_FUNCTION[Analyte(obs.analyte)]
        count = sum(1 for allele in m.groups() if allele.upper() in no_function)
        return (Metabolizer.NORMAL, Metabolizer.INTERMEDIATE, Metabolizer.POOR)[count]
    if obs.analyte == Analyte.TPMT and obs.value is not None:
        poor, intermediate = settings.tpmt_activity_poor_below, settings.tpmt_activity_intermediate_below
        if poor is not None and obs.value < poor:
            return Metabolizer.POOR
        if intermediate is not None and obs.value < intermediate:
            return Metabolizer.INTERMEDIATE
        if poor is not None or intermediate is not None:
            return Metabolizer.NORMAL
    return None


def latest_per_gene(results: Iterable[Observation]) -> dict[Analyte, Observation]:
    latest: dict[Analyte, Observation] = {}
    for obs in results:
        if obs.analyte not in (Analyte.TPMT, Analyte.NUDT15) or not obs.status.evaluated:
            continue
        gene = Analyte(obs.analyte)
        if gene not in latest or obs.observed_at >= latest[gene].observed_at:
            latest[gene] = obs
    return latest


_POOR_ACTIONS = (
    "CPIC: poor metabolizer — avoid azathioprine or drastically reduce the dose",
    "Risk of severe myelosuppression",
    "Consider alternative immunosuppressive therapy",
)
_INTERMEDIATE_ACTIONS = (
    "CPIC: intermediate metabolizer — start at 30-80% of the normal dose",
    "Risk of severe myelosuppression: monitor blood counts closely",
)
_REFERENCES = (
    "CPIC Guideline for Thiopurine Dosing Based on TPMT and NUDT15 Genotypes (2018 update)",
    "Patients with low or absent TPMT or NUDT15 activity are at increased risk for severe "
    "myelosuppression and hepatotoxicity from azathioprine (shared/seed)",
)


def _poor_metabolizer(
    results: dict[Analyte, Observation], order: OrderState, settings: RuleSettings, at: datetime, sex: str
) -> Finding | None:
    statuses = {gene: m for gene, obs in results.items() if (m := metabolizer(obs, settings)) is not None}
    flagged = {g: m for g, m in statuses.items() if m in (Metabolizer.POOR, Metabolizer.INTERMEDIATE)}
    if not flagged:
        return None
    poor = Metabolizer.POOR in flagged.values()
    described = ", ".join(f"{g.value} {m.value} metabolizer" for g, m in flagged.items())
    drug = order.ingredient or "thiopurine"
    return Finding(
        rule=PGX_POOR_METABOLIZER,
        severity=Severity.CRITICAL if poor else Severity.HIGH,
        title=f"{described.capitalize()} on {drug}",
        summary=f"{described} with {drug} ordered: "
        + ("avoid or drastically reduce" if poor else "start at 30-80% of the normal dose"),
        evidence=tuple(
            Evidence(observation=results[g], ref_low=None, ref_high=None, x_uln=None) for g in flagged
        ),
        order=order,
        recommendations=_POOR_ACTIONS if poor else _INTERMEDIATE_ACTIONS,
        references=_REFERENCES,
        occurred_at=at,
        rests_on=tuple(g.value for g in flagged),
    )


def poor_metabolizer(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    """A new TPMT/NUDT15 result saying poor/intermediate while a thiopurine is active."""
    results = {g: o for g in GENES if (o := panel.get(g)) is not None}
    if not results:
        return None
    order = active_thiopurine(ctx, panel.observed_at, settings)
    if order is None:
        return None
    return _poor_metabolizer(results, order, settings, panel.observed_at, ctx.demographics.sex)


def poor_metabolizer_on_order(
    ctx: PatientContext, started: Sequence[OrderState], settings: RuleSettings
) -> Finding | None:
    """A thiopurine newly ordered with a poor/intermediate result on file."""
    for order in started:
        if order.ingredient not in settings.thiopurines or order.start is None:
            continue
        on_file = latest_per_gene(ctx.history)
        finding = _poor_metabolizer(on_file, order, settings, order.start, ctx.demographics.sex)
        if finding is not None:
            return finding
    return None


def pgx_missing(ctx: PatientContext, started: Sequence[OrderState], settings: RuleSettings) -> Finding | None:
    """A new thiopurine order and no TPMT or NUDT15 result on file (either) → info."""
    for order in started:
        if order.ingredient not in settings.thiopurines or order.start is None:
            continue
        on_file = latest_per_gene(ctx.history)
        missing = [g.value for g in GENES if g not in on_file]
        if not missing:
            continue
        drug = order.ingredient or "thiopurine"
        names = " and ".join(missing)
        return Finding(
            rule=PGX_MISSING,
            severity=Severity.INFO,
            title=f"No {names} result on file for new {drug} order",
            summary=f"New {drug} order {order.order_id}: no {names} result on file; consider testing",
            evidence=(),
            order=order,
            recommendations=(f"Consider {names} testing before or early in therapy",),
            references=(
                "Consider TPMT and NUDT15 testing if not previously done (shared/seed)",
                "CPIC Guideline for Thiopurine Dosing Based on TPMT and NUDT15 Genotypes",
            ),
            occurred_at=order.start,
            rests_on=tuple(missing),  # a later panel carrying them resolves the alert
        )
    return None
