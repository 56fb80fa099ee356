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
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from hl7_alerts.model import Observation, OrderState, PatientContext, Severity
from hl7_alerts.rules.advice import CPIC, SEED
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


def _actions(flagged: Mapping[Analyte, Metabolizer], drug: str) -> tuple[str, ...]:
    """CPIC: poor — avoid or drastically reduce; intermediate — 30-80 % of the
    normal dose; intermediate for both TPMT and NUDT15 — 20-50 %."""
    if Metabolizer.POOR in flagged.values():
        return (
            f"CPIC: poor metabolizer — avoid {drug} or drastically reduce the dose",
            "Risk of severe myelosuppression",
            "Consider alternative immunosuppressive therapy",
        )
    if len(flagged) == len(GENES):
        first = (
            "CPIC: intermediate metabolizer for both TPMT and NUDT15 — "
            f"start {drug} at 20-50% of the normal dose"
        )
    else:
        first = f"CPIC: intermediate metabolizer — start {drug} at 30-80% of the normal dose"
    return (first, "Risk of severe myelosuppression: monitor blood counts closely")


def _dose(flagged: Mapping[Analyte, Metabolizer]) -> str:
    if Metabolizer.POOR in flagged.values():
        return "avoid or drastically reduce"
    return (
        "start at 20-50% of the normal dose"
        if len(flagged) == len(GENES)
        else "start at 30-80% of the normal dose"
    )


def _references(drug: str) -> tuple[str, ...]:
    return (
        CPIC,
        f"Patients with low or absent TPMT or NUDT15 activity are at increased risk for severe "
        f"myelosuppression and hepatotoxicity from {drug}: {SEED}",
    )


def _poor_metabolizer(
    results: dict[Analyte, Observation], order: OrderState, settings: RuleSettings, at: datetime, sex: str
) -> Finding | None:
    statuses = {gene: m for gene, obs in results.items() if (m := metabolizer(obs, settings)) is not None}
    flagged = {g: m for g, m in statuses.items() if m in (Metabolizer.POOR, Metabolizer.INTERMEDIATE)}
    if not flagged:
        return None
    poor = Metabolizer.POOR in flagged.values()
    # Genes in capitals, as written (decision 19): never str.capitalize() this.
    described = ", ".join(f"{g.label} {m.value} metabolizer" for g, m in flagged.items())
    drug = order.ingredient or "thiopurine"
    return Finding(
        rule=PGX_POOR_METABOLIZER,
        severity=Severity.CRITICAL if poor else Severity.HIGH,
        title=f"{described} on {drug}",
        summary=f"{described} with {drug} ordered: {_dose(flagged)}",
        evidence=tuple(
            Evidence(observation=results[g], ref_low=None, ref_high=None, x_uln=None) for g in flagged
        ),
        order=order,
        recommendations=_actions(flagged, drug),
        references=_references(drug),
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
    ctx: PatientContext,
    started: Sequence[OrderState],
    settings: RuleSettings,
    *,
    arrived_at: datetime | None = None,
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


def pgx_missing(
    ctx: PatientContext,
    started: Sequence[OrderState],
    settings: RuleSettings,
    *,
    arrived_at: datetime | None = None,
) -> Finding | None:
    """A new thiopurine order and no TPMT or NUDT15 result on file (either),
    naming which → info, once per patient (decision 11): a patient who had
    this alert gets no second one from a later order, and an order that
    started more than ``long_running_days`` before it arrived (long-running
    therapy, a feed joined mid-stream) raises none."""
    if any(a.rule == PGX_MISSING for a in ctx.alerts):
        return None
    long_running = timedelta(days=settings.long_running_days)
    for order in started:
        if order.ingredient not in settings.thiopurines or order.start is None:
            continue
        if arrived_at is not None and arrived_at - order.start > long_running:
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
            references=(f"Consider TPMT and NUDT15 testing if not previously done: {SEED}", CPIC),
            occurred_at=order.start,
            rests_on=tuple(missing),  # a later panel carrying them resolves the alert
        )
    return None
