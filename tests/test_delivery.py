"""Delivery and the alert lifecycle end to end: acknowledgements on
``<prefix>/acks``, reminders from a timer on an injected clock, the audit
trail and the PHI policy in the payload, against a real Mosquitto. The
publisher's own behaviour (MQTT v5 session and properties, the in-flight
window, shared acks) is in test_publisher.py."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

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


def audit(path: Path, alert_id: str | None = None) -> list[tuple[str, int | None, str | None]]:
    with sqlite3.connect(path) as db:
        sql = "SELECT kind, version, event FROM audit"
        rows = db.execute(sql + (" WHERE alert_id = ? ORDER BY id" if alert_id else " ORDER BY id"),
                          (alert_id,) if alert_id else ()).fetchall()
    return [tuple(r) for r in rows]


# OPEN_CRITICAL: the critical alert stays open (reminders and acks are about
# it). The order, with no TPMT/NUDT15 on file, also raises the info-severity
# aza.pgx.missing first, which gets no reminders.

async def test_ack_is_recorded_once_and_bad_acks_are_ignored(
    tmp_path: Path, broker: Broker, prefix: str, clock: FakeClock, backend: Backend
) -> None:
    config = make_config(tmp_path, broker.port, prefix, store=backend.store_section())
    async with recording(broker, prefix) as mqtt, running(config, clock=clock) as daemon:
        await send_all(daemon.port, sample_messages(*OPEN_CRITICAL, "06_v23_orm_feed.hl7"))
        fired = await mqtt.wait_alerts(4)
        first, second = (a for a in fired if a["rule"] == STOP)
        await mqtt.client.publish(f"{prefix}/acks", pager_ack(first["alert_id"]), qos=1)
        await mqtt.wait_alerts(5)
        # Repeats (more than the broker keeps in flight towards the daemon:
        # each is PUBACKed once handled), junk, an unknown alert, then a real
        # ack: its event proves the ones before it were read, in order.
        repeats = [pager_ack(first["alert_id"], by="someone.else")] * 25
        for body in (*repeats, b"{not json", b'{"alert_id": 5}', pager_ack("0" * 32), pager_ack(second["alert_id"], by="dr.two")):
            await mqtt.client.publish(f"{prefix}/acks", body, qos=1)
        alerts = await mqtt.wait_alerts(6)
        assert daemon.daemon.scheduler is not None
        clock.advance(hours=2)
        assert await daemon.daemon.scheduler.tick() is None  # acknowledged: no reminder, none pending
    assert events(alerts) == [("H010001", PGX, "firing", 1), ("H010001", STOP, "firing", 1),
                              ("H030003", PGX, "firing", 1), ("H030003", STOP, "firing", 1),
                              ("H010001", STOP, "acknowledged", 2), ("H030003", STOP, "acknowledged", 2)]
    assert alerts[4]["acknowledged"] == {"by": "dr.oncall", "at": "2026-11-24T20:05:00+00:00"}
    assert alerts[4]["severity"] == "critical"
    assert alerts[4]["title"] == alerts[1]["title"]
    assert backend.query("SELECT acknowledged_by, acknowledged_at FROM alerts WHERE alert_id = ?",
                         (first["alert_id"],)) == [("dr.oncall", "2026-11-24T20:05:00+00:00")]
    assert backend.query("SELECT kind, version, event FROM audit WHERE alert_id = ? ORDER BY id",
                         (first["alert_id"],)) == [
        ("event", 1, "firing"), ("publish_attempt", 1, "firing"), ("delivered", 1, "firing"),
        ("acknowledged", 2, "acknowledged"), ("event", 2, "acknowledged"),
        ("publish_attempt", 2, "acknowledged"), ("delivered", 2, "acknowledged"),
        *[("ack_ignored", None, None)] * 25,
    ]


async def test_reminders_follow_the_injected_clock_and_stop_at_the_maximum(
    tmp_path: Path, broker: Broker, prefix: str, clock: FakeClock
) -> None:
    # The sample order began in September: its liver-test schedule is overdue
    # (aza.monitoring.overdue, tests/test_monitoring*.py); these tests are about reminders.
    config = make_config(tmp_path, broker.port, prefix, alerts={"reminder_after": "15m", "reminder_max": 2},
                         rules=NO_MONITORING)
    async with recording(broker, prefix) as mqtt, running(config, clock=clock) as daemon:
        scheduler = daemon.daemon.scheduler
        assert scheduler is not None
        await send_all(daemon.port, sample_messages(*OPEN_CRITICAL))
        _, firing = await mqtt.wait_alerts(2)
        clock.advance(minutes=14, seconds=59)
        assert await scheduler.tick() == START + timedelta(minutes=15)  # not yet; says when
        clock.advance(seconds=1)
        assert await scheduler.tick() == START + timedelta(minutes=30)  # sent; the next one is due then
        await mqtt.wait_alerts(3)
        clock.advance(minutes=15)
        assert await scheduler.tick() is None  # the second and last reminder
        clock.advance(hours=5)
        assert await scheduler.tick() is None
        # The acknowledged event proves nothing else was queued before it.
        await mqtt.client.publish(f"{prefix}/acks", pager_ack(firing["alert_id"]), qos=1)
        alerts = await mqtt.wait_alerts(5)
    assert events(alerts) == [("H010001", PGX, "firing", 1), ("H010001", STOP, "firing", 1),
                              ("H010001", STOP, "reminder", 2), ("H010001", STOP, "reminder", 3),
                              ("H010001", STOP, "acknowledged", 4)]
    reminded = alerts[1:]  # the info-severity pgx.missing gets no reminders
    assert [a.get("reminder") for a in reminded] == [None, {"number": 1, "max": 2}, {"number": 2, "max": 2}, None]
    assert {a["severity"] for a in reminded} == {"critical"}
    assert {a["alert_id"] for a in reminded} == {firing["alert_id"]}


async def test_a_reminder_due_while_the_daemon_was_down_goes_out_when_it_starts(
    tmp_path: Path, broker: Broker, prefix: str, clock: FakeClock
) -> None:
    config = make_config(tmp_path, broker.port, prefix, rules=NO_MONITORING)  # default reminder_after: 15 minutes
    async with recording(broker, prefix) as mqtt:
        async with running(config, clock=clock) as daemon:
            await send_all(daemon.port, sample_messages(*OPEN_CRITICAL))
            await mqtt.wait_alerts(2)
        clock.advance(minutes=20)
        async with running(config, clock=clock):
            alerts = await mqtt.wait_alerts(3)  # nobody calls tick(): the timer's first pass sends it
    assert events(alerts) == [("H010001", PGX, "firing", 1), ("H010001", STOP, "firing", 1),
                              ("H010001", STOP, "reminder", 2)]


async def test_phi_policy_from_config_reaches_the_payload(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix,
                         alerts={"phi": {"include_name": True, "include_birth_date": True}})
    async with recording(broker, prefix) as mqtt, running(config) as daemon:
        await send_all(daemon.port, sample_messages(*OPEN_CRITICAL))
        _, alert = await mqtt.wait_alerts(2)
    assert alert["rule"] == STOP
    assert set(alert["patient"]) == {"id", "id_type", "authority", "name", "birth_date"}
    assert alert["patient"]["id"] == "H010001"
    assert "TESTPATIENT" in alert["patient"]["name"]
    assert alert["patient"]["birth_date"].startswith("1970")
