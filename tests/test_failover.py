"""Two daemons, one PostgreSQL store: failover, outbox leases, pager acks, and
a message sent to both.

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
- **A dead daemon's claims wait for their lease.** With both daemons connected
  the broker is frozen (SIGSTOP: connections stay up, publishes go
  unanswered), A takes orders and panels for 5 patients and claims their
  outbox rows (6 s lease, 5 s publish timeout), and is SIGKILLed as soon as
  the claims are in the database, before its publish timeout could release
  them; then the broker resumes. B publishes every alert of those patients
  (one alert id per patient and rule, in order per patient), but A's claimed
  rows only once their lease ran out: every poll of the database whose clock
  is still inside the lease finds them A's and undelivered, B's
  ``delivered_at`` is after A's ``claimed_until``, and each pager copy of them
  is either A's own publish from before the kill (the frozen broker had it in
  its socket and routes it when resumed) or B's, after the lease.
- **Acks after a graceful stop** (shared acks, ``$share/hl7-alerts/<prefix>/acks``).
  A is stopped with SIGTERM and exits; 10 acks for 10 alerts published then
  are all read by B: 10 ``acknowledged`` audit rows (one per alert, none from
  A) and 10 acknowledged events. A left the share group on its way out;
  without that unsubscribe the broker queues about half of them on A's
  stopped session and this test fails.
- **Plain acks subscription** (``mqtt.shared_acks: false``). A is SIGKILLed;
  10 acks published then are all recorded by B, each once. A restarted under
  its client id reads the same 10 from its session (queued while it was dead)
  and ignores them as already acknowledged: still one ``acknowledged`` audit
  row and one acknowledged outbox event per alert.

Monitoring (the sample orders are months old: overdue alerts) and reminders
are off, so only order and panel alerts (and the acks' acknowledged events)
occur. Every wait is on a condition with a deadline; the daemons are killed,
and a frozen broker resumed, in ``finally`` whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest

from tests.support.broker import Broker
from tests.support.daemon import ServeProcess, serve, write_config
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.mqtt import MqttRecorder, pager_ack, recording
from tests.support.samples import PGX, SAMPLES, STOP
from tests.support.waiting import WAIT, eventually

ORDER = (SAMPLES / "01_seed_order_azathioprine.hl7").read_bytes()
PANEL = (SAMPLES / "02_seed_liver_panel_above_3xuln.hl7").read_bytes()
# Each patient's alert events as the daemon produces them: the order's
# pgx.missing (no TPMT/NUDT15 on file), then the panel's critical alert.
PER_PATIENT = [(PGX, 1, "firing"), (STOP, 1, "firing")]
LEASE_SECONDS = 3  # must exceed mqtt.publish_timeout_seconds (1): config check enforces it
DELIVERY_DEADLINE = 60.0
# The lease takeover: a lease long enough to see B wait for it, and a publish
# timeout below it (the config check) but above the time it takes to kill A
# once its claims are in the database (a timeout would release them first).
TAKEOVER_LEASE, TAKEOVER_PUBLISH_TIMEOUT = 6, 5


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
    """One of the daemons: its name, its MQTT client id and its process."""

    name: str
    client_id: str
    daemon: ServeProcess

    @property
    def port(self) -> int:
        return self.daemon.port

    @property
    def log(self) -> Path:
        return self.daemon.log

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.daemon.process is not None
        return self.daemon.process

    def log_events(self, event: str) -> list[dict[str, Any]]:
        return self.daemon.events(event)

    def kill(self) -> None:
        self.daemon.kill()


def start(
    tmp_path: Path, name: str, broker: Broker, prefix: str, dsn: str, **sections: dict[str, Any]
) -> Served:
    """Write this daemon's config, with ``sections`` merged over the defaults
    below, and start its process (``wait_listening`` waits until it is ready)."""
    data: dict[str, dict[str, Any]] = {
        "store": {"dsn": dsn, "lease_seconds": LEASE_SECONDS},
        "mqtt": {"client_id": f"{prefix}-{name}", "publish_timeout_seconds": 1},
        # Debug: each message's outcome (duplicate or not) is logged.
        "logging": {"level": "debug"},
        "rules": {"monitoring": {"enabled": False}},
        "alerts": {"reminder_max": 0},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    config = write_config(tmp_path / f"config-{name}.yaml", broker.port, prefix, **data)
    daemon = serve(config, log=tmp_path / f"daemon-{name}.log", name=f"daemon {name}")
    daemon.spawn()
    return Served(name, data["mqtt"]["client_id"], daemon)


async def wait_listening(*daemons: Served) -> None:
    """Each daemon ready (started together, so they come up side by side)."""
    for d in daemons:
        await d.daemon.until_ready()


@contextlib.contextmanager
def daemons(
    tmp_path: Path, broker: Broker, prefix: str, dsn: str, *names: str, **sections: dict[str, Any]
) -> Iterator[list[Served]]:
    """Start the named daemons; every daemon in the list (a test may append
    one it starts later) is killed on the way out."""
    started: list[Served] = []
    try:
        for name in names:
            started.append(start(tmp_path, name, broker, prefix, dsn, **sections))
        yield started
    finally:
        for d in started:
            d.kill()


def query(dsn: str, sql: LiteralString, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


def undelivered(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM outbox WHERE delivered_at IS NULL")[0][0])


async def all_delivered(dsn: str) -> None:
    """Wait until every outbox row is marked delivered (each poll's query
    runs off the event loop, which keeps serving the MQTT recorder)."""
    await eventually(lambda: asyncio.to_thread(lambda: undelivered(dsn) == 0),
                     what="every outbox row marked delivered")


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
            await all_delivered(pg_dsn)
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
            await all_delivered(pg_dsn)
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


# -- leases and pager acks -------------------------------------------------------


def ack_audit(dsn: str) -> Counter[str]:
    """How many acks the daemons have read, by outcome (every ack read is audited)."""
    rows = query(dsn, "SELECT kind, count(*) FROM audit WHERE kind IN ('acknowledged', 'ack_ignored') GROUP BY 1")
    return Counter({kind: int(n) for kind, n in rows})


def acknowledged(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for x in alerts if x["event"] == "acknowledged"]


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def wait_online(mqtt: MqttRecorder, prefix: str, *daemons: Served, since: int = 0) -> None:
    """Each daemon has said "online" (after message ``since``): its MQTT
    session is up and its acks subscription in place."""
    topics = {f"{prefix}/status/{d.client_id}" for d in daemons}

    def online(messages: list[tuple[str, dict[str, Any]]]) -> bool:
        return topics <= {topic for topic, body in messages[since:] if body.get("state") == "online"}

    await mqtt.wait_for(online)


async def fire(mqtt: MqttRecorder, dsn: str, daemons: tuple[Served, ...], patients: list[str]) -> list[str]:
    """Each patient's order and panel through the daemons in turn; once every
    alert reached the pager and the outbox is empty, the alert ids."""
    for i, pid in enumerate(patients):
        await send_all(daemons[i % len(daemons)].port, [order_for(pid), panel_for(pid)])
    expected = {(pid, rule) for pid in patients for rule in (PGX, STOP)}
    await mqtt.wait_for(lambda _: firing(mqtt.alerts()) >= expected)
    await all_delivered(dsn)
    rows = await asyncio.to_thread(query, dsn, "SELECT alert_id FROM alerts ORDER BY patient_id, rule")
    assert len(rows) == len(expected)
    return [alert_id for (alert_id,) in rows]


async def publish_acks(mqtt: MqttRecorder, prefix: str, alert_ids: list[str]) -> None:
    for n, alert_id in enumerate(alert_ids):
        await mqtt.client.publish(f"{prefix}/acks", pager_ack(alert_id, f"dr.{n}"), qos=1)


async def wait_acks_read(dsn: str, want: Counter[str], why: str) -> None:
    """The audit shows exactly ``want`` acks read, within the deadline."""
    try:
        await eventually(lambda: asyncio.to_thread(lambda: ack_audit(dsn) == want), what=f"acks read: {dict(want)}")
        return
    except TimeoutError:
        got = await asyncio.to_thread(ack_audit, dsn)
    pytest.fail(f"acks read {dict(got)}, expected {dict(want)} within {WAIT}s: {why}", pytrace=False)


def live_claims(dsn: str, owner: str) -> list[tuple[int, str, int, float, float]]:
    """Undelivered rows ``owner`` holds under a lease still running: id,
    alert_id, version, claimed_until, and the database's clock."""
    rows = query(
        dsn,
        "SELECT id, alert_id, version, claimed_until, extract(epoch FROM clock_timestamp())::float8 FROM outbox"
        " WHERE claimed_by = %s AND delivered_at IS NULL AND claimed_until > extract(epoch FROM clock_timestamp())"
        " ORDER BY id",
        (owner,),
    )
    return [(int(i), str(a), int(v), float(u), float(now)) for i, a, v, u, now in rows]


async def watch_lease(dsn: str, owner: str, leases: dict[int, float], timeout: float) -> tuple[int, dict[int, float]]:
    """Poll the rows ``owner`` held (id → claimed_until) until all are
    delivered. Each poll reads the database's clock after taking its snapshot,
    so a poll whose clock is before a row's claimed_until must find it still
    ``owner``'s and undelivered: another daemon claims it only at a
    clock_timestamp() at or after claimed_until, and only what committed
    before the snapshot is seen. Returns the polls made before the lease ran
    out, and when (database clock) each row was first seen taken over."""
    early_polls = 0
    taken: dict[int, float] = {}

    def poll() -> bool:
        nonlocal early_polls
        rows = query(
            dsn,
            "SELECT id, claimed_by, delivered_at, extract(epoch FROM clock_timestamp())::float8"
            " FROM outbox WHERE id = ANY(%s)", (list(leases),))
        early = False
        for row_id, claimed_by, delivered_at, now in rows:
            if now < leases[row_id]:
                early = True
                assert (claimed_by, delivered_at) == (owner, None), (
                    f"outbox row {row_id} taken over {leases[row_id] - now:.3f}s before {owner}'s lease ran out: "
                    f"claimed_by={claimed_by}, delivered_at={delivered_at}")
            elif (claimed_by, delivered_at) != (owner, None):
                taken.setdefault(row_id, now)
        early_polls += early
        return all(delivered_at is not None for _, _, delivered_at, _ in rows)

    await eventually(lambda: asyncio.to_thread(poll), timeout, what=f"{owner}'s claimed rows to be delivered",
                     interval=0.05)
    return early_polls, taken


async def test_a_killed_daemons_claims_are_published_by_the_other_only_after_the_lease(
    tmp_path: Path, own_broker: Broker, pg_dsn: str, prefix: str
) -> None:
    started = time.monotonic()
    patients = [f"QL{i:03d}" for i in range(5)]
    expected = {(pid, rule) for pid in patients for rule in (PGX, STOP)}
    lease: dict[str, dict[str, Any]] = {"store": {"lease_seconds": TAKEOVER_LEASE},
                                        "mqtt": {"publish_timeout_seconds": TAKEOVER_PUBLISH_TIMEOUT}}
    async with recording(own_broker, prefix) as mqtt:
        with daemons(tmp_path, own_broker, prefix, pg_dsn, "a", "b", **lease) as (a, b):
            await wait_listening(a, b)
            await wait_online(mqtt, prefix, a, b)
            assert own_broker.process is not None
            broker_pid = own_broker.process.pid
            # A frozen broker: connections stay up, publishes go unanswered,
            # so A holds its claims (until its publish timeout) when killed.
            os.kill(broker_pid, signal.SIGSTOP)
            try:
                frozen_at = time.monotonic()
                await send_all(a.port, [m for pid in patients for m in (order_for(pid), panel_for(pid))])
                await eventually(lambda: asyncio.to_thread(live_claims, pg_dsn, a.client_id),
                                 TAKEOVER_PUBLISH_TIMEOUT - 1, what="outbox rows claimed by A")
                os.kill(a.process.pid, signal.SIGKILL)
                killed_wall, killed_at = time.time(), time.monotonic()
                assert await asyncio.to_thread(a.process.wait, WAIT) == -signal.SIGKILL
                held = await asyncio.to_thread(live_claims, pg_dsn, a.client_id)
            finally:
                os.kill(broker_pid, signal.SIGCONT)
            if not held:
                pytest.fail(
                    f"A held no live claim when killed, {killed_at - frozen_at:.2f}s after the broker froze: its "
                    f"publish timeout ({TAKEOVER_PUBLISH_TIMEOUT}s) released them first; the lease went untested",
                    pytrace=False)
            leases = {row_id: until for row_id, _, _, until, _ in held}
            db_at_kill = held[0][4]
            early_polls, taken = await watch_lease(
                pg_dsn, a.client_id, leases, timeout=TAKEOVER_LEASE + WAIT)
            await mqtt.wait_for(lambda _: firing(mqtt.alerts()) >= expected)
            await all_delivered(pg_dsn)
            assert b.process.poll() is None, "daemon B died"
            published_by_b = {(e["alert_id"], e["version"]) for e in b.log_events("alert_published")}
        received = mqtt.alerts()

    assert early_polls > 0, "no poll fell inside A's lease: the wait for it went unobserved"
    by_patient, copies = first_copies(received)
    assert sorted(by_patient) == patients
    for pid, events in by_patient.items():
        check_patient(pid, events)
    outbox = await asyncio.to_thread(
        query, pg_dsn, "SELECT id, alert_id, version, claimed_by, delivered_at FROM outbox ORDER BY id")
    assert len(outbox) == len(expected)
    # The broker answered nobody before A died: every row went out through B,
    # A's claimed ones once their lease had run out (same host, same clock).
    assert {owner for *_, owner, _ in outbox} == {b.client_id}
    assert {(alert_id, version) for _, alert_id, version, _, _ in outbox} <= published_by_b
    for row_id, _, _, _, delivered_at in outbox:
        if row_id in leases:
            assert epoch(delivered_at) >= leases[row_id], f"row {row_id} delivered before A's lease ran out"
    # On the pager: a copy of a claimed alert is A's own publish (sent before
    # the kill, read by the broker when it woke up) or B's, after the lease.
    # published_at is whole seconds.
    held_keys = {(alert_id, version): until for _, alert_id, version, until, _ in held}
    from_a = 0
    for x in received:
        until = held_keys.get((x["alert_id"], x["version"]))
        if until is None:
            continue
        stamp = epoch(x["published_at"])
        assert stamp <= killed_wall or stamp + 1 > until, (
            f"{x['alert_id']}:{x['version']} published at {x['published_at']}, after A's death, inside its lease")
        from_a += stamp <= killed_wall
    for key, until in held_keys.items():
        assert any(epoch(x["published_at"]) + 1 > until for x in received
                   if (x["alert_id"], x["version"]) == key), f"{key}: no copy published after the lease"

    claimed_at = min(leases.values()) - TAKEOVER_LEASE
    after_lease = [taken[row_id] - until for row_id, until in leases.items()]
    print(f"lease takeover: A held {len(held)}/{len(outbox)} outbox rows when killed "
          f"{db_at_kill - claimed_at:.2f}s after its first claim ({killed_at - frozen_at:.2f}s after the broker "
          f"froze); B took them {min(after_lease):.2f}-{max(after_lease):.2f}s after the lease ran out "
          f"({TAKEOVER_LEASE}s lease, B's outbox recheck 5s); {early_polls} polls inside the lease saw them A's; "
          f"{from_a} copies of A's own publishes reached the pager; "
          f"{sum(n - 1 for n in copies.values())} repeats of one alert_id:version; "
          f"test took {time.monotonic() - started:.2f}s")


async def test_acks_after_one_daemon_stopped_gracefully_all_reach_the_other(
    tmp_path: Path, own_broker: Broker, pg_dsn: str, prefix: str
) -> None:
    started = time.monotonic()
    patients = [f"QK{i:03d}" for i in range(5)]
    async with recording(own_broker, prefix) as mqtt:
        with daemons(tmp_path, own_broker, prefix, pg_dsn, "a", "b") as (a, b):
            await wait_listening(a, b)
            await wait_online(mqtt, prefix, a, b)
            alert_ids = await fire(mqtt, pg_dsn, (a, b), patients)
            a.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(a.process.wait, WAIT) == 0, a.log.read_text()
            stopped_at = time.monotonic()
            # A left the share group on its way out; were it still a member,
            # the broker would queue about half of these on its session.
            await publish_acks(mqtt, prefix, alert_ids)
            await wait_acks_read(pg_dsn, Counter(acknowledged=len(alert_ids)),
                                 "the stopped daemon's session still takes a share of the acks")
            await mqtt.wait_for(lambda _: len(acknowledged(mqtt.alerts())) >= len(alert_ids))
            read_at = time.monotonic()
            assert b.process.poll() is None, "daemon B died"
            read = {d.name: d.log_events("ack_received") for d in (a, b)}
        received = mqtt.alerts()

    assert read["a"] == []
    assert sorted(e["alert_id"] for e in read["b"]) == sorted(alert_ids)
    assert {e["outcome"] for e in read["b"]} == {"acknowledged"}
    rows = await asyncio.to_thread(
        query, pg_dsn, "SELECT alert_id, count(*) FROM audit WHERE kind = 'acknowledged' GROUP BY 1")
    assert sorted(rows) == sorted((alert_id, 1) for alert_id in alert_ids)
    events = acknowledged(received)
    assert sorted(x["alert_id"] for x in events) == sorted(alert_ids)
    assert {x["alert_id"]: x["acknowledged"]["by"] for x in events} == {
        alert_id: f"dr.{n}" for n, alert_id in enumerate(alert_ids)}
    print(f"graceful stop: {len(alert_ids)} acks after A stopped, all read by B and published as acknowledged "
          f"{read_at - stopped_at:.2f}s after A's exit; test took {time.monotonic() - started:.2f}s")


async def test_acks_arriving_while_a_daemon_stops_are_all_read_before_it_goes(
    tmp_path: Path, own_broker: Broker, pg_dsn: str, prefix: str
) -> None:
    """A SIGTERM in the middle of a burst of acks: the stopping daemon leaves
    the share group, then handles what the broker had already routed to it
    (in flight, queued behind the broker's in-flight limit, in the client's
    queue) before it disconnects. Nothing waits in its session for a restart."""
    burst = 400
    async with recording(own_broker, prefix) as mqtt:
        with daemons(tmp_path, own_broker, prefix, pg_dsn, "a", "b") as (a, b):
            await wait_listening(a, b)
            await wait_online(mqtt, prefix, a, b)
            alert_id = (await fire(mqtt, pg_dsn, (a, b), ["QF000"]))[0]
            flood = asyncio.create_task(publish_acks(mqtt, prefix, [alert_id] * burst))
            await mqtt.wait_for(lambda _: len(acknowledged(mqtt.alerts())) >= 1)  # the burst is flowing
            a.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(a.process.wait, WAIT) == 0, a.log.read_text()
            await flood
            read_by_a = len(a.log_events("ack_received"))
            await wait_acks_read(pg_dsn, Counter(acknowledged=1, ack_ignored=burst - 1),
                                 "acks routed to the stopping daemon were left in its session")
    assert read_by_a > 0  # A did take part in the burst: the test exercised its stop


async def test_plain_acks_subscription_a_killed_daemon_costs_no_ack_and_each_is_recorded_once(
    tmp_path: Path, own_broker: Broker, pg_dsn: str, prefix: str
) -> None:
    started = time.monotonic()
    patients = [f"QP{i:03d}" for i in range(5)]
    plain: dict[str, dict[str, Any]] = {"mqtt": {"shared_acks": False}}
    async with recording(own_broker, prefix) as mqtt:
        with daemons(tmp_path, own_broker, prefix, pg_dsn, "a", "b", **plain) as running:
            a, b = running
            await wait_listening(a, b)
            await wait_online(mqtt, prefix, a, b)
            alert_ids = await fire(mqtt, pg_dsn, (a, b), patients)
            os.kill(a.process.pid, signal.SIGKILL)
            assert await asyncio.to_thread(a.process.wait, WAIT) == -signal.SIGKILL
            killed_at = time.monotonic()
            await publish_acks(mqtt, prefix, alert_ids)
            await wait_acks_read(pg_dsn, Counter(acknowledged=len(alert_ids)), "B did not read every ack")
            await mqtt.wait_for(lambda _: len(acknowledged(mqtt.alerts())) >= len(alert_ids))
            read_at = time.monotonic()
            read_by_b = b.log_events("ack_received")
            # A comes back under its client id: its session kept the plain
            # subscription and queued the same acks meanwhile. It reads them
            # all, and they change nothing: each was recorded once already.
            since = len(mqtt.messages)
            again = start(tmp_path, "a2", own_broker, prefix, pg_dsn,
                          mqtt={**plain["mqtt"], "client_id": a.client_id})
            running.append(again)
            await wait_listening(again)
            await wait_online(mqtt, prefix, again, since=since)
            await wait_acks_read(pg_dsn, Counter(acknowledged=len(alert_ids), ack_ignored=len(alert_ids)),
                                 "the restarted daemon did not read the acks queued on its session as repeats")
            replayed_at = time.monotonic()
            read_by_again = again.log_events("ack_received")
            assert b.process.poll() is None, "daemon B died"
            assert again.process.poll() is None, "daemon A (restarted) died"
            acknowledged_rows = await asyncio.to_thread(
                query, pg_dsn, "SELECT alert_id, count(*) FROM outbox WHERE event = 'acknowledged' GROUP BY 1")
            await all_delivered(pg_dsn)
        received = mqtt.alerts()

    assert sorted(e["alert_id"] for e in read_by_b) == sorted(alert_ids)
    assert {e["outcome"] for e in read_by_b} == {"acknowledged"}
    assert sorted(e["alert_id"] for e in read_by_again) == sorted(alert_ids)
    assert "acknowledged" not in {e["outcome"] for e in read_by_again}
    rows = await asyncio.to_thread(
        query, pg_dsn, "SELECT alert_id, count(*) FROM audit WHERE kind = 'acknowledged' GROUP BY 1")
    assert sorted(rows) == sorted((alert_id, 1) for alert_id in alert_ids)
    assert sorted(acknowledged_rows) == sorted((alert_id, 1) for alert_id in alert_ids)
    events = acknowledged(received)
    assert {(x["alert_id"], x["version"]) for x in events} == {(alert_id, 2) for alert_id in alert_ids}
    print(f"plain acks: {len(alert_ids)} acks after A was killed, all recorded by B "
          f"{read_at - killed_at:.2f}s after the kill; A restarted read the same {len(read_by_again)} from its "
          f"session as {sorted({e['outcome'] for e in read_by_again})} {replayed_at - read_at:.2f}s later; "
          f"test took {time.monotonic() - started:.2f}s")
