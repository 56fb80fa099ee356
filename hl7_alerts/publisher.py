"""Outbox → MQTT, and pagers' acknowledgements back. The only module that
imports aiomqtt.

Drains the store's outbox in order with QoS 1 and marks a row delivered only
after the broker's PUBACK. A broker that is down never reaches the ACK path:
alerts wait in the outbox and go out, in order, once it is back. The outbox,
not the client library, owns retries: each connection gets a fresh client, so
a publish that failed or timed out is retried from the outbox after
reconnecting, never re-sent by paho on its own and out of order.

Up to a window of publishes are in flight at once (the configured maximum,
capped by the Receive Maximum the broker announces in CONNACK); rows are marked
delivered in outbox order, so a failure mid-window re-sends everything from
the first unacknowledged row (repeats carry the same ``alert_id:version``
idempotency key). The session is MQTT v5 with a stable client id,
``clean_start=False`` and a session expiry, so the broker keeps the
``<prefix>/acks`` subscription and the acks queued on it across reconnects and
restarts. The daemon's status is retained on ``<prefix>/status`` with
``offline`` as the last will. aiomqtt's exceptions are translated here
(`PublishError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from hl7_alerts.settings import MqttSettings
from hl7_alerts.store import OutboxRow, Store, StoreError
from hl7_alerts.strictjson import dumps, loads
from hl7_alerts.timeutil import utc_stamp
from hl7_alerts.tls import client_context

log = structlog.get_logger("hl7_alerts.publisher")

# MQTT v5 §3.2.2.3.3: a CONNACK without Receive Maximum means 65535.
_DEFAULT_RECEIVE_MAXIMUM = 65535

# Handles one message from <prefix>/acks; True once it is durably dealt with
# (recorded, or deliberately ignored), False to leave it to the broker's
# redelivery (the store was unavailable).
AckHandler = Callable[[bytes], Awaitable[bool]]


class PublishError(Exception):
    """The broker could not be reached or did not acknowledge a publish."""


def _status(state: str, at: datetime, client_id: str) -> bytes:
    return dumps({"state": state, "at": utc_stamp(at), "client_id": client_id}).encode()


class _Client(aiomqtt.Client):
    """aiomqtt's client, keeping the CONNACK properties (Receive Maximum),
    which aiomqtt 2.5 drops, and acknowledging incoming messages only when
    told to: a pager's ack is PUBACKed after it is committed, so one the
    daemon dies holding is redelivered by the broker (persistent session).
    Both reach into aiomqtt 2.5 internals; the pin below 3 keeps them stable."""

    connack: Properties | None = None

    def manual_acks(self) -> None:
        self._client.manual_ack_set(True)

    def puback(self, message: aiomqtt.Message) -> None:
        self._client.ack(message.mid, message.qos)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self.connack = properties
        super()._on_connect(client, userdata, flags, reason_code, properties)


class Publisher:
    """Runs until `stop()`; reconnects with exponential backoff."""

    def __init__(
        self,
        store: Store,
        settings: MqttSettings,
        *,
        clock: Callable[[], datetime],
        on_ack: AckHandler | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._on_ack = on_ack
        self._stopping = asyncio.Event()
        self.connected = False
        self.published = 0
        self.connections = 0
        self.receive_maximum: int | None = None
        self.window = settings.max_inflight
        self.max_in_flight_seen = 0
        self._unconfirmed: list[int] = []
        self._ack_activity = asyncio.Event()  # set as each ack arrives and is done with
        self._ack_busy = False

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
            except StoreError as exc:
                # The store failed under the outbox (locked, disk full): the
                # rows stay where they are. Back off and start a fresh session
                # rather than end this task, which would take the listener
                # (and every ACK) down with it.
                self.connected = False
                log.error("outbox_read_failed", error=str(exc), retry_in=round(delay, 2))
                await self._wait_stopping(delay)
                delay = min(delay * 2, self._settings.reconnect_max)
            except Exception:
                # Anything else (a TLS file gone, an MQTT and a store error in
                # one group, a defect of ours): same reasoning, louder log.
                self.connected = False
                log.exception("publisher_crashed", retry_in=round(delay, 2))
                await self._wait_stopping(delay)
                delay = min(delay * 2, self._settings.reconnect_max)

    async def _wait_stopping(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    def _client(self) -> _Client:
        s = self._settings
        will = aiomqtt.Will(
            topic=s.status_topic, payload=_status("offline", self._clock(), s.client_id), qos=1, retain=True
        )
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = s.session_expiry
        client = _Client(
            s.host,
            s.port,
            identifier=s.client_id,
            username=s.username,
            password=s.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=s.keepalive,
            timeout=s.publish_timeout,
            # aiomqtt's default (clean start on the client's first connect)
            # would wipe the session every time, as each connection gets a
            # fresh client: resume it instead.
            clean_start=False,
            properties=connect,
            # paho never queues behind our window (it would re-send on its own).
            max_inflight_messages=s.max_inflight,
            tls_context=None if s.tls is None else client_context(
                ca_file=s.tls.ca_file, cert_file=s.tls.cert_file, key_file=s.tls.key_file,
                check_hostname=s.tls.check_hostname,
            ),
            # Pipelined small publishes would otherwise wait on Nagle and the
            # broker's delayed ACK (about 40 ms per window).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        # aiomqtt warns above 10 pending calls; a full window is normal here.
        client.pending_calls_threshold = s.max_inflight + 10
        client.manual_acks()
        return client

    async def _session(self) -> None:
        s = self._settings
        try:
            async with self._client() as client:
                self.connected = True
                self.connections += 1
                announced = getattr(client.connack, "ReceiveMaximum", None) if client.connack else None
                self.receive_maximum = int(announced) if announced else _DEFAULT_RECEIVE_MAXIMUM
                self.window = max(1, min(s.max_inflight, self.receive_maximum))
                log.info("mqtt_connected", host=s.host, port=s.port, window=self.window)
                if self._on_ack is not None:
                    await client.subscribe(s.acks_subscription, qos=1)
                # "online" once acks are being listened to.
                await client.publish(
                    s.status_topic, _status("online", self._clock(), s.client_id), qos=1, retain=True
                )
                async with asyncio.TaskGroup() as tg:
                    acks = tg.create_task(self._read_acks(client), name="mqtt-acks")
                    await self._drain(client)
                    if self._on_ack is not None and s.acks_subscription != s.acks_topic:
                        # Leave the share group before going (brokers keep
                        # handing a stopped member's session its share of the
                        # acks), then finish the acks already routed to us.
                        await client.unsubscribe(s.acks_subscription)
                        await self._acks_settled()
                    acks.cancel()
                # Stopping: say so before the clean disconnect (no will is sent then).
                await client.publish(
                    s.status_topic, _status("offline", self._clock(), s.client_id), qos=1, retain=True
                )
        except* (aiomqtt.MqttError, PublishError) as group:
            first = group.exceptions[0]
            reason = str(first) or type(first).__name__
            if self._unconfirmed:
                # Retried from the outbox on the next connection, in order.
                failed, at = self._unconfirmed, self._clock()
                await self._store.record_delivery(failed, "publish_failed", at, reason[:200])
            raise PublishError(reason) from first
        except* StoreError as store_group:
            cause = store_group.exceptions[0]
            raise StoreError(str(cause)) from cause
        finally:
            self.connected = False
            self._unconfirmed = []
            # Several daemons: what we claimed but did not deliver is theirs
            # to publish now, not when the lease runs out.
            with contextlib.suppress(StoreError):
                await self._store.release_outbox()

    async def _read_acks(self, client: _Client) -> None:
        # Runs even without a handler: the message iterator is what notices a
        # lost connection at once (a pending publish would wait for its timeout).
        async for message in client.messages:
            self._ack_activity.set()
            self._ack_busy = True
            try:
                handled = True
                if self._on_ack is not None and message.topic.matches(self._settings.acks_topic):
                    body = message.payload
                    raw = bytes(body) if isinstance(body, bytes | bytearray) else str(body).encode()
                    handled = await self._on_ack(raw)
                if handled:
                    client.puback(message)
            finally:
                self._ack_busy = False
                self._ack_activity.set()

    async def _acks_settled(self) -> None:
        """Return once no ack is being handled and none has arrived for
        ``acks_quiet`` seconds (the broker's in-flight ones after we left the
        share group), or after ``acks_settle_max`` at most."""
        s = self._settings
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(s.acks_settle_max):
                while True:
                    self._ack_activity.clear()
                    try:
                        await asyncio.wait_for(self._ack_activity.wait(), s.acks_quiet)
                    except TimeoutError:
                        if not self._ack_busy:
                            return

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Keep up to ``window`` publishes in flight; mark delivered in order."""
        signal = self._store.outbox_signal()
        in_flight: deque[tuple[OutboxRow, asyncio.Task[None]]] = deque()
        last_sent = 0
        try:
            while True:
                stopping = self._stopping.is_set()
                if stopping and not in_flight:
                    return
                room = self.window - len(in_flight)
                # Refill when half the window is free (or it is empty): one
                # audit transaction covers many publishes.
                if not stopping and room > 0 and (not in_flight or room >= self.window // 2):
                    signal.clear()
                    limit = min(self._settings.batch, room)
                    rows = await self._store.pending_outbox(limit, after_id=last_sent)
                    if rows:
                        ids = [r.id for r in rows]
                        await self._store.record_delivery(ids, "publish_attempt", self._clock())
                        for row in rows:
                            task = asyncio.create_task(self._publish(client, row), name=f"publish-{row.id}")
                            in_flight.append((row, task))
                            # Another daemon's orphans can come in below it.
                            last_sent = max(last_sent, row.id)
                        self.max_in_flight_seen = max(self.max_in_flight_seen, len(in_flight))
                        continue
                if in_flight:
                    await asyncio.wait({in_flight[0][1]})
                    done: list[OutboxRow] = []
                    failure: BaseException | None = None
                    while in_flight and in_flight[0][1].done():
                        row, task = in_flight[0]
                        failure = PublishError("publish cancelled") if task.cancelled() else task.exception()
                        if failure is not None:
                            break  # it and everything after it stay unconfirmed
                        in_flight.popleft()
                        done.append(row)
                    if done:
                        await self._store.mark_delivered([r.id for r in done], self._clock())
                        self.published += len(done)
                        for row in done:
                            log.info("alert_published", alert_id=row.alert_id, version=row.version,
                                     alert_event=row.event)
                    if failure is not None:
                        raise failure  # ends this connection; the outbox retries on the next
                    continue
                await self._idle(signal)
        finally:
            # Whatever ends this connection (a failed publish, or the reader
            # noticing the connection is gone), what was not confirmed is
            # audited as failed by `_session`.
            self._unconfirmed = [row.id for row, _ in in_flight]
            for _, task in in_flight:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: the connection's end is reported once, above
                task.cancel()

    async def _idle(self, signal: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(signal.wait()), asyncio.ensure_future(self._stopping.wait())}
        try:
            recheck = self._settings.outbox_recheck
            await asyncio.wait(waits, timeout=recheck, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _publish(self, client: aiomqtt.Client, row: OutboxRow) -> None:
        s = self._settings
        # A row queued before payloads were strict JSON may hold Infinity:
        # it goes out with null there, never as a payload pagers reject.
        body = loads(row.payload)
        body["published_at"] = utc_stamp(self._clock())
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = [("idempotency-key", f"{row.alert_id}:{row.version}")]
        properties.ContentType = "application/json"
        if s.message_expiry is not None:
            properties.MessageExpiryInterval = s.message_expiry
        await client.publish(
            row.topic,
            dumps(body).encode("utf-8"),
            qos=1,
            retain=False,
            properties=properties,
        )
