"""The publisher against a real Mosquitto: MQTT v5 properties on each alert
and a session that keeps the acks sent while the daemon was away, the
in-flight window capped by the broker's Receive Maximum, and with several
daemons on one store, shared acks and a retained status per daemon."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from tests.support.backends import Backend
from tests.support.broker import Broker
from tests.support.clock import FakeClock
from tests.support.daemon import NO_MONITORING, make_config, running
from tests.support.mllp import send_all
from tests.support.mqtt import events, pager_ack, recording
from tests.support.samples import OPEN_CRITICAL, PGX, STOP, sample_messages

START = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


async def test_publish_carries_v5_properties_and_the_session_keeps_acks_sent_while_away(
    tmp_path: Path, own_broker: Broker, prefix: str, clock: FakeClock
) -> None:
    config = make_config(tmp_path, own_broker.port, prefix, mqtt={"message_expiry_seconds": 3600},
                         rules=NO_MONITORING)
    async with recording(own_broker, prefix) as mqtt:
        async with running(config, clock=clock) as daemon:
            await send_all(daemon.port, sample_messages(*OPEN_CRITICAL))
            _, firing = await mqtt.wait_alerts(2)
            publisher = daemon.daemon.publisher
            assert publisher is not None
            assert (publisher.receive_maximum, publisher.window) == (20, 20)  # Mosquitto's max_inflight_messages
        # The daemon is gone; its session (and the acks subscription) is not.
        await mqtt.client.publish(f"{prefix}/acks", pager_ack(firing["alert_id"]), qos=1)
        async with running(config, clock=clock):
            alerts = await mqtt.wait_alerts(3)
        status = [body["state"] for topic, body in mqtt.messages if topic == f"{prefix}/status"]
    assert events(alerts) == [("H010001", PGX, "firing", 1), ("H010001", STOP, "firing", 1),
                              ("H010001", STOP, "acknowledged", 2)]
    index = next(i for i, (t, _) in enumerate(mqtt.messages) if t.endswith(f"/alerts/critical/{STOP}"))
    assert mqtt.user_properties(index) == {"idempotency-key": f"{firing['alert_id']}:1"}
    props = mqtt.properties[index]
    assert 3590 <= props.MessageExpiryInterval <= 3600
    assert props.ContentType == "application/json"
    assert status == ["online", "offline", "online", "offline"]

async def test_window_is_capped_by_the_brokers_receive_maximum(
    tmp_path: Path, own_broker: Broker, prefix: str, clock: FakeClock
) -> None:
    own_broker.extra_conf = "max_inflight_messages 3\n"
    own_broker.restart()
    config = make_config(tmp_path, own_broker.port, prefix, mqtt={"max_inflight": 50})
    async with running(config, clock=clock) as daemon:
        publisher = daemon.daemon.publisher
        assert publisher is not None
        async with aiomqtt.Client("127.0.0.1", own_broker.port) as probe:
            await probe.subscribe(f"{prefix}/status")
            async for _ in probe.messages:
                break
        assert (publisher.receive_maximum, publisher.window) == (3, 3)

async def test_two_daemons_on_one_postgresql_share_the_acks_and_keep_their_own_status(
    tmp_path: Path, broker: Broker, prefix: str, pg_dsn: str
) -> None:
    """Each pager ack reaches one of the daemons (MQTT v5 shared subscription)
    and is recorded once; each daemon keeps its own retained status, so the
    last will of one does not report the site offline."""
    sections: dict[str, Any] = {"store": {"dsn": pg_dsn}, "rules": NO_MONITORING}
    config_a = make_config(tmp_path, broker.port, prefix, **sections)
    config_b = make_config(tmp_path, broker.port, prefix, mqtt={"client_id": f"{prefix}-b"}, **sections)
    with capture_logs() as logs:
        async with recording(broker, prefix) as mqtt, running(config_a) as a, running(config_b):
            await send_all(a.port, sample_messages(*OPEN_CRITICAL))
            pgx, stop = sorted(await mqtt.wait_alerts(2), key=lambda x: x["rule"])
            for n in range(10):
                await mqtt.client.publish(f"{prefix}/acks", pager_ack(stop["alert_id"], by=f"dr.{n}"), qos=1)
            # The last ack is read after the ten by whichever daemon gets it:
            # had both subscribed plainly, each would have read all eleven.
            await mqtt.client.publish(f"{prefix}/acks", pager_ack(pgx["alert_id"]), qos=1)
            await mqtt.wait_for(lambda _: len([x for x in mqtt.alerts() if x["event"] == "acknowledged"]) == 2)
            online = {t for t, body in mqtt.messages if body.get("state") == "online"}
    received = [e for e in logs if e["event"] == "ack_received"]
    assert len(received) == 11
    assert [e["outcome"] for e in received].count("acknowledged") == 2
    assert online == {f"{prefix}/status/{prefix}", f"{prefix}/status/{prefix}-b"}
    assert Backend("postgresql", tmp_path, pg_dsn).query(
        "SELECT count(*) FROM audit WHERE kind = 'acknowledged'") == [(2,)]
