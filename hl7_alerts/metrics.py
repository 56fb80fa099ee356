"""Prometheus metrics, /healthz, and the small HTTP server that serves both.

The daemon counts at its seams (a frame answered, a message rejected, alert
changes committed, a batch committed) through `Metrics`; gauges that describe
state (MQTT connected, open MLLP connections, outbox backlog) are read when
scraped, so they can never drift from the truth. Each `Metrics` has its own
registry, so several daemons in one test process do not share counters.

/healthz answers 200 only when the store takes a write now, the last batch
of messages (or other work) the store was given committed, and the oldest
undelivered alert is younger than ``health.max_outbox_age_seconds``; else 503
with the reasons as JSON. The HTTP server is a minimal GET-only asyncio one
on the daemon's own loop: a blocked loop answers nothing, which is the truth.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from hl7_alerts.alerts import AlertChange
from hl7_alerts.store import OutboxBacklog, Pruned, Store, StoreError

log = structlog.get_logger("hl7_alerts.metrics")

# Seconds: group commits are one fsync; anything past a second is trouble.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A sender chooses MSH-9; cap the label values it can create.
MAX_MESSAGE_TYPES = 64
_TYPE_CODE = re.compile(r"[A-Z0-9]{2,4}(\^[A-Z0-9]{2,4})?")
# OBX-3 codes are not patient data, but a sender chooses them too: past this
# many distinct (code, system) pairs a process counts the rest as "other",
# and a code that does not look like one is counted as "invalid".
MAX_UNMAPPED_CODES = 200
_LAB_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+#-]{0,39}")


class Metrics:
    """Every metric hl7-alerts exports, on one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.messages = Counter(
            "hl7_alerts_messages",
            "HL7 messages answered, by message type (MSH-9) and ACK code (none: no MSH to answer)",
            ["message_type", "ack_code"],
            registry=r,
        )
        self.parse_errors = Counter(
            "hl7_alerts_parse_errors",
            "Messages rejected before processing, by ACK code and HL7 table 0357 error code",
            ["ack_code", "error_code"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "hl7_alerts_store_commit_seconds",
            "Store write batches: seconds from BEGIN to a durable COMMIT",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.outbox_depth = Gauge(
            "hl7_alerts_outbox_depth", "Alert events waiting in the outbox for MQTT", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "hl7_alerts_outbox_oldest_age_seconds",
            "Age of the oldest undelivered alert event (0 when the outbox is empty)",
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "hl7_alerts_mqtt_connected", "1 while connected to the MQTT broker", registry=r
        )
        self.open_connections = Gauge(
            "hl7_alerts_mllp_open_connections", "Open MLLP connections", registry=r
        )
        self.mllp_closed_connections = Counter(
            "hl7_alerts_mllp_connections_closed",
            "MLLP connections the listener refused or closed itself, by reason (max_connections, "
            "max_connections_per_peer, evicted, first_byte_timeout, idle_timeout, read_timeout, ...)",
            ["reason"],
            registry=r,
        )
        self.commit_failing = Gauge(
            "hl7_alerts_store_commit_failing",
            "1 while the store's last commit of messages or other work failed (until one commits)",
            registry=r,
        )
        self.alerts = Counter(
            "hl7_alerts_alerts",
            "Alert events committed (firing, updated, resolved, ...), by rule and severity",
            ["rule", "severity", "event"],
            registry=r,
        )
        self.reloads = Counter(
            "hl7_alerts_config_reloads",
            "SIGHUP reloads, by result (applied or rejected)",
            ["result"],
            registry=r,
        )
        self.pruned = Counter(
            "hl7_alerts_retention_pruned_rows",
            "Rows removed (or raw bytes cleared) by retention, by table",
            ["table"],
            registry=r,
        )
        self.pager_acks = Counter(
            "hl7_alerts_pager_acks",
            "Pager acknowledgements from MQTT, by outcome (acknowledged, already_acknowledged, alert_closed, "
            "unknown_alert, invalid, unsigned, bad_signature, not_recorded)",
            ["outcome"],
            registry=r,
        )
        self.unmapped = Counter(
            "hl7_alerts_unmapped_results",
            "Results whose OBX-3 code (and alternate code) mapped to no analyte, by code and coding "
            f"system; past {MAX_UNMAPPED_CODES} codes: other",
            ["code", "system"],
            registry=r,
        )
        self._types: set[str] = set()
        self._unmapped: set[tuple[str, str]] = set()

    def watch(
        self,
        *,
        mqtt_connected: Callable[[], bool],
        open_connections: Callable[[], int],
        commit_failing: Callable[[], bool],
    ) -> None:
        """Read these when scraped."""
        self.mqtt_connected.set_function(lambda: 1.0 if mqtt_connected() else 0.0)
        self.open_connections.set_function(lambda: float(open_connections()))
        self.commit_failing.set_function(lambda: 1.0 if commit_failing() else 0.0)

    def mllp_closed(self, reason: str) -> None:
        """The MLLP listener refused a connection or closed one itself."""
        self.mllp_closed_connections.labels(reason=reason).inc()

    def _type_label(self, type_code: str) -> str:
        if not type_code:
            return "unknown"
        if not _TYPE_CODE.fullmatch(type_code):
            return "invalid"
        if type_code not in self._types:
            if len(self._types) >= MAX_MESSAGE_TYPES:
                return "other"
            self._types.add(type_code)
        return type_code

    def message_answered(self, type_code: str, ack_code: str) -> None:
        self.messages.labels(self._type_label(type_code), ack_code).inc()

    def unmapped_results(
        self, codes: Iterable[tuple[str, str]] | Mapping[tuple[str, str], int]
    ) -> list[tuple[str, str]]:
        """Count results by the OBX-3 (code, coding system) that mapped to no
        analyte (one pair per result, or a count per pair); return the pairs
        this process had not seen before (each is logged once), in order. An
        empty code or system is "(none)"."""
        counts = codes if isinstance(codes, Mapping) else collections.Counter(codes)
        first_seen: list[tuple[str, str]] = []
        for (code, system), count in counts.items():
            key = (_lab_code_label(code), _lab_code_label(system))
            if key not in self._unmapped:
                if len(self._unmapped) >= MAX_UNMAPPED_CODES:
                    key = ("other", "other")
                else:
                    self._unmapped.add(key)
                    first_seen.append(key)
            self.unmapped.labels(*key).inc(count)
        return first_seen

    def parse_error(self, ack_code: str, error_code: str) -> None:
        self.parse_errors.labels(ack_code, error_code).inc()

    def alert_changes(self, changes: Iterable[AlertChange]) -> None:
        for change in changes:
            self.alerts.labels(change.alert.rule, str(change.alert.severity), str(change.event)).inc()

    def observe_commit(self, seconds: float) -> None:
        """Called on the store's writer thread (prometheus-client is thread-safe)."""
        self.commit_seconds.observe(seconds)

    def set_outbox(self, backlog: OutboxBacklog, now: datetime) -> float | None:
        """Update the outbox gauges; return the oldest row's age in seconds."""
        self.outbox_depth.set(backlog.depth)
        age = None
        if backlog.oldest_created_at is not None:
            age = max(0.0, (now - backlog.oldest_created_at).total_seconds())
        self.outbox_oldest_age.set(age or 0.0)
        return age

    def record_reload(self, applied: bool) -> None:
        self.reloads.labels("applied" if applied else "rejected").inc()

    def pager_ack(self, outcome: str) -> None:
        self.pager_acks.labels(outcome).inc()

    def rejected_over_cap(self, rows: int) -> None:
        """Rejected frames deleted at insert, past ``retention.rejected_max_rows``."""
        if rows:
            self.pruned.labels("rejected_over_cap").inc(rows)

    def record_prune(self, pruned: Pruned) -> None:
        for table, count in asdict(pruned).items():
            if count:
                self.pruned.labels(table).inc(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _lab_code_label(text: str) -> str:
    text = text.strip()
    if not text:
        return "(none)"
    return text if _LAB_CODE.fullmatch(text) else "invalid"


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    """What /healthz says."""

    ready: bool
    reasons: tuple[str, ...] = ()
    outbox_depth: int | None = None
    outbox_oldest_age_seconds: float | None = None
    mqtt_connected: bool = False

    def body(self) -> bytes:
        return json.dumps(
            {
                "status": "ready" if self.ready else "not ready",
                "reasons": list(self.reasons),
                "outbox": {"depth": self.outbox_depth, "oldest_age_seconds": self.outbox_oldest_age_seconds},
                "mqtt_connected": self.mqtt_connected,
            }
        ).encode()


async def check_health(
    store: Store,
    metrics: Metrics,
    *,
    now: datetime,
    max_outbox_age: float,
    probe_timeout: float,
    mqtt_connected: bool,
) -> Health:
    """Probe the store with a real write, look at the last real commit's
    outcome, then at the outbox backlog."""
    reasons: list[str] = []
    try:
        async with asyncio.timeout(probe_timeout):
            await store.probe_write(now)
    except TimeoutError:
        reasons.append(f"store write probe did not commit within {probe_timeout:g}s")
    except StoreError as exc:
        reasons.append(f"store cannot be written: {exc}")
    failure = store.commit_failure
    if failure is not None and not reasons:
        # The probe is one tiny row: it may commit where a message cannot
        # (a disk with a page left). Not ready until a real write commits.
        reasons.append(f"the store failed the last commit: {failure}")
    depth: int | None = None
    age: float | None = None
    if not reasons:
        try:
            async with asyncio.timeout(probe_timeout):
                backlog = await store.outbox_backlog()
        except (TimeoutError, StoreError) as exc:
            reasons.append(f"outbox could not be read: {exc or 'timed out'}")
        else:
            depth = backlog.depth
            age = metrics.set_outbox(backlog, now)
            if age is not None and age > max_outbox_age:
                reasons.append(
                    f"oldest undelivered alert is {age:.0f}s old (health.max_outbox_age_seconds "
                    f"is {max_outbox_age:g})"
                )
    return Health(
        ready=not reasons,
        reasons=tuple(reasons),
        outbox_depth=depth,
        outbox_oldest_age_seconds=age,
        mqtt_connected=mqtt_connected,
    )


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class OpsServer:
    """GET /metrics and GET /healthz over HTTP/1.1, one request per connection."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        metrics: Callable[[], Awaitable[bytes]],
        health: Callable[[], Awaitable[Health]],
        request_timeout: float = 10.0,
    ) -> None:
        self._host, self._port = host, port
        self._metrics, self._health = metrics, health
        self._timeout = request_timeout
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port, limit=16384)
        log.info("metrics_listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                status, content_type, body = await self._respond(reader)
                head = (
                    f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode("ascii") + body)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            return 400, "text/plain", b"bad request\n"
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz"):
            return 404, "text/plain", b"not found: try /metrics or /healthz\n"
        if method != "GET":
            return 405, "text/plain", b"GET only\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, await self._metrics()
        health = await self._health()
        return (200 if health.ready else 503), "application/json", health.body()
