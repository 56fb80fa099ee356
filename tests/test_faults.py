"""Faults the delivery path must survive, with processes the test controls:
a Mosquitto stopped for part of a replay and restarted, and the daemon killed
with SIGKILL mid-replay and restarted on the same store. Every alert event
arrives (each patient's order also raises aza.pgx.missing: no TPMT/NUDT15 on
file), in order per patient, none missing, none under a second id; repeats of one
``alert_id:version`` are allowed (QoS 1, retried from the outbox) and counted."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from hl7_alerts.framer import frame
from tests.support.broker import Broker
from tests.support.daemon import make_config, running, serve, write_config
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.mqtt import recording
from tests.support.samples import PGX, SAMPLES, STOP
from tests.support.waiting import WAIT, eventually

ORDER = (SAMPLES / "01_seed_order_azathioprine.hl7").read_bytes()
PANEL = (SAMPLES / "02_seed_liver_panel_above_3xuln.hl7").read_bytes()
# Each patient's alert events, in order: the order's pgx.missing, then the
# critical alert firing and then updated by the second panel.
PER_PATIENT = [(PGX, 1), (STOP, 1), (STOP, 2)]
EVENTS_PER_PATIENT = len(PER_PATIENT)


def replay(patients: int) -> list[bytes]:
    """Synthetic patients S0000…: an azathioprine order (aza.pgx.missing) and
    two liver panels a week apart, each well above 3×ULN (firing, then updated
    with the new evidence). Orders and first
    panels for everyone, then the second panels."""
    first: list[bytes] = []
    second: list[bytes] = []
    for i in range(patients):
        pid = f"S{i:04d}".encode()
        first.append(ORDER.replace(b"H010001", pid).replace(b"RX0001", b"RXF%04d" % i))
        first.append(PANEL.replace(b"H010001", pid).replace(b"LAB0001", b"LABF%04d" % i))
        later = PANEL.replace(b"20261020", b"20261027").replace(b"||190|", b"||260|")
        second.append(later.replace(b"H010001", pid).replace(b"LAB0001", b"LABG%04d" % i))
    return first + second


def check_stream(alerts: list[dict[str, Any]], patients: int) -> Counter[str]:
    """Every alert event once at least, first copies in order per patient, one
    alert_id per patient and rule. Returns how often each alert_id:version arrived."""
    copies = Counter(f"{a['alert_id']}:{a['version']}" for a in alerts)
    by_patient: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    seen: set[str] = set()
    for a in alerts:
        key = f"{a['alert_id']}:{a['version']}"
        if key not in seen:
            seen.add(key)
            by_patient[a["patient"]["id"]].append((a["rule"], a["alert_id"], a["version"]))
    assert len(by_patient) == patients
    for pid, firsts in by_patient.items():
        ids = {rule: {alert_id for r, alert_id, _ in firsts if r == rule} for rule in (PGX, STOP)}
        assert all(len(one) == 1 for one in ids.values()), f"{pid} alerted under two ids for a rule: {ids}"
        assert len(ids[PGX] | ids[STOP]) == 2, f"{pid}: two rules under one id"
        assert [(r, v) for r, _, v in firsts] == PER_PATIENT, f"{pid}: events arrived as {[(r, v) for r, _, v in firsts]}"
    return copies


async def test_broker_stopped_mid_replay_loses_nothing_and_keeps_order(
    tmp_path: Path, own_broker: Broker, prefix: str
) -> None:
    patients = 30
    messages = replay(patients)
    thirds = [messages[: len(messages) // 3], messages[len(messages) // 3: 2 * len(messages) // 3],
              messages[2 * len(messages) // 3:]]
    config = make_config(tmp_path, own_broker.port, prefix, mqtt={"max_inflight": 8})
    pager = f"{prefix}-pager"
    received: list[dict[str, Any]] = []
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        async with recording(own_broker, prefix, session=pager) as before:
            for m in thirds[0]:
                assert ack_fields(await client.send(m))["code"] in ("AA", "CA")
            await before.wait_alerts(1)
            own_broker.stop()  # the publisher is most likely mid-window here
            await asyncio.wait_for(before.broker_gone.wait(), WAIT)
        received += before.alerts()
        for m in thirds[1]:
            assert ack_fields(await client.send(m, timeout=2.0))["code"] in ("AA", "CA")
        own_broker.start()
        async with recording(own_broker, prefix, session=pager) as after:
            for m in thirds[2]:
                assert ack_fields(await client.send(m))["code"] in ("AA", "CA")
            await after.wait_for(lambda _: len({(a["alert_id"], a["version"]) for a in received + after.alerts()})
                                 >= EVENTS_PER_PATIENT * patients, timeout=30)
        received += after.alerts()
        await client.close()
        publisher = daemon.daemon.publisher
        assert publisher is not None
        assert publisher.connections >= 2
    copies = check_stream(received, patients)
    print(f"alerts: {len(copies)} distinct, {sum(copies.values())} received, "
          f"{sum(n - 1 for n in copies.values())} repeats")
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM outbox WHERE delivered_at IS NULL").fetchone() == (0,)
        failed = db.execute("SELECT count(*) FROM audit WHERE kind = 'publish_failed'").fetchone()[0]
        delivered = db.execute("SELECT count(DISTINCT outbox_id) FROM audit WHERE kind = 'delivered'").fetchone()
    assert delivered == (EVENTS_PER_PATIENT * patients,)
    print(f"publishes audited as failed: {failed}")


async def test_sigkill_mid_replay_then_restart_loses_no_acked_message_and_no_alert(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    patients = 40
    messages = replay(patients)
    # The replayed orders began months ago: after the restart their liver-test
    # schedules would raise aza.monitoring.overdue (tested in test_monitoring*.py).
    config = write_config(tmp_path / "config.yaml", broker.port, prefix, rules={"monitoring": {"enabled": False}})
    log = tmp_path / "daemon.log"  # both runs append to it
    acked: list[bytes] = []
    kill_after = len(messages) // 2
    async with recording(broker, prefix) as mqtt:
        async with serve(config, log=log, name="first daemon") as first:
            client = await AsyncMllpClient.connect(first.port)
            for m in messages[:kill_after]:
                assert ack_fields(await client.send(m))["code"] in ("AA", "CA")
                acked.append(m)
            # Two more in flight, then the process dies without a goodbye.
            await client.send_raw(frame(messages[kill_after]) + frame(messages[kill_after + 1]))
            os.kill(first.pid, signal.SIGKILL)
            assert await asyncio.to_thread(first.exit_code) == -signal.SIGKILL
            await client.close()
        # The broker publishes the retained last will: pagers know it is down.
        await mqtt.wait_for(lambda ms: any(t == f"{prefix}/status" and b["state"] == "offline" for t, b in ms))

        async with serve(config, log=log, name="restarted daemon") as second:
            client = await AsyncMllpClient.connect(second.port)
            # The interface engine resends what was not acknowledged, then goes on.
            for m in messages[kill_after:]:
                assert ack_fields(await client.send(m))["code"] in ("AA", "CA")
                acked.append(m)
            await client.close()
            with sqlite3.connect(tmp_path / "store.sqlite3") as db:
                expected = set(db.execute("SELECT alert_id, version FROM outbox").fetchall())
            await mqtt.wait_for(
                lambda _: {(a["alert_id"], a["version"]) for a in mqtt.alerts()} >= expected, timeout=30
            )
            received = mqtt.alerts()
            assert await asyncio.to_thread(second.stop) == 0  # SIGTERM: a clean exit
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        stored = {r[0] for r in db.execute("SELECT control_id FROM messages")}
        alert_rows = db.execute("SELECT patient_id, rule, count(*) FROM alerts GROUP BY patient_id, rule").fetchall()
    control_ids = {m.split(b"|")[9].decode() for m in acked}
    assert control_ids <= stored  # every AA'd message is in the store
    assert len(control_ids) == len(messages)
    # One alert per patient and rule (pgx.missing, hepatotoxicity.stop), never a second id.
    assert sorted((rule, n) for _, rule, n in alert_rows) == sorted([(PGX, 1), (STOP, 1)] * patients)
    assert len(expected) == EVENTS_PER_PATIENT * patients
    copies = check_stream(received, patients)
    print(f"alerts: {len(copies)} distinct, {sum(copies.values())} received, "
          f"{sum(n - 1 for n in copies.values())} repeats of the same alert_id:version")
    assert "S0001" not in log.read_text()  # no patient identifiers in logs


async def test_publish_timeout_is_retried_from_the_outbox_on_a_fresh_connection(
    tmp_path: Path, own_broker: Broker, prefix: str
) -> None:
    """A frozen broker (SIGSTOP) takes publishes and never answers: each times
    out, the connection ends, and once the broker thaws the rows are re-sent
    from the outbox on a new connection, in order."""
    patients = 6
    config = make_config(tmp_path, own_broker.port, prefix, mqtt={"publish_timeout_seconds": 0.5})
    assert own_broker.process is not None
    async with recording(own_broker, prefix) as mqtt, running(config) as daemon:
        publisher = daemon.daemon.publisher
        assert publisher is not None
        messages = replay(patients)
        client = await AsyncMllpClient.connect(daemon.port)
        for m in messages[:2]:  # alerts through, so the publisher is draining
            await client.send(m)
        await mqtt.wait_alerts(1)
        await eventually(lambda: publisher.published >= 1, what="first alert marked delivered")
        own_broker.process.send_signal(signal.SIGSTOP)
        try:
            for m in messages[2:]:
                assert ack_fields(await client.send(m, timeout=2.0))["code"] in ("AA", "CA")
            await client.close()

            def failed() -> int:
                with sqlite3.connect(tmp_path / "store.sqlite3") as db:
                    return int(db.execute("SELECT count(*) FROM audit WHERE kind = 'publish_failed'").fetchone()[0])

            await eventually(lambda: asyncio.to_thread(lambda: failed() > 0), what="a publish audited as failed")
            assert not publisher.connected
        finally:
            own_broker.process.send_signal(signal.SIGCONT)
        await mqtt.wait_for(
            lambda _: len({(a["alert_id"], a["version"]) for a in mqtt.alerts()}) >= EVENTS_PER_PATIENT * patients,
            timeout=20)
        received = mqtt.alerts()
    copies = check_stream(received, patients)
    assert publisher.connections >= 2
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM outbox WHERE delivered_at IS NULL").fetchone() == (0,)
    print(f"alerts: {len(copies)} distinct, {sum(copies.values())} received, failed publishes: {failed()}")
