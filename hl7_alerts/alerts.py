"""Alerts: identity, lifecycle and the JSON payload pagers receive.

An alert is identified by its fingerprint, a blake2b hash over the sorted
(patient, rule, episode) labels: stable across processes and daemons, never
Python's ``hash()``. `reconcile` is the pure decision of what a set of new
findings and panel verdicts does to the open alerts (open one, update,
escalate, resolve, withdraw); `payload` renders one alert event in the
CLINICAL.md contract. No I/O here.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from hl7_alerts.model import Header, PatientDemographics, PatientKey, ResultStatus, Severity
from hl7_alerts.rules.common import Evidence, Finding
from hl7_alerts.rules.engine import PanelVerdict
from hl7_alerts.rules.ids import HEPATOTOXICITY_STOP, HYS_LAW, PGX_MISSING
from hl7_alerts.strictjson import finite
from hl7_alerts.timeutil import to_iso

SCHEMA = "hl7-alerts/alert@1"


class AlertEvent(enum.StrEnum):
    FIRING = "firing"
    UPDATED = "updated"
    ESCALATED = "escalated"
    REMINDER = "reminder"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    WITHDRAWN = "withdrawn"


class AlertState(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    WITHDRAWN = "withdrawn"


def fingerprint(labels: Mapping[str, str]) -> str:
    """blake2b over sorted label pairs (Alertmanager's scheme, stable hash)."""
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(labels):
        h.update(key.encode())
        h.update(b"\x00")
        h.update(labels[key].encode())
        h.update(b"\x00")
    return h.hexdigest()


def alert_id_for(patient: PatientKey, rule: str, episode: int) -> str:
    """The alert's id is its fingerprint: (patient, rule, episode)."""
    return fingerprint({"patient": patient.key, "rule": rule, "episode": str(episode)})


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """The message an alert event came from (for the payload's ``source``)."""

    control_id: str
    sending_application: str
    sending_facility: str

    @classmethod
    def of(cls, header: Header) -> Source:
        return cls(
            control_id=header.control_id,
            sending_application=header.sending_application,
            sending_facility=header.sending_facility,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One alert episode and its latest content."""

    alert_id: str
    patient: PatientKey
    rule: str
    episode: int
    state: AlertState
    severity: Severity
    version: int
    opened_at: datetime
    evidence_at: datetime
    rests_on: tuple[str, ...] = ()
    """Analytes the latest finding rested on (what a resolving panel must carry)."""
    evidence_key: str = ""
    """`evidence_key` of the latest finding: an identical finding changes nothing."""
    title: str = field(default="", compare=False)


def evidence_key(finding: Finding) -> str:
    """What an update must change to be news (decision 19: only what the page
    shows): the severity aside, the values and ×ULN the finding rests on, and
    whether one of them is a correction (OBX-11 C). Not the observation time,
    the specimen or P → F: a repeat panel with the same values, or a final
    result that confirms its preliminary, is stored silently. A finding that
    rests on no result (an order rule, a timer) is keyed by its title."""
    h = hashlib.blake2b(digest_size=16)
    parts = []
    for e in finding.evidence:
        o = e.observation
        if finding.rests_on and o.analyte not in finding.rests_on:
            continue
        corrected = "C" if o.status is ResultStatus.CORRECTED else ""
        parts.append(f"{o.analyte}|{o.value_text.strip()}|{o.value}|{o.comparator}|{o.unit}|{e.x_uln}|{corrected}")
    if not finding.evidence:
        parts.append(f"{finding.title}|{','.join(finding.rests_on)}")
    for part in sorted(parts):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertChange:
    """An alert's new state, the event that announces it, and the finding and
    message behind it. A ``silent`` change is stored without an event: the
    alert's newest evidence moved on but nothing on the page changed
    (decision 19), so no one is paged and the version stays."""

    alert: Alert
    event: AlertEvent
    finding: Finding
    source: Source
    silent: bool = False


SUPERSEDES = {HEPATOTOXICITY_STOP: HYS_LAW}
"""An open alert of the key rule closes when the value's rule fires, and
yields to it while that one is open (decision 19: reminders go on for
hys_law alone)."""


def reconcile(
    findings: Sequence[Finding],
    open_alerts: Mapping[str, Alert],
    *,
    patient: PatientKey,
    source: Source,
    next_episode: Mapping[str, int],
    verdicts: Sequence[PanelVerdict] = (),
    corrected: Mapping[datetime, Collection[str]] | None = None,
    resolved_at: Mapping[str, datetime] | None = None,
) -> list[AlertChange]:
    """What new findings and panel verdicts do to a patient's alerts.

    ``open_alerts`` maps rule id to the open alert of that rule;
    ``next_episode`` maps rule id to the episode number a new alert would
    take. A finding for an open alert updates it (escalates when severity
    rises) only when what the page shows differs from the alert's (decision
    19: values, ×ULN, a correction, severity); otherwise, when it is newer,
    the alert takes it silently (`AlertChange.silent`). A finding older than
    the alert's newest evidence is history and changes nothing; otherwise a
    new alert fires. When hys_law fires while hepatotoxicity.stop is open,
    the stop alert closes as resolved, superseded; a stop finding while
    hys_law stays open is folded into it (decisions 1 and 19).

    ``verdicts`` says which rules held on each new panel: a panel observed
    after the alert's newest evidence, carrying every analyte the alert rests
    on, on which its rule no longer holds, resolves it (decision 3).
    ``corrected`` maps the observation time of each panel this message
    corrected or cancelled (OBX-11 C/X/D) to the analytes it touched: an
    alert resting on such a value whose rule no longer holds on that panel
    is withdrawn (decision 4). A closed alert's next finding opens a new
    episode with a new alert_id (decision 2), unless it is older than the
    panel that resolved the last episode (``resolved_at``, per rule): a late
    result is history.
    """
    changes: list[AlertChange] = []
    current = dict(open_alerts)
    episodes = dict(next_episode)
    resolving = {rule for rule, alert in current.items() for v in verdicts if _resolves(v, rule, alert)}
    for finding in findings:
        superseding = SUPERSEDES.get(finding.rule)
        if superseding in current and superseding not in resolving:
            continue  # hepatotoxicity.stop folded into the open Hy's law alert
        existing = current.get(finding.rule)
        key = evidence_key(finding)
        silent = False
        if existing is None:
            closed_by = (resolved_at or {}).get(finding.rule)
            if closed_by is not None and finding.occurred_at < closed_by:
                continue
            episode = episodes.get(finding.rule, 1)
            episodes[finding.rule] = episode + 1
            alert = Alert(
                alert_id=alert_id_for(patient, finding.rule, episode),
                patient=patient,
                rule=finding.rule,
                episode=episode,
                state=AlertState.OPEN,
                severity=finding.severity,
                version=1,
                opened_at=finding.occurred_at,
                evidence_at=finding.occurred_at,
                rests_on=finding.rests_on,
                evidence_key=key,
                title=finding.title,
            )
            event = AlertEvent.FIRING
        elif finding.occurred_at < existing.evidence_at:
            continue  # history
        else:
            escalates = finding.severity.rank > existing.severity.rank
            news = escalates or key != existing.evidence_key
            if not news and finding.occurred_at == existing.evidence_at and finding.title == existing.title:
                continue  # the same finding again: nothing to store either
            silent = not news
            alert = replace(
                existing,
                severity=max(finding.severity, existing.severity, key=lambda s: s.rank),
                version=existing.version + (0 if silent else 1),
                evidence_at=max(finding.occurred_at, existing.evidence_at),
                rests_on=finding.rests_on or existing.rests_on,
                evidence_key=key,
                title=finding.title,
            )
            event = AlertEvent.ESCALATED if escalates else AlertEvent.UPDATED
        current[finding.rule] = alert
        changes.append(AlertChange(alert=alert, event=event, finding=finding, source=source, silent=silent))
    for superseded, by in SUPERSEDES.items():
        fired = [f.occurred_at for f in findings if f.rule == by]
        if fired and by in current and superseded in current:
            changes.append(supersede(current.pop(superseded), by, max(fired), source))
    raised = {c.finding.rule for c in changes if c.finding.occurred_at in (corrected or {})}
    for at, analytes in (corrected or {}).items():
        verdict = next((v for v in verdicts if v.observed_at == at), None)
        for rule, alert in list(current.items()):
            if alert.evidence_at != at or not set(alert.rests_on) & set(analytes) or rule in raised:
                continue
            if verdict is not None and rule in verdict.held:
                continue
            closed = _close(alert, AlertState.WITHDRAWN, at, verdict, source)
            del current[rule]
            changes.append(closed)
    for verdict in sorted(verdicts, key=lambda v: v.observed_at):
        for rule, alert in list(current.items()):
            if not _resolves(verdict, rule, alert):
                continue
            changes.append(_close(alert, AlertState.RESOLVED, verdict.observed_at, verdict, source))
            del current[rule]
    return changes


def _resolves(verdict: PanelVerdict, rule: str, alert: Alert) -> bool:
    """Decision 3: a panel newer than the alert's newest evidence, carrying
    every analyte it rests on, on which its rule no longer holds."""
    return (
        bool(alert.rests_on)
        and verdict.observed_at > alert.evidence_at
        and set(alert.rests_on) <= verdict.analytes
        and rule not in verdict.held
    )


_WHY = {
    AlertState.WITHDRAWN: "the result it rested on was corrected or cancelled",
    AlertState.RESOLVED: "a later panel no longer meets the rule: its values are below the thresholds",
}


def _close(
    alert: Alert,
    state: AlertState,
    at: datetime,
    verdict: PanelVerdict | None,
    source: Source,
    *,
    reason: str | None = None,
) -> AlertChange:
    """The alert closed (resolved or withdrawn) by the panel observed at ``at``
    (or by ``reason``, when something other than a panel closes it)."""
    closed = replace(alert, state=state, version=alert.version + 1, evidence_at=max(alert.evidence_at, at))
    what = "Withdrawn" if state is AlertState.WITHDRAWN else "Resolved"
    if reason is None:
        reason = _WHY[state]
        if alert.rule == PGX_MISSING and state is AlertState.RESOLVED:
            reason = "TPMT and NUDT15 results arrived"
    title = f"{what}: {alert.title}" if alert.title else f"{what}: {alert.rule}"
    finding = Finding(
        rule=alert.rule,
        severity=alert.severity,
        title=title,
        summary=f"{what}: {reason}",
        evidence=verdict.evidence if verdict is not None else (),
        order=None,
        recommendations=(),
        references=(),
        occurred_at=at,
        reason=reason,
    )
    event = AlertEvent.WITHDRAWN if state is AlertState.WITHDRAWN else AlertEvent.RESOLVED
    return AlertChange(alert=closed, event=event, finding=finding, source=source)


def resolve(alert: Alert, at: datetime, source: Source, *, reason: str | None = None) -> AlertChange:
    """The alert resolved at ``at`` by something other than a panel verdict
    (a time-driven alert whose condition no longer holds), saying why."""
    return _close(alert, AlertState.RESOLVED, at, None, source, reason=reason)


def supersede(alert: Alert, by: str, at: datetime, source: Source) -> AlertChange:
    """The alert closed as resolved because ``by`` (an open alert of another
    rule) now speaks for it (decision 19)."""
    return _close(alert, AlertState.RESOLVED, at, None, source, reason=f"superseded by {by}")


# ---------------------------------------------------------------------------
# Payload


@dataclass(frozen=True, slots=True, kw_only=True)
class PhiPolicy:
    """Which patient fields beyond the identifier go into payloads."""

    include_name: bool = False
    include_birth_date: bool = False


def topic(prefix: str, alert: Alert) -> str:
    """``<prefix>/alerts/<severity>/<rule id>``: no patient data in topics."""
    return f"{prefix}/alerts/{alert.severity}/{alert.rule}"


def payload(
    change: AlertChange,
    *,
    demographics: PatientDemographics | None = None,
    phi: PhiPolicy | None = None,
) -> dict[str, Any]:
    """The alert event as the CLINICAL.md contract's JSON object.

    ``published_at`` is left to the publisher, which knows when it sends.
    """
    alert, finding, source = change.alert, change.finding, change.source
    phi = phi or PhiPolicy()
    patient: dict[str, Any] = {
        "id": alert.patient.id,
        "id_type": alert.patient.id_type,
        "authority": alert.patient.authority,
    }
    if demographics is not None and phi.include_name and demographics.name:
        patient["name"] = demographics.name
    if demographics is not None and phi.include_birth_date and demographics.birth_date:
        patient["birth_date"] = demographics.birth_date
    order = finding.order
    medication = None
    if order is not None:
        medication = {
            "drug": order.ingredient or order.drug_text,
            "dose": order.dose,
            "status": str(order.status_at(finding.occurred_at)),
            "start": to_iso(order.start),
            "stop": to_iso(order.stop),
            "order_id": order.order_id,
        }
    pattern = None
    if finding.pattern is not None:
        pattern = {"r_ratio": finite(finding.pattern.r_ratio), "type": finding.pattern.type}
    body: dict[str, Any] = {
        "schema": SCHEMA,
        "alert_id": alert.alert_id,
        "version": alert.version,
        "event": str(change.event),
        "rule": alert.rule,
        "severity": str(alert.severity),
        "title": finding.title,
        "summary": finding.summary,
        "patient": patient,
        "facility": source.sending_facility or alert.patient.authority,
        "medication": medication,
        "observations": [_observation(e) for e in finding.evidence],
        "pattern": pattern,
        "recommendations": list(finding.recommendations),
        "references": list(finding.references),
        "source": {
            "control_id": source.control_id,
            "sending_application": source.sending_application,
            "sending_facility": source.sending_facility,
        },
        "occurred_at": to_iso(finding.occurred_at),
    }
    if change.event in CLOSING_EVENTS:
        body["reason"] = finding.reason or ""
    return body


CLOSING_EVENTS = frozenset({AlertEvent.RESOLVED, AlertEvent.WITHDRAWN})


def _observation(e: Evidence) -> dict[str, Any]:
    # Strict JSON (`strictjson`): a number that is not finite is not a
    # number. The value goes out as the text the lab sent, the ratios as null.
    obs = e.observation
    value: float | int | str | None = finite(obs.value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None:
        value = obs.value_text
    return {
        "analyte": obs.analyte,
        "code": obs.code,
        "value": value,
        "comparator": obs.comparator or None,
        "unit": obs.unit,
        "ref_low": finite(e.ref_low),
        "ref_high": finite(e.ref_high),
        "x_uln": finite(e.x_uln),
        "flag": obs.flag,
        "status": str(obs.status),
        "observed_at": to_iso(obs.observed_at),
    }


# ---------------------------------------------------------------------------
# Events without a new finding: acknowledgements and reminders
#
# They carry the alert's last content (the stored payload) forward with a new
# event, version and stamp, so a pager sees the same alert it already has. The
# clock is a parameter; nothing here reads one.


@dataclass(frozen=True, slots=True, kw_only=True)
class Tracking:
    """What the lifecycle needs beyond `Alert`: who acknowledged and when, the
    last time the alert paged someone, and how many reminders went out."""

    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    notified_at: datetime | None = None
    reminders_sent: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReminderPolicy:
    """``alerts.reminder_*`` in config: which alerts are re-sent, after how
    long without an acknowledgement, and how many times at most."""

    after_seconds: float = 900.0
    max_reminders: int = 3
    severities: frozenset[Severity] = frozenset({Severity.CRITICAL, Severity.HIGH})


@dataclass(frozen=True, slots=True, kw_only=True)
class AckRequest:
    """A pager's acknowledgement as published on ``<prefix>/acks``."""

    alert_id: str
    by: str
    at: datetime


class InvalidAck(ValueError):
    """An acknowledgement that cannot be read; the reason names the field."""


# Pagers are outside our control: bound what we keep from them.
_MAX_ACK_BYTES = 4096
_MAX_BY_CHARS = 200


def parse_ack(data: bytes) -> AckRequest:
    """Read ``{"alert_id", "by", "at"}``; `InvalidAck` says what is wrong.

    ``at`` is ISO 8601 and must carry an offset (a pager's local clock without
    one cannot be placed in time).
    """
    if len(data) > _MAX_ACK_BYTES:
        raise InvalidAck(f"larger than {_MAX_ACK_BYTES} bytes")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidAck("not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise InvalidAck("not a JSON object")
    alert_id, by, at = body.get("alert_id"), body.get("by"), body.get("at")
    if not isinstance(alert_id, str) or not alert_id:
        raise InvalidAck("alert_id must be a non-empty string")
    if not isinstance(by, str) or not by.strip() or len(by) > _MAX_BY_CHARS:
        raise InvalidAck(f"by must be a non-empty string of at most {_MAX_BY_CHARS} characters")
    if not isinstance(at, str):
        raise InvalidAck("at must be an ISO 8601 timestamp string")
    try:
        when = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidAck("at must be an ISO 8601 timestamp") from None
    if when.tzinfo is None:
        raise InvalidAck("at must carry a UTC offset")
    return AckRequest(alert_id=alert_id, by=by.strip(), at=when)


class AckOutcome(enum.StrEnum):
    """What a pager's acknowledgement did."""

    ACKNOWLEDGED = "acknowledged"
    ALREADY = "already_acknowledged"
    CLOSED = "alert_closed"
    UNKNOWN_ALERT = "unknown_alert"  # no alert has that id (the store's answer, never `acknowledge`'s)


def acknowledge(alert: Alert, tracking: Tracking, request: AckRequest) -> tuple[Alert | None, AckOutcome]:
    """The alert after an acknowledgement, or None when it changes nothing.

    Recorded once: a second ack for an acknowledged alert, or an ack for a
    resolved or withdrawn one, is a no-op (pagers retry; QoS 1 repeats).
    """
    if alert.state is not AlertState.OPEN:
        return None, AckOutcome.CLOSED
    if tracking.acknowledged_at is not None:
        return None, AckOutcome.ALREADY
    return replace(alert, version=alert.version + 1), AckOutcome.ACKNOWLEDGED


def reminder_due(alert: Alert, tracking: Tracking, policy: ReminderPolicy) -> datetime | None:
    """When this alert's next reminder is due, or None if it never will be.

    Only open, unacknowledged alerts of a configured severity that have paged
    someone, and fewer than ``max_reminders`` times reminded.
    """
    if (
        alert.state is not AlertState.OPEN
        or tracking.acknowledged_at is not None
        or alert.severity not in policy.severities
        or tracking.reminders_sent >= policy.max_reminders
        or tracking.notified_at is None
    ):
        return None
    return tracking.notified_at + timedelta(seconds=policy.after_seconds)


def remind(alert: Alert, tracking: Tracking, policy: ReminderPolicy, *, now: datetime) -> Alert | None:
    """The alert after a reminder, if one is due at ``now``; else None.

    A reminder re-sends at the same severity (CLINICAL.md decision 5)."""
    due = reminder_due(alert, tracking, policy)
    if due is None or now < due:
        return None
    return replace(alert, version=alert.version + 1)


def carried_payload(
    last: Mapping[str, Any],
    alert: Alert,
    event: AlertEvent,
    *,
    acknowledged: AckRequest | None = None,
    reminder: int | None = None,
    reminder_max: int | None = None,
) -> dict[str, Any]:
    """A new event's payload from the alert's last one: same content, new
    ``event``, ``version`` and ``severity``; ``acknowledged`` or ``reminder``
    blocks when they apply. ``published_at`` is the publisher's."""
    body = {k: v for k, v in last.items() if k not in ("published_at", "acknowledged", "reminder", "reason")}
    body["event"] = str(event)
    body["version"] = alert.version
    body["severity"] = str(alert.severity)
    if acknowledged is not None:
        body["acknowledged"] = {"by": acknowledged.by, "at": to_iso(acknowledged.at)}
    if reminder is not None:
        body["reminder"] = {"number": reminder, "max": reminder_max}
    return body
