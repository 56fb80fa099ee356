"""The outbox row every alert event becomes: with web.base_url set, every
event (firing, acknowledged, resolved, ...) links to the alert's page
(``links.view``), an optional field of alert@1; without it, no links."""

from __future__ import annotations

from pathlib import Path

import aiomqtt

from tests.support.broker import Broker
from tests.support.daemon import NO_MONITORING, make_config, running
from tests.support.mllp import send_all
from tests.support.mqtt import pager_ack, recording
from tests.support.samples import OPEN_CRITICAL, SEED_STORY, STOP, sample_messages

BASE = "https://ward.example/hl7-alerts"


async def test_every_event_links_to_the_alert_page(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix, web={"base_url": BASE + "/"}, rules=NO_MONITORING)
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        await send_all(daemon.port, sample_messages(*OPEN_CRITICAL))
        alerts = await mqtt.wait_alerts(2)
        critical = next(a for a in alerts if a["rule"] == STOP)
        async with aiomqtt.Client("127.0.0.1", broker.port) as pager:
            await pager.publish(f"{prefix}/acks", pager_ack(critical["alert_id"]), qos=1)
        await mqtt.wait_alerts(3)
        await send_all(daemon.port, sample_messages(*SEED_STORY[2:]))
        alerts = await mqtt.wait_alerts(5)
    # Schema-checked by the recorder; every event of every rule carries the link.
    assert [(a["rule"], a["event"]) for a in alerts] == [
        ("aza.pgx.missing", "firing"),
        (STOP, "firing"),
        (STOP, "acknowledged"),
        ("aza.post_stop.low_alp", "firing"),
        (STOP, "resolved"),
    ]
    for alert in alerts:
        assert alert["links"] == {"view": f"{BASE}/alerts/{alert['alert_id']}"}


async def test_no_base_url_no_links(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix, rules=NO_MONITORING)
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        await send_all(daemon.port, sample_messages(*OPEN_CRITICAL))
        alerts = await mqtt.wait_alerts(2)
    assert all("links" not in a for a in alerts)
