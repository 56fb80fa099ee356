"""End to end: real MLLP bytes in, ACKs and MQTT alert payloads out, against a
real Mosquitto and the daemon on a free port, on each store backend (SQLite,
and PostgreSQL on the tests' own server)."""

from __future__ import annotations

from pathlib import Path

import structlog.testing

from hl7_alerts.rules.liver import LOW_ALP_ACTIONS
from tests.support.backends import Backend
from tests.support.broker import Broker
from tests.support.daemon import NO_MONITORING, make_config, running
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.mqtt import recording
from tests.support.samples import SEED_STORY, sample_messages

# The samples' orders began in September 2026, so on the wall clock their
# liver-test schedules fall overdue (aza.monitoring.overdue, covered by
# tests/test_monitoring*.py); here monitoring is off, so that the alerts each
# test expects do not race the overdue timer's tick between two messages.


async def test_seed_story_fires_one_critical_alert(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    config = make_config(tmp_path, broker.port, prefix, store=backend.store_section(), rules=NO_MONITORING)
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
        # The order (no TPMT/NUDT15 on file), the critical panel, then the low
        # ALP two weeks after stopping, which also resolves the critical alert.
        alerts = await mqtt.wait_alerts(4)
        topics = [t for t, _ in mqtt.messages if "/alerts/" in t]
    assert [(a["rule"], a["event"]) for a in alerts] == [
        ("aza.pgx.missing", "firing"),
        ("aza.hepatotoxicity.stop", "firing"),
        ("aza.post_stop.low_alp", "firing"),
        ("aza.hepatotoxicity.stop", "resolved"),
    ]
    assert topics[1] == f"{prefix}/alerts/critical/aza.hepatotoxicity.stop"
    alert = alerts[1]
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


async def test_no_order_no_alert_and_v23_orm_feed(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    config = make_config(tmp_path, broker.port, prefix, store=backend.store_section(), rules=NO_MONITORING)
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        codes = [
            ack_fields(await client.send(m))["code"]
            for m in sample_messages("05_no_thiopurine_high_enzymes.hl7", "06_v23_orm_feed.hl7")
        ]
        await client.close()
        assert codes == ["AA", "AA", "AA"]
        missing, alert = await mqtt.wait_alerts(2)
    assert (missing["rule"], missing["patient"]["id"]) == ("aza.pgx.missing", "H030003")
    # Only H030003 (IMURAN on the v2.3 ORM) alerts; H020002 has no order.
    assert alert["patient"]["id"] == "H030003"
    assert alert["medication"]["drug"] == "azathioprine"
    ast = next(o for o in alert["observations"] if o["analyte"] == "AST")
    assert (ast["ref_high"], ast["x_uln"]) == (40, 3.38)  # configured default range, no OBX-7


async def test_resend_gets_same_ack_and_no_second_alert(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    config = make_config(tmp_path, broker.port, prefix, store=backend.store_section(), rules=NO_MONITORING)
    order, panel = sample_messages(SEED_STORY[0], SEED_STORY[1])
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        await client.send(order)
        first = ack_fields(await client.send(panel))
        second = ack_fields(await client.send(panel))
        await client.close()
        await mqtt.wait_alerts(2)
        # A marker alert after the resend proves the publisher has drained past it.
        marker = await AsyncMllpClient.connect(daemon.port)
        for m in sample_messages("06_v23_orm_feed.hl7"):
            await marker.send(m)
        await marker.close()
        alerts = [a for a in await mqtt.wait_alerts(4) if a["rule"] == "aza.hepatotoxicity.stop"]
    assert (first["code"], first["control_id"]) == (second["code"], second["control_id"]) == ("AA", "LAB0001")
    assert [a["patient"]["id"] for a in alerts] == ["H010001", "H030003"]
    assert backend.query("SELECT count(*) FROM messages WHERE control_id = 'LAB0001'") == [(1,)]


async def test_resend_differing_only_in_segment_ends_is_the_same_message(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    """The README promises dedup blind to the segment-end style: the same
    panel framed with and without the CR before FS, with LF and CRLF ends,
    and with a blank line between segments, is one message, answered the
    same, stored once, and no `control_id_reused`."""
    config = make_config(tmp_path, broker.port, prefix, store=backend.store_section(), rules=NO_MONITORING)
    (panel,) = sample_messages(SEED_STORY[1])
    assert panel.endswith(b"\r")
    forms = [
        panel,
        panel.rstrip(b"\r"),  # no CR before FS
        panel.replace(b"\r", b"\n"),
        panel.replace(b"\r", b"\r\n").rstrip(b"\n"),
        panel.replace(b"\r", b"\r\r", 1),  # a blank line after MSH
    ]
    with structlog.testing.capture_logs() as logs:
        async with running(config) as daemon:
            client = await AsyncMllpClient.connect(daemon.port)
            acks = [ack_fields(await client.send(form)) for form in forms]
            await client.close()
    assert [(a["code"], a["control_id"]) for a in acks] == [("AA", "LAB0001")] * len(forms)
    assert backend.query("SELECT count(*) FROM messages WHERE control_id = 'LAB0001'") == [(1,)]
    assert not [e for e in logs if e["event"] == "control_id_reused"]


async def test_broker_down_never_delays_acks_and_alerts_follow(
    tmp_path: Path, own_broker: Broker, prefix: str, backend: Backend
) -> None:
    config = make_config(tmp_path, own_broker.port, prefix, store=backend.store_section(), rules=NO_MONITORING)
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
            alerts = await mqtt.wait_alerts(6, timeout=15)
    firing = [a for a in alerts if a["rule"] == "aza.hepatotoxicity.stop" and a["event"] == "firing"]
    assert [a["patient"]["id"] for a in firing] == ["H010001", "H030003"]


async def test_content_error_gets_ae_with_err_and_is_kept(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    config = make_config(tmp_path, broker.port, prefix, store=backend.store_section(), rules=NO_MONITORING)
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
    assert backend.query("SELECT control_id, ack_code FROM rejected_messages") == [("BAD001", "AE")]


async def test_seed_story_low_alp_carries_every_seed_recommendation(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    """Issue 4 point 7: order, enzymes above 3×ULN, discontinuation, then ALP 39
    (42-141) two weeks later gives aza.post_stop.low_alp with the seed's advice."""
    config = make_config(tmp_path, broker.port, prefix, store=backend.store_section(), rules=NO_MONITORING)
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        for m in sample_messages(*SEED_STORY):
            assert ack_fields(await client.send(m))["code"] in ("AA", "CA")
        await client.close()
        await mqtt.wait_for(lambda _: any(a["rule"] == "aza.post_stop.low_alp" for a in mqtt.alerts()))
        topic, low_alp = next((t, a) for t, a in mqtt.messages if a.get("rule") == "aza.post_stop.low_alp")
    assert topic == f"{prefix}/alerts/info/aza.post_stop.low_alp"
    assert (low_alp["event"], low_alp["severity"]) == ("firing", "info")
    # Decision 19: the panel carries albumin and INR, so the seed's "confirm that albumin and
    # prothrombin time are normal" is answered with their values instead of asked again
    # (before issue 19 this compared equal to LOW_ALP_ACTIONS throughout).
    confirm = LOW_ALP_ACTIONS.index("Confirm that albumin and prothrombin time are normal")
    assert low_alp["recommendations"][:confirm] == list(LOW_ALP_ACTIONS[:confirm])
    assert low_alp["recommendations"][confirm + 1:] == list(LOW_ALP_ACTIONS[confirm + 1:])
    assert low_alp["recommendations"][confirm] == (
        "Albumin and prothrombin time on this panel: albumin 4.1 g/dL (within range), INR 1.0 (within range)")
    text = " ".join(low_alp["recommendations"]).lower()
    for phrase in ("favorable sign", "weekly for the next 2-4 weeks", "albumin and prothrombin time",
                   "jaundice, right upper quadrant pain, fatigue, nausea", "1/3 to 1/4 of the previous dose",
                   "twice monthly", "tpmt and nudt15", "alternative immunosuppressive", "allopurinol",
                   "complete normalization", "above 3x uln", "mild persistent", "viral hepatitis, alcohol",
                   "too rapidly", "recur rapidly", "asymptomatic"):
        assert phrase in text, phrase
    alp = next(o for o in low_alp["observations"] if o["analyte"] == "ALP")
    assert (alp["value"], alp["ref_low"], alp["ref_high"], alp["flag"]) == (39, 42.0, 141.0, "L")
    assert low_alp["medication"]["status"] == "stopped"
    assert low_alp["medication"]["stop"] == "2026-10-20T14:00:00+00:00"
    assert low_alp["occurred_at"] == "2026-11-03T08:00:00+00:00"


# (patient, rule, event, severity) each sample must publish: every catalog rule
# but monitoring.overdue (issue 6), through real MLLP and MQTT.
CATALOG = {
    ("H040001", "aza.hys_law", "firing", "critical"),
    ("H040002", "aza.cholestasis", "firing", "high"),
    ("H040003", "aza.liver.mild", "firing", "warning"),
    ("H040004", "aza.hepatotoxicity.stop", "firing", "critical"),
    ("H040004", "aza.rechallenge.recurrence", "firing", "high"),
    ("H040004", "aza.hepatotoxicity.stop", "resolved", "critical"),
    ("H040005", "aza.synthetic_function", "firing", "high"),
    ("H040006", "aza.post_stop.normalized", "firing", "info"),
    ("H040007", "aza.myelosuppression", "firing", "critical"),
    ("H040008", "aza.pgx.poor_metabolizer", "firing", "critical"),
    ("H040009", "aza.interaction.allopurinol", "firing", "high"),
    ("H040009", "aza.pgx.missing", "firing", "info"),
    ("H040000", "aza.hepatotoxicity.stop", "firing", "critical"),
    ("H040000", "aza.hepatotoxicity.stop", "withdrawn", "critical"),
}


async def test_every_rule_through_mllp_and_mqtt(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    config = make_config(tmp_path, broker.port, prefix, store=backend.store_section(), rules=NO_MONITORING)
    messages = sample_messages("07_rule_catalog.hl7", "08_correction_withdraws.hl7")

    def seen() -> set[tuple[str, str, str, str]]:
        return {(a["patient"]["id"], a["rule"], a["event"], a["severity"]) for a in mqtt.alerts()}

    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        codes = {ack_fields(await client.send(m))["code"] for m in messages}
        await client.close()
        assert codes == {"AA"}
        await mqtt.wait_for(lambda _: seen() >= CATALOG)
    for topic, body in mqtt.messages:
        if "/alerts/" in topic:
            assert topic == f"{prefix}/alerts/{body['severity']}/{body['rule']}"
            assert body["schema"] == "hl7-alerts/alert@1"
            assert body["event"] in {"firing", "updated", "escalated", "resolved", "withdrawn"}
    liver = [a for a in mqtt.alerts() if a["rule"] in {"aza.hys_law", "aza.cholestasis", "aza.liver.mild",
                                                         "aza.rechallenge.recurrence"}]
    assert all(a["pattern"] is None or a["pattern"]["type"] in {"hepatocellular", "mixed", "cholestatic"}
               for a in liver)
    hys = next(a for a in liver if a["rule"] == "aza.hys_law")
    assert hys["pattern"] == {"r_ratio": 2.99, "type": "mixed"}
    withdrawn = next(a for a in mqtt.alerts() if a["event"] == "withdrawn")
    firing = next(a for a in mqtt.alerts() if a["patient"]["id"] == "H040000" and a["event"] == "firing"
                  and a["rule"] == "aza.hepatotoxicity.stop")
    assert (withdrawn["alert_id"], withdrawn["version"]) == (firing["alert_id"], 2)
