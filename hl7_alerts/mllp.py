"""MLLP: a sans-IO framer, and the asyncio server that drives it.

The framer takes bytes (`feed`, ``b""`` for end of stream) and hands back
events (`next_event`): a complete `Frame`, `Junk` dropped from outside a frame,
an `Oversize` frame it refused to buffer, or `NEED_DATA`. It keeps how far it
has searched so that parsing stays linear however the bytes are split, and it
never buffers more than ``max_frame_bytes`` of one frame. The server owns
sockets, limits and timeouts; it knows nothing of HL7 fields: it passes each
frame to a handler and writes back whatever bytes the handler answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

START_BLOCK = 0x0B
END_BLOCK = 0x1C
CARRIAGE_RETURN = 0x0D

DEFAULT_MAX_FRAME_BYTES = 1 << 20


def frame(message: bytes) -> bytes:
    """Wrap one message in MLLP framing: ``<VT> message <FS><CR>``."""
    return b"\x0b" + message + b"\x1c\r"


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = _NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete message between a start block and an end block."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Junk:
    """Bytes that were not part of any complete frame; logged and dropped.

    ``truncated`` is True when they were the start of a frame that never
    finished (a new start block or the end of the stream cut it off).
    """

    data: bytes
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Oversize:
    """A frame longer than the limit, reported as soon as the limit is
    crossed. ``head`` holds its first bytes (up to 4 KiB, never more than the
    limit) so the caller can still read MSH and send an AR; the rest of the
    frame, up to its end block, is discarded. ``size`` is how many bytes of
    the frame had arrived when it was reported (more than the limit)."""

    head: bytes
    size: int


Event = Frame | Junk | Oversize | _NeedData

_HEAD_BYTES = 4096


class Framer:
    """Incremental MLLP deframer. Never raises on any input."""

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 16:
            raise ValueError("max_frame_bytes must be at least 16")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._in_frame = False
        self._discarding = False  # inside an oversize frame, dropping until its end
        self._discarded = 0
        self._scanned = 0  # bytes of _buf already searched for a delimiter
        self._skip_cr = False  # the last frame ended on FS at a read boundary
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame."""
        return len(self._buf)

    @property
    def in_frame(self) -> bool:
        """True between a start block and its end block: a frame has begun
        and not finished (the server's read timeout runs while this holds)."""
        return self._in_frame

    @property
    def _head_bytes(self) -> int:
        # Never more than the limit, so the head does not depend on how the
        # bytes were split into reads.
        return min(_HEAD_BYTES, self.max_frame_bytes)

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` marks the end of the stream."""
        if not data:
            self._eof = True
            return
        if self._skip_cr:
            self._skip_cr = False
            if data[0] == CARRIAGE_RETURN:
                data = data[1:]
        self._buf += data

    def next_event(self) -> Event:
        """The next event, or `NEED_DATA` when more bytes are needed."""
        while True:
            if not self._in_frame:
                start = self._buf.find(START_BLOCK)
                if start == -1:
                    if self._buf:
                        junk = bytes(self._buf)
                        self._buf.clear()
                        self._scanned = 0
                        return Junk(junk)
                    return NEED_DATA
                self._in_frame = True
                self._scanned = 1
                if start:
                    junk = bytes(self._buf[:start])
                    del self._buf[:start]
                    return Junk(junk)
                continue
            event = self._scan_frame()
            if event is not None:
                return event
            if self._eof and self._buf:
                data = bytes(self._buf[1:])
                self._reset_outside()
                if self._discarding:
                    self._discarding = False
                    return NEED_DATA
                return Junk(data, truncated=True)
            return NEED_DATA

    def _scan_frame(self) -> Event | None:
        buf = self._buf
        end = buf.find(END_BLOCK, self._scanned)
        limit = end if end != -1 else len(buf)
        final = end != -1 or self._eof  # no more bytes can arrive before `limit`
        pos = self._scanned
        while (vt := buf.find(START_BLOCK, pos, limit)) != -1:
            verdict = _starts_message(buf, vt + 1, limit, final=final)
            if verdict is None:
                # Too few bytes after this start block to tell whether a new
                # message begins there: wait for them (at most 5 bytes).
                self._scanned = vt
                return None
            if verdict:
                return self._restart(vt)
            pos = vt + 1  # a stray VT inside the message: content, not framing
        if end == -1:
            self._scanned = len(buf)
            if self._discarding:
                self._discarded += len(buf) - 1
                del buf[1:]
                self._scanned = 1
                return None
            if len(buf) - 1 > self.max_frame_bytes:
                head = bytes(buf[1 : 1 + self._head_bytes])
                self._discarding = True
                self._discarded = len(buf) - 1
                del buf[1:]
                self._scanned = 1
                return Oversize(head, self._discarded)
            return None
        payload = bytes(buf[1:end])
        after = end + 1
        if after < len(buf):
            if buf[after] == CARRIAGE_RETURN:
                after += 1
        elif not self._eof:
            self._skip_cr = True
        del buf[:after]
        self._in_frame = False
        self._scanned = 0
        if self._discarding:
            self._discarding = False
            return None
        if len(payload) > self.max_frame_bytes:
            return Oversize(payload[: self._head_bytes], len(payload))
        return Frame(payload)

    def _restart(self, vt: int) -> Event | None:
        """A start block followed by a message header inside an unfinished
        frame: the sender gave up on that frame. Drop what we had (an Oversize
        if it had crossed the limit) and resynchronise on the new start."""
        buf = self._buf
        dropped = bytes(buf[1:vt])
        del buf[:vt]
        self._scanned = 1
        if self._discarding:
            self._discarding = False
            return None
        if len(dropped) > self.max_frame_bytes:
            return Oversize(dropped[: self._head_bytes], len(dropped))
        return Junk(dropped, truncated=True)

    def _reset_outside(self) -> None:
        self._buf.clear()
        self._in_frame = False
        self._scanned = 0


_BOM = b"\xef\xbb\xbf"
_MESSAGE_STARTS = tuple(
    prefix + name for prefix in (b"", _BOM) for name in (b"MSH", b"FHS", b"BHS")
)
_LOOKAHEAD = max(len(s) for s in _MESSAGE_STARTS)


def _starts_message(buf: bytearray, start: int, limit: int, *, final: bool) -> bool | None:
    """Whether the bytes at ``start`` (before ``limit``) begin a message
    header; None when too few have arrived to tell. A VT counts as a new start
    block only then: a sender that abandons a frame starts the next one with
    MSH, while a stray VT inside a report is just a bad byte."""
    window = bytes(buf[start : min(limit, start + _LOOKAHEAD)])
    if window.startswith(_MESSAGE_STARTS):
        return True
    if final or len(window) >= _LOOKAHEAD:
        return False
    return None if any(s.startswith(window) for s in _MESSAGE_STARTS) else False


# ---------------------------------------------------------------------------
# Server

FrameHandler = Callable[[bytes, str], Awaitable[bytes]]
"""Takes a frame's bytes and the peer's address; returns the ACK to send."""

OversizeHandler = Callable[[bytes, int, str], Awaitable[bytes | None]]
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


def tls_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The listener's TLS context. With ``client_ca`` every client must show a
    certificate signed by it (mutual TLS). Raises `ssl.SSLError`/`OSError` for
    files that cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert, keyfile=key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


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
        handler: FrameHandler,
        on_oversize: OversizeHandler,
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

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
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
