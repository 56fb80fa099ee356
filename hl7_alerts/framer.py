"""The sans-IO MLLP framer: bytes in, frames out, no I/O.

`Framer` takes bytes (`feed`, ``b""`` for end of stream) and hands back
events (`next_event`): a complete `Frame`, `Junk` dropped from outside a frame,
an `Oversize` frame it refused to buffer, or `NEED_DATA`. It keeps how far it
has searched so that parsing stays linear however the bytes are split, and it
never buffers more than ``max_frame_bytes`` of one frame. The rule it keeps:
pure (no asyncio, no sockets), it never raises on any input, and "incomplete"
(`NEED_DATA`) is a different answer from "malformed" (`Junk`, `Oversize`).
Both the asyncio server and the blocking client (`mllp.py`) drive it, so the
two sides agree on what a frame is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
