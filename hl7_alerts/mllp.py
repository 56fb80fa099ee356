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
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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
    """A frame longer than the limit. ``head`` holds its first bytes so the
    caller can still read MSH and send an AR; the rest is discarded."""

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
        restart = buf.find(START_BLOCK, self._scanned)
        if restart != -1 and (end == -1 or restart < end):
            # A start block inside an unfinished frame: the sender gave up on
            # it. Drop what we had and resynchronise on the new start.
            dropped = bytes(buf[1:restart])
            del buf[:restart]
            self._scanned = 1
            if self._discarding:
                self._discarding = False
                return None
            return Junk(dropped, truncated=True)
        if end == -1:
            self._scanned = len(buf)
            if self._discarding:
                self._discarded += len(buf) - 1
                del buf[1:]
                self._scanned = 1
                return None
            if len(buf) - 1 > self.max_frame_bytes:
                head = bytes(buf[1 : 1 + _HEAD_BYTES])
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
            return Oversize(payload[:_HEAD_BYTES], len(payload))
        return Frame(payload)

    def _reset_outside(self) -> None:
        self._buf.clear()
        self._in_frame = False
        self._scanned = 0


# ---------------------------------------------------------------------------
# Server

FrameHandler = Callable[[bytes, str], Awaitable[bytes]]
"""Takes a frame's bytes and the peer's address; returns the ACK to send."""

OversizeHandler = Callable[[bytes, int, str], Awaitable[bytes | None]]
"""Takes an oversize frame's head, its size and the peer; returns an AR or None."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    idle_timeout: float = 300.0
    max_connections: int = 64


class MllpServer:
    """Accepts MLLP connections and answers each frame, in order, on its own
    connection. ``stop()`` stops accepting, lets every connection finish the
    message it is working on (and write its ACK), then closes them."""

    def __init__(
        self,
        handler: FrameHandler,
        on_oversize: OversizeHandler,
        *,
        host: str,
        port: int,
        limits: ServerLimits | None = None,
    ) -> None:
        self._handler = handler
        self._on_oversize = on_oversize
        self._host = host
        self._port = port
        self._limits = limits or ServerLimits()
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
        self._log.info("mllp_listening", host=self._host, port=self.port)

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
                await asyncio.wait(still)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer_info = writer.get_extra_info("peername")
        peer = f"{peer_info[0]}:{peer_info[1]}" if isinstance(peer_info, tuple) else str(peer_info)
        log = self._log.bind(peer=peer)
        if self._stopping.is_set() or len(self._connections) >= self._limits.max_connections:
            log.warning(
                "mllp_connection_refused", reason="stopping" if self._stopping.is_set() else "max_connections"
            )
            writer.close()
            return
        self._connections.add(task)
        log.info("mllp_connected")
        try:
            await self._serve(reader, writer, peer, log)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("mllp_connection_lost", error=type(exc).__name__)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            log.info("mllp_disconnected")

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        framer = Framer(max_frame_bytes=self._limits.max_frame_bytes)
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                event = framer.next_event()
                if isinstance(event, Frame):
                    # Shielded: a cancelled connection still writes the ACK
                    # for a message that was already committed.
                    ack = await asyncio.shield(self._handler(event.data, peer))
                    writer.write(frame(ack))
                    await writer.drain()
                    continue
                if isinstance(event, Junk):
                    log.warning("mllp_junk_dropped", bytes=len(event.data), truncated=event.truncated)
                    continue
                if isinstance(event, Oversize):
                    log.warning("mllp_frame_oversize", bytes=event.size, limit=self._limits.max_frame_bytes)
                    nak = await self._on_oversize(event.head, event.size, peer)
                    if nak is not None:
                        writer.write(frame(nak))
                        await writer.drain()
                    return
                if self._stopping.is_set():
                    return
                read = asyncio.ensure_future(reader.read(65536))
                done, _ = await asyncio.wait(
                    {read, stop_wait}, timeout=self._limits.idle_timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if read not in done:
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                        await read
                    if not done:
                        log.info("mllp_idle_timeout", seconds=self._limits.idle_timeout)
                    return
                data = read.result()
                framer.feed(data)
                if not data:
                    # Drain what the end of stream completes, then stop.
                    while (tail := framer.next_event()) is not NEED_DATA:
                        if isinstance(tail, Junk):
                            log.warning("mllp_junk_dropped", bytes=len(tail.data), truncated=tail.truncated)
                    return
        finally:
            stop_wait.cancel()


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
