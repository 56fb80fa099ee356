"""The listener as an interface engine meets it: limits, timeouts, the
allowlist, TLS and mutual TLS, charsets, the ACK codes, all over real sockets
against the daemon on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import sqlite3
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hl7_alerts.config import ConfigError, parse_config
from hl7_alerts.framer import frame
from hl7_alerts.mllp import Closed, MllpServer, ServerLimits, peer_address, peer_allowed
from hl7_alerts.store import StoreError
from tests.support.broker import Broker
from tests.support.certs import Authority
from tests.support.daemon import RunningDaemon, make_config, running, serve, write_config
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.waiting import WAIT, eventually

ORU = (
    b"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020093000||ORU^R01|{id}|P|2.5.1{msh_tail}\r"
    b"PID|1||H9^^^GENHOSP^MR||TESTPATIENT^{name}\r"
    b"OBR|1|O1|S1|24325-3^Hepatic function panel^LN|||20261020080000\r"
    b"OBX|1|NM|1742-6^ALT^LN||30|U/L|7-56|N|||F\r"
)


def oru(control_id: str, *, msh_tail: bytes = b"", name: bytes = b"ECHO") -> bytes:
    return ORU.replace(b"{id}", control_id.encode()).replace(b"{msh_tail}", msh_tail).replace(b"{name}", name)


async def closed_by_server(client: AsyncMllpClient, timeout: float = WAIT) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    try:
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionError):
                while await client.reader.read(65536):
                    pass
    finally:
        await client.close()
    return True


# -- limits -----------------------------------------------------------------


async def test_oversize_frame_gets_ar_then_the_connection_goes_on(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix, mllp={"max_message_bytes": 2048})
    big = oru("BIG1") + b"NTE|1||" + b"x" * 100_000 + b"\r"
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        nak = ack_fields(await client.send(big))
        assert (nak["code"], nak["control_id"]) == ("AR", "BIG1")
        assert "exceeds the limit of 2048 bytes" in nak["text"]
        assert nak["MSH"].startswith("MSH|^~\\&|HL7ALERTS|ICU|LAB|GENHOSP|")
        # No readable MSH: still one answer, with nothing to echo.
        nameless = ack_fields(await client.send(b"x" * 5000))
        assert (nameless["code"], nameless["control_id"]) == ("AR", "")
        # The framer dropped the rest of both frames; the next one is answered.
        ok = ack_fields(await client.send(oru("SMALL1")))
        assert (ok["code"], ok["control_id"]) == ("AA", "SMALL1")
        await client.close()


async def test_idle_connection_is_closed(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix, mllp={"idle_timeout_seconds": 0.3})
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        assert ack_fields(await client.send(oru("IDLE1")))["code"] == "AA"
        assert await closed_by_server(client, timeout=5)


async def test_frame_that_never_completes_hits_the_read_timeout(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(
        tmp_path, broker.port, prefix, mllp={"idle_timeout_seconds": 60, "read_timeout_seconds": 0.3}
    )
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.send_raw(b"\x0b" + oru("SLOW1")[:40])
        assert await closed_by_server(client, timeout=5)
        assert loop.time() - started < 5  # the read timeout, not the 60 s idle timeout
        # A sender that trickles bytes does not extend it either.
        client = await AsyncMllpClient.connect(daemon.port)
        started = loop.time()
        await client.send_raw(b"\x0bMSH|")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while True:
                    await client.send_raw(b"x")
                    await asyncio.sleep(0.05)  # the slow sender's pace, not a wait for a condition

        trickler = asyncio.create_task(trickle())
        assert await closed_by_server(client, timeout=5)
        trickler.cancel()
        assert loop.time() - started < 5


async def test_connections_beyond_the_maximum_are_refused(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix, mllp={"max_connections": 2})
    async with running(config) as daemon:
        first, second = [await AsyncMllpClient.connect(daemon.port) for _ in range(2)]
        for n, client in enumerate((first, second)):
            # A message, and the start of the next in the same write: once its
            # ACK is back, the server holds a started frame, so the
            # connection is busy and cannot yield its slot.
            await client.send_raw(frame(oru(f"MAX{n}")) + b"\x0b" + oru(f"NEXT{n}")[:40])
            assert ack_fields(await client.receive())["code"] == "AA"
        third = await AsyncMllpClient.connect(daemon.port)
        assert await closed_by_server(third)
        assert closed_count(daemon, "max_connections") == 1
        await first.close()
        # A freed slot is usable again.
        async def through_the_freed_slot() -> str | None:
            fourth = await AsyncMllpClient.connect(daemon.port)
            try:
                return ack_fields(await fourth.send(oru("MAX3")))["code"]
            except ConnectionError:
                return None  # the server had not yet noticed the first close: connect again
            finally:
                await fourth.close()

        assert await eventually(through_the_freed_slot, what="a connection in the freed slot") == "AA"
        await second.close()


def closed_count(daemon: RunningDaemon, reason: str) -> float:
    """``hl7_alerts_mllp_connections_closed_total{reason}`` of a running daemon."""
    sample = daemon.daemon.metrics.registry.get_sample_value(
        "hl7_alerts_mllp_connections_closed_total", {"reason": reason}
    )
    return sample or 0.0


# -- slots: no sender can starve the listener -----------------------------------


class Answering:
    """A frame handler for a bare `MllpServer`: answers ``ACK|<MSH-10>`` at
    once, except that a frame whose control ID is in ``hold`` waits (its
    connection awaiting its ACK) until ``release`` is set."""

    def __init__(self, hold: tuple[str, ...] = ()) -> None:
        self.hold = hold
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.finished: list[bytes] = []  # control IDs whose handling ran to its end

    async def __call__(self, data: bytes, peer: str) -> bytes:
        control_id = data.split(b"|")[9]
        if control_id.decode() in self.hold:
            self.entered.set()
            await self.release.wait()
        self.finished.append(control_id)
        return b"ACK|" + control_id


async def no_answer(head: bytes, size: int, peer: str) -> bytes | None:
    return None


@contextlib.asynccontextmanager
async def listening(
    handler: Answering, tls: ssl.SSLContext | None = None, **limits: Any
) -> AsyncIterator[tuple[MllpServer, list[Closed]]]:
    """The real listener on a free port, with ``limits``; the list collects
    every refusal and close it decides."""
    closed: list[Closed] = []
    server = MllpServer(
        handler, no_answer, host="127.0.0.1", port=0, limits=ServerLimits(**limits), tls=tls, on_closed=closed.append
    )
    await server.start()
    try:
        yield server, closed
    finally:
        handler.release.set()
        await server.stop(grace=WAIT)


async def start_a_frame(client: AsyncMllpClient, control_id: str) -> None:
    """Send a message and the start of another in one write and read the
    first's ACK: the listener then holds a started frame (one write on
    loopback is one read)."""
    await client.send_raw(frame(oru(control_id)) + b"\x0b" + oru(f"{control_id}-next")[:40])
    assert await client.receive() == b"ACK|" + control_id.encode()


async def hold_a_frame(client: AsyncMllpClient, handler: Answering) -> None:
    """Send HOLD1 and wait until the handler holds it: the connection then
    waits for its ACK."""
    await client.send_raw(frame(oru("HOLD1")))
    async with asyncio.timeout(WAIT):
        await handler.entered.wait()


async def finish_the_frame(client: AsyncMllpClient, control_id: str) -> None:
    await client.send_raw(oru(f"{control_id}-next")[40:] + b"\x1c\r")
    assert await client.receive() == f"ACK|{control_id}-next".encode()


@pytest.mark.parametrize(
    ("host", "address"),
    [
        pytest.param("10.1.2.3", "10.1.2.3", id="v4"),
        pytest.param("::ffff:10.1.2.3", "10.1.2.3", id="v4-mapped-is-the-v4-peer"),
        pytest.param("fe80::1%eth0", "fe80::1", id="v6-scope-dropped"),
        pytest.param("2001:DB8::0:1", "2001:db8::1", id="v6-one-spelling"),
        pytest.param("not-an-ip", "not-an-ip", id="garbage-as-is"),
    ],
)
def test_peer_address_counts_one_host_once(host: str, address: str) -> None:
    assert peer_address(host) == address


async def test_a_flood_from_one_peer_does_not_lock_out_the_interface_engine(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    """The probe of issue 18: idle connections from one host took every slot
    and the interface engine was refused. A real ``serve`` process."""
    config = write_config(
        tmp_path / "config.yaml", broker.port, prefix, mllp={"max_connections": 8, "max_connections_per_peer": 4}
    )
    async with serve(config) as daemon:
        flood = [await AsyncMllpClient.connect(daemon.port, source="127.0.0.2") for _ in range(30)]
        # The flood holds four slots at most: each connection beyond them
        # takes the place of the flood's own idlest, nobody else's.
        await daemon.wait_event("mllp_connection_evicted", count=26)
        engine = await AsyncMllpClient.connect(daemon.port)
        ack = ack_fields(await engine.send(oru("ENGINE1")))
        assert (ack["code"], ack["control_id"]) == ("AA", "ENGINE1")
        await engine.close()
        evicted = daemon.events("mllp_connection_evicted")
        assert {(e["peer"].rpartition(":")[0], e["for_peer"].rpartition(":")[0]) for e in evicted} == {
            ("127.0.0.2", "127.0.0.2")
        }
        assert len(evicted) == 26
        assert daemon.events("mllp_connection_refused") == []
        for client in flood:
            await client.close()


async def test_the_connection_idle_the_longest_yields_when_every_slot_is_taken() -> None:
    async with listening(Answering(), max_connections=3) as (server, closed):
        oldest, middle, newest = [await AsyncMllpClient.connect(server.port) for _ in range(3)]
        for control_id, client in (("O1", oldest), ("M1", middle), ("N1", newest)):
            assert await client.send(oru(control_id)) == b"ACK|" + control_id.encode()
        newcomer = await AsyncMllpClient.connect(server.port)
        assert await newcomer.send(oru("C1")) == b"ACK|C1"
        assert await closed_by_server(oldest)
        assert closed == [Closed.EVICTED]
        for control_id, client in (("M2", middle), ("N2", newest), ("C2", newcomer)):
            assert await client.send(oru(control_id)) == b"ACK|" + control_id.encode()
            await client.close()


async def test_a_connection_mid_frame_or_awaiting_its_ack_never_yields() -> None:
    handler = Answering(hold=("HOLD1",))
    async with listening(handler, max_connections=3) as (server, closed):
        # The two oldest are busy; only the newest is idle.
        mid_frame = await AsyncMllpClient.connect(server.port)
        await start_a_frame(mid_frame, "F1")
        awaiting = await AsyncMllpClient.connect(server.port)
        await hold_a_frame(awaiting, handler)
        idle = await AsyncMllpClient.connect(server.port)
        assert await idle.send(oru("I1")) == b"ACK|I1"
        newcomer = await AsyncMllpClient.connect(server.port)
        await start_a_frame(newcomer, "C1")  # took the idle one's slot, and is busy now too
        assert await closed_by_server(idle)
        refused = await AsyncMllpClient.connect(server.port)
        assert await closed_by_server(refused)  # nothing idle is left: refused
        assert closed == [Closed.EVICTED, Closed.MAX_CONNECTIONS]
        # The busy ones were never touched: each finishes and is answered.
        await finish_the_frame(mid_frame, "F1")
        handler.release.set()
        assert await awaiting.receive() == b"ACK|HOLD1"
        await finish_the_frame(newcomer, "C1")
        for client in (mid_frame, awaiting, newcomer):
            await client.close()


async def test_a_connection_stuck_in_its_tls_handshake_yields_its_slot(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    issued = ca.issue("server", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert, issued.key)
    async with listening(Answering(), tls=context, max_connections=1) as (server, closed):
        stalled = await AsyncMllpClient.connect(server.port)  # plain TCP: never says hello
        client = await AsyncMllpClient.connect(server.port, tls=client_context(ca.ca_path))
        assert await client.send(oru("TLS1")) == b"ACK|TLS1"
        assert await closed_by_server(stalled)
        assert closed == [Closed.EVICTED]
        await client.close()


async def test_a_stop_past_its_grace_cuts_the_sender_off_but_never_cancels_the_handler() -> None:
    """A unit of work is never abandoned half way through the store: when
    the grace runs out, a connection whose frame is still being handled is
    closed (no ACK: its sender resends) while the handling runs to its end."""
    handler = Answering(hold=("HOLD1",))
    async with listening(handler) as (server, closed):
        working = await AsyncMllpClient.connect(server.port)
        await hold_a_frame(working, handler)
        idle = await AsyncMllpClient.connect(server.port)
        assert await idle.send(oru("I1")) == b"ACK|I1"
        async with asyncio.timeout(WAIT):
            await server.stop(grace=0.2)
        assert await closed_by_server(idle)
        with pytest.raises(ConnectionError):
            await working.receive()  # cut off, never answered
        await working.close()
        handler.release.set()
        await eventually(lambda: b"HOLD1" in handler.finished, what="the held frame's handling to finish")
        assert closed == []


async def test_one_peer_holds_at_most_its_share_of_the_slots() -> None:
    async with listening(Answering(), max_connections=10, max_connections_per_peer=2) as (server, closed):
        first, second = [await AsyncMllpClient.connect(server.port, source="127.0.0.2") for _ in range(2)]
        await start_a_frame(first, "F1")
        await start_a_frame(second, "S1")
        third = await AsyncMllpClient.connect(server.port, source="127.0.0.2")
        assert await closed_by_server(third)  # both of its connections are busy: refused
        assert closed == [Closed.MAX_CONNECTIONS_PER_PEER]
        other = await AsyncMllpClient.connect(server.port, source="127.0.0.3")
        assert await other.send(oru("OTHER1")) == b"ACK|OTHER1"
        await finish_the_frame(first, "F1")
        await finish_the_frame(second, "S1")
        for n, client in enumerate((first, second, other)):
            assert await client.send(oru(f"K{n}")) == f"ACK|K{n}".encode()
            await client.close()


async def test_a_peer_at_its_cap_gives_up_its_own_connection_idle_the_longest() -> None:
    """An engine whose connections a firewall dropped without a word comes
    back at once: its own stale connection yields, nobody else's does."""
    async with listening(Answering(), max_connections=10, max_connections_per_peer=2) as (server, closed):
        neighbour = await AsyncMllpClient.connect(server.port, source="127.0.0.3")
        assert await neighbour.send(oru("N1")) == b"ACK|N1"
        stale = await AsyncMllpClient.connect(server.port, source="127.0.0.2")
        assert await stale.send(oru("OLD1")) == b"ACK|OLD1"
        recent = await AsyncMllpClient.connect(server.port, source="127.0.0.2")
        assert await recent.send(oru("NEW1")) == b"ACK|NEW1"
        back = await AsyncMllpClient.connect(server.port, source="127.0.0.2")
        assert await back.send(oru("BACK1")) == b"ACK|BACK1"
        assert await closed_by_server(stale)
        assert closed == [Closed.EVICTED]
        for n, client in enumerate((recent, back, neighbour)):
            assert await client.send(oru(f"K{n}")) == f"ACK|K{n}".encode()
            await client.close()


async def test_a_silent_connection_is_closed_at_the_first_byte_deadline(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    config = make_config(tmp_path, broker.port, prefix, mllp={"first_byte_timeout_seconds": 0.3})
    async with running(config) as daemon:
        # Connected first, so its deadline (were it still running) would pass first.
        talker = await AsyncMllpClient.connect(daemon.port)
        assert ack_fields(await talker.send(oru("TALK1")))["code"] == "AA"
        silent = await AsyncMllpClient.connect(daemon.port)
        assert await closed_by_server(silent, timeout=5)  # not the 300 s idle timeout
        assert closed_count(daemon, "first_byte_timeout") == 1
        # The deadline is for the first byte only: a connection that spoke stays.
        assert ack_fields(await talker.send(oru("TALK2")))["code"] == "AA"
        await talker.close()


async def test_silence_never_outlasts_the_idle_timeout() -> None:
    """A site with a short idle timeout keeps it before the first byte and
    inside a frame too, whatever the first-byte and read timeouts say."""
    limits = {"idle_timeout": 0.3, "first_byte_timeout": 60, "read_timeout": 60}
    async with listening(Answering(), **limits) as (server, closed):
        silent = await AsyncMllpClient.connect(server.port)
        assert await closed_by_server(silent, timeout=5)
        started = await AsyncMllpClient.connect(server.port)
        await started.send_raw(b"\x0bMSH|")
        assert await closed_by_server(started, timeout=5)
        assert closed == [Closed.IDLE_TIMEOUT, Closed.READ_TIMEOUT]


async def test_pipelined_frames_each_get_the_read_timeout_from_their_own_first_byte() -> None:
    """Issue 18's probe: a sender pipelining frames, each finishing well within
    the read timeout, was dropped once their total passed it, because the
    next frame's start came in the same read as the last one's end."""
    read_timeout, pace, count = 1.5, 0.35, 7
    messages = [oru(f"PIPE{n}") for n in range(count)]
    cut = 60  # each write ends one frame and starts the next
    async with listening(Answering(), read_timeout=read_timeout, idle_timeout=60) as (server, closed):
        client = await AsyncMllpClient.connect(server.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.send_raw(frame(messages[0]) + b"\x0b" + messages[1][:cut])
        for n in range(1, count):
            await asyncio.sleep(pace)  # the sender's pace, not a wait for a condition
            rest = messages[n][cut:] + b"\x1c\r"
            await client.send_raw(rest + (b"\x0b" + messages[n + 1][:cut] if n + 1 < count else b""))
        answers = [await client.receive() for _ in range(count)]
        assert loop.time() - started > read_timeout  # the pipeline outlasted one frame's deadline
        assert answers == [f"ACK|PIPE{n}".encode() for n in range(count)]
        assert closed == []
        assert await client.send(oru("AFTER1")) == b"ACK|AFTER1"  # the connection was kept
        await client.close()


# -- allowlist and TLS --------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allow", "allowed"),
    [
        pytest.param("127.0.0.1", (), True, id="empty-allows-all"),
        pytest.param("10.1.2.3", ("10.1.0.0/16",), True, id="inside"),
        pytest.param("10.2.0.1", ("10.1.0.0/16",), False, id="outside"),
        pytest.param("::ffff:10.1.0.9", ("10.1.0.0/16",), True, id="v4-mapped"),
        pytest.param("fe80::1%eth0", ("fe80::/10",), True, id="v6-scoped"),
        pytest.param("not-an-ip", ("0.0.0.0/0",), False, id="garbage"),
    ],
)
def test_peer_allowed(host: str, allow: tuple[str, ...], allowed: bool) -> None:
    assert peer_allowed(host, tuple(ipaddress.ip_network(a) for a in allow)) is allowed


async def test_peer_outside_the_allowlist_is_disconnected(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix, mllp={"allow": ["10.0.0.0/8", "192.168.0.0/16"]})
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        await client.send_raw(frame(oru("DENIED1")))
        assert await closed_by_server(client)
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    allowed = make_config(tmp_path / "ok", broker.port, prefix, mllp={"allow": ["127.0.0.0/8"]})
    async with running(allowed) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        assert ack_fields(await client.send(oru("ALLOWED1")))["code"] == "AA"
        await client.close()


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


async def tls_refused(port: int, context: ssl.SSLContext) -> bool:
    """True when the server refuses the TLS session, during the handshake or
    (TLS 1.3 checks the client certificate after it) on the first exchange."""
    try:
        client = await AsyncMllpClient.connect(port, tls=context)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    try:
        await client.send(oru("TLSX"), timeout=5)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    finally:
        with contextlib.suppress(ssl.SSLError, ConnectionError, OSError):
            await client.close()
    return False


async def test_mutual_tls(tmp_path: Path, broker: Broker, prefix: str) -> None:
    ca = Authority(tmp_path)
    server = ca.issue("server", server=True)
    good = ca.issue("good-client", server=False)
    rogue_ca = Authority(tmp_path, "rogue CA")
    rogue = rogue_ca.issue("rogue-client", server=False)
    config = make_config(
        tmp_path, broker.port, prefix,
        mllp={"tls": {"cert": str(server.cert), "key": str(server.key), "client_ca": str(ca.ca_path)}},
    )
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port, tls=client_context(ca.ca_path, good.cert, good.key))
        ack = ack_fields(await client.send(oru("TLS1")))
        assert (ack["code"], ack["control_id"]) == ("AA", "TLS1")
        await client.close()
        assert await tls_refused(daemon.port, client_context(ca.ca_path))  # no client certificate
        assert await tls_refused(daemon.port, client_context(ca.ca_path, rogue.cert, rogue.key))
        # Plain MLLP to a TLS listener gets nothing and is closed.
        plain = await AsyncMllpClient.connect(daemon.port)
        await plain.send_raw(frame(oru("PLAIN1")))
        assert await closed_by_server(plain)
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        assert db.execute("SELECT control_id FROM messages").fetchall() == [("TLS1",)]


async def test_tls_without_client_certificates(tmp_path: Path, broker: Broker, prefix: str) -> None:
    ca = Authority(tmp_path)
    server = ca.issue("server", server=True)
    config = make_config(tmp_path, broker.port, prefix, mllp={"tls": {"cert": str(server.cert), "key": str(server.key)}})
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port, tls=client_context(ca.ca_path))
        assert ack_fields(await client.send(oru("TLS2")))["code"] == "AA"
        await client.close()


@pytest.mark.parametrize(
    ("mllp", "expected"),
    [
        pytest.param({"tls": {"cert": "a.crt"}}, "mllp.tls.key is required", id="cert-without-key"),
        pytest.param({"tls": {"key": "a.key"}}, "mllp.tls.cert is required", id="key-without-cert"),
        pytest.param({"tls": {"client_ca": "ca.crt"}}, "mllp.tls.client_ca needs", id="ca-without-tls"),
        pytest.param({"tls": {"cert": "missing.crt", "key": "missing.key"}}, "mllp.tls.cert: no such file", id="missing-file"),
        pytest.param({"allow": ["10.0.0.0/8", "ten"]}, "mllp.allow.1:", id="bad-network"),
        pytest.param({"read_timeout_seconds": 0}, "mllp.read_timeout_seconds:", id="read-timeout"),
        pytest.param({"first_byte_timeout_seconds": 0}, "mllp.first_byte_timeout_seconds:", id="first-byte-timeout"),
        pytest.param({"max_connections_per_peer": 0}, "mllp.max_connections_per_peer:", id="per-peer-cap"),
        pytest.param({"tls": {"certificate": "x"}}, "mllp.tls.certificate: unknown key", id="typo"),
    ],
)
def test_listener_config_errors_name_the_key(tmp_path: Path, mllp: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(json.dumps({"mllp": mllp}), source="site.yaml", base_dir=tmp_path)
    assert expected in str(info.value)


def test_unloadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a.crt").write_text("not a certificate")
    (tmp_path / "a.key").write_text("not a key")
    with pytest.raises(ConfigError, match=r"site.yaml:3: mllp.tls: cannot load"):
        parse_config("mllp:\n  tls:\n    cert: a.crt\n    key: a.key\n", source="site.yaml", base_dir=tmp_path)


# -- framing, charsets and ACK codes over the wire ------------------------------


async def test_framing_tolerance_over_the_wire(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix)
    lf = oru("LF1").replace(b"\r", b"\n")
    crlf = oru("CRLF1").replace(b"\r", b"\r\n")
    stream = (
        b"junk before any frame\r\n"
        + b"\x0b" + lf + b"\x1c"  # no CR after FS
        + frame(crlf)
        + b"\x0bMSH|^~\\&|half a frame, abandoned"  # a start block inside an unfinished frame
        + frame(oru("AFTER1"))
    )
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        for i in range(0, len(stream), 7):  # split across many reads
            await client.send_raw(stream[i : i + 7])
        acks = [ack_fields(await client.receive()) for _ in range(3)]
        await client.close()
    assert [(a["code"], a["control_id"]) for a in acks] == [("AA", "LF1"), ("AA", "CRLF1"), ("AA", "AFTER1")]


async def test_non_ascii_bytes_never_cost_a_message(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix)
    messages = {
        "CS1": oru("CS1", name=b"M\xfcller"),  # cp1252 byte, no MSH-18: the fallback decodes it
        "CS2": oru("CS2", msh_tail=b"||||||8859/1", name=b"M\xfcller"),
        "CS3": oru("CS3", msh_tail=b"||||||UNICODE UTF-8", name="Müller".encode()),
        "CS4": oru("CS4", msh_tail=b"||||||UNICODE UTF-8", name=b"M\xfc\xffller"),  # lies: fallback
        "CS5": b"\xef\xbb\xbf" + oru("CS5", name="Müller".encode()),  # UTF-8 BOM
        "CS6": oru("CS6", msh_tail=b"||||||ASCII", name=b"M\x81\x8dller"),  # undefined in cp1252 too
    }
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        acks = {cid: ack_fields(await client.send(raw)) for cid, raw in messages.items()}
        await client.close()
    assert {cid: (a["code"], a["control_id"]) for cid, a in acks.items()} == {cid: ("AA", cid) for cid in messages}


@pytest.mark.parametrize(
    ("msh_tail", "code"),
    [
        pytest.param(b"", "AA", id="original-mode"),
        pytest.param(b"|||AL|NE", "CA", id="AL-NE-commit"),
        pytest.param(b"|||AL|AL", "CA", id="AL-AL-commit"),
        pytest.param(b"|||ER|AL", "CA", id="ER-still-answered"),
        pytest.param(b"|||SU|NE", "CA", id="SU-still-answered"),
        pytest.param(b"|||NE|AL", "AA", id="NE-AL-application-ack"),
        pytest.param(b"|||NE|NE", "CA", id="NE-NE-still-answered"),
    ],
)
async def test_msh15_msh16_choose_the_answer_and_we_always_answer(
    tmp_path: Path, broker: Broker, prefix: str, msh_tail: bytes, code: str
) -> None:
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        ack = ack_fields(await client.send(oru("MODE1", msh_tail=msh_tail)))
        await client.close()
    assert (ack["code"], ack["control_id"]) == (code, "MODE1")


@pytest.mark.parametrize(
    ("raw", "code", "err"),
    [
        pytest.param(oru("E1").replace(b"ORU^R01", b"OR!^R01"), "AR", "ERR||MSH^1^9|200^", id="malformed-msh9"),
        pytest.param(oru("E2").replace(b"ORU^R01", b""), "AR", "ERR||MSH^1^9|200^", id="empty-msh9"),
        pytest.param(oru("E3").replace(b"|2.5.1", b"|2."), "AR", "ERR|MSH^1^12^203&", id="malformed-version"),
        pytest.param(oru("E4").replace(b"|2.5.1", b"|3.0"), "AR", "ERR||MSH^1^12|203^", id="unsupported-version"),
        pytest.param(oru("E5").replace(b"|P|", b"|X|"), "AR", "ERR||MSH^1^11|202^", id="processing-id"),
        pytest.param(oru("E6").replace(b"|NM|", b"|NM|").replace(b"|N|||F", b"|N|||Q"), "AE", "ERR||OBX^1^11|103^", id="bad-obx11"),
        pytest.param(oru("E7").replace(b"^~\\&", b"^&&^"), "AE", "ERR||MSH^1^2|102^", id="repeated-delimiter"),
        pytest.param(oru("E8").replace(b"^~\\&", b"~\\&"), "AE", "ERR||MSH^1^2|102^", id="three-encoding-chars"),
    ],
)
async def test_nak_codes_with_err_and_echo(
    tmp_path: Path, broker: Broker, prefix: str, raw: bytes, code: str, err: str
) -> None:
    config = make_config(tmp_path, broker.port, prefix)
    control_id = raw.split(b"|")[9].decode()
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        ack = ack_fields(await client.send(raw))
        await client.close()
    assert (ack["code"], ack["control_id"]) == (code, control_id)
    assert ack["ERR"].startswith(err), ack["ERR"]
    assert ack["MSH"].startswith("MSH|^~\\&|HL7ALERTS|ICU|LAB|GENHOSP|")


class FailingStore:
    """Stands in for the store the handler writes to: every unit of work
    fails the way a full or vanished disk does."""

    async def transact(self, unit: object) -> None:
        raise StoreError("disk I/O error")


async def test_store_failure_is_ar_so_the_sender_resends(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config) as daemon:
        daemon.daemon.frames.store = FailingStore()  # type: ignore[union-attr,assignment]
        client = await AsyncMllpClient.connect(daemon.port)
        ack = ack_fields(await client.send(oru("ST1")))
        nak = ack_fields(await client.send(oru("ST2").replace(b"|P|", b"|X|")))  # a reject that cannot be kept
        await client.close()
    assert (ack["code"], ack["control_id"]) == ("AR", "ST1")
    # What failed stays in our log (issue 18 item 7): the NAK only says resend.
    assert ack["ERR"].startswith("ERR|||207^Application internal error^HL70357|E||||store unavailable, resend later")
    assert "disk I/O error" not in "".join(ack.values())
    assert (nak["code"], nak["control_id"]) == ("AR", "ST2")
    assert "store unavailable" in nak["text"]
