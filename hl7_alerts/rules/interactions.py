"""Interaction rule: a xanthine-oxidase inhibitor with a thiopurine.

Allopurinol (and febuxostat, critical) blocks azathioprine's inactivation;
the seed says to reduce azathioprine to 1/3-1/4 of the usual dose. Either
order may come second: the rule looks at the order that just started and asks
whether one of the other kind is active at its start.
"""

from __future__ import annotations

from collections.abc import Sequence

from hl7_alerts.model import OrderState, PatientContext, Severity
from hl7_alerts.rules.common import Finding, RuleSettings
from hl7_alerts.rules.ids import INTERACTION_ALLOPURINOL

_REFERENCES = (
    "If using allopurinol with azathioprine, the azathioprine dose must be reduced to approximately "
    "1/3 to 1/4 the usual dose to prevent toxicity (shared/seed)",
)


def _pairs(
    ctx: PatientContext, started: Sequence[OrderState], settings: RuleSettings
) -> list[tuple[OrderState, OrderState, OrderState]]:
    """(thiopurine, inhibitor, the one that came second) for each new overlap."""
    inhibitors = settings.xanthine_oxidase_inhibitors
    found = []
    for new in started:
        if new.start is None:
            continue
        if new.ingredient in settings.thiopurines:
            others = [o for o in ctx.orders if o.ingredient in inhibitors and o.active_at(new.start)]
            found += [(new, o, new) for o in others]
        elif new.ingredient in inhibitors:
            others = [
                o for o in ctx.orders if o.ingredient in settings.thiopurines and o.active_at(new.start)
            ]
            found += [(o, new, new) for o in others]
    return found


def allopurinol(ctx: PatientContext, started: Sequence[OrderState], settings: RuleSettings) -> Finding | None:
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
    return Finding(
        rule=INTERACTION_ALLOPURINOL,
        severity=severity,
        title=f"{other.capitalize()} with {drug}",
        summary=f"{other} ({inhibitor.dose or 'dose not given'}) and {drug} "
        f"({thio.dose or 'dose not given'}) active together: reduce {drug} to 1/3-1/4 of the usual dose",
        evidence=(),
        order=thio,
        recommendations=(
            f"Reduce {drug} to 1/3-1/4 of the usual dose",
            "Monitor full blood count and liver enzymes closely",
        )
        + (("Febuxostat with a thiopurine is best avoided",) if severity is Severity.CRITICAL else ()),
        references=_REFERENCES,
        occurred_at=second.start,
    )
