"""Order lifecycle: fold one ORC event into an order's state.

Pure. NW starts an order (a repeated or late NW changes nothing it already
knows); XO and SC change it and keep its identity; DC, OD,
CA and OC stop it at the event's time; HD holds it from its transaction time
until an RL (CLINICAL.md decision 9). An event for an order we never saw
begin (a feed joined mid-stream) creates it from what the event says.
"""

from __future__ import annotations

from dataclasses import replace

from hl7_alerts.model import HoldPeriod, MedicationOrder, OrderControl, OrderState

_STOPPING = frozenset(
    {OrderControl.DISCONTINUE, OrderControl.DISCONTINUED, OrderControl.CANCEL, OrderControl.CANCELLED}
)
STOPPING = _STOPPING
"""The order controls that stop an order (DC, OD, CA, OC)."""


def apply_event(state: OrderState | None, event: MedicationOrder) -> OrderState:
    """The order's state after ``event`` (dispenses, RE, are `dispenses.py`'s)."""
    if state is not None and state.dispensed is not None and (
        event.control is OrderControl.NEW or event.control in _STOPPING
    ):
        return _ordered(state, event)
    if state is not None and event.control is OrderControl.NEW:
        # A repeated NW, or an NW arriving after its DC: the order is known.
        # Rebuilding it would drop its stop and holds and bring a stopped
        # order back to life; fill in only what the store did not know.
        return replace(
            state,
            ingredient=state.ingredient or event.ingredient,
            drug_text=state.drug_text or event.drug_text,
            dose=state.dose or event.dose,
            start=state.start or event.start,
            stop=state.stop if state.stop is not None else event.stop,
        )
    if state is None:
        state = OrderState(
            order_id=event.order_id,
            ingredient=event.ingredient,
            drug_text=event.drug_text,
            dose=event.dose,
            start=None if event.control in _STOPPING else event.start,
            stop=event.stop if event.control in _STOPPING or event.control is OrderControl.NEW else None,
        )
        if event.control not in (OrderControl.HOLD,):
            return state
    at = event.transaction_time or event.start
    if event.control in _STOPPING:
        return replace(state, stop=event.stop or at)
    if event.control is OrderControl.HOLD and at is not None:
        if any(h.end is None for h in state.holds):
            return state
        return replace(state, holds=(*state.holds, HoldPeriod(start=at, end=None)))
    if event.control is OrderControl.RELEASE and at is not None:
        holds = tuple(replace(h, end=at) if h.end is None else h for h in state.holds)
        return replace(state, holds=holds)
    # XO / SC: same order, new details.
    return replace(
        state,
        ingredient=event.ingredient or state.ingredient,
        drug_text=event.drug_text or state.drug_text,
        dose=event.dose or state.dose,
        stop=event.stop if event.stop is not None else state.stop,
    )


def _ordered(state: OrderState, event: MedicationOrder) -> OrderState:
    """An order opened by dispenses (decision 14), meeting an NW or a stop:
    an NW puts the order on file (it no longer lapses: its own stop counts,
    and it began at the earlier of the two); a DC/CA stops it, at its lapse
    if that came first. Either way it lives by its order events from now on.
    Other events (XO, SC, HD, RL) apply as to any order."""
    if event.control is OrderControl.NEW:
        starts = [t for t in (state.start, event.start) if t is not None]
        return replace(
            state,
            start=min(starts, default=None),
            stop=event.stop,
            dispensed=None,
            dose=event.dose or state.dose,
        )
    at = event.stop or event.transaction_time or event.start
    stop = state.stop if at is None or (state.stop is not None and state.stop <= at) else at
    return replace(state, stop=stop, dispensed=None)
