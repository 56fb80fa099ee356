"""Payloads are strict JSON (issue 18 item 4): a number no double can hold is
not a number. The value goes out as the lab's text, the ratios as null, no
rule computes with it, and nothing the daemon publishes or prints carries
NaN or Infinity, also from a store written before this rule."""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hl7_alerts import strictjson
from hl7_alerts.config import ConfigError, parse_config
from hl7_alerts.model import Observation, ResultStatus
from hl7_alerts.rules.common import Panel, RuleSettings, evidence, r_ratio, x_uln
from tests.support.broker import Broker
from tests.support.daemon import NO_MONITORING, make_config, running
from tests.support.hl7kit import ALT, AST, AZA, order_msg, oru, result
from tests.support.mllp import send_all
from tests.support.mqtt import recording, strict_json

AT = datetime(2026, 10, 20, 8, 0, tzinfo=UTC)
HUGE = "9" * 400  # float("9" * 400) is inf
BIG = "9" * 300  # a finite float (about 1e300): its ratio over a tiny ULN would overflow a double


def obs(value: float | None, *, analyte: str = "ALT", low: float | None = 7, high: float | None = 56,
        text: str = "") -> Observation:
    return Observation(
        analyte=analyte, code=ALT, code_system="LN", text=analyte, value_type="NM",
        value_text=text or str(value), value=value, comparator=">" if value else "", unit="U/L",
        ref_low=low, ref_high=high, ref_text="", flag="H", status=ResultStatus.FINAL, observed_at=AT,
        specimen_id="S1",
    )


def test_dumps_refuses_what_is_not_json() -> None:
    assert strictjson.dumps({"x_uln": 3.39, "name": "Zoë"}) == '{"x_uln":3.39,"name":"Zoë"}'
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match="not JSON compliant"):
            strictjson.dumps({"x_uln": bad})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(3.39, 3.39, id="finite"),
        pytest.param(None, None, id="none"),
        pytest.param(math.inf, None, id="inf"),
        pytest.param(-math.inf, None, id="minus-inf"),
        pytest.param(math.nan, None, id="nan"),
    ],
)
def test_finite(value: float | None, expected: float | None) -> None:
    assert strictjson.finite(value) == expected


def test_loads_reads_what_an_older_store_wrote_as_null() -> None:
    text = '{"a": Infinity, "b": -Infinity, "c": NaN, "d": 1e999, "e": 2.5, "f": 7}'
    assert strictjson.loads(text) == {"a": None, "b": None, "c": None, "d": None, "e": 2.5, "f": 7}


def test_an_observation_never_carries_a_number_that_is_not_finite() -> None:
    o = obs(float(HUGE), low=-math.inf, high=math.inf, text=">" + HUGE)
    assert (o.value, o.comparator, o.ref_low, o.ref_high) == (None, "", None, None)
    assert o.value_text == ">" + HUGE  # the lab's text stays, for people
    assert not o.numeric


@pytest.mark.parametrize(
    ("value", "high", "expected"),
    [
        pytest.param(190.0, 56.0, 3.39, id="ordinary"),
        pytest.param(float(BIG), 1e-10, None, id="quotient-overflows"),
        pytest.param(float(HUGE), 56.0, None, id="value-not-a-number"),
    ],
)
def test_x_uln_is_a_finite_number_or_none(value: float, high: float, expected: float | None) -> None:
    got = evidence(obs(value, high=high), RuleSettings()).x_uln
    assert got == expected
    ratio = x_uln(obs(value, high=high), RuleSettings())
    assert ratio is None or math.isfinite(ratio)


def test_r_ratio_that_overflows_is_no_pattern() -> None:
    alt = obs(1e300, high=1.0)
    alp = obs(2e-300, analyte="ALP", low=None, high=1.0)
    panel = Panel(specimen_id="S1", observed_at=AT, results={"ALT": alt, "ALP": alp})
    assert r_ratio(panel, RuleSettings()) is None


def test_config_thresholds_and_ranges_are_finite() -> None:
    for text in ("rules: {hepatotoxicity_x_uln: .inf}", "rules: {ranges: {ALT: {high: .nan}}}",
                 "rules: {ranges: {ALT: {female: [0, .inf]}}}"):
        with pytest.raises(ConfigError, match="finite number"):
            parse_config(text)


def _order_and_panel(alt_value: str, *, alt_range: str = "7-56") -> list[bytes]:
    return [
        order_msg("RX1", "NW", "ORD1", AZA, "20260901090000").encode(),
        oru("LAB1", "20261020080000",
            result(ALT, alt_value, "U/L", alt_range, name="ALT"),
            result(AST, "200", "U/L", "10-40", name="AST")).encode(),
    ]


async def test_a_400_digit_alt_goes_out_as_text_and_no_rule_reads_it(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    """The probe of issue 18: a 400-digit ALT for a patient on azathioprine
    came out as "value": Infinity, "x_uln": Infinity in a critical alert."""
    config = make_config(tmp_path, broker.port, prefix, rules=NO_MONITORING)
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        acks = await send_all(daemon.port, _order_and_panel(HUGE))
        alerts = await mqtt.wait_alerts(2)
        raw = [body for topic, body in mqtt.messages if topic.endswith("/aza.hepatotoxicity.stop")]
    assert [a["code"] for a in acks] == ["AA", "AA"]
    stop = next(a for a in alerts if a["rule"] == "aza.hepatotoxicity.stop")
    # The alert rests on AST alone: nothing computed with the ALT.
    assert stop["title"].endswith("AST 5.0 × ULN"), stop["title"]
    shown = {o["analyte"]: o for o in stop["observations"]}
    assert shown["ALT"]["value"] == HUGE
    assert (shown["ALT"]["x_uln"], shown["ALT"]["comparator"]) == (None, None)
    assert shown["AST"]["x_uln"] == 5.0
    assert raw  # and the recorder checked every payload with a strict parser (no NaN, no Infinity)


async def test_a_value_longer_than_any_number_is_text_and_makes_no_ratio(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    """A 300-digit ALT would be a finite double whose ratio over a tiny ULN no
    double holds. Since values longer than any number are not numbers
    (issue 18 item 1, `terminology.MAX_VALUE_CHARS`), no message can make
    that ratio any more: it goes out as the lab's text with x_uln null. The
    overflow guards themselves stay, tested directly above
    (`test_x_uln_is_a_finite_number_or_none`, `test_r_ratio_that_overflows_is_no_pattern`)."""
    config = make_config(tmp_path, broker.port, prefix, rules=NO_MONITORING)
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        await send_all(daemon.port, _order_and_panel(BIG, alt_range="0-0.0000000001"))
        alerts = await mqtt.wait_alerts(2)
    stop = next(a for a in alerts if a["rule"] == "aza.hepatotoxicity.stop")
    alt = next(o for o in stop["observations"] if o["analyte"] == "ALT")
    assert alt["x_uln"] is None
    assert alt["value"] == BIG  # not a number: the lab's text
    assert stop["pattern"] is None or math.isfinite(stop["pattern"]["r_ratio"] or 0)


async def test_a_row_an_older_version_stored_with_infinity_goes_out_as_null(
    tmp_path: Path, broker: Broker, prefix: str, refused_port: int
) -> None:
    """Rows queued (and alerts saved) before payloads were strict: the
    publisher and the ack path read them leniently and send strict JSON."""
    offline = make_config(tmp_path, refused_port, prefix, rules=NO_MONITORING)
    async with running(offline) as daemon:
        await send_all(daemon.port, _order_and_panel("190"))
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        for table in ("outbox", "alerts"):
            db.execute(f"UPDATE {table} SET payload = replace(payload, '\"x_uln\":3.39', '\"x_uln\":Infinity')")
        assert db.execute("SELECT count(*) FROM outbox WHERE payload LIKE '%Infinity%'").fetchone()[0] >= 1
    online = make_config(tmp_path, broker.port, prefix, rules=NO_MONITORING)
    async with recording(broker, prefix) as mqtt, running(online):
        alerts = await mqtt.wait_alerts(2)
        stop = next(a for a in alerts if a["rule"] == "aza.hepatotoxicity.stop")
        await mqtt.client.publish(f"{prefix}/acks", json.dumps(
            {"alert_id": stop["alert_id"], "by": "dr.oncall", "at": "2026-11-24T20:05:00Z"}), qos=1)
        alerts = await mqtt.wait_alerts(3)
    alt = next(o for o in stop["observations"] if o["analyte"] == "ALT")
    assert alt["x_uln"] is None
    acked = alerts[2]
    assert acked["event"] == "acknowledged"
    assert next(o for o in acked["observations"] if o["analyte"] == "ALT")["x_uln"] is None
    strict_json(json.dumps(acked))
