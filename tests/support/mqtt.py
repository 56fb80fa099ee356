"""The pager's side of MQTT: a recorder subscribed before anything is sent,
the check that every alert payload follows the published JSON Schema, and
the acknowledgement a pager publishes on ``<prefix>/acks``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import jsonschema
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.broker import Broker
from tests.support.samples import ROOT
from tests.support.waiting import WAIT

ALERT_SCHEMA = json.loads((ROOT / "hl7_alerts" / "schema" / "alert.schema.json").read_text())
jsonschema.Draft202012Validator.check_schema(ALERT_SCHEMA)
ALERT_VALIDATOR = jsonschema.Draft202012Validator(ALERT_SCHEMA)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def strict_json(data: bytes | str) -> Any:
    """Decode as a pager back end does: NaN and Infinity are not JSON."""
    return json.loads(data, parse_constant=_no_constant)


def assert_valid_alert(body: dict[str, Any]) -> None:
    """Every alert payload a test sees must follow the published JSON Schema."""
    errors = sorted(ALERT_VALIDATOR.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


class MqttRecorder:
    """Subscribes to ``<prefix>/#`` and keeps every message it receives."""

    def __init__(self, client: aiomqtt.Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.properties: list[Any] = []  # MQTT v5 properties, aligned with `messages`
        self.invalid: list[str] = []  # alert payloads that do not follow the schema
        self.broker_gone = asyncio.Event()  # set when the connection drops under the recorder
        self._arrived = asyncio.Condition()

    async def _pump(self) -> None:
        try:
            async for message in self.client.messages:
                await self._record(message)
        except aiomqtt.MqttError:
            # The broker went away (a test stopped it). paho has already
            # acknowledged what sits in aiomqtt's queue: keep it, as a pager would.
            while len(self.client.messages):
                await self._record(self.client._queue.get_nowait())
            self.broker_gone.set()

    async def _record(self, message: aiomqtt.Message) -> None:
        body = message.payload
        assert isinstance(body, bytes | bytearray)
        try:
            decoded = json.loads(body)
        except ValueError:  # junk a test sends on purpose (e.g. to <prefix>/acks)
            decoded = {"undecodable": body.decode("utf-8", "replace")}
        if "/alerts/" in str(message.topic):
            try:
                strict_json(body)  # what a strict parser (most pager back ends) accepts
            except ValueError as exc:
                self.invalid.append(f"not strict JSON: {exc}")
            try:
                assert_valid_alert(decoded)
            except AssertionError as exc:
                self.invalid.append(str(exc))
        async with self._arrived:
            self.messages.append((str(message.topic), decoded))
            self.properties.append(message.properties)
            self._arrived.notify_all()

    def user_properties(self, index: int) -> dict[str, str]:
        props = self.properties[index]
        return dict(getattr(props, "UserProperty", []) or [])

    def alerts(self) -> list[dict[str, Any]]:
        return [body for topic, body in self.messages if "/alerts/" in topic]

    async def wait_for(
        self, predicate: Callable[[list[tuple[str, dict[str, Any]]]], bool], timeout: float = WAIT
    ) -> list[tuple[str, dict[str, Any]]]:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: predicate(self.messages))
        return self.messages

    async def wait_alerts(self, count: int, timeout: float = WAIT) -> list[dict[str, Any]]:
        await self.wait_for(lambda _: len(self.alerts()) >= count, timeout)
        return self.alerts()


@contextlib.asynccontextmanager
async def recording(
    broker: Broker, prefix: str, *, session: str | None = None, username: str | None = None,
    password: str | None = None,
) -> AsyncIterator[MqttRecorder]:
    """Record ``<prefix>/#``. With ``session``, a persistent MQTT v5 session
    under that client id: a pager that went away and came back, getting what
    the broker queued for it meanwhile. ``username``/``password``: a broker
    with accounts (and an ACL, which decides what of ``<prefix>/#`` arrives)."""
    options: dict[str, Any] = {"username": username, "password": password}
    if session is not None:
        connect = Properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = 600
        options |= {"identifier": session, "clean_start": False, "properties": connect}
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, **options) as client:
        await client.subscribe(f"{prefix}/#", qos=1)
        recorder = MqttRecorder(client, prefix)
        pump = asyncio.create_task(recorder._pump())
        try:
            yield recorder
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        assert not recorder.invalid, f"alert payloads outside the schema: {recorder.invalid}"


def events(alerts: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    """Each alert as (patient id, rule, event, version), in arrival order."""
    return [(a["patient"]["id"], a["rule"], a["event"], a["version"]) for a in alerts]


def pager_ack(alert_id: str, by: str = "dr.oncall", at: str = "2026-11-24T20:05:00Z") -> bytes:
    """A pager's acknowledgement of ``alert_id``, as published on ``<prefix>/acks``."""
    return json.dumps({"alert_id": alert_id, "by": by, "at": at}).encode()
