"""Metrics and /healthz as a monitoring system meets them: scraped over real
HTTP from a running daemon that was sent real MLLP bytes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.broker import Broker
from tests.support.clock import FakeClock
from tests.support.daemon import make_config, running
from tests.support.hl7kit import BAD_NO_MRN
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.mqtt import recording
from tests.support.samples import OPEN_CRITICAL, sample_messages
from tests.support.waiting import WAIT, eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]



def _get(port: int, target: str | urllib.request.Request) -> tuple[int, str, bytes]:
    if isinstance(target, str):
        target = urllib.request.Request(f"http://127.0.0.1:{port}{target}")
    try:
        with urllib.request.urlopen(target, timeout=WAIT) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


async def http_get(port: int, path: str) -> tuple[int, str, bytes]:
    return await asyncio.to_thread(_get, port, path)


async def http_post(port: int, path: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"x", method="POST")
    return await asyncio.to_thread(_get, port, request)


async def scrape(port: int) -> Samples:
    status, content_type, body = await http_get(port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape_until(port: int, condition: Callable[[Samples], bool], what: str) -> Samples:
    async def showing() -> Samples | None:
        samples = await scrape(port)
        return samples if condition(samples) else None

    return await eventually(showing, what=f"metrics showing {what}", interval=0.02)


async def healthz(port: int) -> tuple[int, dict[str, object]]:
    status, content_type, body = await http_get(port, "/healthz")
    assert content_type == "application/json"
    return status, json.loads(body)


async def test_metrics_count_messages_errors_alerts_and_state(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix)
    async with recording(broker, prefix) as mqtt, running(config) as run:
        port = run.daemon.metrics_port
        assert port is not None
        assert port != 0
        client = await AsyncMllpClient.connect(run.port)
        codes = [ack_fields(await client.send(m))["code"] for m in sample_messages(*OPEN_CRITICAL)]
        codes.append(ack_fields(await client.send(BAD_NO_MRN))["code"])
        assert codes == ["CA", "AA", "AE"]
        await mqtt.wait_alerts(1)
        samples = await scrape_until(
            port,
            lambda s: value(s, "hl7_alerts_outbox_depth") == 0 and value(s, "hl7_alerts_mqtt_connected") == 1,
            "the alert delivered",
        )
        assert value(samples, "hl7_alerts_messages_total", message_type="RDE^O11", ack_code="CA") == 1
        assert value(samples, "hl7_alerts_messages_total", message_type="ORU^R01", ack_code="AA") == 1
        assert value(samples, "hl7_alerts_messages_total", message_type="ORU^R01", ack_code="AE") == 1
        assert value(samples, "hl7_alerts_parse_errors_total", ack_code="AE", error_code="101") == 1
        assert value(
            samples, "hl7_alerts_alerts_total", rule="aza.hepatotoxicity.stop", severity="critical", event="firing"
        ) == 1
        commits = value(samples, "hl7_alerts_store_commit_seconds_count")
        assert commits is not None
        assert commits >= 3  # three messages, each durable before its ACK
        assert (value(samples, "hl7_alerts_store_commit_seconds_sum") or 0) > 0
        assert value(samples, "hl7_alerts_outbox_oldest_age_seconds") == 0
        assert value(samples, "hl7_alerts_mllp_open_connections") == 1
        assert value(samples, "process_open_fds") is not None
        await client.close()
        await scrape_until(port, lambda s: value(s, "hl7_alerts_mllp_open_connections") == 0, "connection closed")

        status, health = await healthz(port)
        assert (status, health["status"], health["reasons"]) == (200, "ready", [])
        assert health["outbox"] == {"depth": 0, "oldest_age_seconds": None}
        assert (await http_get(port, "/nope"))[0] == 404
        assert (await http_post(port, "/metrics"))[0] == 405


async def test_healthz_not_ready_while_the_outbox_is_stale(tmp_path: Path, prefix: str, refused_port: int) -> None:
    clock = FakeClock(datetime(2026, 10, 20, 10, 0, tzinfo=UTC))
    no_broker = refused_port
    config = make_config(tmp_path, no_broker, prefix, health={"max_outbox_age_seconds": 600})
    async with running(config, clock=clock) as run:
        port = run.daemon.metrics_port
        assert port is not None
        client = await AsyncMllpClient.connect(run.port)
        for m in sample_messages(*OPEN_CRITICAL):
            assert ack_fields(await client.send(m))["code"] in ("AA", "CA")
        await client.close()
        status, health = await healthz(port)
        # The order raises aza.pgx.missing, the panel aza.hepatotoxicity.stop.
        assert (status, health["outbox"]) == (200, {"depth": 2, "oldest_age_seconds": 0.0})
        assert health["mqtt_connected"] is False

        clock.now += timedelta(seconds=601)
        status, health = await healthz(port)
        assert status == 503
        assert health["status"] == "not ready"
        assert health["reasons"] == [
            "oldest undelivered alert is 601s old (health.max_outbox_age_seconds is 600)"
        ]
        samples = await scrape(port)
        assert value(samples, "hl7_alerts_outbox_depth") == 2
        assert value(samples, "hl7_alerts_outbox_oldest_age_seconds") == 601
        assert value(samples, "hl7_alerts_mqtt_connected") == 0


async def test_healthz_not_ready_while_the_store_cannot_be_written(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix, health={"store_probe_timeout_seconds": 0.3})
    async with running(config) as run:
        port = run.daemon.metrics_port
        assert port is not None
        assert (await healthz(port))[0] == 200
        # Another process holding the write lock: the daemon cannot commit.
        locker = sqlite3.connect(tmp_path / "store.sqlite3", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            status, health = await healthz(port)
            assert status == 503
            assert health["reasons"] == ["store write probe did not commit within 0.3s"]
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        async def ready() -> bool:
            return (await healthz(port))[0] == 200

        await eventually(ready, what="healthz to recover after the lock was released", interval=0.05)
