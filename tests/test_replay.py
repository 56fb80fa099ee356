"""`hl7-alerts replay --quiet` into the site's store before go-live: alert
events recorded and audited, nothing published or reminded about; then the
daemon starts and a live message about the same alert publishes normally
(real Mosquitto, real processes)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from hl7_alerts.mllp import MllpClient
from tests.support.broker import Broker
from tests.support.daemon import CLI, serve, write_config
from tests.support.hl7kit import ALT, AZA, order_msg, oru, result
from tests.support.mqtt import recording
from tests.support.waiting import WAIT

P1 = "H0880001^^^GENHOSP^MR"
P2 = "H0880002^^^GENHOSP^MR"
HISTORY = [
    order_msg("RP1", "NW", "RX1", AZA, "20260105090000", mrn=P1),  # pgx.missing
    oru("RP2", "20260108080000", result(ALT, "190", ref="7-56"), mrn=P1, specimen="S1"),  # stop (critical)
    # The clock passes P1's due panel (01-17 08:00): overdue, raised by the timer, quiet too.
    oru("RP3", "20260120100000", result(ALT, "25", ref="7-56"), mrn=P2, specimen="S2"),
]
LIVE = oru("LIVE1", "20260122080000", result(ALT, "400", ref="7-56"), mrn=P1, specimen="S3")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT * 3, check=False)


def test_quiet_replay_publishes_nothing_and_a_later_live_message_does(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    config = write_config(tmp_path / "config.json", broker.port, prefix,
                          alerts={"reminder_after": "1s"})  # a reminder would be due at once
    history = tmp_path / "history.hl7"
    history.write_bytes("".join(HISTORY).encode())

    replayed = cli("replay", "--quiet", "--no-progress", "--config", str(config), str(history))
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.splitlines()[0].split("\t")[:8] == [
        "messages", "3", "processed", "3", "duplicates", "0", "skipped", "0"]

    listed = [json.loads(line) for line in cli("alerts", "list", "--json", "--config", str(config)).stdout.splitlines()]
    by_rule = {a["rule"]: a for a in listed}
    assert set(by_rule) == {"aza.pgx.missing", "aza.hepatotoxicity.stop", "aza.monitoring.overdue"}
    assert all(a["paged_at"] is None and a["reminders_sent"] == 0 for a in listed)
    text = cli("alerts", "list", "--config", str(config)).stdout
    assert all(line.split("\t")[5] == "quiet" for line in text.splitlines())
    stop_id = by_rule["aza.hepatotoxicity.stop"]["alert_id"]
    trail = json.loads(cli("alerts", "show", stop_id, "--config", str(config)).stdout)["audit"]
    assert [(a["kind"], a["event"]) for a in trail] == [("event", "firing")]
    assert trail[0]["detail"].startswith("not published: quiet replay")

    async def go_live() -> list[dict[str, object]]:
        async with recording(broker, prefix) as mqtt, serve(config) as daemon:
            # The daemon is up and its timer has looked: nothing of history
            # goes out. The live panel's events are the first alerts on MQTT.
            await daemon.wait_event("daemon_ready")

            def send() -> None:
                with MllpClient("127.0.0.1", daemon.port, timeout=WAIT) as client:
                    client.send(LIVE.encode())

            await asyncio.to_thread(send)
            return await mqtt.wait_alerts(2)

    published = asyncio.run(go_live())
    assert [(p["rule"], p["event"]) for p in published] == [
        ("aza.hepatotoxicity.stop", "updated"), ("aza.monitoring.overdue", "resolved")]
    assert published[0]["alert_id"] == stop_id
    assert published[0]["version"] == 2
    assert published[1]["alert_id"] == by_rule["aza.monitoring.overdue"]["alert_id"]
    trail = json.loads(cli("alerts", "show", stop_id, "--config", str(config)).stdout)["audit"]
    assert [(a["kind"], a["event"]) for a in trail][:4] == [
        ("event", "firing"), ("event", "updated"), ("publish_attempt", "updated"), ("delivered", "updated")]


def test_replay_without_quiet_queues_for_the_daemon(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = write_config(tmp_path / "config.json", broker.port, prefix)
    history = tmp_path / "history.hl7"
    history.write_bytes("".join(HISTORY[:2]).encode())
    assert cli("replay", "--no-progress", "--config", str(config), str(history)).returncode == 0

    async def start() -> list[dict[str, object]]:
        async with recording(broker, prefix) as mqtt, serve(config):
            return await mqtt.wait_alerts(2)

    assert [(p["rule"], p["event"]) for p in asyncio.run(start())] == [
        ("aza.pgx.missing", "firing"), ("aza.hepatotoxicity.stop", "firing")]
