"""Alert events into the outbox, inside the caller's unit of work.

Owns how an alert event becomes a row for the publisher: `outbox_item` is
the one builder of an `OutboxItem` (topic, compact JSON payload, the
patient whose lock orders it), and `enqueue_change` / `enqueue_carried` save
an alert's new state together with its row, in the transaction they are
given, so an alert never changes without its event being queued. Every unit
of work uses it: one message (`pipeline`), acks, reminders and merges
(`lifecycle`), overdue monitoring (`overdue`). Whether an event is
published at all is decided here too, from the settings (`quiet`). No SQL,
no asyncio, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from hl7_alerts.alerts import Alert, AlertChange, AlertEvent, payload, topic
from hl7_alerts.model import PatientDemographics
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import OutboxItem, Transaction
from hl7_alerts.strictjson import dumps


def view_url(base_url: str, alert_id: str) -> str:
    """The alert's page in the web view under ``base_url`` (web.base_url)."""
    return f"{base_url.rstrip('/')}/alerts/{alert_id}"


def outbox_item(
    alert: Alert,
    event: AlertEvent,
    body: Mapping[str, object],
    *,
    topic_prefix: str,
    quiet: str = "",
    view_base_url: str | None = None,
) -> OutboxItem:
    """The outbox row announcing ``event`` for ``alert`` with payload ``body``
    (``quiet``: the reason it is recorded but not published).

    With ``view_base_url`` (web.base_url) the payload links to the alert's
    page (``links.view``). Added here, on every event's way out and never to
    the stored payload that later events carry forward, so each event links
    to where the view is now."""
    if view_base_url is not None:
        body = {**body, "links": {"view": view_url(view_base_url, alert.alert_id)}}
    return OutboxItem(
        alert_id=alert.alert_id,
        version=alert.version,
        event=event,
        topic=topic(topic_prefix, alert),
        payload=dumps(body),
        patient=alert.patient.key,
        quiet=quiet,
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
    tx.enqueue(
        outbox_item(
            change.alert, change.event, body, topic_prefix=settings.topic_prefix, quiet=settings.quiet,
            view_base_url=settings.view_base_url,
        ),
        at,
    )


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
    tx.enqueue(
        outbox_item(
            alert, event, body, topic_prefix=settings.topic_prefix, quiet=settings.quiet,
            view_base_url=settings.view_base_url,
        ),
        at,
    )
