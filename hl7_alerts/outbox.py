"""Alert events into the outbox, inside the caller's unit of work.

Owns how an alert event becomes a row for the publisher: `outbox_item` is
the one builder of an `OutboxItem` (topic, compact JSON payload, the
patient whose lock orders it), and `enqueue_change` / `enqueue_carried` save
an alert's new state together with its row, in the transaction they are
given, so an alert never changes without its event being queued. Every unit
of work uses it: one message (`pipeline`), acks, reminders and merges
(`lifecycle`), overdue monitoring (`overdue`). No SQL, no asyncio, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

from hl7_alerts.alerts import Alert, AlertChange, AlertEvent, payload, topic
from hl7_alerts.model import PatientDemographics
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import OutboxItem, Transaction


def outbox_item(
    alert: Alert, event: AlertEvent, body: Mapping[str, object], *, topic_prefix: str
) -> OutboxItem:
    """The outbox row announcing ``event`` for ``alert`` with payload ``body``."""
    return OutboxItem(
        alert_id=alert.alert_id,
        version=alert.version,
        event=event,
        topic=topic(topic_prefix, alert),
        payload=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        patient=alert.patient.key,
    )


def enqueue_change(
    tx: Transaction,
    change: AlertChange,
    demographics: PatientDemographics | None,
    *,
    settings: PipelineSettings,
    at: datetime,
) -> None:
    """Persist an alert's new state (a finding's, rendered fresh) and its
    outbox row; a silent change (nothing on the page changed) is stored
    without a row: no one is paged, and the next reminder carries it."""
    body = payload(change, demographics=demographics, phi=settings.phi)
    if change.silent:
        # Same version: the stored payload keeps the event that version announced.
        prior = tx.alert_record(change.alert.alert_id)
        if prior is not None:
            body["event"] = prior.payload.get("event", body["event"])
        tx.save_alert(change.alert, body)
        return
    tx.save_alert(change.alert, body)
    tx.enqueue(outbox_item(change.alert, change.event, body, topic_prefix=settings.topic_prefix), at)


def enqueue_carried(
    tx: Transaction,
    alert: Alert,
    event: AlertEvent,
    body: dict[str, object],
    *,
    settings: PipelineSettings,
    at: datetime,
) -> None:
    """Persist an alert's new state and its outbox row for an event without a
    new finding (ack, reminder, merge), whose payload carries the last one
    forward (`alerts.carried_payload`)."""
    tx.save_alert(alert, body)
    tx.enqueue(outbox_item(alert, event, body, topic_prefix=settings.topic_prefix), at)
