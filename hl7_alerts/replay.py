"""Archived HL7 files through the daemon's pipeline, on the message clock.

Owns running an archive (`run_archive`) the way the daemon would have lived
through it: each message is read as the daemon reads it
(`messages.parse_message`) and processed by `pipeline.process` inside
`store.transact`, received at its MSH-7; the timers (reminders and
`aza.monitoring.overdue`, `scheduler.run_timers`) run on that clock between
messages, at the due times they would have fired at, so an overdue alert's
``occurred_at`` is its due time as it is live. A message the daemon would
refuse goes through the daemon's own answer (`frames.FrameHandler`), which
keeps it raw and names the reason; the run goes on and reports it as
skipped. `backtest` runs this against a throwaway store, `hl7-alerts replay`
against the site's (quiet or not: `PipelineSettings.quiet`). No rule,
reminder or schedule logic lives here.

Throughput: messages are read on the event loop and their units of work
queued to the store's writer without waiting for each commit (a window of
them in flight, committed in groups), in file order. The clock's state is
touched only by those units, on the writer thread, one after the other.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from hl7_alerts.alerts import ReminderPolicy, reminder_due
from hl7_alerts.frames import FrameHandler, FrameSettings
from hl7_alerts.messages import ParseOptions, parse_message
from hl7_alerts.metrics import Metrics
from hl7_alerts.model import MergeMessage, Message, OrderMessage, OtherMessage, PatientKey, ResultMessage
from hl7_alerts.pipeline import Outcome, has_thiopurine_order, process
from hl7_alerts.rules.monitoring import ScheduleState, next_due
from hl7_alerts.scheduler import reminding, run_timers
from hl7_alerts.segments import split_file
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import Store, StoreError, Transaction

log = structlog.get_logger("hl7_alerts.replay")

# Units of work queued ahead of the one being committed: enough for the
# writer to group commits, few enough to bound memory.
WINDOW = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    """A file that could not be read, or a message the pipeline refused."""

    file: str
    control_id: str | None
    code: str  # the ACK code the daemon would send (AE, AR), or "unreadable"
    reason: str

    def as_dict(self) -> dict[str, str | None]:
        return {"file": self.file, "control_id": self.control_id, "code": self.code, "reason": self.reason}


@dataclass(slots=True, kw_only=True)
class Progress:
    """Where a run is; handed to the progress callback now and then."""

    file: str = ""
    files_done: int = 0
    files: int = 0
    messages: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.messages / elapsed if elapsed > 0 else 0.0


@dataclass(slots=True, kw_only=True)
class ReplayResult:
    """What a run did: counts, the message clock's span, what was skipped,
    and the patients who had a thiopurine order (for the backtest's rates)."""

    messages: int = 0
    processed: int = 0
    duplicates: int = 0
    alert_events: int = 0  # from messages and from timers
    timer_events: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    first_at: datetime | None = None
    last_at: datetime | None = None
    thiopurine_patients: set[PatientKey] = field(default_factory=set)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


class MessageClock:
    """The timers on the message clock. Used only inside units of work, which
    the store's writer runs one at a time, in the order they were queued.

    It keeps, in memory, when each pending reminder and each order's overdue
    alert may fall due: seeded from the store at the first message, then
    from what each message and each tick changed (its alerts, its patient's
    schedules). Before a message, an entry due by the message's time is
    checked against the store (the schedule may have moved on with a panel,
    the alert may be closed) and, if still due, the daemon's tick
    (`scheduler.run_timers`) runs at that due time: each event fires at the
    time it would have live, before the message that follows it."""

    def __init__(self, policy: ReminderPolicy, settings: PipelineSettings) -> None:
        self.policy = policy
        self.settings = settings
        self.now: datetime | None = None  # the first message sets it
        self.raised = 0
        self.ticks = 0
        self._reminders: list[tuple[datetime, str]] = []  # (due, alert_id), a heap
        self._schedules: list[tuple[datetime, str, PatientKey]] = []  # (fires_at, key, patient)

    def _remember_alert(self, tx: Transaction, alert_id: str) -> None:
        record = tx.alert_record(alert_id)
        if record is not None and (due := reminder_due(record.alert, record.tracking, self.policy)):
            heapq.heappush(self._reminders, (due, alert_id))

    def _remember_patient(self, tx: Transaction, patient: PatientKey) -> None:
        m = self.settings.monitoring
        for r in tx.patient_schedules(patient):
            if r.state is ScheduleState.ACTIVE and not r.fired:
                fires_at = next_due(r.start, r.last_panel, m).fires_at
                heapq.heappush(self._schedules, (fires_at, patient.key, patient))

    def _seed(self, tx: Transaction) -> None:
        """What the store already has pending (a replay into a live store)."""
        if reminding(self.policy):
            for record in tx.reminder_candidates([str(s) for s in self.policy.severities],
                                                 self.policy.max_reminders, None):
                self._remember_alert(tx, record.alert.alert_id)
        if self.settings.monitoring.enabled:
            for patient in {r.patient.key: r.patient for r in tx.due_schedules(None)}.values():
                self._remember_patient(tx, patient)

    def _due(self, tx: Transaction, until: datetime) -> datetime | None:
        """The earliest entry due by ``until`` that the store confirms."""
        while self._reminders and self._reminders[0][0] <= until:
            due, alert_id = self._reminders[0]
            record = tx.alert_record(alert_id)
            if record is not None and reminder_due(record.alert, record.tracking, self.policy) == due:
                break
            heapq.heappop(self._reminders)  # acknowledged, closed or already reminded: look again
            self._remember_alert(tx, alert_id)
        while self._schedules and self._schedules[0][0] <= until:
            fires_at, _, patient = heapq.heappop(self._schedules)
            self._remember_patient(tx, patient)  # where it stands now (a panel may have moved it on)
            if self._schedules and self._schedules[0][0] == fires_at:
                heapq.heappush(self._schedules, (fires_at, patient.key, patient))
                break
        times = [h[0][0] for h in (self._reminders, self._schedules) if h and h[0][0] <= until]
        return min(times, default=None)

    def catch_up(self, tx: Transaction, until: datetime) -> None:
        """Run every tick due at or before ``until``, each at its due time."""
        if self.now is None:
            self._seed(tx)
        now = until if self.now is None else self.now
        while (due := self._due(tx, until)) is not None:
            at = max(now, due)
            sent, overdue, _ = run_timers(tx, policy=self.policy, settings=self.settings, now=at)
            self.ticks += 1
            self.raised += len(sent) + len(overdue)
            # What this tick settled is no longer due: look again at each
            # entry it covered (and at the alerts it raised).
            alerts = {*sent, *overdue}
            while self._reminders and self._reminders[0][0] <= at:
                alerts.add(heapq.heappop(self._reminders)[1])
            patients = {}
            while self._schedules and self._schedules[0][0] <= at:
                _, key, patient = heapq.heappop(self._schedules)
                patients[key] = patient
            for alert_id in sorted(alerts):
                self._remember_alert(tx, alert_id)
            for patient in patients.values():
                self._remember_patient(tx, patient)
            now = at
        self.now = max(now, until)

    def after(self, tx: Transaction, message: Message, outcome: Outcome) -> None:
        """Remember what this message may have made due."""
        for change in outcome.changes:
            self._remember_alert(tx, change.alert.alert_id)
        if not self.settings.monitoring.enabled or isinstance(message, OtherMessage):
            return
        # Orders start, pause and resume schedules; a panel moves one on (and
        # gives a fired one its next due time).
        if not isinstance(message, ResultMessage) or has_thiopurine_order(tx, message.patient, self.settings):
            self._remember_patient(tx, message.patient)


def _starts_thiopurine(message: Message, thiopurines: frozenset[str], known: set[PatientKey]) -> bool:
    """An order message for a thiopurine, or a merge into a patient who had one."""
    if isinstance(message, OrderMessage):
        return any(o.ingredient in thiopurines for o in message.orders)
    return isinstance(message, MergeMessage) and message.prior in known


async def run_archive(
    store: Store,
    paths: Sequence[Path],
    *,
    options: ParseOptions,
    settings: PipelineSettings,
    policy: ReminderPolicy,
    max_message_bytes: int,
    progress: Callable[[Progress], None] | None = None,
    progress_every: float = 2.0,
) -> ReplayResult:
    """Run ``paths`` in order (the messages of each file in order) into
    ``store``; return what happened. Never raises for bad input: it is in
    ``skipped``. Store failures on a message are skipped as AR."""
    result = ReplayResult()
    state = Progress(files=len(paths))
    clock = MessageClock(policy, settings)
    current = FrameSettings(options=options, pipeline=settings)
    latest: list[datetime] = []  # the message clock, once a message has told it

    def now() -> datetime:
        return latest[0] if latest else datetime.now(UTC)

    refusals = FrameHandler(store, lambda: current, Metrics(), now, max_message_bytes=max_message_bytes,
                            replay=True)
    pending: set[asyncio.Task[None]] = set()
    position = 0
    order: dict[int, Skipped] = {}
    thiopurines = settings.rules.thiopurines
    last_report = time.perf_counter()

    async def refused(index: int, source: str, raw: bytes) -> None:
        answer = await refusals.answer(raw, peer=source)
        header, rejection = answer.header, answer.rejection
        order[index] = Skipped(
            file=source,
            control_id=header.control_id if header else None,
            code=str(rejection.ack_code if rejection else answer.code),
            reason=rejection.reason if rejection else answer.text,
        )

    async def processed(index: int, source: str, message: Message, raw: bytes, *, received: datetime,
                        until: datetime) -> None:
        def unit(tx: Transaction) -> Outcome:
            clock.catch_up(tx, until)
            outcome = process(tx, message, raw, received_at=received, settings=settings)
            clock.after(tx, message, outcome)
            return outcome

        header = message.header
        try:
            outcome = await store.transact(unit)
        except StoreError as exc:
            order[index] = Skipped(file=source, control_id=header.control_id, code="AR",
                                   reason=f"store unavailable: {exc}")
            return
        except Exception as exc:
            log.exception("replay_message_failed", control_id=header.control_id)
            order[index] = Skipped(file=source, control_id=header.control_id, code="AR",
                                   reason=f"internal error ({type(exc).__name__})")
            return
        result.processed += 1
        result.duplicates += outcome.duplicate
        result.alert_events += len(outcome.changes)

    async def submit(task: asyncio.Task[None]) -> None:
        nonlocal pending
        pending.add(task)
        if len(pending) >= WINDOW:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    for number, path in enumerate(paths):
        source = str(path)
        state.file = source
        try:
            raws = split_file(path.read_bytes())
        except OSError as exc:
            position += 1
            order[position] = Skipped(file=source, control_id=None, code="unreadable",
                                      reason=exc.strerror or str(exc))
            continue
        if not raws:
            position += 1
            order[position] = Skipped(file=source, control_id=None, code="unreadable",
                                      reason="no HL7 message in this file")
        for raw in raws:
            position += 1
            result.messages += 1
            state.messages = result.messages
            try:
                message = parse_message(raw, options)
            except Exception:
                # Refused (MessageError), or a defect of our reader: the
                # daemon's own answer keeps it raw, logs and names the reason.
                await submit(asyncio.ensure_future(refused(position, source, raw)))
                continue
            received = message.header.message_time or now()
            if not latest or received > latest[0]:
                latest[:] = [received]
            result.first_at = min(result.first_at or received, received)
            result.last_at = max(result.last_at or received, received)
            if isinstance(message, OrderMessage | MergeMessage) and _starts_thiopurine(
                message, thiopurines, result.thiopurine_patients
            ):
                result.thiopurine_patients.add(message.patient)
            work = processed(position, source, message, raw, received=received, until=now())
            await submit(asyncio.ensure_future(work))
            if progress is not None and time.perf_counter() - last_report >= progress_every:
                last_report = time.perf_counter()
                progress(state)
        state.files_done = number + 1
    if pending:
        await asyncio.wait(pending)
    result.timer_events = clock.raised
    result.alert_events += clock.raised
    result.skipped = [order[k] for k in sorted(order)]
    result.seconds = time.perf_counter() - state.started
    if progress is not None:
        progress(state)
    return result
