"""Shared fixtures: a real Mosquitto on a free port, a throwaway PostgreSQL
server on another (a fresh database per test), the daemon in-process on
port 0, an MQTT recorder subscribed before anything is sent, and an async
MLLP client that speaks real bytes over a real socket.

Nothing here sleeps hoping for timing: every wait is on a condition with a
deadline (a port that accepts, a message that arrives, an event that is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import psycopg
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hl7_alerts.config import Config, parse_config
from hl7_alerts.daemon import Daemon
from hl7_alerts.mllp import NEED_DATA, Frame, Framer, frame
from hl7_alerts.store import SqliteStore
from hl7_alerts.store.postgres import PostgresStore
from tests.support.pgserver import PgServer, PgServerError

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
WAIT = 10.0  # seconds: the ceiling for any condition a test waits on
CLI = [sys.executable, "-m", "hl7_alerts"]  # the `hl7-alerts` command, as a process of its own
ALERT_SCHEMA = json.loads((ROOT / "hl7_alerts" / "schema" / "alert.schema.json").read_text())
jsonschema.Draft202012Validator.check_schema(ALERT_SCHEMA)
ALERT_VALIDATOR = jsonschema.Draft202012Validator(ALERT_SCHEMA)


def assert_valid_alert(body: dict[str, Any]) -> None:
    """Every alert payload a test sees must follow the published JSON Schema."""
    errors = sorted(ALERT_VALIDATOR.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    """Poll a cheap condition until true or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        pytest.fail("mosquitto is not installed: run .ci/run, or `apt-get install mosquitto`", pytrace=False)
    return found


@dataclass
class Broker:
    """A Mosquitto process the test controls: start, stop, restart, same port."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_conf: str = ""  # appended to mosquitto.conf (listeners, TLS, limits)

    def start(self) -> None:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        # Started as root, Mosquitto drops to its own user: let it write here.
        os.chmod(self.directory, 0o777)
        os.chmod(data, 0o777)
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {data}/\nautosave_interval 1\n"
            f"max_inflight_messages 20\nmax_queued_messages 100000\n" + self.extra_conf
        )
        with (self.directory / "mosquitto.log").open("ab") as log:
            self.process = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=log, stderr=log)
        wait_until(lambda: port_open(self.port), what=f"mosquitto on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=WAIT)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Mosquitto shared by tests that only publish and subscribe (each test
    uses its own topic prefix)."""
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto this test may stop and restart."""
    b = Broker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


# Fast, not durable: the tests check correctness, never what survives a power
# cut, so the server skips fsync (the benchmark starts its own with fsync on).
TEST_PG_SETTINGS = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off", "max_connections": "200"}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server of our own (own directory under /tmp, free port,
    never the machine's 5432), shared by the session; tests get databases."""
    server = PgServer(TEST_PG_SETTINGS)
    try:
        server.start()
    except PgServerError as exc:
        pytest.fail(f"{exc}\n(or run .ci/run, which installs it)", pytrace=False)
    yield server
    server.stop()


_pg_databases = itertools.count(1)


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """The DSN of a fresh, empty database, unique to this test; dropped after
    it (connections the test left open are closed), so disk use stays flat."""
    name = f"test_{next(_pg_databases)}"
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


@dataclass
class Backend:
    """One store backend for a test: SQLite in the test's folder, or a fresh
    PostgreSQL database on the session's server. Tests that take the
    `backend` fixture run once on each."""

    name: str
    folder: Path
    dsn: str | None = None

    def store_section(self) -> dict[str, Any]:
        """The config's ``store:`` section that selects this backend."""
        return {"dsn": self.dsn} if self.dsn else {"path": str(self.folder / "store.sqlite3")}

    async def open(self, *, owner: str = "test", lease_seconds: float = 30.0) -> Any:
        if self.dsn is None:
            return await SqliteStore.open(self.folder / "store.sqlite3")
        return await PostgresStore.open(self.dsn, owner=owner, lease_seconds=lease_seconds)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the store behind the daemon's back (``?`` marks on both backends)."""
        if self.dsn is None:
            with contextlib.closing(sqlite3.connect(self.folder / "store.sqlite3")) as db:
                rows = db.execute(sql, params).fetchall()
                db.commit()
                return rows
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each backend in turn: the store's contract holds on both."""
    if request.param == "sqlite":
        return Backend("sqlite", tmp_path)
    return Backend("postgresql", tmp_path, dsn=request.getfixturevalue("pg_dsn"))


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
async def recording(broker: Broker, prefix: str, *, session: str | None = None) -> AsyncIterator[MqttRecorder]:
    """Record ``<prefix>/#``. With ``session``, a persistent MQTT v5 session
    under that client id: a pager that went away and came back, getting what
    the broker queued for it meanwhile."""
    options: dict[str, Any] = {}
    if session is not None:
        connect = Properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = 600
        options = {"identifier": session, "clean_start": False, "properties": connect}
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


class AsyncMllpClient:
    """Real MLLP over a real socket, from the test's event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = Framer()

    @classmethod
    async def connect(cls, port: int, *, tls: ssl.SSLContext | None = None) -> AsyncMllpClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="127.0.0.1" if tls else None
        )
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self, timeout: float = WAIT) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                event = self.framer.next_event()
                if isinstance(event, Frame):
                    return event.data
                if event is NEED_DATA:
                    data = await self.reader.read(65536)
                    if not data:
                        raise ConnectionError("closed before an answer")
                    self.framer.feed(data)

    async def send(self, message: bytes, timeout: float = WAIT) -> bytes:
        await self.send_raw(frame(message))
        return await self.receive(timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def ack_fields(ack: bytes) -> dict[str, str]:
    """MSA-1, MSA-2, MSA-3 and the whole ERR segment (if any) of an ACK."""
    segments = ack.decode("utf-8", errors="replace").strip("\r").split("\r")
    fs = segments[0][3]
    out = {"MSH": segments[0]}
    for seg in segments:
        fields = seg.split(fs)
        if fields[0] == "MSA":
            out["code"] = fields[1]
            out["control_id"] = fields[2] if len(fields) > 2 else ""
            out["text"] = fields[3] if len(fields) > 3 else ""
        if fields[0] == "ERR":
            out["ERR"] = seg
    return out


def make_config(tmp_path: Path, broker_port: int, prefix: str, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "mllp": {"host": "127.0.0.1", "port": 0},
        "store": {"path": str(tmp_path / "store.sqlite3")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": prefix, "client_id": prefix,
                 "reconnect_max_seconds": 0.5},
        "logging": {"format": "json"},
        "metrics": {"port": 0},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return parse_config(json.dumps(data))


@dataclass
class RunningDaemon:
    daemon: Daemon
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        return self.daemon.port

    async def shutdown(self) -> None:
        self.stop.set()
        async with asyncio.timeout(WAIT):
            await self.task


@contextlib.asynccontextmanager
async def running(config: Config, **kwargs: Any) -> AsyncIterator[RunningDaemon]:
    """The daemon in this event loop, on its configured (usually free) port."""
    daemon = Daemon(config, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    ready = asyncio.create_task(daemon.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises the start-up error
    if ready not in done:
        raise TimeoutError("daemon did not become ready")
    run = RunningDaemon(daemon, stop, task)
    try:
        yield run
    finally:
        if not task.done():
            await run.shutdown()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix (and MQTT client id) unique to this test."""
    digest = hashlib.blake2b(request.node.nodeid.encode(), digest_size=5).hexdigest()
    return f"t{digest}{os.getpid()}"
