"""aza.monitoring.overdue end to end: MLLP in, MQTT out, the daemon's timer on
an injected clock (no waiting for real days), and a restart between the due
time and the firing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.broker import Broker
from tests.support.clock import FakeClock
from tests.support.daemon import make_config, running
from tests.support.hl7kit import AZA, alt, order_msg, oru
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.mqtt import recording

START = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
D = timedelta(days=1)
OVERDUE, PGX = "aza.monitoring.overdue", "aza.pgx.missing"


def hl7(at: datetime) -> str:
    return at.strftime("%Y%m%d%H%M%S")


async def send(port: int, text: str) -> None:
    client = await AsyncMllpClient.connect(port)
    try:
        assert ack_fields(await client.send(text.encode()))["code"] == "AA"
    finally:
        await client.close()


def events(alerts: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(a["rule"], a["event"], a["severity"]) for a in alerts]


async def test_overdue_fires_on_time_and_the_panel_resolves_it(tmp_path: Path, broker: Broker, prefix: str) -> None:
    clock = FakeClock(START)
    config = make_config(tmp_path, broker.port, prefix)
    async with recording(broker, prefix) as mqtt, running(config, clock=clock) as daemon:
        scheduler = daemon.daemon.scheduler
        assert scheduler is not None
        await send(daemon.port, order_msg("ORD1", "NW", "RX1", AZA, hl7(START)))
        await mqtt.wait_alerts(1)  # aza.pgx.missing: no TPMT/NUDT15 on file
        clock.advance(days=9, seconds=-1)
        assert await scheduler.tick() == START + 9 * D  # not yet (grace); says when
        assert scheduler.overdue == 0
        clock.advance(seconds=1)
        await scheduler.tick()
        firing = (await mqtt.wait_alerts(2))[1]
        clock.advance(days=1)
        await send(daemon.port, oru("LAB1", hl7(clock.now), alt("30")))
        alerts = await mqtt.wait_alerts(3)
    assert events(alerts) == [(PGX, "firing", "info"), (OVERDUE, "firing", "warning"),
                              (OVERDUE, "resolved", "warning")]
    assert firing["medication"]["order_id"] == "RX1"
    assert firing["recommendations"] == ["Order ALT, AST, ALP, GGT, bilirubin"]
    assert alerts[2]["alert_id"] == firing["alert_id"]
    assert {t for t, _ in mqtt.messages if "/alerts/" in t} >= {f"{prefix}/alerts/warning/{OVERDUE}"}


async def test_a_restart_between_due_time_and_firing_fires_exactly_once(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    clock = FakeClock(START)
    config = make_config(tmp_path, broker.port, prefix)
    async with recording(broker, prefix) as mqtt:
        async with running(config, clock=clock) as daemon:
            await send(daemon.port, order_msg("ORD1", "NW", "RX1", AZA, hl7(START)))
            await mqtt.wait_alerts(1)
        clock.advance(days=9, hours=1)  # the alert fell due while the daemon was down
        async with running(config, clock=clock) as daemon:
            firing = (await mqtt.wait_alerts(2))[1]  # nobody calls tick(): the timer's first pass
        async with running(config, clock=clock) as daemon:
            scheduler = daemon.daemon.scheduler
            assert scheduler is not None
            await scheduler.tick()
            assert scheduler.overdue == 0
            # The acknowledged event proves nothing else was queued before it.
            ack = {"alert_id": firing["alert_id"], "by": "dr.oncall", "at": "2026-09-10T10:00:00Z"}
            await mqtt.client.publish(f"{prefix}/acks", json.dumps(ack).encode(), qos=1)
            alerts = await mqtt.wait_alerts(3)
    assert events(alerts) == [(PGX, "firing", "info"), (OVERDUE, "firing", "warning"),
                              (OVERDUE, "acknowledged", "warning")]


async def test_a_reload_changes_the_schedule_for_the_next_tick(tmp_path: Path, broker: Broker, prefix: str) -> None:
    clock = FakeClock(START)
    config = make_config(tmp_path, broker.port, prefix)
    async with recording(broker, prefix) as mqtt, running(config, clock=clock) as daemon:
        scheduler = daemon.daemon.scheduler
        assert scheduler is not None
        await send(daemon.port, order_msg("ORD1", "NW", "RX1", AZA, hl7(START)))
        await mqtt.wait_alerts(1)
        clock.advance(days=4)
        assert await scheduler.tick() == START + 9 * D
        tighter = make_config(tmp_path, broker.port, prefix,
                              rules={"monitoring": {"weekly_interval": "3d", "weekly_grace": "12h"}})
        assert "rules.monitoring.weekly_interval" in daemon.daemon.reload(tighter).applied
        await scheduler.tick()  # due on day 3, alert time day 3.5: overdue now
        alerts = await mqtt.wait_alerts(2)
    assert events(alerts) == [(PGX, "firing", "info"), (OVERDUE, "firing", "warning")]
    assert alerts[1]["occurred_at"] == (START + 3 * D).isoformat()
