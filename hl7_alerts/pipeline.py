"""The unit of work for one message, run inside the store's transaction.

Reads as the list of stages DESIGN.md draws: dedup on (MSH-3, MSH-4, MSH-10)
→ raw message → orders or observations → rules → alert reconciliation →
outbox rows. Everything it touches goes through the `store.Transaction` it is
given, so the whole message commits or none of it does; what it returns is
what the ACK will say. No SQL, no asyncio, no clock: the caller passes time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from hl7_alerts.alerts import AlertChange, PhiPolicy, Source, payload, reconcile, topic
from hl7_alerts.model import (
    AckCode,
    Header,
    Message,
    OrderMessage,
    PatientContext,
    PatientDemographics,
    PatientKey,
    ResultMessage,
)
from hl7_alerts.orders import apply_event
from hl7_alerts.rules import RuleSettings, evaluate
from hl7_alerts.store import DedupKey, OutboxItem, Transaction

log = structlog.get_logger("hl7_alerts.pipeline")


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineSettings:
    rules: RuleSettings = field(default_factory=RuleSettings)
    topic_prefix: str = "hl7alerts"
    phi: PhiPolicy = field(default_factory=PhiPolicy)
    history_days: int = 400


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What the ACK will say, and what happened (for logs and metrics)."""

    ack_code: AckCode
    ack_text: str = ""
    duplicate: bool = False
    changes: tuple[AlertChange, ...] = ()


def digest(raw: bytes) -> str:
    """Content hash of a message, blind to MSH-7 (some engines restamp it on
    resend) and to segment-end style."""
    text = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    msh, _, rest = text.partition(b"\r")
    if msh.startswith(b"MSH") and len(msh) > 3:
        fields = msh.split(msh[3:4])
        if len(fields) > 6:
            fields[6] = b""
        msh = msh[3:4].join(fields)
    return hashlib.blake2b(msh + b"\r" + rest, digest_size=16).hexdigest()


def process(
    tx: Transaction,
    message: Message,
    raw: bytes,
    *,
    received_at: datetime,
    settings: PipelineSettings,
) -> Outcome:
    """Store one parsed message and everything it causes; return the answer."""
    header = message.header
    key = DedupKey.of(header)
    raw_digest = digest(raw)
    seen = tx.find_messages(key)
    for prior in seen:
        if prior.digest == raw_digest:
            return Outcome(ack_code=prior.ack_code, ack_text=prior.ack_text, duplicate=True)
    if seen:
        # Same (MSH-3, MSH-4, MSH-10), other content: not a resend but a sender
        # reusing control IDs (counters reset, test feeds). Dropping it would
        # lose a result, so it is processed; alert identity keeps it from
        # alerting twice on the same evidence.
        log.warning("control_id_reused", previous_messages=len(seen))
    message_id = tx.insert_message(
        key, header, raw, digest=raw_digest, received_at=received_at, ack_code=AckCode.AA, ack_text=""
    )
    if isinstance(message, OrderMessage):
        for order in message.orders:
            state = apply_event(tx.get_order(message.patient, order.order_id), order)
            tx.put_order(message.patient, state, message_id)
        return Outcome(ack_code=AckCode.AA)
    if isinstance(message, ResultMessage):
        tx.insert_observations(message_id, message.patient, message.observations)
        changes = _evaluate(tx, message, received_at=received_at, settings=settings)
        return Outcome(ack_code=AckCode.AA, changes=tuple(changes))
    return Outcome(ack_code=AckCode.AA)


def _evaluate(
    tx: Transaction, message: ResultMessage, *, received_at: datetime, settings: PipelineSettings
) -> list[AlertChange]:
    patient = message.patient
    if not has_thiopurine_order(tx, message.patient, settings):
        return []  # every rule needs a thiopurine order, current or past
    orders = tx.patient_orders(patient)
    earliest = min(o.observed_at for o in message.observations) if message.observations else received_at
    ctx = PatientContext(
        patient=patient,
        orders=orders,
        history=tx.patient_history(patient, earliest - timedelta(days=settings.history_days)),
        demographics=message.demographics,
    )
    findings = evaluate(ctx, message.observations, settings.rules)
    if not findings:
        return []
    changes = reconcile(
        findings,
        tx.open_alerts(patient),
        patient=patient,
        source=_source(message.header),
        next_episode=tx.next_episodes(patient),
    )
    for change in changes:
        enqueue_change(tx, change, message.demographics, settings=settings, at=received_at)
    return changes


def has_thiopurine_order(tx: Transaction, patient: PatientKey, settings: PipelineSettings) -> bool:
    """Whether the patient has, or had, a thiopurine order: from the store's
    in-memory index, so most results (patients on no thiopurine) cost only
    their write. Their results stay on file for rules an order triggers later."""
    return not tx.ordered_ingredients(patient).isdisjoint(settings.rules.thiopurines)


def enqueue_change(
    tx: Transaction,
    change: AlertChange,
    demographics: PatientDemographics | None,
    *,
    settings: PipelineSettings,
    at: datetime,
) -> None:
    """Persist an alert's new state and its outbox row, in the caller's transaction."""
    body = payload(change, demographics=demographics, phi=settings.phi)
    tx.save_alert(change.alert, body)
    tx.enqueue(
        OutboxItem(
            alert_id=change.alert.alert_id,
            version=change.alert.version,
            event=str(change.event),
            topic=topic(settings.topic_prefix, change.alert),
            payload=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
            patient=change.alert.patient.key,
        ),
        at,
    )


def _source(header: Header) -> Source:
    return Source(
        control_id=header.control_id,
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
    )
