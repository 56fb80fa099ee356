"""Units of work for alert events that come without a new finding.

A pager's acknowledgement (`acknowledge_alert`), a reminder for an alert
nobody acknowledged (`send_reminders`, `next_reminder`), and the alerts an
ADT^A40 merge folds into the surviving record (`announce_folded`). Each
carries the alert's last payload forward (no rules re-run) and goes out
through the same outbox as findings (`outbox.enqueue_carried`), so ordering,
audit and retries are the same. Each reads the alert again under its
patient's lock before changing it: another daemon sharing the store may have
changed it since. No SQL, no asyncio, no clock: the caller passes time.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta

from hl7_alerts.alerts import (
    SUPERSEDES,
    AckOutcome,
    AckRequest,
    AlertEvent,
    AlertState,
    ReminderPolicy,
    acknowledge,
    carried_payload,
    remind,
    reminder_due,
)
from hl7_alerts.outbox import enqueue_carried
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import AlertRecord, Transaction


def acknowledge_alert(
    tx: Transaction, request: AckRequest, *, settings: PipelineSettings, at: datetime
) -> AckOutcome:
    """Record a pager's acknowledgement once; return what happened
    (`AckOutcome.UNKNOWN_ALERT` when no alert has that id). Repeats change
    nothing."""
    record = tx.alert_record(request.alert_id)
    if record is None:
        return AckOutcome.UNKNOWN_ALERT
    # Another daemon may be recording the same ack or changing the alert:
    # read it again under its patient's lock.
    record = _locked_record(tx, record)
    if record is None:
        return AckOutcome.UNKNOWN_ALERT
    alert, outcome = acknowledge(record.alert, record.tracking, request)
    if alert is None:
        tx.audit("ack_ignored", request.alert_id, at, detail=str(outcome))
        return outcome
    tx.record_ack(alert.alert_id, request)
    tx.audit(
        "acknowledged", alert.alert_id, at, version=alert.version, event=str(AlertEvent.ACKNOWLEDGED),
        detail=json.dumps({"by": request.by, "at": request.at.isoformat()}, ensure_ascii=False),
    )
    body = carried_payload(record.payload, alert, AlertEvent.ACKNOWLEDGED, acknowledged=request)
    enqueue_carried(tx, alert, AlertEvent.ACKNOWLEDGED, body, settings=settings, at=at)
    return AckOutcome.ACKNOWLEDGED


def send_reminders(
    tx: Transaction, *, policy: ReminderPolicy, settings: PipelineSettings, now: datetime
) -> list[str]:
    """Enqueue a ``reminder`` for every alert whose reminder is due at ``now``;
    return their alert ids."""
    due = tx.reminder_candidates(
        [str(s) for s in policy.severities],
        policy.max_reminders,
        now - timedelta(seconds=policy.after_seconds),
    )
    sent: list[str] = []
    for candidate in due:
        # Read again under the patient's lock: another daemon's message may
        # have resolved or acknowledged it since the candidates were read.
        record = _locked_record(tx, candidate)
        if record is None:
            continue
        if _superseded(tx, record, settings=settings, now=now):
            continue
        alert = remind(record.alert, record.tracking, policy, now=now)
        if alert is None:
            continue
        number = record.tracking.reminders_sent + 1
        tx.record_reminder(alert.alert_id)
        body = carried_payload(
            record.payload, alert, AlertEvent.REMINDER, reminder=number, reminder_max=policy.max_reminders
        )
        enqueue_carried(tx, alert, AlertEvent.REMINDER, body, settings=settings, at=now)
        sent.append(alert.alert_id)
    return sent


def _superseded(tx: Transaction, record: AlertRecord, *, settings: PipelineSettings, now: datetime) -> bool:
    """Decision 19: reminders go on for hys_law alone. An open
    hepatotoxicity.stop alert of a patient whose hys_law alert is open (both
    open from before this rule, or a stop that slipped past it) is closed as
    superseded instead of reminded."""
    by = SUPERSEDES.get(record.alert.rule)
    if by is None or record.alert.state is not AlertState.OPEN:
        return False
    if by not in tx.open_alerts(record.alert.patient):
        return False
    closed = replace(record.alert, state=AlertState.RESOLVED, version=record.alert.version + 1)
    body = carried_payload(record.payload, closed, AlertEvent.RESOLVED)
    body["reason"] = f"superseded by {by}"
    body["summary"] = f"Resolved: superseded by {by}, which goes on for this patient"
    enqueue_carried(tx, closed, AlertEvent.RESOLVED, body, settings=settings, at=now)
    return True


def _locked_record(tx: Transaction, record: AlertRecord) -> AlertRecord | None:
    """The alert as committed, read under its patient's lock. An ADT^A40
    merge committed meanwhile may have moved it to another patient: then
    that patient's lock is taken and it is read again."""
    while True:
        tx.lock(patients=[record.alert.patient])
        fresh = tx.alert_record(record.alert.alert_id)
        if fresh is None or fresh.alert.patient == record.alert.patient:
            return fresh
        record = fresh


def next_reminder(tx: Transaction, *, policy: ReminderPolicy) -> datetime | None:
    """When the earliest pending reminder falls due (None: nothing pending)."""
    candidates = tx.reminder_candidates([str(s) for s in policy.severities], policy.max_reminders, None)
    times = [t for r in candidates if (t := reminder_due(r.alert, r.tracking, policy)) is not None]
    return min(times, default=None)


def announce_folded(tx: Transaction, alert_id: str, *, settings: PipelineSettings, at: datetime) -> None:
    """A merge closed the prior record's alert in favour of the survivor's open
    one of the same rule: pagers holding it get its ``resolved`` event, or it
    would stay firing on their screens for ever. Runs inside the merge
    message's unit of work (`pipeline.process`), which holds both patients'
    locks."""
    record = tx.alert_record(alert_id)
    if record is None:
        return
    alert = replace(record.alert, state=AlertState.RESOLVED, version=record.alert.version + 1)
    body = carried_payload(record.payload, alert, AlertEvent.RESOLVED)
    body["patient"] = {**body.get("patient", {}), "id": alert.patient.id, "id_type": alert.patient.id_type,
                       "authority": alert.patient.authority}
    body["summary"] = "Patient records merged (ADT^A40): continued in the surviving record's open alert"
    body["reason"] = "patient records merged: continued in the surviving record's alert"
    enqueue_carried(tx, alert, AlertEvent.RESOLVED, body, settings=settings, at=at)
