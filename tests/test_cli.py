"""The command line as a user meets it: a real `hl7-alerts serve` process and
`hl7-alerts send`, and config errors that name the key and line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import SAMPLES, WAIT, Broker, free_port, make_config, port_open, running, wait_until

from hl7_alerts.config import ConfigError, parse_config

CLI = [sys.executable, "-m", "hl7_alerts"]


def test_serve_then_send_samples(tmp_path: Path, broker: Broker, prefix: str) -> None:
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mllp:\n  port: {port}\nstore:\n  path: data/store.sqlite3\n"
        f"mqtt:\n  port: {broker.port}\n  topic_prefix: {prefix}\n  client_id: {prefix}\n"
    )
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen([*CLI, "serve", "--config", str(config)], stderr=log, stdout=log)
    try:
        wait_until(lambda: port_open(port) or daemon.poll() is not None, what="daemon listening")
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
        sent = subprocess.run(
            [*CLI, "send", "--port", str(port), *sorted(str(p) for p in SAMPLES.glob("*.hl7"))],
            capture_output=True, text=True, timeout=WAIT * 3, check=False,
        )
        assert sent.returncode == 0, sent.stderr
        lines = [line.split("\t") for line in sent.stdout.splitlines()]
        assert [(cols[0], cols[1]) for cols in lines] == [
            ("RX0001", "CA"), ("LAB0001", "AA"), ("RX0002", "AA"), ("LAB0002", "AA"),
            ("LAB0003", "AA"), ("ORM23-0001", "AA"), ("ORU23-0001", "AA"),
        ]
        bad = tmp_path / "bad.hl7"
        bad.write_bytes(b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|BAD9|P|2.5\nPID|1||1^^^SSA^SS\n")
        rejected = subprocess.run([*CLI, "send", "--port", str(port), str(bad)],
                                  capture_output=True, text=True, timeout=WAIT, check=False)
        assert rejected.returncode == 1
        assert rejected.stdout.startswith("BAD9\tAE\tPID-3 has no patient identifier of type MR")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=WAIT) == 0
        log.close()
    assert (tmp_path / "data" / "store.sqlite3").exists()  # relative to the config file
    events = [json.loads(line)["event"] for line in (tmp_path / "daemon.log").read_text().splitlines()
              if line.startswith("{")]
    assert "daemon_ready" in events
    assert events[-1] == "daemon_stopped"
    assert "H010001" not in (tmp_path / "daemon.log").read_text()  # no patient identifiers in logs


def test_send_to_a_closed_port_fails_clearly() -> None:
    result = subprocess.run([*CLI, "send", "--port", str(free_port()), str(SAMPLES / "01_seed_order_azathioprine.hl7")],
                            capture_output=True, text=True, timeout=WAIT, check=False)
    assert result.returncode == 1
    assert "cannot talk to 127.0.0.1" in result.stderr


def test_config_errors_name_key_and_line() -> None:
    text = "mllp:\n  host: 0.0.0.0\n  port: seventy\nmqtt:\n  topic_prefx: x\n"
    try:
        parse_config(text, source="site.yaml")
    except ConfigError as exc:
        message = str(exc)
    else:
        raise AssertionError("invalid config accepted")
    assert "site.yaml:3: mllp.port: Input should be a valid integer" in message
    assert "site.yaml:5: mqtt.topic_prefx: unknown key" in message


def test_serve_with_bad_config_exits_nonzero_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("hl7:\n  timezone: Mars/Olympus\n")
    result = subprocess.run([*CLI, "serve", "--config", str(config)], capture_output=True, text=True,
                            timeout=WAIT, check=False, env={**os.environ})
    assert result.returncode == 1
    assert f"{config}:2: hl7.timezone" in result.stderr


BATCH = (
    b"FHS|^~\\&|LAB|GENHOSP|||20261020||batchfile.hl7\n"
    b"BHS|^~\\&|LAB|GENHOSP|||20261020||||B1\n"
    b"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||ADT^A08|BATCH-1|P|2.5\nPID|1||H81^^^GENHOSP^MR\n"
    b"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||ADT^A08|BATCH-2|P|2.5\nPID|1||H82^^^GENHOSP^MR\n"
    b"BTS|2\nFTS|1\n"
)
MULTI = (
    b"\xef\xbb\xbfMSH|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||ADT^A08|MULTI-1|P|2.5\r\nPID|1||H83^^^GENHOSP^MR\r\n\r\n"
    b"\x0bMSH|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||ADT^A08|MULTI-2|P|2.5\rPID|1||H84^^^GENHOSP^MR\r\x1c\r"
    b"\xef\xbb\xbfMSH|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||ORU^R01|MULTI-3|P|2.5\nPID|1||1^^^SSA^SS\n"
)


async def test_send_batch_and_multi_message_files(tmp_path: Path, broker: Broker, prefix: str) -> None:
    """`send` takes batch files (FHS/BHS/BTS/FTS) and files of many messages
    (any line ends, BOMs, captured MLLP framing): one frame and one line per
    message, exit 1 when one is not accepted."""
    (tmp_path / "batch.hl7").write_bytes(BATCH)
    (tmp_path / "multi.hl7").write_bytes(MULTI)
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config) as daemon:
        sent = await asyncio.create_subprocess_exec(
            *CLI, "send", "--port", str(daemon.port), str(tmp_path / "batch.hl7"), str(tmp_path / "multi.hl7"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(WAIT * 3):
            out, err = await sent.communicate()
    lines = [line.split("\t")[:2] for line in out.decode().splitlines()]
    assert lines == [["BATCH-1", "AA"], ["BATCH-2", "AA"], ["MULTI-1", "AA"], ["MULTI-2", "AA"], ["MULTI-3", "AE"]], err
    assert sent.returncode == 1
