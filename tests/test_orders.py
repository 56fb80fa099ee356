"""Order lifecycle as a table: what each ORC event does to an order's state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hl7_alerts.model import MedicationOrder, OrderControl, OrderState
from hl7_alerts.orders import apply_event

T0 = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def event(control: OrderControl, at: datetime, *, start: datetime | None = None) -> MedicationOrder:
    stopping = control in (OrderControl.DISCONTINUE, OrderControl.CANCEL)
    return MedicationOrder(
        order_id="RX1", control=control, drug_code="1256", drug_system="RXNORM", drug_text="Azathioprine 50 MG",
        ingredient="azathioprine", dose="150 mg", start=start or at, stop=at if stopping else None,
        transaction_time=at,
    )


def fold(*events: MedicationOrder) -> OrderState:
    state: OrderState | None = None
    for e in events:
        state = apply_event(state, e)
    assert state is not None
    return state


NW, DC, HD, RL, XO = (OrderControl.NEW, OrderControl.DISCONTINUE, OrderControl.HOLD, OrderControl.RELEASE,
                      OrderControl.CHANGE)

CASES = [
    # id, events, (active at T0+2d, active at T0+20d)
    ("new-is-active", [event(NW, T0)], (True, True)),
    ("stopped-after-dc", [event(NW, T0), event(DC, T0 + 10 * DAY)], (True, False)),
    ("repeated-nw-after-dc-stays-stopped", [event(NW, T0), event(DC, T0 + 10 * DAY), event(NW, T0)], (True, False)),
    ("dc-before-its-nw-keeps-the-stop", [event(DC, T0 + 10 * DAY), event(NW, T0)], (True, False)),
    ("held-then-released", [event(NW, T0), event(HD, T0 + DAY), event(RL, T0 + 5 * DAY)], (False, True)),
    ("repeated-nw-keeps-the-hold", [event(NW, T0), event(HD, T0 + DAY), event(NW, T0)], (False, False)),
    ("change-keeps-identity", [event(NW, T0), event(XO, T0 + DAY)], (True, True)),
]


@pytest.mark.parametrize(("events", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_order_lifecycle(events: list[MedicationOrder], expected: tuple[bool, bool]) -> None:
    state = fold(*events)
    assert (state.active_at(T0 + 2 * DAY), state.active_at(T0 + 20 * DAY)) == expected
    assert state.start == T0
