"""End to end: real MLLP bytes in, ACKs and MQTT alert payloads out, against a
real Mosquitto and the daemon on a free port."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import (
    SAMPLES,
    AsyncMllpClient,
    Broker,
    ack_fields,
    make_config,
    recording,
    running,
)

from hl7_alerts.messages import split_file

SEED_STORY = [
    "01_seed_order_azathioprine.hl7",
    "02_seed_liver_panel_above_3xuln.hl7",
    "03_seed_discontinue_azathioprine.hl7",
    "04_seed_low_alp_two_weeks_later.hl7",
]


def sample_messages(*names: str) -> list[bytes]:
    out: list[bytes] = []
    for name in names:
        out.extend(split_file((SAMPLES / name).read_bytes()))
    return out


async def test_seed_story_fires_one_critical_alert(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix)
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        acks = [ack_fields(await client.send(m)) for m in sample_messages(*SEED_STORY)]
        await client.close()
        assert [(a["code"], a["control_id"]) for a in acks] == [
            ("CA", "RX0001"),  # MSH-15 AL asks for enhanced mode
            ("AA", "LAB0001"),
            ("AA", "RX0002"),
            ("AA", "LAB0002"),
        ]
        alerts = await mqtt.wait_alerts(1)
        topic = next(t for t, _ in mqtt.messages if "/alerts/" in t)
    assert topic == f"{prefix}/alerts/critical/aza.hepatotoxicity.stop"
    (alert,) = alerts
    assert alert["schema"] == "hl7-alerts/alert@1"
    assert alert["rule"] == "aza.hepatotoxicity.stop"
    assert alert["severity"] == "critical"
    assert alert["event"] == "firing"
    assert alert["version"] == 1
    assert alert["patient"] == {"id": "H010001", "id_type": "MR", "authority": "GENHOSP"}
    assert alert["facility"] == "GENHOSP"
    assert alert["medication"]["drug"] == "azathioprine"
    assert alert["medication"]["dose"] == "150 mg"
    assert alert["medication"]["status"] == "active"
    assert alert["medication"]["order_id"] == "RX1"
    assert alert["medication"]["start"] == "2026-09-01T09:00:00+00:00"
    alt = next(o for o in alert["observations"] if o["analyte"] == "ALT")
    assert alt == {
        "analyte": "ALT", "code": "1742-6", "value": 190, "comparator": None, "unit": "U/L",
        "ref_low": 7.0, "ref_high": 56.0, "x_uln": 3.39, "flag": "H", "status": "F",
        "observed_at": "2026-10-20T08:00:00+00:00",
    }
    assert alert["pattern"] == {"r_ratio": 2.66, "type": "mixed"}
    assert alert["recommendations"][0] == "Discontinue azathioprine now"
    assert alert["source"] == {"control_id": "LAB0001", "sending_application": "LAB", "sending_facility": "GENHOSP"}
    assert alert["occurred_at"] == "2026-10-20T08:00:00+00:00"
    assert alert["published_at"].endswith("Z")
    assert "name" not in alert["patient"]  # PHI policy default: identifier only


async def test_no_order_no_alert_and_v23_orm_feed(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix)
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        codes = [
            ack_fields(await client.send(m))["code"]
            for m in sample_messages("05_no_thiopurine_high_enzymes.hl7", "06_v23_orm_feed.hl7")
        ]
        await client.close()
        assert codes == ["AA", "AA", "AA"]
        (alert,) = await mqtt.wait_alerts(1)
    # Only H030003 (IMURAN on the v2.3 ORM) alerts; H020002 has no order.
    assert alert["patient"]["id"] == "H030003"
    assert alert["medication"]["drug"] == "azathioprine"
    ast = next(o for o in alert["observations"] if o["analyte"] == "AST")
    assert (ast["ref_high"], ast["x_uln"]) == (40, 3.38)  # configured default range, no OBX-7


async def test_resend_gets_same_ack_and_no_second_alert(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix)
    order, panel = sample_messages(SEED_STORY[0], SEED_STORY[1])
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        await client.send(order)
        first = ack_fields(await client.send(panel))
        second = ack_fields(await client.send(panel))
        await client.close()
        await mqtt.wait_alerts(1)
        # A marker alert after the resend proves the publisher has drained past it.
        marker = await AsyncMllpClient.connect(daemon.port)
        for m in sample_messages("06_v23_orm_feed.hl7"):
            await marker.send(m)
        await marker.close()
        alerts = await mqtt.wait_alerts(2)
    assert (first["code"], first["control_id"]) == (second["code"], second["control_id"]) == ("AA", "LAB0001")
    assert [a["patient"]["id"] for a in alerts] == ["H010001", "H030003"]
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM messages WHERE control_id = 'LAB0001'").fetchone() == (1,)


async def test_broker_down_never_delays_acks_and_alerts_follow(tmp_path: Path, own_broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, own_broker.port, prefix)
    own_broker.stop()
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        for m in sample_messages(*SEED_STORY, "06_v23_orm_feed.hl7"):
            assert ack_fields(await client.send(m, timeout=2.0))["code"] in ("AA", "CA")
        await client.close()
        assert daemon.daemon.publisher is not None
        assert not daemon.daemon.publisher.connected
        own_broker.start()
        async with recording(own_broker, prefix) as mqtt:
            alerts = await mqtt.wait_alerts(2, timeout=15)
    assert [a["patient"]["id"] for a in alerts] == ["H010001", "H030003"]


async def test_content_error_gets_ae_with_err_and_is_kept(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix)
    no_mrn = (
        b"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|20261020093000||ORU^R01|BAD001|P|2.5.1\r"
        b"PID|1||900123456^^^SSA^SS||TESTPATIENT^DELTA\r"
        b"OBR|1|O1|S1|24325-3^Hepatic function panel^LN|||20261020080000\r"
        b"OBX|1|NM|1742-6^ALT^LN||190|U/L|7-56|H|||F\r"
    )
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        ack = ack_fields(await client.send(no_mrn))
        await client.close()
    assert (ack["code"], ack["control_id"]) == ("AE", "BAD001")
    assert ack["ERR"].startswith("ERR||PID^1^3|101^Required field missing^HL70357|E")
    assert ack["MSH"].startswith("MSH|^~\\&|HL7ALERTS|GENHOSP|LAB|GENHOSP|")
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        assert db.execute("SELECT control_id, ack_code FROM rejected_messages").fetchall() == [("BAD001", "AE")]
