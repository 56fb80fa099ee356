"""The command line as a user meets it: a real `hl7-alerts serve` process and
`hl7-alerts send`, and config errors that name the key and line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

from hl7_alerts.config import Config, ConfigError, load_config, parse_config
from hl7_alerts.mllp import MllpClient
from tests.support.broker import Broker
from tests.support.daemon import CLI, make_config, running, serve
from tests.support.mqtt import recording
from tests.support.samples import SAMPLES, SEED_STORY, sample_messages
from tests.support.waiting import WAIT


def test_serve_then_send_samples(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mllp:\n  port: 0\nmetrics:\n  port: 0\nstore:\n  path: data/store.sqlite3\n"
        f"mqtt:\n  port: {broker.port}\n  topic_prefix: {prefix}\n  client_id: {prefix}\n"
    )
    with serve(config) as daemon:
        port = daemon.port
        sent = subprocess.run(
            [*CLI, "send", "--port", str(port), *sorted(str(p) for p in SAMPLES.glob("*.hl7"))],
            capture_output=True, text=True, timeout=WAIT * 3, check=False,
        )
        assert sent.returncode == 0, sent.stderr
        lines = [line.split("\t") for line in sent.stdout.splitlines()]
        assert {cols[1] for cols in lines[7:]} == {"AA"}  # samples 07+ (the rule catalog)
        assert [(cols[0], cols[1]) for cols in lines[:7]] == [
            ("RX0001", "CA"), ("LAB0001", "AA"), ("RX0002", "AA"), ("LAB0002", "AA"),
            ("LAB0003", "AA"), ("ORM23-0001", "AA"), ("ORU23-0001", "AA"),
        ]
        bad = tmp_path / "bad.hl7"
        bad.write_bytes(b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|BAD9|P|2.5\nPID|1||1^^^SSA^SS\n")
        rejected = subprocess.run([*CLI, "send", "--port", str(port), str(bad)],
                                  capture_output=True, text=True, timeout=WAIT, check=False)
        assert rejected.returncode == 1
        assert rejected.stdout.startswith("BAD9\tAE\tPID-3 has no patient identifier of type MR")
        assert daemon.stop() == 0  # SIGTERM: a clean exit
    assert (tmp_path / "data" / "store.sqlite3").exists()  # relative to the config file
    events = [json.loads(line)["event"] for line in (tmp_path / "daemon.log").read_text().splitlines()
              if line.startswith("{")]
    assert "daemon_ready" in events
    assert events[-1] == "daemon_stopped"
    assert "H010001" not in (tmp_path / "daemon.log").read_text()  # no patient identifiers in logs


def test_send_to_a_closed_port_fails_clearly(refused_port: int) -> None:
    result = subprocess.run([*CLI, "send", "--port", str(refused_port), str(SAMPLES / "01_seed_order_azathioprine.hl7")],
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


def test_serve_with_an_unreachable_database_exits_nonzero_saying_so(tmp_path: Path, refused_port: int) -> None:
    """No traceback: one line naming the store and why (systemd restarts it)."""
    config = tmp_path / "c.yaml"
    config.write_text(
        f"store:\n  dsn: postgresql://hl7:secret@127.0.0.1:{refused_port}/hl7alerts\n"
        "mllp:\n  port: 0\nmetrics:\n  enabled: false\nlogging:\n  format: json\n"
    )
    result = subprocess.run([*CLI, "serve", "--config", str(config)], capture_output=True, text=True,
                            timeout=WAIT, check=False, env={**os.environ})
    assert result.returncode == 1
    assert "Error: store unavailable: cannot connect to store.dsn" in result.stderr
    assert "Traceback" not in result.stderr
    assert "secret" not in result.stderr + result.stdout


def test_config_yaml_shows_the_embedded_defaults() -> None:
    shipped = load_config(Path(__file__).resolve().parent.parent / "config.yaml")
    assert shipped.rules == Config().rules
    assert shipped.rule_settings() == Config().rule_settings()


def test_alerts_list_show_ack_on_the_store_then_the_daemon_publishes_the_ack(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        f"mllp:\n  port: 0\nstore:\n  path: store.sqlite3\n"
        f"mqtt:\n  port: {broker.port}\n  topic_prefix: {prefix}\n  client_id: {prefix}\n"
        f"  reconnect_max_seconds: 0.5\nlogging:\n  format: json\n"
        # The order began in September 2026: on the wall clock its schedule is
        # overdue, and an overdue alert would race the two this test lists.
        f"rules:\n  monitoring:\n    enabled: false\n"
    )
    config = load_config(config_file)

    async def fire() -> dict[str, object]:
        async with recording(broker, prefix) as mqtt, running(config) as daemon:
            def send() -> None:
                with MllpClient("127.0.0.1", daemon.port, timeout=WAIT) as client:
                    # The order and its critical panel: that alert stays open.
                    for m in sample_messages(*SEED_STORY[:2]):
                        client.send(m)
            await asyncio.to_thread(send)
            return await mqtt.wait_alerts(2)

    pgx, alert = asyncio.run(fire())
    alert_id, pgx_id = str(alert["alert_id"]), str(pgx["alert_id"])
    cfg = ["--config", str(config_file)]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, "alerts", *args], capture_output=True, text=True, timeout=WAIT, check=False)

    listed = cli("list", *cfg)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("\t")[0]: line.split("\t")[:6] for line in listed.stdout.splitlines()}
    assert len(rows) == len(listed.stdout.splitlines()) == 2
    assert rows == {
        alert_id: [alert_id, "open", "critical", "aza.hepatotoxicity.stop", "v1", "unacked"],
        pgx_id: [pgx_id, "open", "info", "aza.pgx.missing", "v1", "unacked"],  # the order: no TPMT/NUDT15
    }

    acked = cli("ack", alert_id, "--by", "dr.console", *cfg)
    assert (acked.returncode, acked.stdout) == (0, f"{alert_id}\tacknowledged\n")
    again = cli("ack", alert_id, "--by", "dr.console", *cfg)
    assert again.stdout == f"{alert_id}\talready_acknowledged\n"
    unknown = cli("ack", "f" * 32, "--by", "x", *cfg)
    assert unknown.returncode == 1

    shown = cli("show", alert_id, *cfg)
    detail = json.loads(shown.stdout)
    assert (detail["version"], detail["acknowledged_by"]) == (2, "dr.console")
    assert detail["payload"]["event"] == "acknowledged"
    assert [(a["kind"], a["event"]) for a in detail["audit"]] == [
        ("event", "firing"), ("publish_attempt", "firing"), ("delivered", "firing"),
        ("acknowledged", "acknowledged"), ("event", "acknowledged"), ("ack_ignored", None),
    ]
    as_json = {row["alert_id"]: row for row in map(json.loads, cli("list", "--all", "--json", *cfg).stdout.splitlines())}
    assert (as_json.keys(), as_json[alert_id]["acknowledged_by"]) == ({alert_id, pgx_id}, "dr.console")
    assert cli("show", "nope", *cfg).returncode == 1

    async def publish_pending() -> list[dict[str, object]]:
        async with recording(broker, prefix) as mqtt, running(config):
            return await mqtt.wait_alerts(1)  # the outbox row the CLI wrote

    (published,) = asyncio.run(publish_pending())
    assert (published["alert_id"], published["event"], published["version"]) == (alert_id, "acknowledged", 2)


def test_alerts_schema_prints_the_packaged_schema() -> None:
    result = subprocess.run([*CLI, "alerts", "schema"], capture_output=True, text=True, timeout=WAIT, check=False)
    assert json.loads(result.stdout)["properties"]["schema"] == {"const": "hl7-alerts/alert@1"}


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


async def test_send_sends_a_batch_file_as_one_frame_and_prints_each_code(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    """A batch file goes as one frame (decision 13); the batch acknowledgment
    gives one line per message, in order; a batch with no message gets the
    one AE that answers the batch."""
    with_bad = BATCH.replace(b"|BATCH-2|P|2.5", b"|BATCH-2|P|2.1")
    (tmp_path / "batch.hl7").write_bytes(with_bad)
    (tmp_path / "empty.hl7").write_bytes(b"BHS|^~\\&|LAB|GENHOSP|||20261020||||B9\nEVN|A08\nBTS|0\n")
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config) as daemon:
        sent = await asyncio.create_subprocess_exec(
            *CLI, "send", "--port", str(daemon.port), str(tmp_path / "batch.hl7"), str(tmp_path / "empty.hl7"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(WAIT * 3):
            out, err = await sent.communicate()
    lines = [line.split("\t") for line in out.decode().splitlines()]
    assert [line[:2] for line in lines] == [["BATCH-1", "AA"], ["BATCH-2", "AR"], ["B9", "AE"]], err
    assert lines[1][2] == "MSH-12 version is not one this receiver accepts (hl7.versions)"
    assert lines[2][2] == "the batch holds no message (no MSH segment)"
    assert sent.returncode == 1
