"""The entry points: every rule over every new panel, and over new orders.

Results are grouped into panels (specimen + observation time, filled in from
stored results of the same panel); each panel rule sees one panel and the
patient context and says whether its condition holds. `assess` then applies
CLINICAL.md decision 1 (which liver rules share a panel) and reports, per
panel, which rules held: alert reconciliation needs that to resolve alerts a
later panel no longer supports. Order rules run on the orders a message
started (NW).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from hl7_alerts.model import Observation, OrderState, PastAlert, PatientContext, ResultStatus
from hl7_alerts.rules import interactions, liver, marrow, pharmacogenomics
from hl7_alerts.rules.common import Evidence, Finding, Panel, RuleSettings, evidence, panels
from hl7_alerts.rules.ids import (
    CHOLESTASIS,
    HEPATOTOXICITY_STOP,
    HYS_LAW,
    LIVER_MILD,
    RECHALLENGE_RECURRENCE,
)

Rule = Callable[[PatientContext, Panel, RuleSettings], Finding | None]
OrderRule = Callable[[PatientContext, Sequence[OrderState], RuleSettings], Finding | None]

LIVER_PANEL_RULES: tuple[Rule, ...] = (
    liver.hys_law,
    liver.hepatotoxicity_stop,
    liver.cholestasis,
    liver.rechallenge_recurrence,
    liver.liver_mild,
)
# Run after the liver rules: synthetic function looks at the liver alerts open
# (including those this panel just raised).
OTHER_PANEL_RULES: tuple[Rule, ...] = (
    liver.synthetic_function,
    liver.post_stop_low_alp,
    liver.post_stop_normalized,
    marrow.myelosuppression,
    pharmacogenomics.poor_metabolizer,
)
PANEL_RULES: tuple[Rule, ...] = LIVER_PANEL_RULES + OTHER_PANEL_RULES
ORDER_RULES: tuple[OrderRule, ...] = (
    pharmacogenomics.pgx_missing,
    pharmacogenomics.poor_metabolizer_on_order,
    interactions.allopurinol,
)

__all__ = [
    "ORDER_RULES",
    "PANEL_RULES",
    "Assessment",
    "Finding",
    "PanelVerdict",
    "RuleSettings",
    "assess",
    "evaluate",
    "evaluate_orders",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PanelVerdict:
    """What one panel said: which analytes it carried, which rules held on it
    (before decision 1 folded any away)."""

    observed_at: datetime
    specimen_id: str
    analytes: frozenset[str]
    held: frozenset[str]
    evidence: tuple[Evidence, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Assessment:
    findings: tuple[Finding, ...]
    verdicts: tuple[PanelVerdict, ...]


def _fold_liver(raw: dict[str, Finding]) -> list[Finding]:
    """CLINICAL.md decision 1."""
    sent = dict(raw)
    if RECHALLENGE_RECURRENCE in sent:
        sent.pop(HEPATOTOXICITY_STOP, None)
        sent.pop(LIVER_MILD, None)
    if HYS_LAW in sent:
        sent.pop(HEPATOTOXICITY_STOP, None)
    if any(r in sent for r in (HYS_LAW, HEPATOTOXICITY_STOP, CHOLESTASIS, RECHALLENGE_RECURRENCE)):
        sent.pop(LIVER_MILD, None)
    order = (HYS_LAW, HEPATOTOXICITY_STOP, CHOLESTASIS, RECHALLENGE_RECURRENCE, LIVER_MILD)
    return [sent[r] for r in order if r in sent]


def _mark_preliminary(finding: Finding) -> Finding:
    """A finding resting on a preliminary (OBX-11 P) value says so in its title."""
    preliminary = any(
        e.observation.status is ResultStatus.PRELIMINARY and e.observation.analyte in finding.rests_on
        for e in finding.evidence
    )
    if not preliminary:
        return finding
    return replace(
        finding, title=f"Preliminary: {finding.title}", summary=f"Preliminary result. {finding.summary}"
    )


def assess(ctx: PatientContext, new: Sequence[Observation], settings: RuleSettings) -> Assessment:
    """Findings and per-panel verdicts for the new results of one message, in
    observation-time order."""
    findings: list[Finding] = []
    verdicts: list[PanelVerdict] = []
    for panel in panels(new, ctx.history):
        raw: dict[str, Finding] = {}
        for rule in LIVER_PANEL_RULES:
            if (finding := rule(ctx, panel, settings)) is not None:
                raw[finding.rule] = finding
        liver_sent = _fold_liver(raw)
        raised = tuple(
            PastAlert(rule=f.rule, open=True, opened_at=f.occurred_at, evidence_at=f.occurred_at)
            for f in liver_sent
        )
        if raised:
            ctx = replace(ctx, alerts=ctx.alerts + raised)
        others = [f for rule in OTHER_PANEL_RULES if (f := rule(ctx, panel, settings)) is not None]
        findings += [_mark_preliminary(f) for f in liver_sent + others]
        verdicts.append(
            PanelVerdict(
                observed_at=panel.observed_at,
                specimen_id=panel.specimen_id,
                analytes=frozenset(panel.results),
                held=frozenset(raw) | {f.rule for f in others},
                evidence=tuple(evidence(o, settings, ctx.demographics.sex) for o in panel.results.values()),
            )
        )
    return Assessment(findings=tuple(findings), verdicts=tuple(verdicts))


def evaluate(ctx: PatientContext, new: Sequence[Observation], settings: RuleSettings) -> list[Finding]:
    """Findings for the new results of one message, in observation-time order."""
    return list(assess(ctx, new, settings).findings)


def evaluate_orders(
    ctx: PatientContext, started: Sequence[OrderState], settings: RuleSettings
) -> list[Finding]:
    """Findings for the orders one message started (NW), against the patient's
    other orders and results on file."""
    if not started:
        return []
    return [f for rule in ORDER_RULES if (f := rule(ctx, started, settings)) is not None]
