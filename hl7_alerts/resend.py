"""Resending rejected messages after a fix (`hl7-alerts rejected resend`).

A message answered AE or AR is kept raw in ``rejected_messages``. Once the
cause is fixed (a config that now accepts the sender's version, processing
ID, identifier type, ...) the site reprocesses it from there, as an
interface engine's message browser would: each raw message goes through the
daemon's own `frames.FrameHandler`, received now, as if the sender had sent
it again, so it gets exactly the answer a live resend would (a message
already on file is a duplicate and changes nothing). Alerts it raises go to
the outbox, which a running daemon publishes. What it came to (the ACK code
the sender would read and its text) is recorded on the rejected row; a
message rejected again is not kept a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from hl7_alerts.ack import ack_code_for
from hl7_alerts.config import Config
from hl7_alerts.frames import FrameHandler, FrameSettings
from hl7_alerts.metrics import Metrics
from hl7_alerts.store import Store

ACCEPTED = frozenset({"AA", "CA"})
NOT_FOUND = "no such rejected message"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resent:
    """One rejected message resent: the answer a sender would have read."""

    rejected_id: int
    control_id: str | None
    code: str  # MSA-1 as sent (CA/CE/CR when the message asked for enhanced mode); "" when not found
    text: str

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED


async def resend(
    store: Store, ids: Iterable[int], config: Config, *, clock: Callable[[], datetime]
) -> list[Resent]:
    """Resend each rejected message, in the order given; record each outcome."""
    current = FrameSettings(options=config.parse_options(), pipeline=config.pipeline_settings())
    frames = FrameHandler(
        store,
        lambda: current,
        Metrics(),
        clock,
        max_message_bytes=config.mllp.max_message_bytes,
        keep_rejected=False,
    )
    out: list[Resent] = []
    for rejected_id in ids:
        found = await store.rejected_message(rejected_id)
        if found is None or found.raw is None:
            out.append(Resent(rejected_id=rejected_id, control_id=None, code="", text=NOT_FOUND))
            continue
        answer = await frames.answer(found.raw, peer=f"resend:{rejected_id}")
        code = str(ack_code_for(answer.header, answer.code))
        text = answer.text
        if answer.outcome is not None and answer.outcome.duplicate:
            text = "already on file (a duplicate)"
        elif answer.outcome is not None:
            text = f"stored, {len(answer.outcome.changes)} alert events"
        await store.record_resend(rejected_id, clock(), code, text)
        out.append(Resent(rejected_id=rejected_id, control_id=found.control_id, code=code, text=text))
    return out
