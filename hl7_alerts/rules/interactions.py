"""Interaction rule: a xanthine-oxidase inhibitor with a thiopurine it breaks down.

Xanthine oxidase inactivates azathioprine (through mercaptopurine) and
mercaptopurine; allopurinol blocks it, so the seed says to reduce the
thiopurine to 1/3-1/4 of the usual dose. Febuxostat is contraindicated with
either: avoid the combination, no dose advice. Thioguanine is not broken
down by xanthine oxidase and never fires. Either order may come second: the
rule looks at the order that just started and asks whether one of the other
kind is active at its start.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from hl7_alerts.model import OrderState, PatientContext, Severity
from hl7_alerts.rules.advice import FEBUXOSTAT_LABEL, SEED
from hl7_alerts.rules.common import Finding, RuleSettings
from hl7_alerts.rules.ids import INTERACTION_ALLOPURINOL
from hl7_alerts.terminology import XANTHINE_OXIDASE_SUBSTRATES, Ingredient

__all__ = ["XANTHINE_OXIDASE_SUBSTRATES", "allopurinol"]


def _pairs(
    ctx: PatientContext, started: Sequence[OrderState], settings: RuleSettings
) -> list[tuple[OrderState, OrderState, OrderState]]:
    """(thiopurine, inhibitor, the one that came second) for each new overlap."""
    inhibitors = settings.xanthine_oxidase_inhibitors
    watched = settings.thiopurines & XANTHINE_OXIDASE_SUBSTRATES
    found = []
    for new in started:
        if new.start is None:
            continue
        if new.ingredient in watched:
            others = [o for o in ctx.orders if o.ingredient in inhibitors and o.active_at(new.start)]
            found += [(new, o, new) for o in others]
        elif new.ingredient in inhibitors:
            others = [o for o in ctx.orders if o.ingredient in watched and o.active_at(new.start)]
            found += [(o, new, new) for o in others]
    return found


def allopurinol(
    ctx: PatientContext,
    started: Sequence[OrderState],
    settings: RuleSettings,
    *,
    arrived_at: datetime | None = None,
) -> Finding | None:
    pairs = _pairs(ctx, started, settings)
    if not pairs:
        return None
    inhibitors = settings.xanthine_oxidase_inhibitors
    thio, inhibitor, second = max(
        pairs, key=lambda p: inhibitors.get(p[1].ingredient or "", Severity.HIGH).rank
    )
    severity = inhibitors.get(inhibitor.ingredient or "", Severity.HIGH)
    drug, other = thio.ingredient or "thiopurine", inhibitor.ingredient or inhibitor.drug_text
    assert second.start is not None
    doses = f"{other} ({inhibitor.dose or 'dose not given'}) and {drug} ({thio.dose or 'dose not given'})"
    if inhibitor.ingredient == Ingredient.FEBUXOSTAT:
        advice = "contraindicated, avoid the combination"
        actions: tuple[str, ...] = (
            f"Febuxostat with {drug} is contraindicated: avoid the combination",
            "Stop one of them, or get specialist advice before continuing either",
            "Monitor full blood count and liver enzymes closely meanwhile",
        )
        references: tuple[str, ...] = (FEBUXOSTAT_LABEL,)
    else:
        advice = f"reduce {drug} to 1/3-1/4 of the usual dose"
        actions = (
            f"Reduce {drug} to 1/3-1/4 of the usual dose",
            "Monitor full blood count and liver enzymes closely",
        )
        references = (
            f"If using allopurinol with azathioprine, the azathioprine dose must be reduced to approximately "
            f"1/3 to 1/4 the usual dose to prevent toxicity: {SEED}",
        )
    return Finding(
        rule=INTERACTION_ALLOPURINOL,
        severity=severity,
        title=f"{other.capitalize()} with {drug}",
        summary=f"{doses} active together: {advice}",
        evidence=(),
        order=thio,
        recommendations=actions,
        references=references,
        occurred_at=second.start,
    )
