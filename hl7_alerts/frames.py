"""Answering frames: an MLLP frame in, its ACK out, after the commit.

Owns the path DESIGN.md draws from a frame to its answer: parse
(`messages.parse_message`), `pipeline.process` inside `store.transact`, then
the ACK (`ack.build_ack`). A batch in one frame (`batches.read_batch`) takes
the same steps for each of its messages, in order, each its own unit of work
(`Store.transact_each`), and is answered once with a batch acknowledgment
(`ack.build_batch_ack`). A message we will not process is kept raw
(``rejected_messages``) and NAKed with the code it deserves; an over-size
frame gets an AR; a pager's acknowledgement from MQTT is recorded through the
same store. The rule it keeps: every frame gets exactly one answer, AA/CA
only once the message and its alerts are durable, and a store that fails or a
defect of ours is an AR (the sender keeps the message and resends), never a
dropped connection. The daemon answers its listener with it, and
`offline.check` runs archived files through it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeVar

import structlog
from structlog.contextvars import bound_contextvars

from hl7_alerts.ack import AckError, ack_code_for, build_ack, build_batch_ack
from hl7_alerts.acksig import Verdict, verify
from hl7_alerts.alerts import InvalidAck, parse_ack
from hl7_alerts.batches import BatchFrame, Envelope, read_batch
from hl7_alerts.lifecycle import acknowledge_alert
from hl7_alerts.logs import render_exception
from hl7_alerts.messages import ParseOptions, parse_message, salvage_header
from hl7_alerts.metrics import Metrics
from hl7_alerts.model import AckCode, Header, Message, ResultMessage
from hl7_alerts.pipeline import Outcome, process
from hl7_alerts.reader_process import INLINE_READ_BYTES, ReadProcess
from hl7_alerts.segments import ErrorCode, MessageError
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import Store, StoreError, Transaction

log = structlog.get_logger("hl7_alerts.frames")
T = TypeVar("T")

STORE_UNAVAILABLE = "store unavailable, resend later"
_ALERT_ID = re.compile(r"[0-9a-f]{32}")

@dataclass(frozen=True, slots=True, kw_only=True)
class FrameSettings:
    """What answering a frame reads from the config, as one value: a reload
    replaces it whole, and each frame reads it once, so no message sees the
    parse options of one config and the pipeline settings of another."""

    options: ParseOptions
    pipeline: PipelineSettings
    # retention.rejected_max_rows: rejected frames kept at most.
    rejected_max_rows: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """A frame's answer and what it came to.

    ``code`` and ``text`` are what the ACK says (``code`` before the enhanced
    mode mapping of `ack.ack_code_for`). ``outcome`` is set when the message
    was processed and committed; ``rejection`` when it was not processed
    through its own fault (or our parser's), and was kept raw. Neither: the
    store failed or we did, and the answer is an AR.
    """

    ack: bytes
    code: AckCode
    text: str = ""
    header: Header | None = None
    message: Message | None = None
    outcome: Outcome | None = None
    rejection: MessageError | None = None
    # A batch in one frame: each message's answer, in order (``ack`` is the
    # batch acknowledgment; ``code`` AA when every message was accepted,
    # else the first other code).
    parts: tuple[Answer, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Read:
    """What reading one message gave, before anything is logged or counted
    (`_read` may run off the loop): a message, or a refusal with the header
    salvaged for its NAK; ``crashed`` when the refusal is a defect of ours:
    its traceback as text (`logs.render_exception`), since a read done in the
    reader process comes back by pickle, which an exception may not survive."""

    header: Header | None
    message: Message | None = None
    rejection: MessageError | None = None
    crashed: str | None = None
    # Results whose OBX-3 maps to no analyte, counted per (code, system) here
    # rather than after the commit, on the loop.
    unmapped: Counter[tuple[str, str]] = field(default_factory=Counter)


def _read(data: bytes, options: ParseOptions) -> _Read:
    """Read one message. Pure, safe on any thread, and a module-level
    function whose arguments and result pickle (`ReadProcess`)."""
    try:
        message = parse_message(data, options)
    except MessageError as exc:
        return _Read(header=salvage_header(data, options.timezone, options.fallback_charset), rejection=exc)
    except Exception as exc:
        error = MessageError(
            "receiver could not read this message",
            ack_code=AckCode.AE,
            error_code=ErrorCode.INTERNAL_ERROR,
        )
        header = salvage_header(data, options.timezone, options.fallback_charset)
        return _Read(header=header, rejection=error, crashed=render_exception(exc))
    unmapped: Counter[tuple[str, str]] = Counter()
    if isinstance(message, ResultMessage):
        unmapped.update((o.code, o.code_system) for o in message.observations if o.analyte is None)
    return _Read(header=message.header, message=message, unmapped=unmapped)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Work:
    """One message on its way to its answer: read (``message``) or refused
    (``rejection``), and when it counts as received."""

    data: bytes
    header: Header | None
    message: Message | None
    rejection: MessageError | None
    received_at: datetime
    unmapped: Counter[tuple[str, str]] = field(default_factory=Counter)


def _envelope_header(envelope: Envelope) -> Header:
    """An FHS/BHS standing in for an MSH, for the one ACK of a batch that
    holds no message: sender and receiver to swap, its control id to echo."""
    return Header(
        field_separator=envelope.field_separator,
        encoding_characters=envelope.encoding_characters,
        sending_application=envelope.sending_application,
        sending_facility=envelope.sending_facility,
        receiving_application=envelope.receiving_application,
        receiving_facility=envelope.receiving_facility,
        message_time=None,
        message_type="",
        trigger_event="",
        control_id=envelope.control_id,
        processing_id="",
        version="",
    )


class FrameHandler:
    """Answers frames against one store.

    ``settings`` is read once per frame (see `FrameSettings`). ``replay``
    is for archived files (`offline.check`), which carry no arrival time: a
    message counts as received at its MSH-7, else at the clock. With
    ``ack_keys`` (``mqtt.acks.hmac_key_file``), a pager's ack must be signed
    with one of them (`acksig`). ``keep_rejected=False`` is for resending a
    rejected message (`resend`): it is already kept, and a second copy would
    say nothing new. With ``reader`` (the daemon's), frames longer than
    `INLINE_READ_BYTES` are read in that process; without (the offline
    tools, which have no other connection to keep answering), all inline.
    """

    def __init__(
        self,
        store: Store,
        settings: Callable[[], FrameSettings],
        metrics: Metrics,
        clock: Callable[[], datetime],
        *,
        max_message_bytes: int,
        replay: bool = False,
        ack_keys: Sequence[bytes] = (),
        keep_rejected: bool = True,
        reader: ReadProcess | None = None,
    ) -> None:
        self.store = store
        self._reader = reader
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._max_message_bytes = max_message_bytes
        self._replay = replay
        self._ack_keys = tuple(ack_keys)
        self._keep_rejected = keep_rejected
        self._ack_ids = itertools.count(1)
        self._ack_prefix = f"{os.getpid():x}{int(clock().timestamp()):x}"

    async def handle_frame(self, data: bytes, peer: str) -> bytes:
        """One MLLP frame in, its ACK out (`mllp.MllpServer`'s handler)."""
        return (await self.answer(data, peer=peer)).ack

    async def answer(self, data: bytes, *, peer: str = "") -> Answer:
        """One frame's answer; the ACK is built only after the commit.

        Always answers: a defect of ours anywhere on the way (even in building
        the ACK) becomes an AR without an echoed header, never an exception,
        so the sender keeps the message and resends it."""
        try:
            return await self._answer_frame(data, peer)
        except Exception:
            with bound_contextvars(peer=peer):
                log.exception("frame_handling_failed")
            return self._answer(
                None,
                AckCode.AR,
                text="internal error, resend later",
                error=AckError(reason="internal error", error_code=ErrorCode.INTERNAL_ERROR),
            )

    async def _answer_frame(self, data: bytes, peer: str) -> Answer:
        received_at = self._clock()
        current = self._settings()
        with bound_contextvars(peer=peer):
            batch = await self._reading(read_batch, data)
            if batch is not None:
                return await self._answer_batch(data, batch, received_at, current)
            work = await self._prepare(data, received_at, current.options)
            try:
                result: object = await self.store.transact(self._unit(work, current))
            except Exception as exc:
                result = exc
            return self._finish(work, result)

    async def _answer_batch(
        self, data: bytes, batch: BatchFrame, received_at: datetime, current: FrameSettings
    ) -> Answer:
        """A batch in one frame (CLINICAL.md decision 13): each message read
        and processed in order as if sent alone, each its own unit of work
        (`Store.transact_each`: one savepoint each, grouped commits), all
        durable or failed before the one answer, a batch acknowledgment."""
        if not any(m.startswith(b"MSH") for m in batch.messages):
            return await self._no_message(data, batch, received_at, current)
        works: list[_Work] = []
        for message in batch.messages:
            works.append(await self._prepare(message, received_at, current.options))
            await asyncio.sleep(0)  # a long batch does not hold the other connections up
        try:
            results: list[object] = list(
                await self.store.transact_each([self._unit(w, current) for w in works])
            )
        except StoreError as exc:
            results = [exc] * len(works)
        answers = iter([self._finish(w, r) for w, r in zip(works, results, strict=True)])
        grouped = [[next(answers) for _ in b.messages] for b in batch.batches]
        acks = [[a.ack for a in g] for g in grouped]
        ack = build_batch_ack(batch, acks, now=self._clock(), control_id=self._ack_id)
        parts = tuple(a for g in grouped for a in g)
        refused = next((a.code for a in parts if not a.code.accepted), AckCode.AA)
        log.debug("batch_answered", messages=len(parts), accepted=sum(a.code.accepted for a in parts))
        return Answer(ack=ack, code=refused, parts=parts)

    async def _no_message(
        self, data: bytes, batch: BatchFrame, received_at: datetime, current: FrameSettings
    ) -> Answer:
        """A batch with no readable message: one ACK with AE, answering the
        batch (its BHS, else FHS, as the header: sender and receiver swapped,
        MSA-2 its control id); the frame is kept raw like any reject."""
        envelope = batch.first_header or batch.file_header
        header = None if envelope is None else _envelope_header(envelope)
        error = MessageError(
            "the batch holds no message (no MSH segment)",
            ack_code=AckCode.AE,
            error_code=ErrorCode.SEGMENT_SEQUENCE,
            segment="MSH",
        )
        work = self._rejected(data, header, error, received_at)
        try:
            result: object = await self.store.transact(self._unit(work, current))
        except Exception as exc:
            result = exc
        return self._finish(work, result)

    async def _prepare(self, data: bytes, received_at: datetime, options: ParseOptions) -> _Work:
        """Read one message (on the loop up to `INLINE_READ_BYTES`, else in
        the reader process): a domain message to process, or a refusal to keep."""
        read = await self._reading(_read, data, options)
        if read.crashed is not None:
            log.error("parse_crashed", exception=read.crashed)
        if read.rejection is not None:
            return self._rejected(data, read.header, read.rejection, received_at)
        message = read.message
        assert message is not None
        if self._replay:
            received_at = message.header.message_time or received_at
        return _Work(
            data=data, header=read.header, message=message, rejection=None, received_at=received_at,
            unmapped=read.unmapped,
        )

    def _rejected(
        self, data: bytes, header: Header | None, exc: MessageError, received_at: datetime
    ) -> _Work:
        self._metrics.parse_error(str(exc.ack_code), str(exc.error_code))
        with bound_contextvars(control_id=header.control_id if header else None):
            log.warning(
                "message_rejected",
                ack=str(exc.ack_code),
                reason=exc.reason,
                segment=exc.segment,
                field=exc.field,
            )
        return _Work(data=data, header=header, message=None, rejection=exc, received_at=received_at)

    def _unit(self, work: _Work, current: FrameSettings) -> Callable[[Transaction], Outcome | int]:
        """The unit of work that makes ``work`` durable: the pipeline for a
        message; for a refusal, its raw bytes in ``rejected_messages`` (at
        most ``rejected_max_rows`` of them: the oldest go; it returns how
        many went)."""
        message, rejection = work.message, work.rejection
        if message is not None:
            settings = current.pipeline
            return lambda tx: process(tx, message, work.data, received_at=work.received_at, settings=settings)
        assert rejection is not None
        if not self._keep_rejected:
            return lambda tx: 0  # a resend of a rejected message: that one is kept already
        keep_rows = current.rejected_max_rows
        return lambda tx: tx.insert_rejected(
            work.header,
            work.data,
            received_at=work.received_at,
            ack_code=rejection.ack_code,
            reason=rejection.reason,
            keep_rows=keep_rows,
        )

    def _finish(self, work: _Work, result: object) -> Answer:
        """The answer for one message once its unit of work is durable
        (``result`` its outcome) or failed (``result`` the exception)."""
        header, message, rejection = work.header, work.message, work.rejection
        with bound_contextvars(
            control_id=header.control_id if header else None, msg_type=header.type_code if header else None
        ):
            if isinstance(result, StoreError):
                return self._store_unavailable(header, result)
            if isinstance(result, Exception):
                # A defect of ours on this message: never AA (it is not
                # stored), and AR so the sender keeps it and resends.
                log.error("pipeline_failed", exc_info=result)
                return self._answer(
                    header,
                    AckCode.AR,
                    text="internal error, resend later",
                    error=AckError(reason=type(result).__name__, error_code=ErrorCode.INTERNAL_ERROR),
                )
            if rejection is not None:
                assert isinstance(result, int)
                self._metrics.rejected_over_cap(result)
                error = AckError.from_exception(rejection)
                answer = self._answer(header, rejection.ack_code, text=rejection.reason, error=error)
                return replace(answer, rejection=rejection)
            assert isinstance(result, Outcome)
            assert message is not None
            self._metrics.alert_changes(result.changes)
            if work.unmapped and not result.duplicate:
                self._count_unmapped(work.unmapped)
            # Debug, not info: one JSON line per message was a tenth of the
            # daemon's CPU at load (bench/). Rejections and warnings stay.
            log.debug(
                "message_processed",
                ack=str(result.ack_code),
                duplicate=result.duplicate,
                alert_changes=len(result.changes),
            )
            answer = self._answer(header, result.ack_code, text=result.ack_text)
            return replace(answer, message=message, outcome=result)

    def _count_unmapped(self, unmapped: Counter[tuple[str, str]]) -> None:
        """Results whose code maps to no analyte are stored but never read
        by a rule: a site that has not mapped its local codes gets no alert.
        Counted per code, and said once per code in the log (codes are not
        patient data; the code's text is not logged)."""
        for code, system in self._metrics.unmapped_results(unmapped):
            log.info("lab_code_unmapped", code=code, system=system,
                     hint="map it in terminology.lab_codes; `hl7-alerts codes` lists the codes seen")

    def _store_unavailable(self, header: Header | None, exc: StoreError) -> Answer:
        """AR: a transient failure of ours, which the sender should retry.
        What failed stays in our log: the sender can do nothing with it but
        resend, and its logs are not ours to fill with our paths and SQL."""
        log.error("store_unavailable", error=str(exc))
        return self._answer(
            header,
            AckCode.AR,
            text=STORE_UNAVAILABLE,
            error=AckError(reason=STORE_UNAVAILABLE, error_code=ErrorCode.INTERNAL_ERROR),
        )

    async def handle_oversize(self, head: bytes, size: int, peer: str) -> bytes | None:
        """AR for a frame over ``mllp.max_message_bytes``, echoing its MSH when
        that is readable."""
        options = self._settings().options
        header = salvage_header(head, options.timezone, options.fallback_charset)
        limit = self._max_message_bytes
        reason = f"message exceeds the limit of {limit} bytes"
        with bound_contextvars(peer=peer, control_id=header.control_id if header else None):
            log.warning("message_oversize", bytes=size, limit=limit, msh_readable=header is not None)
        # Even without a readable MSH the sender gets its one answer per frame
        # (an AR with an empty MSA-2), so it never waits on silence.
        return self._answer(
            header,
            AckCode.AR,
            text=reason,
            error=AckError(reason=reason, error_code=ErrorCode.INTERNAL_ERROR, segment="MSH"),
        ).ack

    async def handle_ack(self, data: bytes) -> bool:
        """A pager's acknowledgement from ``<prefix>/acks``: recorded once;
        unreadable, unsigned (when keys are set), badly signed or unknown ones
        are logged, counted and ignored. False (not handled: let the broker
        redeliver it) only when the store failed.

        The signature is checked here, at the MQTT boundary, and nowhere
        else: acks written through the store (``alerts ack``, the web view)
        are authenticated by who may run them."""
        if self._ack_keys:
            verdict = verify(data, self._ack_keys)
            if verdict in (Verdict.UNSIGNED, Verdict.BAD_SIGNATURE):
                self._metrics.pager_ack(str(verdict))
                log.warning("ack_refused", reason=str(verdict), alert_id=_claimed_alert_id(data))
                return True  # handled: a redelivery would be refused again
        try:
            request = parse_ack(data)
        except InvalidAck as exc:
            self._metrics.pager_ack("invalid")
            log.warning("ack_invalid", reason=str(exc))
            return True
        alert_id = request.alert_id if _ALERT_ID.fullmatch(request.alert_id) else "(not an alert id)"
        settings, at = self._settings().pipeline, self._clock()
        try:
            outcome = await self.store.transact(
                lambda tx: acknowledge_alert(tx, request, settings=settings, at=at)
            )
        except StoreError as exc:
            self._metrics.pager_ack("not_recorded")
            log.error("ack_not_recorded", alert_id=alert_id, error=str(exc))
            return False
        except Exception:
            # A defect of ours must not take the MQTT session (and alerts) down;
            # redelivering the same ack would only repeat it.
            log.exception("ack_failed", alert_id=alert_id)
            return True
        self._metrics.pager_ack(str(outcome))
        log.info("ack_received", alert_id=alert_id, outcome=str(outcome))
        return True

    async def _reading(self, function: Callable[..., T], data: bytes, *args: object) -> T:
        """``function(data, *args)``, which reads ``data``: at once when
        ``data`` is short (`INLINE_READ_BYTES`) or there is no reader
        process, else in it. Looked up at each call, so tests may wrap it."""
        if len(data) <= INLINE_READ_BYTES or self._reader is None:
            return function(data, *args)
        return await self._reader.read(function, data, *args)

    def _ack_id(self) -> str:
        return f"{self._ack_prefix}{next(self._ack_ids):x}"

    def _answer(
        self, header: Header | None, code: AckCode, *, text: str = "", error: AckError | None = None
    ) -> Answer:
        self._metrics.message_answered(header.type_code if header else "", str(ack_code_for(header, code)))
        ack = build_ack(header, code, text=text, error=error, now=self._clock(), control_id=self._ack_id())
        return Answer(ack=ack, code=code, text=text, header=header)


def _claimed_alert_id(data: bytes) -> str | None:
    """The alert a refused ack names, for the log: only when it is an alert
    id's shape (a pager's text is not ours to log)."""
    try:
        value = json.loads(data).get("alert_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and _ALERT_ID.fullmatch(value) else None
