"""The daemon as systemd runs it: a real `hl7-alerts serve` process that
notifies READY and WATCHDOG over $NOTIFY_SOCKET, reloads config.yaml on
SIGHUP without dropping connections, and says STOPPING on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hl7_alerts.config import load_config
from hl7_alerts.sdnotify import Notifier
from tests.support.broker import Broker
from tests.support.daemon import make_config, running, serve
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.mqtt import MqttRecorder, recording
from tests.support.ports import port_open
from tests.support.waiting import WAIT, eventually


def order(patient: str, control: str) -> bytes:
    return (
        f"MSH|^~\\&|PHARM|GENHOSP|HL7ALERTS|GENHOSP|20260901090000||RDE^O11^RDE_O11|{control}|P|2.5.1\r"
        f"PID|1||{patient}^^^GENHOSP^MR||TESTPATIENT^RELOAD||19700101|F\r"
        f"ORC|NW|RX{control}|||||||20260901090000\r"
        "TQ1|1||||||20260901090000\r"
        "RXE|^^^20260901090000|1256^Azathioprine 50 MG Oral Tablet^RXNORM|150||mg|TAB\r"
    ).encode()


def liver_panel(patient: str, control: str, alt: int) -> bytes:
    """ALT against a 7-56 U/L range: 140 is 2.5 x ULN."""
    return (
        f"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|20261020093000||ORU^R01^ORU_R01|{control}|P|2.5.1\r"
        f"PID|1||{patient}^^^GENHOSP^MR||TESTPATIENT^RELOAD||19700101|F\r"
        f"OBR|1|ORD{control}|SPC{control}|24325-3^Hepatic function panel^LN|||20261020080000\r"
        f"OBX|1|NM|1742-6^ALT^LN||{alt}|U/L|7-56|H|||F|||20261020080000\r"
    ).encode()


def write_yaml_config(path: Path, *, mllp_port: int = 0, broker_port: int, prefix: str, rules: str) -> None:
    """YAML, not support's JSON: the reload test edits it line by line."""
    path.write_text(
        f"mllp:\n  port: {mllp_port}\nstore:\n  path: data/store.sqlite3\n"
        f"mqtt:\n  port: {broker_port}\n  topic_prefix: {prefix}\n  client_id: {prefix}\n"
        f"  reconnect_max_seconds: 0.5\nmetrics:\n  port: 0\nlogging:\n  format: json\n{rules}"
    )


class NotifyListener:
    """The datagram socket systemd would own, on Linux's abstract namespace."""

    def __init__(self) -> None:
        self.name = f"hl7-alerts-test-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.settimeout(WAIT)

    @property
    def address(self) -> str:
        return "@" + self.name

    def next(self) -> set[str]:
        return set(self.sock.recv(4096).decode().split("\n"))

    def until(self, line: str) -> list[set[str]]:
        """Datagrams received up to and including the first carrying ``line``."""
        seen = []
        while True:
            datagram = self.next()
            seen.append(datagram)
            if line in datagram:
                return seen


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    yield listener
    listener.sock.close()


def test_ready_then_watchdog_pings_reload_and_stopping(
    tmp_path: Path, broker: Broker, prefix: str, notify: NotifyListener
) -> None:
    config = tmp_path / "config.yaml"
    write_yaml_config(config, broker_port=broker.port, prefix=prefix, rules="")
    env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "100000"}
    with serve(config, env=env) as daemon:
        assert notify.next() == {"READY=1"}  # the first datagram: nothing before it
        assert port_open(daemon.port)  # READY only once the listener is bound
        pings = [notify.next() for _ in range(3)]
        assert pings == [{"WATCHDOG=1"}] * 3  # every WATCHDOG_USEC/2 from the event loop

        daemon.send_signal(signal.SIGHUP)
        reloading = notify.until("READY=1")
        assert any("RELOADING=1" in d for d in reloading)
        (stamp,) = [line for d in reloading for line in d if line.startswith("MONOTONIC_USEC=")]
        assert int(stamp.split("=")[1]) > 0

        daemon.send_signal(signal.SIGTERM)
        notify.until("STOPPING=1")
        assert daemon.exit_code() == 0


async def test_sighup_applies_new_thresholds_on_open_connections(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = tmp_path / "config.yaml"
    write_yaml_config(config, broker_port=broker.port, prefix=prefix, rules="rules:\n  hepatotoxicity_x_uln: 3.0\n")
    log = tmp_path / "daemon.log"
    async with serve(config, log=log) as daemon:
        async with recording(broker, prefix) as mqtt:
            client = await AsyncMllpClient.connect(daemon.port)
            for patient in ("R1", "R2", "R3"):
                assert ack_fields(await client.send(order(patient, f"RX{patient}")))["code"] == "AA"
            # 2.5 x ULN is under the running 3.0 threshold: no alert.
            assert ack_fields(await client.send(liver_panel("R1", "LABR1", 140)))["code"] == "AA"

            # Pinning the port it got is a change of mllp.port (from 0): restart-only.
            write_yaml_config(config, mllp_port=daemon.port, broker_port=broker.port, prefix=prefix,
                              rules="rules:\n  hepatotoxicity_x_uln: 2.0\n")
            daemon.send_signal(signal.SIGHUP)
            reloaded = await daemon.wait_event("config_reloaded")
            assert reloaded["applied"] == ["rules.hepatotoxicity_x_uln"]
            assert reloaded["needs_restart"] == ["mllp.port"]  # still listening where it was

            # Same connection, next message: evaluated at 2.0.
            assert ack_fields(await client.send(liver_panel("R2", "LABR2", 140)))["code"] == "AA"
            # The orders raise aza.pgx.missing too; this test is about the threshold.
            await mqtt.wait_for(lambda _: len(stop_alerts(mqtt)) >= 1)
            (first,) = stop_alerts(mqtt)
            assert first["source"]["control_id"] == "LABR2"  # not LABR1: it went in under 3.0
            assert first["observations"][0]["x_uln"] == 2.5

            lines = config.read_text().replace("  hepatotoxicity_x_uln: 2.0\n",
                                               "  hepatotoxicity_x_uln: 4.0\n  history_dayz: 30\n")
            config.write_text(lines)
            bad_line = lines.splitlines().index("  history_dayz: 30") + 1
            daemon.send_signal(signal.SIGHUP)
            rejected = await daemon.wait_event("config_reload_rejected")
            assert rejected["error"] == f"{config}:{bad_line}: rules.history_dayz: unknown key"

            # Still 2.0 (not 4.0), still the same connection.
            assert ack_fields(await client.send(liver_panel("R3", "LABR3", 140)))["code"] == "AA"
            await mqtt.wait_for(lambda _: len(stop_alerts(mqtt)) >= 2)
            assert [a["source"]["control_id"] for a in stop_alerts(mqtt)] == ["LABR2", "LABR3"]
            await client.close()
        assert await asyncio.to_thread(daemon.stop) == 0  # SIGTERM: a clean exit
    assert "R1^" not in log.read_text()


def stop_alerts(mqtt: MqttRecorder) -> list[dict[str, Any]]:
    return [a for a in mqtt.alerts() if a["rule"] == "aza.hepatotoxicity.stop"]


def test_notifier_speaks_the_protocol_to_a_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="n") as folder:  # short: unix socket paths are capped
        path = os.path.join(folder, "s")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(WAIT)
            notifier = Notifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
            assert notifier.watchdog_interval == 1.5
            notifier.ready("serving")
            assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
            notifier.stopping()
            assert sock.recv(4096) == b"STOPPING=1"


def test_notifier_is_silent_without_systemd_and_ignores_another_pids_watchdog() -> None:
    assert not Notifier.from_environment({}).enabled
    Notifier.from_environment({}).ready()  # no socket: a no-op, not an error
    other = Notifier.from_environment(
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid() + 1)}
    )
    assert other.watchdog_interval is None
    mine = Notifier.from_environment(
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert mine.watchdog_interval == 0.05
    # A socket that is gone is logged, never raised: the daemon keeps serving.
    Notifier("@hl7-alerts-nobody-listens-here").watchdog()


async def test_watchdog_pings_come_from_the_event_loop_and_stop_while_it_stalls(
    tmp_path: Path, broker: Broker, prefix: str, notify: NotifyListener
) -> None:
    arrivals: list[float] = []
    done = threading.Event()

    def receive() -> None:
        notify.sock.settimeout(0.05)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                if "WATCHDOG=1" in notify.next():
                    arrivals.append(time.monotonic())

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config, notifier=Notifier(notify.address, watchdog_usec=40_000)):
        await eventually(lambda: len(arrivals) >= 3, what="three watchdog pings")
        # The stall under test (not a wait for a condition): a blocking call
        # on the loop. No ping may be sent while it lasts.
        stalled_at = time.monotonic()
        time.sleep(0.6)  # noqa: ASYNC251
        resumed_at = time.monotonic()
        count = len(arrivals)
        await eventually(lambda: len(arrivals) >= count + 3, what="pings to resume after the stall")
    done.set()
    receiver.join(timeout=WAIT)
    assert [t for t in arrivals if stalled_at + 0.2 < t < resumed_at] == []


async def test_reload_keeps_restart_only_keys_and_survives_an_unreadable_file(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config) as run:
        daemon = run.daemon
        changed = make_config(
            tmp_path / "elsewhere", broker.port, prefix,
            rules={"hepatotoxicity_x_uln": 5.0}, health={"max_outbox_age_seconds": 60},
            mqtt={"topic_prefix": "moved"}, mllp={"allow": ["10.0.0.0/8"], "read_timeout_seconds": 5},
            alerts={"reminder_max": 9},
        )
        result = daemon.reload(changed)
        assert result.applied == ("health.max_outbox_age_seconds", "rules.hepatotoxicity_x_uln")
        assert result.needs_restart == (
            "mllp.read_timeout_seconds", "mllp.allow", "alerts.reminder_max", "store.path", "mqtt.topic_prefix"
        )
        assert daemon.config.mllp.allow == ()
        assert daemon.config.rules.hepatotoxicity_x_uln == 5.0
        assert daemon.config.store.path == config.store.path
        assert daemon.config.mqtt.topic_prefix == prefix

        not_utf8 = tmp_path / "latin1.yaml"
        not_utf8.write_bytes(b"rules:\n  hepatotoxicity_x_uln: 2.0  # \xe9\n")
        failed = daemon.reload_from(lambda: load_config(not_utf8))
        assert failed.error is not None
        assert failed.error.startswith("UnicodeDecodeError")
        assert daemon.config.rules.hepatotoxicity_x_uln == 5.0
        registry = daemon.metrics.registry
        assert registry.get_sample_value("hl7_alerts_config_reloads_total", {"result": "applied"}) == 1
        assert registry.get_sample_value("hl7_alerts_config_reloads_total", {"result": "rejected"}) == 1
