"""The one fake clock: what the daemon, the publisher and the scheduler take
as ``clock`` (a callable returning an aware datetime), moved by the test.
Nothing waits for real time to pass; a test sets or advances ``now``."""

from __future__ import annotations

from datetime import datetime, timedelta


class FakeClock:
    """The daemon's clock, moved by the test (no waiting for real time)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        """Move on by ``timedelta(**delta)``: ``clock.advance(days=1)``."""
        self.now += timedelta(**delta)
