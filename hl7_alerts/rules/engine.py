"""The entry points: every rule over every new panel, and over new orders.

Results are grouped into panels (specimen + observation time, filled in from
stored results of the same panel); each panel rule sees one panel and the
patient context and says whether its condition holds. The rules that judge
drug injury get the patient's `Exposure` at the panel's time from here
(decision 16: active, held, recently stopped, or followed while an alert of
theirs is open), never decide it themselves; when the patient is none of
these, they still judge the values (`exposure.judging`) so that an open alert
is resolved only by values below its thresholds (decision 3), but nothing
they find is sent. `assess` then applies decision 1 (which liver rules share
a panel; the post-stop reassurance only when no liver rule fires) and
reports, per panel, which rules held: alert reconciliation needs that to
resolve alerts a later panel no longer supports. Order rules run on the
orders a message started (NW), with the time the message arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from hl7_alerts.model import Observation, OrderState, PastAlert, PatientContext, ResultStatus
from hl7_alerts.rules import interactions, liver, marrow, pharmacogenomics, unscored
from hl7_alerts.rules.common import Evidence, Finding, Panel, RuleSettings, evidence, panels
from hl7_alerts.rules.exposure import Exposure, exposure, judging
from hl7_alerts.rules.ids import (
    CHOLESTASIS,
    HEPATOTOXICITY_STOP,
    HYPERBILIRUBINEMIA,
    HYS_LAW,
    LIVER_MILD,
    LIVER_RULES,
    MARROW_RULES,
    POST_STOP_LOW_ALP,
    POST_STOP_NORMALIZED,
    RECHALLENGE_RECURRENCE,
    RESULT_UNSCORED,
    SYNTHETIC_FUNCTION,
)

Rule = Callable[[PatientContext, Panel, RuleSettings], Finding | None]
ExposedRule = Callable[[PatientContext, Panel, RuleSettings, Exposure], Finding | None]


class OrderRule:
    """An order rule: (context, started orders, settings, arrived_at=) -> finding."""

    def __init__(self, check: Callable[..., Finding | None]) -> None:
        self.check = check

    def __call__(
        self,
        ctx: PatientContext,
        started: Sequence[OrderState],
        settings: RuleSettings,
        arrived_at: datetime | None,
    ) -> Finding | None:
        result: Finding | None = self.check(ctx, started, settings, arrived_at=arrived_at)
        return result


LIVER_PANEL_RULES: tuple[ExposedRule, ...] = (
    liver.hys_law,
    liver.hepatotoxicity_stop,
    liver.cholestasis,
    liver.hyperbilirubinemia,
    liver.rechallenge_recurrence,
    liver.liver_mild,
)
# Run after the liver rules: synthetic function looks at the liver alerts open
# (including those this panel just raised). Each with the open alerts that
# keep a stopped drug under follow-up for it.
EXPOSED_PANEL_RULES: tuple[tuple[ExposedRule, frozenset[str]], ...] = (
    (liver.synthetic_function, LIVER_RULES | {SYNTHETIC_FUNCTION}),
    (marrow.myelosuppression, MARROW_RULES),
    (unscored.result_unscored, LIVER_RULES | MARROW_RULES | {SYNTHETIC_FUNCTION, RESULT_UNSCORED}),
)
OTHER_PANEL_RULES: tuple[Rule, ...] = (
    liver.post_stop_low_alp,
    liver.post_stop_normalized,
    pharmacogenomics.poor_metabolizer,
)
POST_STOP = frozenset({POST_STOP_LOW_ALP, POST_STOP_NORMALIZED})
ORDER_RULES: tuple[OrderRule, ...] = (
    OrderRule(pharmacogenomics.pgx_missing),
    OrderRule(pharmacogenomics.poor_metabolizer_on_order),
    OrderRule(interactions.allopurinol),
)

__all__ = [
    "EXPOSED_PANEL_RULES",
    "LIVER_PANEL_RULES",
    "ORDER_RULES",
    "OTHER_PANEL_RULES",
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
    """CLINICAL.md decision 1 (with hyperbilirubinemia in liver.mild's place)."""
    sent = dict(raw)
    if RECHALLENGE_RECURRENCE in sent:
        sent.pop(HEPATOTOXICITY_STOP, None)
        sent.pop(LIVER_MILD, None)
    if HYS_LAW in sent:
        sent.pop(HEPATOTOXICITY_STOP, None)
    if HYS_LAW in sent or CHOLESTASIS in sent:
        sent.pop(HYPERBILIRUBINEMIA, None)
    if any(
        r in sent
        for r in (HYS_LAW, HEPATOTOXICITY_STOP, CHOLESTASIS, HYPERBILIRUBINEMIA, RECHALLENGE_RECURRENCE)
    ):
        sent.pop(LIVER_MILD, None)
    order = (
        HYS_LAW,
        HEPATOTOXICITY_STOP,
        CHOLESTASIS,
        HYPERBILIRUBINEMIA,
        RECHALLENGE_RECURRENCE,
        LIVER_MILD,
    )
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


def _exposure(
    ctx: PatientContext, at: datetime, settings: RuleSettings, followed: frozenset[str]
) -> Exposure | None:
    """The exposure a rule judges with: the patient's (sent), else a judging one."""
    return exposure(ctx, at, settings, followed=followed) or judging(ctx, at, settings)


def assess(ctx: PatientContext, new: Sequence[Observation], settings: RuleSettings) -> Assessment:
    """Findings and per-panel verdicts for the new results of one message, in
    observation-time order."""
    findings: list[Finding] = []
    verdicts: list[PanelVerdict] = []
    for panel in panels(new, ctx.history):
        at = panel.observed_at
        raw: dict[str, Finding] = {}
        exp = _exposure(ctx, at, settings, LIVER_RULES)
        if exp is not None:
            for rule in LIVER_PANEL_RULES:
                if (finding := rule(ctx, panel, settings, exp)) is not None:
                    raw[finding.rule] = finding
        liver_sent = _fold_liver(raw) if exp is not None and not exp.judging else []
        raised = tuple(
            PastAlert(rule=f.rule, open=True, opened_at=f.occurred_at, evidence_at=f.occurred_at)
            for f in liver_sent
        )
        if raised:
            ctx = replace(ctx, alerts=ctx.alerts + raised)
        others: list[Finding] = []
        held = set(raw)
        for exposed_rule, followed in EXPOSED_PANEL_RULES:
            rule_exp = _exposure(ctx, at, settings, followed)
            if rule_exp is None or (finding := exposed_rule(ctx, panel, settings, rule_exp)) is None:
                continue
            held.add(finding.rule)
            if not rule_exp.judging:
                others.append(finding)
        for other_rule in OTHER_PANEL_RULES:
            if (finding := other_rule(ctx, panel, settings)) is None:
                continue
            held.add(finding.rule)
            # The seed's reassurance is for a panel no liver rule speaks about.
            if not (finding.rule in POST_STOP and liver_sent):
                others.append(finding)
        findings += [_mark_preliminary(f) for f in liver_sent + others]
        verdicts.append(
            PanelVerdict(
                observed_at=panel.observed_at,
                specimen_id=panel.specimen_id,
                analytes=frozenset(panel.results),
                held=frozenset(held),
                evidence=tuple(evidence(o, settings, ctx.demographics.sex) for o in panel.results.values()),
            )
        )
    return Assessment(findings=tuple(findings), verdicts=tuple(verdicts))


def evaluate(ctx: PatientContext, new: Sequence[Observation], settings: RuleSettings) -> list[Finding]:
    """Findings for the new results of one message, in observation-time order."""
    return list(assess(ctx, new, settings).findings)


def evaluate_orders(
    ctx: PatientContext,
    started: Sequence[OrderState],
    settings: RuleSettings,
    *,
    arrived_at: datetime | None = None,
) -> list[Finding]:
    """Findings for the orders one message started (NW), against the patient's
    other orders and results on file; ``arrived_at`` is when the message
    arrived (a long-running order first seen now raises no pgx.missing)."""
    if not started:
        return []
    return [f for rule in ORDER_RULES if (f := rule(ctx, started, settings, arrived_at)) is not None]
