"""MLLP over TCP: the asyncio server, its TLS context, and a blocking client.

The server owns sockets, limits and timeouts and drives the sans-IO framer
(`framer.py`) with what it reads; it knows nothing of HL7 fields: it passes
each frame to a handler and writes back whatever bytes the handler answers,
one answer per frame, in order, on the frame's own connection. `MllpClient`
is the blocking side (``hl7-alerts send``, tests), on the same framer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """What one listener allows. ``read_timeout`` bounds how long a started
    frame may take to complete; ``idle_timeout`` how long a connection may sit
    between frames. ``allow`` lists the peer networks that may connect (empty:
    everyone)."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    idle_timeout: float = 300.0
    read_timeout: float = 60.0
    max_connections: int = 64
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


class MllpServer:
    """Accepts MLLP connections and answers each frame, in order, on its own
    connection.

    Every frame gets exactly one answer: the handler's ACK, or for an over-size
    frame the ``on_oversize`` AR, after which the framer resynchronises on the
    next start block and the connection goes on. ``stop()`` stops accepting,
    lets every connection finish the message it is working on (and write its
    ACK) without starting another, waits at most ``grace`` seconds, then
    closes what is left."""

    def __init__(
        self,
        handler: FrameCallback,
        on_oversize: OversizeCallback,
        *,
        host: str,
        port: int,
        limits: ServerLimits | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._handler = handler
        self._on_oversize = on_oversize
        self._host = host
        self._port = port
        self._limits = limits or ServerLimits()
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
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
        return len(self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self._host, self._port)
        self._log.info("mllp_listening", host=self._host, port=self.port, tls=self._tls is not None)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; finish in-flight messages within ``grace`` seconds."""
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        pending = set(self._connections)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                self._log.warning("mllp_grace_expired", connections=len(still))
                await asyncio.wait(still)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer_info = writer.get_extra_info("peername")
        host = str(peer_info[0]) if isinstance(peer_info, tuple) else str(peer_info)
        peer = f"{peer_info[0]}:{peer_info[1]}" if isinstance(peer_info, tuple) else str(peer_info)
        log = self._log.bind(peer=peer)
        refusal = ""
        if self._stopping.is_set():
            refusal = "stopping"
        elif not peer_allowed(host, self._limits.allow):
            refusal = "peer_not_allowed"
        elif len(self._connections) >= self._limits.max_connections:
            refusal = "max_connections"
        if refusal:
            log.warning("mllp_connection_refused", reason=refusal)
            writer.close()
            return
        self._connections.add(task)
        try:
            if self._tls is not None:
                # TLS starts only after the allowlist said yes: a refused peer
                # never gets a handshake.
                try:
                    await writer.start_tls(
                        self._tls, ssl_handshake_timeout=self._limits.tls_handshake_timeout
                    )
                except (ssl.SSLError, OSError, TimeoutError) as exc:
                    log.warning("mllp_tls_refused", error=type(exc).__name__, reason=str(exc)[:200])
                    return
            log.info("mllp_connected", tls=self._tls is not None)
            await self._serve(reader, writer, peer, log)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("mllp_connection_lost", error=type(exc).__name__)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()
            log.info("mllp_disconnected")

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        limits = self._limits
        framer = Framer(max_frame_bytes=limits.max_frame_bytes)
        loop = asyncio.get_running_loop()
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        frame_deadline: float | None = None  # when the frame under way must be complete
        try:
            while True:
                event = framer.next_event()
                if isinstance(event, Frame):
                    # Shielded: cancelling the connection at shutdown must not
                    # abandon a unit of work half way through the store.
                    ack = await asyncio.shield(self._handler(event.data, peer))
                    writer.write(frame(ack))
                    await writer.drain()
                    if self._stopping.is_set():
                        return  # finished the in-flight message; start no other
                    continue
                if isinstance(event, Junk):
                    _log_junk(log, event)
                    continue
                if isinstance(event, Oversize):
                    log.warning("mllp_frame_oversize", bytes=event.size, limit=limits.max_frame_bytes)
                    nak = await self._on_oversize(event.head, event.size, peer)
                    if nak is None:
                        log.warning("mllp_closed_after_oversize")
                        return
                    # Answer now, then drop the rest of the frame as it comes
                    # (the framer discards up to its end block) and go on.
                    writer.write(frame(nak))
                    await writer.drain()
                    continue
                if self._stopping.is_set():
                    return
                if framer.in_frame:
                    if frame_deadline is None:
                        frame_deadline = loop.time() + limits.read_timeout
                    timeout = min(limits.idle_timeout, max(0.0, frame_deadline - loop.time()))
                else:
                    frame_deadline = None
                    timeout = limits.idle_timeout
                read = asyncio.ensure_future(reader.read(65536))
                done, _ = await asyncio.wait(
                    {read, stop_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if read not in done:
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionError, ssl.SSLError):
                        await read
                    if not done:
                        if framer.in_frame:
                            log.warning(
                                "mllp_read_timeout", seconds=limits.read_timeout, buffered=framer.buffered
                            )
                        else:
                            log.info("mllp_idle_timeout", seconds=limits.idle_timeout)
                    return
                data = read.result()
                framer.feed(data)
                if not data:
                    # Drain what the end of stream completes, then stop.
                    while (tail := framer.next_event()) is not NEED_DATA:
                        if isinstance(tail, Junk):
                            _log_junk(log, tail)
                    return
        finally:
            stop_wait.cancel()


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
