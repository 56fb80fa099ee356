"""Dispenses (CLINICAL.md decision 14): RDS^O13 with ORC-1 RE.

The fold as a table (`dispenses.apply_dispense`, `orders.apply_event` on an
order opened by dispenses), then messages through the daemon's own pipeline
(`offline.check`: HL7 in, alert events out) and the orders the store keeps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hl7_alerts.config import Config, parse_config
from hl7_alerts.dispenses import DispenseChange, apply_dispense, episode_id
from hl7_alerts.frames import FrameHandler, FrameSettings
from hl7_alerts.messages import parse_message
from hl7_alerts.metrics import Metrics
from hl7_alerts.model import AckCode, MedicationOrder, OrderControl, OrderMessage, OrderState, OrderStatus
from hl7_alerts.offline import list_orders
from hl7_alerts.orders import apply_event
from hl7_alerts.segments import MessageError
from hl7_alerts.store import Store
from tests.support.backends import Backend
from tests.support.hl7kit import ALLOPURINOL, AZA, alt, dispense_msg, events, order_msg, oru, run_check

T0 = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
LAPSE = 90 * DAY
WATCHED = frozenset({"azathioprine", "allopurinol", "febuxostat"})


def hl7_time(at: datetime) -> str:
    return at.strftime("%Y%m%d%H%M")


def dispense(at: datetime, *, order_id: str = "RX1", ingredient: str | None = "azathioprine") -> MedicationOrder:
    return MedicationOrder(
        order_id=order_id, control=OrderControl.DISPENSE, drug_code="1256", drug_system="RXNORM",
        drug_text="Azathioprine 50 MG", ingredient=ingredient, dose="28 TAB", start=at, stop=None,
        transaction_time=at,
    )


def ordered(control: OrderControl, at: datetime) -> MedicationOrder:
    stopping = control is OrderControl.DISCONTINUE
    return MedicationOrder(
        order_id="RX1", control=control, drug_code="1256", drug_system="RXNORM", drug_text="Azathioprine 50 MG",
        ingredient="azathioprine", dose="150 mg", start=at, stop=at if stopping else None, transaction_time=at,
    )


def fold(*dispense_times: datetime) -> list[OrderState]:
    """The patient's orders after dispenses at these times (in this order)."""
    orders: dict[str, OrderState] = {}
    for at in dispense_times:
        change = apply_dispense(tuple(orders.values()), dispense(at), lapse=LAPSE, watched=WATCHED)
        orders.update({o.order_id: o for o in change.writes})
    return sorted(orders.values(), key=lambda o: o.start or T0)


# -- the fold -------------------------------------------------------------------

def test_a_dispense_with_no_order_on_file_opens_one_that_lapses() -> None:
    change = apply_dispense((), dispense(T0), lapse=LAPSE, watched=WATCHED)
    assert change.opened is not None
    assert change.writes == (change.opened,)
    opened = change.opened
    assert (opened.order_id, opened.ingredient, opened.start, opened.stop, opened.dispensed) == (
        "RX1", "azathioprine", T0, T0 + LAPSE, T0)
    assert opened.status_at(T0 + 89 * DAY) is OrderStatus.ACTIVE
    assert opened.status_at(T0 + 90 * DAY) is OrderStatus.STOPPED


def test_a_dispense_of_an_order_on_file_changes_nothing() -> None:
    on_file = apply_event(None, ordered(OrderControl.NEW, T0))
    assert apply_dispense((on_file,), dispense(T0 + 5 * DAY), lapse=LAPSE, watched=WATCHED) == DispenseChange()
    stopped = apply_event(on_file, ordered(OrderControl.DISCONTINUE, T0 + 10 * DAY))
    change = apply_dispense((stopped,), dispense(T0 + 20 * DAY), lapse=LAPSE, watched=WATCHED)
    assert (change.writes, change.opened) == ((), None)  # a DC'd order is on file too: no reopening


@pytest.mark.parametrize(("ingredient", "opens"), [
    ("azathioprine", True), ("allopurinol", True), ("febuxostat", True), ("lisinopril", False), (None, False),
])
def test_only_watched_drugs_open_an_order(ingredient: str | None, opens: bool) -> None:
    change = apply_dispense((), dispense(T0, ingredient=ingredient), lapse=LAPSE, watched=WATCHED)
    assert (change.opened is not None) is opens


def test_a_refill_moves_the_lapse_from_the_last_dispense() -> None:
    (order,) = fold(T0, T0 + 60 * DAY)
    assert (order.start, order.stop, order.dispensed) == (T0, T0 + 150 * DAY, T0 + 60 * DAY)
    (late,) = fold(T0 + 60 * DAY, T0)  # an older dispense arriving late moves the start, not the lapse
    assert (late.start, late.stop, late.dispensed) == (T0, T0 + 150 * DAY, T0 + 60 * DAY)


def test_a_dispense_after_the_lapse_opens_a_new_order() -> None:
    first, second = fold(T0, T0 + 200 * DAY)
    assert (first.order_id, first.start, first.stop) == ("RX1", T0, T0 + LAPSE)
    assert second.order_id == episode_id("RX1", T0 + 200 * DAY) == "RX1 (dispensed from 2027-03-20)"
    assert (second.start, second.stop) == (T0 + 200 * DAY, T0 + 290 * DAY)
    # A refill of the new one extends it, not the lapsed one.
    first_again, extended = fold(T0, T0 + 200 * DAY, T0 + 250 * DAY)
    assert first_again == first
    assert extended.stop == T0 + 340 * DAY
    # A late refill of the first stops short of the second's start.
    early, _ = fold(T0, T0 + 200 * DAY, T0 + 80 * DAY)
    assert early.stop == T0 + 170 * DAY


def test_order_events_for_an_order_opened_by_dispenses() -> None:
    (opened,) = fold(T0)
    stopped = apply_event(opened, ordered(OrderControl.DISCONTINUE, T0 + 10 * DAY))
    assert (stopped.stop, stopped.dispensed) == (T0 + 10 * DAY, None)
    lapsed_first = apply_event(opened, ordered(OrderControl.DISCONTINUE, T0 + 100 * DAY))
    assert lapsed_first.stop == T0 + LAPSE  # it had lapsed before the DC came
    adopted = apply_event(opened, ordered(OrderControl.NEW, T0 - 2 * DAY))
    assert (adopted.start, adopted.stop, adopted.dispensed, adopted.dose) == (T0 - 2 * DAY, None, None, "150 mg")
    held = apply_event(opened, ordered(OrderControl.HOLD, T0 + 3 * DAY))
    assert held.status_at(T0 + 4 * DAY) is OrderStatus.HELD
    assert held.dispensed == T0


# -- the message ----------------------------------------------------------------

def test_rds_o13_maps_a_dispense() -> None:
    message = parse_message(dispense_msg("D1", "RX9", AZA, "202609010930").encode(), Config().parse_options())
    assert isinstance(message, OrderMessage)
    (event,) = message.orders
    assert event.control is OrderControl.DISPENSE
    assert (event.order_id, event.ingredient, event.dose) == ("RX9", "azathioprine", "28 TAB")
    assert event.start == event.transaction_time == datetime(2026, 9, 1, 9, 30, tzinfo=UTC)


def test_rds_without_rxd3_takes_msh7_and_without_rxd_is_ae() -> None:
    raw = dispense_msg("D1", "RX9", AZA, "202609010930").replace("|202609010930|28|", "||28|")
    message = parse_message(raw.encode(), Config().parse_options())
    assert isinstance(message, OrderMessage)
    assert message.orders[0].start == datetime(2026, 9, 1, 9, 30, tzinfo=UTC)
    no_rxd = dispense_msg("D2", "RX9", AZA, "20260901").replace("RXD|", "RXE|")
    with pytest.raises(MessageError) as caught:
        parse_message(no_rxd.encode(), Config().parse_options())
    assert (caught.value.ack_code, caught.value.segment) == (AckCode.AE, "RXD")


# -- through the pipeline ----------------------------------------------------------

D0 = "202609010900"


def at(days: int) -> str:
    return hl7_time(T0 + days * DAY)


def test_a_dispense_alone_makes_the_patient_count_for_the_rules(tmp_path: Path) -> None:
    out = run_check(tmp_path, dispense_msg("D1", "RX1", AZA, D0), oru("L1", at(20), alt("190", status="F")))
    assert events(out) == [
        ("aza.pgx.missing", "firing", "info"),
        ("aza.hepatotoxicity.stop", "firing", "critical"),
    ]
    stop = next(e for e in out if e.get("rule") == "aza.hepatotoxicity.stop")
    assert stop["medication"]["order_id"] == "RX1"


def test_a_dispense_with_an_order_on_file_adds_nothing(tmp_path: Path) -> None:
    out = run_check(
        tmp_path,
        order_msg("O1", "NW", "RX1", AZA, D0),
        dispense_msg("D1", "RX1", AZA, at(5)),
        dispense_msg("D2", "RX1", AZA, at(35)),
    )
    assert events(out) == [("aza.pgx.missing", "firing", "info")]  # the NW's, and nothing for the dispenses


def test_a_dispense_of_a_stopped_order_does_not_reopen_it(tmp_path: Path) -> None:
    out = run_check(
        tmp_path,
        order_msg("O1", "NW", "RX1", AZA, D0),
        order_msg("O2", "DC", "RX1", AZA, D0, tx=at(10)),
        dispense_msg("D1", "RX1", AZA, at(12)),
        oru("L1", at(60), alt("190")),  # 50 days after the stop: not exposed
    )
    assert events(out) == [("aza.pgx.missing", "firing", "info")]


@pytest.mark.parametrize(("lapse_days", "result_day", "fires"), [
    (90, 80, True),     # within the default 90 days after the dispense
    (90, 130, False),   # lapsed on day 90, 40 days before the result
    (30, 80, False),    # orders.dispense_lapse_days: lapsed on day 30
])
def test_a_dispensed_order_lapses(tmp_path: Path, lapse_days: int, result_day: int, fires: bool) -> None:
    config = parse_config(f"orders:\n  dispense_lapse_days: {lapse_days}\n")
    out = run_check(tmp_path, dispense_msg("D1", "RX1", AZA, D0), oru("L1", at(result_day), alt("190")), config=config)
    assert (("aza.hepatotoxicity.stop", "firing", "critical") in events(out)) is fires


def test_a_refill_keeps_the_order_active(tmp_path: Path) -> None:
    out = run_check(
        tmp_path,
        dispense_msg("D1", "RX1", AZA, D0),
        dispense_msg("D2", "RX1", AZA, at(80)),
        oru("L1", at(150), alt("190")),
    )
    assert events(out) == [("aza.pgx.missing", "firing", "info"), ("aza.hepatotoxicity.stop", "firing", "critical")]


def test_a_dispensed_inhibitor_counts_for_the_interaction(tmp_path: Path) -> None:
    out = run_check(tmp_path, order_msg("O1", "NW", "RX1", AZA, D0), dispense_msg("D1", "RX2", ALLOPURINOL, at(3)))
    assert ("aza.interaction.allopurinol", "firing", "high") in events(out)


def test_a_dc_stops_an_order_opened_by_dispenses(tmp_path: Path) -> None:
    out = run_check(
        tmp_path,
        dispense_msg("D1", "RX1", AZA, D0),
        order_msg("O2", "DC", "RX1", AZA, D0, tx=at(5)),
        oru("L1", at(50), alt("190")),  # 45 days after the DC: not exposed
    )
    assert events(out) == [("aza.pgx.missing", "firing", "info")]


async def _all_accepted(store: Store, *messages: str) -> None:
    """``messages`` through the daemon's frame handler (the default config,
    on the message clock), each answered AA."""
    config = Config()
    settings = FrameSettings(options=config.parse_options(), pipeline=config.pipeline_settings())
    frames = FrameHandler(store, lambda: settings, Metrics(), lambda: T0, max_message_bytes=1 << 20, replay=True)
    for m in messages:
        assert (await frames.answer(m.encode())).code is AckCode.AA


async def _orders_after(backend: Backend, *messages: str) -> list[OrderState]:
    store = await backend.open()
    try:
        await _all_accepted(store, *messages)
        return [o for _, o in await list_orders(store, "H0990001", "MR", None)]
    finally:
        await store.close()


async def test_the_store_keeps_the_dispensed_orders_and_their_lapse(backend: Backend) -> None:
    orders = await _orders_after(
        backend,
        dispense_msg("D1", "RX1", AZA, D0),
        dispense_msg("D2", "RX1", AZA, at(30)),
        dispense_msg("D3", "RX1", AZA, at(200)),
        dispense_msg("D3", "RX1", AZA, at(200)),  # a resend changes nothing
        dispense_msg("D4", "RX5", "999^Lisinopril 10 MG^RXNORM", at(3)),
        order_msg("O1", "NW", "RX7", AZA, at(1)),
        dispense_msg("D5", "RX7", AZA, at(2)),
    )
    summary = [(o.order_id, o.start, o.stop, o.dispensed) for o in orders]
    assert summary == [
        ("RX1", T0, T0 + 120 * DAY, T0 + 30 * DAY),
        ("RX7", T0 + DAY, None, None),
        ("RX1 (dispensed from 2027-03-20)", T0 + 200 * DAY, T0 + 290 * DAY, T0 + 200 * DAY),
    ]


async def test_an_order_opened_by_a_dispense_gets_a_liver_test_schedule(backend: Backend) -> None:
    """It counts as a new order for aza.monitoring.overdue too: a schedule
    from the dispense, and a new one (a reintroduction) after a lapse."""
    store = await backend.open()
    try:
        await _all_accepted(
            store,
            dispense_msg("D1", "RX1", AZA, D0), dispense_msg("D2", "RX1", AZA, at(30)),
            dispense_msg("D3", "RX1", AZA, at(200)),
        )
        schedules = await store.list_schedules(include_stopped=True)
    finally:
        await store.close()
    assert sorted((r.order_id, r.start, r.due) for r in schedules) == [
        ("RX1", T0, T0 + 7 * DAY),
        ("RX1 (dispensed from 2027-03-20)", T0 + 200 * DAY, T0 + 207 * DAY),
    ]
