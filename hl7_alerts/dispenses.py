"""Dispenses: what a pharmacy's RDS^O13 means for a patient's orders.

CLINICAL.md decision 14. A dispense (ORC-1 RE, drug in RXD-2, time RXD-3)
whose placer order (ORC-2) is on file as an order is evidence for that order
and changes nothing. A dispense of a watched drug (a thiopurine, allopurinol,
febuxostat) with no order on file opens one, active from the dispense time;
it lapses (stops) ``lapse`` after its last dispense, or when a DC/CA stops
it (`orders.apply_event`). A dispense after the order lapsed is a restart:
a new order, with an id of its own (``<placer> (dispensed from <date>)``),
so the rules see the gap (exposure, rechallenge) and the monitoring
schedule starts again, as for a reintroduction. Pure: the caller reads the
patient's orders and writes what `apply_dispense` returns.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from hl7_alerts.model import MedicationOrder, OrderState


@dataclass(frozen=True, slots=True, kw_only=True)
class DispenseChange:
    """What one dispense does: the orders to write (none: it changes
    nothing), and the one it opened, if any (order rules and the liver-test
    schedule treat it as a new order)."""

    writes: tuple[OrderState, ...] = ()
    opened: OrderState | None = None


def episode_id(placer: str, start: datetime) -> str:
    """The id of an order a dispense reopens after its lapse."""
    return f"{placer} (dispensed from {start.date().isoformat()})"


def episodes(orders: Sequence[OrderState], placer: str) -> list[OrderState]:
    """The orders one placer number stands for, earliest start first: the
    order itself, and the ones dispenses reopened after it lapsed."""
    prefix = f"{placer} (dispensed from "
    found = [o for o in orders if o.order_id == placer or o.order_id.startswith(prefix)]
    return sorted(found, key=lambda o: (o.start is None, o.start or datetime.min))


def current(orders: Sequence[OrderState], placer: str) -> OrderState | None:
    """The order an event for ``placer`` (DC, HD, NW, ...) is about: the
    latest of its episodes."""
    found = episodes(orders, placer)
    return found[-1] if found else None


def apply_dispense(
    orders: Sequence[OrderState],
    event: MedicationOrder,
    *,
    lapse: timedelta,
    watched: Collection[str],
) -> DispenseChange:
    """The orders to write after one dispense of the patient (``orders``: all
    of the patient's orders on file)."""
    at = event.start
    if at is None:
        return DispenseChange()
    found = episodes(orders, event.order_id)
    if any(o.dispensed is None for o in found):
        # An order on file (ordered, or stopped by a DC/CA): the dispense is
        # evidence for it and changes nothing.
        return DispenseChange()
    for index, episode in enumerate(found):
        later = found[index + 1] if index + 1 < len(found) else None
        if episode.start is None or episode.dispensed is None:
            continue
        if episode.start <= at <= (episode.stop or at):
            # A refill while it runs: the lapse counts from the last dispense,
            # never into the next episode.
            stop = max(episode.stop or at, at + lapse)
            if later is not None and later.start is not None:
                stop = min(stop, later.start)
            updated = replace(episode, dispensed=max(episode.dispensed, at), stop=stop)
            return DispenseChange(writes=(updated,) if updated != episode else ())
        if at < episode.start <= at + lapse:
            # A dispense that arrived late, before the first one known: the
            # order began at it.
            return DispenseChange(writes=(replace(episode, start=at),))
    if event.ingredient not in watched and not found:
        return DispenseChange()  # a drug no rule looks at, with no order to keep
    following = next((o.start for o in found if o.start is not None and o.start > at), None)
    stop = at + lapse if following is None else min(at + lapse, following)
    source = found[-1] if found else None
    opened = OrderState(
        order_id=event.order_id if not found else episode_id(event.order_id, at),
        ingredient=event.ingredient or (source.ingredient if source else None),
        drug_text=event.drug_text or (source.drug_text if source else ""),
        dose=event.dose,
        start=at,
        stop=stop,
        dispensed=at,
    )
    return DispenseChange(writes=(opened,), opened=opened)
