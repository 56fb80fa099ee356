"""Waiting for a condition, never for a length of time.

A test that needs something to have happened polls for it with a deadline;
when the deadline passes it fails saying what it waited for and for how long.
``eventually`` is the one way to do that from a coroutine, and
``eventually_sync`` its twin for code that runs outside an event loop
(starting a server from a sync fixture, the benchmark). The poll interval is
how often a cheap condition is looked at, not a guess at how long anything
takes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

WAIT = 10.0  # seconds: the ceiling for any condition a test waits on

T = TypeVar("T")


class _Deadline:
    def __init__(self, timeout: float, what: str, detail: Callable[[], str] | None) -> None:
        self.timeout, self.what, self.detail = timeout, what, detail
        self.end = time.monotonic() + timeout

    def passed(self) -> bool:
        return time.monotonic() > self.end

    def error(self) -> TimeoutError:
        message = f"timed out after {self.timeout}s waiting for {self.what}"
        if self.detail is not None:
            message += f"\n{self.detail()}"
        return TimeoutError(message)


async def eventually(
    condition: Callable[[], T | Awaitable[T | None] | None],
    timeout: float = WAIT,
    *,
    what: str,
    interval: float = 0.01,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    ``condition`` may return an awaitable (a coroutine function, or
    ``lambda: asyncio.to_thread(query)`` for one that blocks): it is awaited.
    After ``timeout`` seconds, raise ``TimeoutError`` naming ``what`` and the
    timeout, followed by ``detail()`` if given (say, the tail of a log).
    """
    deadline = _Deadline(timeout, what, detail)
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if deadline.passed():
            raise deadline.error()
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], T | None],
    timeout: float = WAIT,
    *,
    what: str,
    interval: float = 0.01,
    detail: Callable[[], str] | None = None,
) -> T:
    """``eventually`` for code outside an event loop: the same contract, blocking."""
    deadline = _Deadline(timeout, what, detail)
    while True:
        result = condition()
        if result:
            return result
        if deadline.passed():
            raise deadline.error()
        time.sleep(interval)
