"""Two daemons, one PostgreSQL store: failover and a message sent to both.

Two real ``hl7-alerts serve`` processes share one PostgreSQL database and one
Mosquitto, each with its own MQTT client id (which also names its outbox
claims) and its own MLLP port. What this proves:

- **Failover.** With the broker down, daemon A acknowledges (AA) orders and
  liver panels for 20 patients: their alerts wait in the shared outbox. A is
  then killed with SIGKILL, the broker comes back, and daemon B takes 20 more
  patients. Every alert of all 40 patients reaches a pager (a persistent MQTT
  session), A's orphaned ones published by B: one alert id per patient and
  rule, each patient's events in the order they were produced
  (aza.pgx.missing v1, then aza.hepatotoxicity.stop v1), and nothing left
  undelivered in the outbox. Repeats of one ``alert_id:version`` are allowed
  (QoS 1) and counted.
- **One message, two daemons, same moment.** The same ORU (same MSH-3/4/10,
  same bytes) sent to A and B at once is processed once: both answer AA for
  that control id, the store holds one ``messages`` row and one alert, and the
  pager sees one aza.hepatotoxicity.stop firing, never a second.

Monitoring (the sample orders are months old: overdue alerts) and reminders
are off, so only order and panel alerts occur. Every wait is on a condition
with a deadline; the daemons are killed in ``finally`` whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from conftest import (
    SAMPLES,
    WAIT,
    AsyncMllpClient,
    Broker,
    ack_fields,
    free_port,
    port_open,
    recording,
    wait_until,
)

CLI = [sys.executable, "-m", "hl7_alerts"]
ORDER = (SAMPLES / "01_seed_order_azathioprine.hl7").read_bytes()
PANEL = (SAMPLES / "02_seed_liver_panel_above_3xuln.hl7").read_bytes()
PGX, STOP = "aza.pgx.missing", "aza.hepatotoxicity.stop"
# Each patient's alert events as the daemon produces them: the order's
# pgx.missing (no TPMT/NUDT15 on file), then the panel's critical alert.
PER_PATIENT = [(PGX, 1, "firing"), (STOP, 1, "firing")]
LEASE_SECONDS = 3  # must exceed mqtt.publish_timeout_seconds (1): config check enforces it
DELIVERY_DEADLINE = 60.0


# Patient ids QA000…; control ids leave out the Q, so a patient id found in a
# log (where control ids are bound) is a leak, never a control id.
def order_for(pid: str) -> bytes:
    return ORDER.replace(b"H010001", pid.encode()).replace(b"RX0001", f"RX{pid[1:]}".encode())


def panel_for(pid: str) -> bytes:
    return PANEL.replace(b"H010001", pid.encode()).replace(b"LAB0001", f"LAB{pid[1:]}".encode())


def control_id(message: bytes) -> str:
    return message.split(b"\r", 1)[0].split(b"|")[9].decode()


@dataclass
class Served:
    """One ``hl7-alerts serve`` subprocess and what it was started with."""

    name: str
    client_id: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def log_events(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == event:
                    out.append(entry)
        return out

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=WAIT)


def serve(tmp_path: Path, name: str, broker: Broker, prefix: str, dsn: str) -> Served:
    """Write this daemon's config (JSON is YAML) and start it."""
    client_id = f"{prefix}-{name}"
    port = free_port()
    config = tmp_path / f"config-{name}.yaml"
    config.write_text(json.dumps({
        "mllp": {"host": "127.0.0.1", "port": port},
        "store": {"dsn": dsn, "lease_seconds": LEASE_SECONDS},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": prefix, "client_id": client_id,
                 "reconnect_max_seconds": 0.5, "publish_timeout_seconds": 1},
        # Debug: each message's outcome (duplicate or not) is logged.
        "logging": {"format": "json", "level": "debug"},
        "metrics": {"port": 0},
        "rules": {"monitoring": {"enabled": False}},
        "alerts": {"reminder_max": 0},
    }))
    log = tmp_path / f"daemon-{name}.log"
    with log.open("ab") as out:  # the child keeps its own descriptor
        process = subprocess.Popen([*CLI, "serve", "--config", str(config)], stdout=out, stderr=out)
    return Served(name, client_id, port, log, process)


async def wait_listening(*daemons: Served) -> None:
    for d in daemons:
        def up(d: Served = d) -> bool:
            return port_open(d.port) or d.process.poll() is not None

        await asyncio.to_thread(wait_until, up, what=f"daemon {d.name} listening")
        assert d.process.poll() is None, await asyncio.to_thread(d.log.read_text)


@contextlib.contextmanager
def daemons(tmp_path: Path, broker: Broker, prefix: str, dsn: str, *names: str) -> Iterator[list[Served]]:
    started: list[Served] = []
    try:
        for name in names:
            started.append(serve(tmp_path, name, broker, prefix, dsn))
        yield started
    finally:
        for d in started:
            d.kill()


def query(dsn: str, sql: LiteralString, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


def undelivered(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM outbox WHERE delivered_at IS NULL")[0][0])


async def send_all(port: int, messages: list[bytes]) -> None:
    client = await AsyncMllpClient.connect(port)
    try:
        for m in messages:
            ack = ack_fields(await client.send(m))
            assert ack["code"] in ("AA", "CA"), ack
            assert ack["control_id"] == control_id(m), ack
    finally:
        await client.close()


def first_copies(alerts: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]], Counter[str]]:
    """Each patient's alert events in arrival order (first copy of each
    alert_id:version), and how often each alert_id:version arrived."""
    copies = Counter(f"{a['alert_id']}:{a['version']}" for a in alerts)
    by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[str] = set()
    for a in alerts:
        key = f"{a['alert_id']}:{a['version']}"
        if key not in seen:
            seen.add(key)
            by_patient[a["patient"]["id"]].append(a)
    return by_patient, copies


def check_patient(pid: str, events: list[dict[str, Any]]) -> None:
    """One alert id per rule (two rules, two ids), events in production order."""
    ids = {rule: {a["alert_id"] for a in events if a["rule"] == rule} for rule in (PGX, STOP)}
    assert all(len(one) == 1 for one in ids.values()), f"{pid} alerted under several ids for a rule: {ids}"
    assert len(ids[PGX] | ids[STOP]) == 2, f"{pid}: two rules under one id"
    got = [(a["rule"], a["version"], a["event"]) for a in events]
    assert got == PER_PATIENT, f"{pid}: events arrived as {got}"


def firing(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(a["patient"]["id"], a["rule"]) for a in alerts if a["event"] == "firing"}


async def test_daemon_killed_with_alerts_in_the_outbox_the_other_daemon_publishes_them(
    tmp_path: Path, own_broker: Broker, pg_dsn: str, prefix: str
) -> None:
    started = time.monotonic()
    per_daemon = 20
    a_patients = [f"QA{i:03d}" for i in range(per_daemon)]
    b_patients = [f"QB{i:03d}" for i in range(per_daemon)]
    everyone = a_patients + b_patients
    expected = {(pid, rule) for pid in everyone for rule in (PGX, STOP)}
    pager = f"{prefix}-pager"
    received: list[dict[str, Any]] = []
    with daemons(tmp_path, own_broker, prefix, pg_dsn, "a", "b") as (a, b):
        await wait_listening(a, b)
        async with recording(own_broker, prefix, session=pager) as before:
            own_broker.stop()
            await asyncio.wait_for(before.broker_gone.wait(), WAIT)
        received += before.alerts()
        assert received == []  # nothing was sent yet

        # Broker down: A acknowledges everything; the alerts wait in the outbox.
        await send_all(a.port, [m for pid in a_patients for m in (order_for(pid), panel_for(pid))])
        orphans = await asyncio.to_thread(
            query, pg_dsn, "SELECT alert_id, version, claimed_by FROM outbox WHERE delivered_at IS NULL")
        assert len(orphans) == 2 * per_daemon
        os.kill(a.process.pid, signal.SIGKILL)
        assert await asyncio.to_thread(a.process.wait, WAIT) == -signal.SIGKILL
        claimed_by_a = sum(1 for *_, owner in orphans if owner == a.client_id)
        killed_at = time.monotonic()

        own_broker.start()
        async with recording(own_broker, prefix, session=pager) as after:
            await send_all(b.port, [m for pid in b_patients for m in (order_for(pid), panel_for(pid))])
            await after.wait_for(lambda _: firing(received + after.alerts()) >= expected,
                                 timeout=DELIVERY_DEADLINE)
            all_delivered_at = time.monotonic()
            await asyncio.to_thread(wait_until, lambda: undelivered(pg_dsn) == 0,
                                    what="every outbox row marked delivered")
        received += after.alerts()
        assert b.process.poll() is None, "daemon B died"
        published_by_b = {(e["alert_id"], e["version"]) for e in b.log_events("alert_published")}
        logs = a.log.read_text() + b.log.read_text()

    by_patient, copies = first_copies(received)
    assert sorted(by_patient) == sorted(everyone)
    for pid, events in by_patient.items():
        check_patient(pid, events)
    orphan_keys = {(alert_id, version) for alert_id, version, _ in orphans}
    assert orphan_keys <= published_by_b, "A's orphaned alerts were not all published by B"
    assert {(a["alert_id"], a["version"]) for pid in a_patients for a in by_patient[pid]} == orphan_keys

    rows = await asyncio.to_thread(query, pg_dsn, "SELECT patient_id, rule, count(*) FROM alerts GROUP BY 1, 2")
    assert sorted(rows) == sorted((pid, rule, 1) for pid in everyone for rule in (PGX, STOP))
    outbox = await asyncio.to_thread(
        query, pg_dsn, "SELECT alert_id, version, claimed_by, delivered_at FROM outbox ORDER BY id")
    assert len(outbox) == 4 * per_daemon
    assert all(delivered is not None for *_, delivered in outbox)
    # The delivering claim stays on a delivered row: every row went out through B.
    assert {owner for _, _, owner, _ in outbox} == {b.client_id}
    assert {(alert_id, version) for alert_id, version, _, _ in outbox} == set(published_by_b)
    assert not any(pid in logs for pid in everyone), "patient identifiers in the daemons' logs"

    repeats = sum(n - 1 for n in copies.values())
    print(f"failover: {len(copies)} distinct alert events, {sum(copies.values())} received, {repeats} repeats "
          f"of one alert_id:version; A's outbox rows claimed by A at the kill: {claimed_by_a}/{len(orphans)}; "
          f"all 40 patients delivered {all_delivered_at - killed_at:.2f}s after the kill; "
          f"test took {time.monotonic() - started:.2f}s")


async def test_one_message_sent_to_both_daemons_at_once_is_processed_once(
    tmp_path: Path, own_broker: Broker, pg_dsn: str, prefix: str
) -> None:
    started = time.monotonic()
    patients = [f"QR{i:03d}" for i in range(5)]
    expected = {(pid, rule) for pid in patients for rule in (PGX, STOP)}
    latencies: list[tuple[float, float]] = []
    async with recording(own_broker, prefix) as mqtt:
        with daemons(tmp_path, own_broker, prefix, pg_dsn, "a", "b") as (a, b):
            await wait_listening(a, b)
            to_a = await AsyncMllpClient.connect(a.port)
            to_b = await AsyncMllpClient.connect(b.port)
            try:
                for i, pid in enumerate(patients):
                    order = order_for(pid)  # on file first, through one daemon or the other
                    ack = ack_fields(await (to_a if i % 2 == 0 else to_b).send(order))
                    assert ack["code"] in ("AA", "CA"), ack  # the order asks for enhanced mode
                    panel = panel_for(pid)

                    async def timed(client: AsyncMllpClient, panel: bytes = panel) -> tuple[bytes, float]:
                        t0 = time.monotonic()
                        answer = await client.send(panel)
                        return answer, time.monotonic() - t0

                    (ack_a, took_a), (ack_b, took_b) = await asyncio.gather(timed(to_a), timed(to_b))
                    latencies.append((took_a, took_b))
                    fa, fb = ack_fields(ack_a), ack_fields(ack_b)
                    assert fa["code"] == fb["code"] == "AA", (fa, fb)
                    assert fa["control_id"] == fb["control_id"] == control_id(panel), (fa, fb)
            finally:
                await to_a.close()
                await to_b.close()
            await mqtt.wait_for(lambda _: firing(mqtt.alerts()) >= expected, timeout=WAIT)
            await asyncio.to_thread(wait_until, lambda: undelivered(pg_dsn) == 0,
                                    what="every outbox row marked delivered")
            assert a.process.poll() is None, "daemon A died"
            assert b.process.poll() is None, "daemon B died"
            processed = {d.name: d.log_events("message_processed") for d in (a, b)}
        received = mqtt.alerts()

    # The store: one message row per control id, one alert per patient and rule,
    # and the outbox holds exactly what the pager got (nothing else to come).
    for pid in patients:
        messages = await asyncio.to_thread(
            query, pg_dsn, "SELECT count(*) FROM messages WHERE control_id = %s", (f"LAB{pid[1:]}",))
        assert messages == [(1,)], f"{pid}: {messages[0][0]} message rows"
    rows = await asyncio.to_thread(query, pg_dsn, "SELECT patient_id, rule, count(*) FROM alerts GROUP BY 1, 2")
    assert sorted(rows) == sorted((pid, rule, 1) for pid in patients for rule in (PGX, STOP))
    outbox = await asyncio.to_thread(query, pg_dsn, "SELECT alert_id, version, event FROM outbox")
    assert len(outbox) == 2 * len(patients)
    assert {(x["alert_id"], x["version"], x["event"]) for x in received} == set(outbox)

    by_patient, copies = first_copies(received)
    assert sorted(by_patient) == patients
    for pid, events in by_patient.items():
        check_patient(pid, events)
        stops = {(x["alert_id"], x["version"], x["event"]) for x in received
                 if x["patient"]["id"] == pid and x["rule"] == STOP}
        assert len(stops) == 1, f"{pid}: hepatotoxicity.stop arrived as {stops}"

    # Which daemon processed each panel and which found it a duplicate.
    outcomes: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for name, entries in processed.items():
        for e in entries:
            if e.get("control_id", "").startswith("LAB"):
                outcomes[e["control_id"]].append((name, bool(e["duplicate"])))
    for pid in patients:
        got = sorted(outcomes[f"LAB{pid[1:]}"])
        assert [dup for _, dup in got].count(False) == 1, f"{pid}: processed as {got}"
        assert len(got) == 2, f"{pid}: processed as {got}"
    first = Counter(name for got in outcomes.values() for name, dup in got if not dup)
    repeats = sum(n - 1 for n in copies.values())
    print(f"simultaneous: {len(patients)} panels sent to both; processed first by {dict(first)}, "
          f"the other answered as duplicate; ACK latencies (A, B) "
          f"{[(round(x, 3), round(y, 3)) for x, y in latencies]}; {repeats} repeats of one alert_id:version; "
          f"test took {time.monotonic() - started:.2f}s")
