"""The reader process: where the daemon reads frames too long to read on
its event loop.

Reading is linear in a frame's length, but a megabyte of bare segments still
takes about a second; on the loop (or on a thread of the daemon, holding its
interpreter lock, its garbage collector walking what was read) every other
connection's ACK would wait as long. `ReadProcess` runs such reads in one
``spawn`` process of their own, paced by `Reader` to a share of a core;
`frames.FrameHandler` decides what goes there (`INLINE_READ_BYTES`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import structlog

from hl7_alerts.logs import render_exception

log = structlog.get_logger("hl7_alerts.reader_process")
T = TypeVar("T")

INLINE_READ_BYTES = 2048
"""Frames up to this size are read (batch split, parse, MSH salvage) on the
event loop; longer ones in the reader process (`ReadProcess`). Reading is
linear in the frame's length, and its dearest input (a frame of bare ``OBX``
segments) costs under 2 µs a byte, so reading on the loop holds it for at
most a few milliseconds; a 1 MiB frame would hold it for seconds, and a
thread of ours would hold the interpreter lock as long. `bench/hostile.py`
measures the loop's longest hold."""

READER_SHARE = 0.25
"""The most of one core the reader process takes, over time: a sender of
megabyte frames of bare segments would otherwise keep a core busy, and on a
small machine the loop and the store's writer share the cores with it."""
READER_BURST = 1.0
"""Seconds of reading the reader may do at once before the share applies:
a feed of long messages, read a few milliseconds each, never waits."""


class Reader:
    """The pace of the reader process: at most `READER_SHARE` of its time
    once a `READER_BURST` is spent (a token bucket: the budget refills at the
    share per second of wall time, up to the burst, and each read spends its
    CPU time; a read that finds the budget spent waits until it is back to
    zero). It lives in the reader process (`_paced`), whose only thread
    reads, so a flood of long frames queues there. The clocks and ``sleep``
    are parameters for the tests."""

    def __init__(
        self,
        *,
        share: float = READER_SHARE,
        burst: float = READER_BURST,
        cpu: Callable[[], float] = time.thread_time,
        wall: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._share, self._burst = share, burst
        self._cpu, self._wall, self._sleep = cpu, wall, sleep
        self._budget, self._at = burst, wall()

    def _refill(self) -> None:
        now = self._wall()
        self._budget = min(self._burst, self._budget + (now - self._at) * self._share)
        self._at = now

    def run(self, call: Callable[[], T]) -> T:
        """``call()``, once the budget allows."""
        self._refill()
        if self._budget < 0:
            self._sleep(-self._budget / self._share)
            self._refill()
        start = self._cpu()
        try:
            return call()
        finally:
            spent = self._cpu() - start
            self._refill()
            self._budget -= spent


_PACE: Reader | None = None  # in the reader process: its one `Reader`


class ReadFailed(Exception):
    """A long frame could not be read: the reader process died under it
    twice, or reading raised (a defect of ours). The frame's answer is an AR
    (`FrameHandler.answer`), so the sender keeps it and resends."""


def _paced(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` in the reader process, at its pace. What it raises
    comes back as a `ReadFailed` carrying the traceback as text (rendered
    without exception messages, which may quote the message, `logs`): an
    exception object may not survive the trip back between processes."""
    global _PACE  # noqa: PLW0603 - one pace per reader process
    if _PACE is None:
        _PACE = Reader()
    try:
        return _PACE.run(lambda: function(*args))
    except Exception as exc:
        raise ReadFailed(render_exception(exc)) from None


class ReadProcess:
    """The one process that reads long frames (`INLINE_READ_BYTES`), so that
    reading a megabyte takes neither the event loop's interpreter lock nor
    its garbage collector's time. Started with the daemon (`start`: the first
    long frame does not wait for it) and stopped with it (`stop`). A
    ``spawn`` process: the daemon has threads, which ``fork`` does not copy.

    A reader that dies under a frame (killed, out of memory) is replaced and
    the frame read once more on the new one; when that one dies too, the
    frame is answered AR (`ReadFailed`), never read on the loop: a frame that
    kills a reader would take the daemon with it."""

    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the reader process (in the background)."""
        if self._executor is None:
            self._executor = self._new()

    @staticmethod
    def _new() -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        executor.submit(os.getpid)  # start it now, not at the first long frame
        return executor

    async def read(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` in the reader process (``function`` and its
        arguments and result go by pickle: a module-level function)."""
        for attempt in (1, 2):
            executor = self._executor
            if executor is None:
                raise ReadFailed("the reader process is stopped")
            try:
                future = executor.submit(_paced, function, *args)
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                log.error("reader_died", attempt=attempt, again=attempt == 1)
                if self._executor is executor:
                    self._executor = self._new()
                    executor.shutdown(wait=False)
            except ReadFailed as exc:
                log.error("read_failed", exception=str(exc))
                raise ReadFailed("reading raised") from None
        raise ReadFailed("the reader process died twice reading this frame")

    async def stop(self) -> None:
        """Stop the reader process (reads still queued are cancelled)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
