"""Outbox → MQTT. The only module that imports aiomqtt.

Drains the store's outbox in order with QoS 1 and marks a row delivered only
after the broker's PUBACK. A broker that is down never reaches the ACK path:
alerts wait in the outbox and go out, in order, once it is back. Each
connection gets a fresh client, so a publish that failed is retried from the
outbox, never re-sent by the library on its own and out of order. The daemon's
status is retained on ``<prefix>/status`` with ``offline`` as the last will.
aiomqtt's exceptions are translated here (`PublishError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hl7_alerts.store import OutboxRow, Store
from hl7_alerts.timeutil import utc_stamp

log = structlog.get_logger("hl7_alerts.publisher")


class PublishError(Exception):
    """The broker could not be reached or did not acknowledge a publish."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "hl7alerts"
    client_id: str = "hl7-alerts"
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    publish_timeout: float = 10.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    batch: int = 100

    @property
    def status_topic(self) -> str:
        return f"{self.topic_prefix}/status"


def _status(state: str, at: datetime, client_id: str) -> bytes:
    return json.dumps({"state": state, "at": utc_stamp(at), "client_id": client_id}).encode()


class Publisher:
    """Runs until `stop()`; reconnects with exponential backoff."""

    def __init__(self, store: Store, settings: MqttSettings, *, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._stopping = asyncio.Event()
        self.connected = False
        self.published = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        delay = self._settings.reconnect_min
        while not self._stopping.is_set():
            try:
                await self._session()
                delay = self._settings.reconnect_min
            except PublishError as exc:
                self.connected = False
                log.warning("mqtt_disconnected", error=str(exc), retry_in=round(delay, 2))
                await self._wait_stopping(delay)
                delay = min(delay * 2, self._settings.reconnect_max)

    async def _wait_stopping(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    def _client(self) -> aiomqtt.Client:
        s = self._settings
        will = aiomqtt.Will(
            topic=s.status_topic, payload=_status("offline", self._clock(), s.client_id), qos=1, retain=True
        )
        return aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id,
            username=s.username,
            password=s.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=s.keepalive,
            timeout=s.publish_timeout,
        )

    async def _session(self) -> None:
        s = self._settings
        try:
            async with self._client() as client:
                self.connected = True
                log.info("mqtt_connected", host=s.host, port=s.port)
                await client.publish(
                    s.status_topic, _status("online", self._clock(), s.client_id), qos=1, retain=True
                )
                await self._drain(client)
                # Stopping: say so before the clean disconnect (no will is sent then).
                await client.publish(
                    s.status_topic, _status("offline", self._clock(), s.client_id), qos=1, retain=True
                )
        except aiomqtt.MqttError as exc:
            raise PublishError(str(exc)) from exc
        finally:
            self.connected = False

    async def _drain(self, client: aiomqtt.Client) -> None:
        signal = self._store.outbox_signal()
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                signal.clear()
                rows = await self._store.pending_outbox(self._settings.batch)
                if not rows:
                    signal_wait = asyncio.ensure_future(signal.wait())
                    await asyncio.wait({signal_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    signal_wait.cancel()
                    continue
                for row in rows:
                    await self._publish(client, row)
        finally:
            stop_wait.cancel()

    async def _publish(self, client: aiomqtt.Client, row: OutboxRow) -> None:
        body = json.loads(row.payload)
        body["published_at"] = utc_stamp(self._clock())
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = [("idempotency-key", f"{row.alert_id}:{row.version}")]
        properties.ContentType = "application/json"
        await client.publish(
            row.topic,
            json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
            qos=1,
            retain=False,
            properties=properties,
        )
        await self._store.mark_delivered([row.id], self._clock())
        self.published += 1
        log.info("alert_published", alert_id=row.alert_id, version=row.version, alert_event=row.event)
