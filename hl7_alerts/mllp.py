"""MLLP over TCP: the asyncio server, its TLS context, and a blocking client.

The server owns sockets, limits and timeouts and drives the sans-IO framer
(`framer.py`) with what it reads; it knows nothing of HL7 fields: it passes
each frame to a handler and writes back whatever bytes the handler answers,
one answer per frame, in order, on the frame's own connection. Its slots
cannot be starved: a silent connection is closed after a short first-byte
deadline, one peer address holds at most ``max_connections_per_peer`` of
them (beyond it, that peer's own connection idle the longest yields), and
when every slot is taken the connection idle the longest (never one
mid-frame or waiting for its ACK) yields to the new one. `MllpClient`
is the blocking side (``hl7-alerts send``, tests), on the same framer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from hl7_alerts.framer import DEFAULT_MAX_FRAME_BYTES, NEED_DATA, Frame, Framer, Junk, Oversize, frame

# ---------------------------------------------------------------------------
# Server

FrameCallback = Callable[[bytes, str], Awaitable[bytes]]
"""Takes a frame's bytes and the peer's address; returns the ACK to send."""

OversizeCallback = Callable[[bytes, int, str], Awaitable[bytes | None]]
"""Takes an oversize frame's head, its size and the peer; returns the AR to
send, or None to close the connection without an answer."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Closed(enum.StrEnum):
    """Why the listener refused a connection or closed it itself (the
    ``reason`` of ``hl7_alerts_mllp_connections_closed_total``)."""

    STOPPING = "stopping"
    PEER_NOT_ALLOWED = "peer_not_allowed"
    MAX_CONNECTIONS_PER_PEER = "max_connections_per_peer"
    MAX_CONNECTIONS = "max_connections"
    EVICTED = "evicted"
    TLS_REFUSED = "tls_refused"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    READ_TIMEOUT = "read_timeout"


ClosedCallback = Callable[[Closed], None]
"""Told each time the listener refuses or closes a connection (metrics)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """What one listener allows. ``first_byte_timeout`` bounds how long a new
    connection may stay silent; ``read_timeout`` how long a frame may take to
    complete, from its first byte; ``idle_timeout`` how long a connection may
    sit between frames. ``max_connections_per_peer`` caps one peer address's
    share of ``max_connections``. ``allow`` lists the peer networks that may
    connect (empty: everyone)."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    first_byte_timeout: float = 10.0
    idle_timeout: float = 300.0
    read_timeout: float = 60.0
    max_connections: int = 64
    max_connections_per_peer: int = 16
    allow: tuple[Network, ...] = ()
    tls_handshake_timeout: float = 10.0


def peer_allowed(host: str, allow: tuple[Network, ...]) -> bool:
    """Whether ``host`` (an IP address as text) is inside one of ``allow``;
    an empty ``allow`` admits everyone. IPv4-mapped IPv6 addresses count as
    their IPv4 address."""
    if not allow:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in allow)


def peer_address(host: str) -> str:
    """The address ``max_connections_per_peer`` counts by: an IPv4-mapped
    IPv6 address as its IPv4 address, an IPv6 scope dropped; text that is
    no address as it is."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


@dataclass(slots=True, eq=False, kw_only=True)
class _Slot:
    """One admitted connection, as the slot accounting and `stop` see it."""

    address: str  # `peer_address`: what the per-peer cap counts
    peer: str  # address:port, for the log
    writer: asyncio.StreamWriter
    active_at: float  # the last byte received or ACK written (or the accept)
    # The deadline of the wait under way (a read or the TLS handshake);
    # expiring it early interrupts the connection (stopping, evicted).
    scope: asyncio.Timeout | None = field(default=None)
    # True while that wait is between frames (or the handshake): nothing of
    # a frame is held, nothing is owed an answer.
    idle: bool = False
    # True while the handler works on a frame of this connection.
    working: bool = False
    ending: Closed | None = None  # why it was interrupted

    @property
    def evictable(self) -> bool:
        return self.idle and self.ending is None


class MllpServer:
    """Accepts MLLP connections and answers each frame, in order, on its own
    connection.

    Every frame gets exactly one answer: the handler's ACK, or for an over-size
    frame the ``on_oversize`` AR, after which the framer resynchronises on the
    next start block and the connection goes on. ``stop()`` stops accepting,
    lets every connection finish the message it is working on (and write its
    ACK) without starting another, waits at most ``grace`` seconds, then
    closes what is left. ``on_closed`` hears every refusal and every close
    the listener decides (a limit, a timeout, an eviction)."""

    def __init__(
        self,
        handler: FrameCallback,
        on_oversize: OversizeCallback,
        *,
        host: str,
        port: int,
        limits: ServerLimits | None = None,
        tls: ssl.SSLContext | None = None,
        on_closed: ClosedCallback | None = None,
    ) -> None:
        self._handler = handler
        self._on_oversize = on_oversize
        self._host = host
        self._port = port
        self._limits = limits or ServerLimits()
        self._tls = tls
        self._on_closed = on_closed
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Slot] = {}  # every live one, evicted ones too
        self._slots: dict[asyncio.Task[None], _Slot] = {}  # the ones counted against the limits
        self._stopping = asyncio.Event()
        self._log = structlog.get_logger("hl7_alerts.mllp")

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connection_count(self) -> int:
        return len(self._slots)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self._host, self._port)
        self._log.info("mllp_listening", host=self._host, port=self.port, tls=self._tls is not None)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; finish in-flight messages within ``grace`` seconds.
        Past it, a connection whose frame is still being handled is cut off
        (its sender resends) but the handling is never cancelled."""
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        for slot in self._connections.values():
            _interrupt(slot, Closed.STOPPING)  # an idle one ends now; a busy one after its ACK
        pending = set(self._connections)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            if still:
                self._log.warning("mllp_grace_expired", connections=len(still))
            cancelled = set()
            for task in still:
                held = self._connections.get(task)
                if held is not None and held.working:
                    # Never cancelled inside the handler, so a unit of work
                    # is never abandoned half way through the store: its
                    # sender is cut off (no ACK, it resends) and it ends
                    # on its own.
                    held.writer.transport.abort()
                else:
                    task.cancel()
                    cancelled.add(task)
            if cancelled:
                await asyncio.wait(cancelled)
        if self._server is not None:
            await self._server.wait_closed()

    def _closed(self, reason: Closed) -> None:
        if self._on_closed is not None:
            self._on_closed(reason)

    def _admit(self, address: str, peer: str) -> Closed | None:
        """None when a connection from ``address`` may have a slot, else why
        not. A peer at its cap gives up its own connection idle the longest
        (an engine whose connections a firewall dropped silently gets back
        in at once); a full listener gives up the connection idle the
        longest of all. A connection mid-frame or waiting for its ACK never
        yields."""
        limits = self._limits
        if self._stopping.is_set():
            return Closed.STOPPING
        if not peer_allowed(address, limits.allow):
            return Closed.PEER_NOT_ALLOWED
        own = [task for task, slot in self._slots.items() if slot.address == address]
        if len(own) >= limits.max_connections_per_peer:
            return None if self._evict_idlest(own, peer) else Closed.MAX_CONNECTIONS_PER_PEER
        if len(self._slots) < limits.max_connections:
            return None
        return None if self._evict_idlest(list(self._slots), peer) else Closed.MAX_CONNECTIONS

    def _evict_idlest(self, tasks: list[asyncio.Task[None]], peer: str) -> bool:
        """Close the connection idle the longest among ``tasks`` for
        ``peer``'s sake; False when none of them is idle."""
        candidates = [(self._slots[task].active_at, task) for task in tasks if self._slots[task].evictable]
        if not candidates:
            return False
        since, task = min(candidates, key=lambda pair: pair[0])
        victim = self._slots.pop(task)
        _interrupt(victim, Closed.EVICTED)
        self._closed(Closed.EVICTED)
        loop = asyncio.get_running_loop()
        idle = round(loop.time() - since, 3)
        self._log.warning("mllp_connection_evicted", peer=victim.peer, idle_seconds=idle, for_peer=peer)
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        peer_info = writer.get_extra_info("peername")
        host = str(peer_info[0]) if isinstance(peer_info, tuple) else str(peer_info)
        peer = f"{peer_info[0]}:{peer_info[1]}" if isinstance(peer_info, tuple) else str(peer_info)
        log = self._log.bind(peer=peer)
        address = peer_address(host)
        refusal = self._admit(address, peer)
        if refusal is not None:
            log.warning("mllp_connection_refused", reason=str(refusal))
            self._closed(refusal)
            writer.close()
            return
        slot = _Slot(address=address, peer=peer, writer=writer, active_at=loop.time())
        self._connections[task] = slot
        self._slots[task] = slot
        try:
            if self._tls is not None and not await self._handshake(writer, slot, log):
                return
            log.info("mllp_connected", tls=self._tls is not None)
            await self._serve(reader, writer, slot, log)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("mllp_connection_lost", error=type(exc).__name__)
        finally:
            self._connections.pop(task, None)
            self._slots.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()
            log.info("mllp_disconnected")

    async def _handshake(
        self, writer: asyncio.StreamWriter, slot: _Slot, log: structlog.typing.FilteringBoundLogger
    ) -> bool:
        """TLS, started only after the allowlist said yes: a refused peer
        never gets a handshake. A connection in its handshake has sent no
        MLLP yet: it is idle, and yields its slot like one. False: no TLS
        session (refused, evicted or stopping); the connection ends."""
        assert self._tls is not None
        slot.idle = True
        try:
            # In this task, at once: the client's hello must reach the TLS
            # protocol, not the stream reader. An interrupt expires the scope.
            async with asyncio.timeout(None) as scope:
                slot.scope = scope
                await writer.start_tls(self._tls, ssl_handshake_timeout=self._limits.tls_handshake_timeout)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            if scope.expired():
                return False  # evicted or stopping
            log.warning("mllp_tls_refused", error=type(exc).__name__, reason=str(exc)[:200])
            self._closed(Closed.TLS_REFUSED)
            return False
        finally:
            slot.scope, slot.idle = None, False
        return slot.ending is None

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        slot: _Slot,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        # The hot path: per frame, the handler is awaited in this task and the
        # next read is awaited here too, under a deadline scope (no task, no
        # asyncio.wait, no shield per frame; `stop` and eviction expire the
        # scope instead).
        limits = self._limits
        framer = Framer(max_frame_bytes=limits.max_frame_bytes)
        loop = asyncio.get_running_loop()
        first_byte_by: float | None = loop.time() + limits.first_byte_timeout  # None once a byte came
        frame_deadline: float | None = None  # when the frame under way must be complete
        while True:
            event = framer.next_event()
            if isinstance(event, Frame):
                # The next frame's deadline runs from its own first byte, even
                # when that came in the same read as this frame's end.
                frame_deadline = None
                slot.working = True
                try:
                    ack = await self._handler(event.data, slot.peer)
                finally:
                    slot.working = False
                writer.write(frame(ack))
                await writer.drain()
                slot.active_at = loop.time()
                if self._stopping.is_set():
                    return  # finished the in-flight message; start no other
                continue
            if isinstance(event, Junk):
                _log_junk(log, event)
                continue
            if isinstance(event, Oversize):
                log.warning("mllp_frame_oversize", bytes=event.size, limit=limits.max_frame_bytes)
                nak = await self._on_oversize(event.head, event.size, slot.peer)
                if nak is None:
                    log.warning("mllp_closed_after_oversize")
                    return
                # Answer now, then drop the rest of the frame as it comes
                # (the framer discards up to its end block) and go on.
                writer.write(frame(nak))
                await writer.drain()
                continue
            in_frame = framer.in_frame
            # Evicted, with bytes that arrived as it was chosen: those were
            # answered (a frame they started is read to its end); now it goes.
            if self._stopping.is_set() or (slot.ending is not None and not in_frame):
                return
            # Silence is never allowed longer than idle_timeout; within a frame
            # the frame's deadline, before the first byte the first-byte one
            # may come sooner.
            deadline, expiry = loop.time() + limits.idle_timeout, Closed.IDLE_TIMEOUT
            if in_frame:
                if frame_deadline is None:
                    frame_deadline = loop.time() + limits.read_timeout
                deadline, expiry = min(deadline, frame_deadline), Closed.READ_TIMEOUT
            else:
                frame_deadline = None
                if first_byte_by is not None and first_byte_by < deadline:
                    deadline, expiry = first_byte_by, Closed.FIRST_BYTE_TIMEOUT
            slot.idle = not in_frame
            try:
                async with asyncio.timeout_at(deadline) as scope:
                    slot.scope = scope
                    data = await reader.read(65536)
            except TimeoutError:
                if not scope.expired():
                    raise  # the socket's own (ETIMEDOUT), not our deadline
                if slot.ending is None:
                    self._timed_out(expiry, framer, log)
                return
            finally:
                slot.scope, slot.idle = None, False
            framer.feed(data)
            if not data:
                # Drain what the end of stream completes, then stop.
                while (tail := framer.next_event()) is not NEED_DATA:
                    if isinstance(tail, Junk):
                        _log_junk(log, tail)
                return
            first_byte_by = None
            slot.active_at = loop.time()

    def _timed_out(self, expiry: Closed, framer: Framer, log: structlog.typing.FilteringBoundLogger) -> None:
        limits = self._limits
        self._closed(expiry)
        if expiry is Closed.READ_TIMEOUT:
            log.warning("mllp_read_timeout", seconds=limits.read_timeout, buffered=framer.buffered)
        elif expiry is Closed.FIRST_BYTE_TIMEOUT:
            log.info("mllp_first_byte_timeout", seconds=limits.first_byte_timeout)
        else:
            log.info("mllp_idle_timeout", seconds=limits.idle_timeout)


def _interrupt(slot: _Slot, reason: Closed) -> None:
    """End the connection's wait (at most once): the read or handshake under
    way expires now; a connection working on a frame sees ``ending`` (or
    the server stopping) once it has answered."""
    if slot.ending is None:
        slot.ending = reason
    if slot.scope is not None and not slot.scope.expired():
        slot.scope.reschedule(asyncio.get_running_loop().time())


def _log_junk(log: structlog.typing.FilteringBoundLogger, event: Junk) -> None:
    if event.truncated or event.data.strip():
        log.warning("mllp_junk_dropped", bytes=len(event.data), truncated=event.truncated)
    else:
        # CR/LF after an end block: common, harmless, not worth a warning.
        log.debug("mllp_whitespace_dropped", bytes=len(event.data))


class MllpClient:
    """A blocking MLLP client: send one message, wait for its answer.

    Used by ``hl7-alerts send`` and the tests; it shares the framer with the
    server so both sides agree on what a frame is.
    """

    def __init__(
        self, host: str, port: int, *, timeout: float = 30.0, tls: ssl.SSLContext | None = None
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
        self._sock = sock
        self._framer = Framer()

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def send(self, message: bytes) -> bytes:
        """Send one message; return the next frame the server answers."""
        self._sock.sendall(frame(message))
        return self.receive()

    def receive(self) -> bytes:
        while True:
            event = self._framer.next_event()
            if isinstance(event, Frame):
                return event.data
            if event is NEED_DATA:
                data = self._sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed the connection before answering")
                self._framer.feed(data)
