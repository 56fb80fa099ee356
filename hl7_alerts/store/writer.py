"""The writer: units of work on writer threads, with grouped commits.

One thread, one connection (PostgreSQL may run several writers); units
queued while a commit is in progress run together and commit together
(group commit), each inside its own SAVEPOINT so one failing unit rolls
back alone. A unit's awaiter is answered only after the COMMIT that covers
it has returned: that is what makes ACK-after-commit true. A unit that
would have to wait for another daemon's lock while its batch holds locks
(`LockBusy`) is rolled back to its savepoint and run again alone, after the
batch commits. `BatchingStore` implements `Store` by running `queries.py`'s
methods as units: no query text here beyond the transaction's own
BEGIN/SAVEPOINT/ROLLBACK/COMMIT.

A writer whose batch the store failed (a COMMIT or BEGIN refused, a unit's
statement failing in the driver: disk full, read-only file or database, a
lost server) closes its connection and opens a new one before its next
batch: once the cause is fixed, messages are accepted again without a
restart, even where the old connection would have stayed unusable (a
SQLite file opened read-only, a PostgreSQL session that is read-only). The
store remembers the outcome of the last batch that wrote
(`commit_failure`), which /healthz reads: a failed one keeps it "not
ready" until a later one commits (the health probe's own write does not
count: a tiny write may fit where a message does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import structlog

from hl7_alerts.store.base import (
    AlertRecord,
    AuditRow,
    CodeCount,
    LockBusy,
    OutboxBacklog,
    OutboxRow,
    Pruned,
    RejectedMessage,
    ScheduleRow,
    StoreError,
    Transaction,
    describe_db_error,
)
from hl7_alerts.store.queries import SqlTransaction

T = TypeVar("T")

log = structlog.get_logger("hl7_alerts.store")


@dataclass(slots=True)
class _Group:
    """Units that run in the order given, on one writer (`transact_each`).

    The writer takes a group whole from the queue, so several writers never
    split it. Once the store fails one of its units (``failed``), the later
    ones are not run: they fail too, rather than be applied out of order.
    Once one is deferred for contention (``deferred``), the later ones are
    deferred with it and run alone after it, in order."""

    jobs: list[_Job]
    failed: BaseException | None = None
    deferred: bool = False


@dataclass(slots=True)
class _Job:
    unit: Callable[[SqlTransaction], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    write: bool
    group: _Group | None = None
    probe: bool = False  # /healthz's write: its success says nothing of a message's


_STOP = object()


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # the awaiter went away (cancelled); the work is done regardless
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _resolve_all(
    outcomes: list[tuple[_Job, Any, BaseException | None]], outbox_event: asyncio.Event | None
) -> None:
    for job, result, error in outcomes:
        _resolve(job.future, result, error)
    if outbox_event is not None:
        outbox_event.set()


class BatchingStore(ABC):
    """`Store` with writer threads and grouped commits; a dialect supplies
    the connection (`_connect`, `_in_transaction`) and its errors.

    SQLite has one writer (it has one write lock). PostgreSQL may have
    several, each its own connection taking batches from the same queue: a
    writer spends most of its time waiting for the server, and the locks that
    keep several daemons apart keep a daemon's writers apart just as well.
    Messages on one MLLP connection still go one at a time (the next is read
    only once the previous one is answered)."""

    # The driver's errors: a unit failing with one of these is the store's
    # failure (StoreError, AR upstream), not a defect of ours.
    _DB_ERRORS: ClassVar[tuple[type[Exception], ...]] = ()
    _BEGIN: ClassVar[str] = "BEGIN"
    # Release each unit's savepoint once it succeeded. Not releasing nests the
    # next unit's savepoint inside it, which is as correct ("ROLLBACK TO unit"
    # goes back to the newest of that name) and saves a round trip a unit.
    _RELEASE_UNITS: ClassVar[bool] = True
    # Several publishers share the outbox: taking rows is a claim (a write).
    _CLAIMS: ClassVar[bool] = False

    def __init__(self, *, max_batch: int = 512, writers: int = 1) -> None:
        self._max_batch = max_batch
        self._writers = writers
        self._threads: list[threading.Thread] = []
        self._jobs: queue.SimpleQueue[_Job | _Group | object] = queue.SimpleQueue()
        self._outbox_event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commit_observer: Callable[[float], None] | None = None
        # Why the last batch that wrote failed; None once a later one committed.
        self._commit_failure: str | None = None
        # Per writer thread: reopen the connection before the next batch.
        self._local = threading.local()

    async def _start(self) -> None:
        """Connect (creating and migrating as needed) and start the writers,
        one after the other: the first one migrates."""
        self._loop = asyncio.get_running_loop()
        for number in range(self._writers):
            ready: asyncio.Future[None] = self._loop.create_future()
            name = "store-writer" if number == 0 else f"store-writer-{number + 1}"
            thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
            thread.start()
            try:
                await ready
            except BaseException:
                await self.close()
                raise
            self._threads.append(thread)

    # -- dialect hooks ---------------------------------------------------------

    @abstractmethod
    def _connect(self) -> SqlTransaction:
        """Open the connection, migrate, and return the transaction object."""

    def _reconnect_if_broken(self, tx: SqlTransaction) -> SqlTransaction:
        """Before a batch: a connection the server dropped is replaced."""
        return tx

    @abstractmethod
    def _in_transaction(self, tx: SqlTransaction) -> bool:
        """Whether the connection is inside a transaction (to roll back)."""

    def _close_connection(self, tx: SqlTransaction) -> None:
        tx.connection.close()

    def _committed(self, cursor: Any) -> bool:
        """Whether the COMMIT statement committed (SQLite raises when not)."""
        return True

    def _contended(self, exc: BaseException) -> bool:
        """A unit's error that means "another daemon got in the way" (a
        deadlock the server broke): the unit is run again alone."""
        return False

    # -- the Store interface -----------------------------------------------------

    def outbox_signal(self) -> asyncio.Event:
        return self._outbox_event

    @property
    def commit_failure(self) -> str | None:
        """Why the store failed the last batch that wrote (its error, as the
        log has it); None when it committed, or nothing has failed since a
        batch did. Writes of the health probe alone never clear it."""
        return self._commit_failure

    async def transact(self, unit: Callable[[Transaction], T]) -> T:
        return await self._submit(unit, write=True)

    async def transact_each(self, units: Sequence[Callable[[Transaction], T]]) -> list[T | Exception]:
        """Run ``units`` in order, each in its own savepoint, on one writer
        (see `_Group`); return once every one is durable or failed, with each
        one's result or the exception that failed it."""
        if not self._threads or self._loop is None:
            raise StoreError("store is closed")
        loop = self._loop
        group = _Group(jobs=[])
        group.jobs = [
            _Job(unit=unit, future=loop.create_future(), loop=loop, write=True, group=group) for unit in units
        ]
        if not group.jobs:
            return []
        self._jobs.put(group)
        results = await asyncio.gather(*(job.future for job in group.jobs), return_exceptions=True)
        out: list[T | Exception] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation, KeyboardInterrupt: not a unit's outcome
            out.append(result)
        return out

    async def read(self, unit: Callable[[Transaction], T]) -> T:
        """Run a read-only unit on the writer's connection (no commit needed)."""
        return await self._submit(unit, write=False)

    async def pending_outbox(self, limit: int, *, after_id: int = 0) -> list[OutboxRow]:
        # Several publishers share the outbox: taking rows is a claim (a write).
        return await self._submit(lambda tx: tx.pending_outbox(limit, after_id), write=self._CLAIMS)

    async def release_outbox(self) -> None:
        if self._CLAIMS:
            await self._submit(lambda tx: tx.release_outbox(), write=True)

    async def mark_delivered(self, ids: Sequence[int], at: datetime) -> None:
        await self._submit(lambda tx: tx.mark_delivered(ids, at), write=True)

    async def record_delivery(self, ids: Sequence[int], kind: str, at: datetime, detail: str = "") -> None:
        await self._submit(lambda tx: tx.audit_outbox(ids, kind, at, detail), write=True)

    async def outbox_backlog(self) -> OutboxBacklog:
        return await self._submit(lambda tx: tx.outbox_backlog(), write=False)

    async def probe_write(self, at: datetime) -> None:
        """Write (and commit) one row: proves the store takes writes now."""
        await self._submit(lambda tx: tx.probe_write(at), write=True, probe=True)

    async def last_run(self, task: str) -> datetime | None:
        """When the periodic ``task`` last ran (`mark_run`), if ever."""
        return await self._submit(lambda tx: tx.last_run(task), write=False)

    async def mark_run(self, task: str, at: datetime) -> None:
        await self._submit(lambda tx: tx.mark_run(task, at), write=True)

    async def prune(
        self, before: datetime, *, rejected_before: datetime | None = None, chunk: int = 500
    ) -> Pruned:
        """Retention: remove what is older than ``before`` (`SqlTransaction`'s
        prune steps say what each keeps), and rejected messages older than
        ``rejected_before`` (default ``before``), a chunk per transaction."""

        async def repeat(step: Callable[[SqlTransaction, datetime, int], int], until: datetime) -> int:
            total = 0
            while True:
                n = await self._submit(lambda tx: step(tx, until, chunk), write=True)
                total += n
                if n < chunk:
                    return total

        return Pruned(
            observations=await repeat(SqlTransaction.prune_observations, before),
            messages=await repeat(SqlTransaction.prune_messages, before),
            raw_cleared=await repeat(SqlTransaction.clear_raw, before),
            rejected_messages=await repeat(SqlTransaction.prune_rejected, rejected_before or before),
        )

    async def list_schedules(self, *, include_stopped: bool = False) -> list[ScheduleRow]:
        """Liver-test schedules, earliest alert time first (stopped ones only when asked)."""
        return await self._submit(lambda tx: tx.list_schedules(include_stopped=include_stopped), write=False)

    async def list_alerts(self, *, include_closed: bool = False, limit: int = 100) -> list[AlertRecord]:
        """Alerts, newest first (open ones only unless ``include_closed``)."""
        return await self._submit(
            lambda tx: tx.list_alerts(include_closed=include_closed, limit=limit), write=False
        )

    async def alert_detail(self, alert_id: str) -> tuple[AlertRecord, list[AuditRow]] | None:
        """One alert and its audit trail, oldest line first."""

        def unit(tx: SqlTransaction) -> tuple[AlertRecord, list[AuditRow]] | None:
            record = tx.alert_record(alert_id)
            return None if record is None else (record, tx.audit_trail(alert_id))

        return await self._submit(unit, write=False)

    async def code_counts(self) -> list[CodeCount]:
        return await self._submit(lambda tx: tx.code_counts(), write=False)

    async def list_rejected(self, *, limit: int = 100) -> list[RejectedMessage]:
        return await self._submit(lambda tx: tx.list_rejected(limit), write=False)

    async def rejected_message(self, rejected_id: int) -> RejectedMessage | None:
        return await self._submit(lambda tx: tx.rejected_message(rejected_id), write=False)

    async def record_resend(self, rejected_id: int, at: datetime, ack_code: str, text: str) -> None:
        await self._submit(lambda tx: tx.record_resend(rejected_id, at, ack_code, text), write=True)

    async def close(self) -> None:
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(_STOP)  # each writer takes one and ends
        for thread in threads:
            await asyncio.to_thread(thread.join)

    async def _submit(self, unit: Callable[[SqlTransaction], T], *, write: bool, probe: bool = False) -> T:
        if not self._threads or self._loop is None:
            raise StoreError("store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(unit=unit, future=future, loop=self._loop, write=write, probe=probe))
        return await future

    # -- writer thread -------------------------------------------------------

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            tx = self._connect()
        except BaseException as exc:
            failure = exc if isinstance(exc, StoreError) else StoreError(describe_db_error(exc))
            loop.call_soon_threadsafe(_resolve, ready, None, failure)
            return
        loop.call_soon_threadsafe(_resolve, ready, None, None)
        self._local.reopen = False
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is _STOP:
                break
            batch: list[_Job] = _jobs_of(first)
            while len(batch) < self._max_batch:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch += _jobs_of(nxt)
            try:
                tx = self._reopen(tx) if self._local.reopen else self._reconnect_if_broken(tx)
            except Exception as exc:
                self._fail_all(batch, exc)
                continue
            deferred = self._guarded_batch(tx, batch, alone=False)
            # A deferred unit runs alone: first in its transaction, it may
            # wait for the other daemon's lock without risking a deadlock.
            for job in deferred:
                for again in self._guarded_batch(tx, [job], alone=True):
                    self._fail_all([again], StoreError("lock contention persisted; try again"))
        with contextlib.suppress(Exception):
            self._close_connection(tx)

    def _reopen(self, tx: SqlTransaction) -> SqlTransaction:
        """The store failed this writer's last batch: a new connection, so
        that nothing the old one got stuck in (opened read-only, a session
        made read-only, an I/O error) outlives the cause. Raises while the
        store cannot be opened; the next batch tries again."""
        with contextlib.suppress(Exception):
            self._close_connection(tx)
        log.warning("store_reopening")
        fresh = self._connect()
        self._local.reopen = False
        log.info("store_reopened")
        return fresh

    def _store_failed(self, batch: Iterable[_Job], text: str) -> None:
        """The store (not a unit's own defect) failed a batch or a unit in it."""
        self._local.reopen = True
        if any(job.write and not job.probe for job in batch):
            self._commit_failure = text  # the probe answers for itself

    def _guarded_batch(self, tx: SqlTransaction, batch: list[_Job], *, alone: bool) -> list[_Job]:
        try:
            return self._run_batch(tx, batch, alone=alone)
        except Exception as exc:
            # Never let the writer thread die: every later message would
            # wait forever for a commit and its sender for an ACK.
            log.exception("store_batch_crashed")
            self._abandon(tx, batch, exc)
            return []

    def _abandon(self, tx: SqlTransaction, batch: list[_Job], exc: BaseException) -> None:
        """Nothing of this batch will commit: roll back what is left of its
        transaction and answer every unit in it with a StoreError."""
        tx.batch_rolled_back()
        if self._in_transaction(tx):
            with contextlib.suppress(Exception):
                tx.execute("ROLLBACK")
        self._fail_all(batch, exc)

    def _run_batch(self, tx: SqlTransaction, batch: list[_Job], *, alone: bool = False) -> list[_Job]:
        """Run and commit one batch; return the units deferred for contention."""
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        deferred: list[_Job] = []
        tx.enqueued = 0
        started = time.perf_counter()
        tx.batch_rolled_back()
        try:
            tx.execute(self._BEGIN)
            tx.batch_begun(alone=alone)
        except self._DB_ERRORS as exc:
            self._abandon(tx, batch, exc)
            return []
        first = True
        store_failure: str | None = None  # a unit's statement the store refused
        for job in batch:
            group = job.group
            if group is not None and group.failed is not None:
                cause = describe_db_error(group.failed)
                skipped = StoreError(f"not run: an earlier unit of its group failed ({cause})")
                outcomes.append((job, None, skipped))
                continue
            if group is not None and group.deferred and not alone:
                deferred.append(job)  # after the one deferred before it, in order
                continue
            try:
                tx.execute("SAVEPOINT unit")
            except self._DB_ERRORS as exc:
                # PostgreSQL aborts the whole transaction on a failed
                # statement, this one included: nothing of the batch may be
                # answered as committed.
                log.error("store_savepoint_failed", error=describe_db_error(exc))
                self._abandon(tx, batch, exc)
                return []
            tx.unit_begun(first=first)
            try:
                result = job.unit(tx)
            except Exception as exc:
                tx.unit_rolled_back()
                failure = StoreError(describe_db_error(exc)) if isinstance(exc, self._DB_ERRORS) else exc
                try:
                    tx.execute("ROLLBACK TO unit")
                    if self._RELEASE_UNITS:
                        tx.execute("RELEASE unit")
                except self._DB_ERRORS as rollback_exc:
                    # The server already rolled the whole transaction back
                    # (disk full, I/O error, connection lost): nothing of this
                    # batch will commit, so every unit in it fails (AR).
                    log.error("store_savepoint_lost", error=describe_db_error(rollback_exc))
                    self._abandon(tx, batch, rollback_exc)
                    return []
                if not alone and (isinstance(exc, LockBusy) or self._contended(exc)):
                    deferred.append(job)
                    if group is not None:
                        group.deferred = True
                    continue
                if isinstance(exc, self._DB_ERRORS):
                    store_failure = str(failure)
                if group is not None and isinstance(failure, StoreError):
                    group.failed = failure
                outcomes.append((job, None, failure))
            else:
                if self._RELEASE_UNITS:
                    tx.execute("RELEASE unit")
                tx.unit_released()
                outcomes.append((job, result, None))
                first = False
        commit_failures: tuple[type[Exception], ...] = (StoreError, *self._DB_ERRORS)
        try:
            if not self._committed(tx.execute("COMMIT")):
                # The server ended an aborted transaction with a ROLLBACK: an
                # error went unseen. Nothing may be answered as committed.
                raise StoreError("the transaction was rolled back at COMMIT")
        except commit_failures as exc:
            tx.batch_rolled_back()
            try:
                tx.execute("ROLLBACK")
            except self._DB_ERRORS:
                log.exception("store_rollback_failed")
            self._fail_all(batch, exc)
            return []
        observer = self.commit_observer
        if observer is not None and any(job.write for job in batch):
            observer(time.perf_counter() - started)
        if store_failure is not None:
            self._store_failed(batch, store_failure)
        elif any(job.write and not job.probe for job in batch):
            self._commit_failure = None
        tx.batch_committed()
        # One wake-up of the event loop per batch, not one per unit: each
        # call_soon_threadsafe writes to the loop's self-pipe.
        outbox_event = self._outbox_event if tx.enqueued else None
        if outcomes:
            batch[0].loop.call_soon_threadsafe(_resolve_all, outcomes, outbox_event)
        return deferred

    def _fail_all(self, batch: list[_Job], exc: BaseException) -> None:
        text = describe_db_error(exc)
        log.error("store_commit_failed", error=text)
        if isinstance(exc, (StoreError, *self._DB_ERRORS)):
            self._store_failed(batch, text)
        for job in batch:
            if job.group is not None and job.group.failed is None:
                job.group.failed = exc
            job.loop.call_soon_threadsafe(_resolve, job.future, None, StoreError(text))


def _jobs_of(item: _Job | _Group | object) -> list[_Job]:
    """The jobs a queue item holds: one, or a group's, all taken together."""
    if isinstance(item, _Group):
        return list(item.jobs)
    assert isinstance(item, _Job)
    return [item]
