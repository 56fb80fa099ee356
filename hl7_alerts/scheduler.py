"""Time-driven alert events: reminders for unacknowledged alerts, and
`aza.monitoring.overdue` when a thiopurine order's liver panel is overdue.

The timer's state lives in the store, not in memory: each alert keeps the time
it last paged someone and how many reminders went out, so a reminder that fell
due while the daemon was down is sent at the first tick after it starts. A
tick is one unit of work in the store's transaction (`lifecycle.send_reminders`)
and the reminders go out through the outbox like every other event. The clock
is injected; `tick()` is what tests drive, `run()` only decides how long to
wait between ticks. Overdue liver tests work the same way: each schedule row
remembers the due time it fired for (`overdue.fire_overdue`), so a due time
that passed while the daemon was down fires once, at the first tick.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

import structlog

from hl7_alerts.alerts import ReminderPolicy
from hl7_alerts.lifecycle import next_reminder, send_reminders
from hl7_alerts.overdue import fire_overdue, next_overdue
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import Store, StoreError, Transaction

log = structlog.get_logger("hl7_alerts.scheduler")


def reminding(policy: ReminderPolicy) -> bool:
    """Whether the policy re-sends anything at all."""
    return policy.max_reminders > 0 and bool(policy.severities)


def run_timers(
    tx: Transaction, *, policy: ReminderPolicy, settings: PipelineSettings, now: datetime
) -> tuple[list[str], list[str], datetime | None]:
    """One tick's unit of work at ``now``: the reminders sent, the overdue
    alerts raised (alert ids), and when the next of either falls due. The
    daemon's timer runs it on the wall clock; the offline replays run it on
    the message clock (`replay.py`), so both raise the same events."""
    # Daemons sharing a store tick one at a time: each due reminder
    # or overdue alert fires once, whichever daemon's timer sees it.
    # One that finds another ticking leaves it to that one.
    if not tx.try_timers():
        return [], [], None
    sent: list[str] = []
    due: list[datetime] = []
    if reminding(policy):
        sent = send_reminders(tx, policy=policy, settings=settings, now=now)
        due += [t for t in (next_reminder(tx, policy=policy),) if t is not None]
    overdue = fire_overdue(tx, settings=settings, now=now)
    due += [t for t in (next_overdue(tx, settings=settings),) if t is not None]
    return sent, overdue, min(due, default=None)


class Scheduler:
    """Sends due reminders; runs until `stop()`."""

    def __init__(
        self,
        store: Store,
        *,
        policy: ReminderPolicy,
        settings: PipelineSettings,
        clock: Callable[[], datetime],
        max_wait: float = 60.0,
    ) -> None:
        self._store = store
        self._policy = policy
        self._settings = settings
        self._clock = clock
        # New alerts are due no sooner than reminder_after from now, so waking
        # at least that often never makes a reminder late by more than a tick.
        self._max_wait = max(0.05, min(max_wait, policy.after_seconds))
        self._stopping = asyncio.Event()
        self.sent = 0
        self.overdue = 0

    def stop(self) -> None:
        self._stopping.set()

    def update_settings(self, settings: PipelineSettings) -> None:
        """A reload's settings (the monitoring schedule); the next tick uses them."""
        self._settings = settings

    async def tick(self) -> datetime | None:
        """Send every reminder due now; return when the next one falls due."""
        now = self._clock()
        policy, settings = self._policy, self._settings
        sent, overdue, due = await self._store.transact(
            lambda tx: run_timers(tx, policy=policy, settings=settings, now=now)
        )
        if sent:
            self.sent += len(sent)
            log.info("reminders_sent", count=len(sent))
        if overdue:
            self.overdue += len(overdue)
            log.info("monitoring_overdue_raised", count=len(overdue))
        return due

    async def run(self) -> None:
        if not reminding(self._policy) and not self._settings.monitoring.enabled:
            return
        while not self._stopping.is_set():
            wait = self._max_wait
            try:
                due = await self.tick()
            except StoreError as exc:
                log.error("reminder_tick_failed", error=str(exc))
            except Exception:
                # A defect of ours: keep the daemon (and the feed's ACKs) up.
                log.exception("reminder_tick_crashed")
            else:
                if due is not None:
                    wait = min(wait, max(0.0, (due - self._clock()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
