"""The alert lifecycle as pure functions, clock injected: acknowledgements,
reminders, the payloads they carry, and the version that every event raises.
Tables with an id per row."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hl7_alerts.alerts import (
    AckOutcome,
    AckRequest,
    Alert,
    AlertEvent,
    AlertState,
    InvalidAck,
    PhiPolicy,
    ReminderPolicy,
    Source,
    Tracking,
    acknowledge,
    carried_payload,
    parse_ack,
    payload,
    reconcile,
    remind,
    reminder_due,
    resolve,
    supersede,
)
from hl7_alerts.model import PatientDemographics, Severity
from hl7_alerts.rules.common import Evidence, Finding
from hl7_alerts.rules.ids import ALL_RULES
from hl7_alerts.terminology import Analyte
from tests.support.mqtt import ALERT_SCHEMA, assert_valid_alert
from tests.support.rulekit import PATIENT, T0, obs

SOURCE = Source(control_id="LAB1", sending_application="LAB", sending_facility="GENHOSP")
POLICY = ReminderPolicy(after_seconds=900, max_reminders=2)
NOW = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)


def finding(severity: Severity, at: datetime = T0, rule: str = "aza.liver.mild") -> Finding:
    """A finding resting on one ALT result taken at ``at``, one U/L higher for
    each day after T0 (so findings at different times carry different values,
    as real panels do: the same values again would be stored silently,
    CLINICAL.md decision 19)."""
    value = 80 + (at - T0).days
    alt = Evidence(observation=obs(Analyte.ALT, value, ref="7-56", at=at), ref_low=7, ref_high=56,
                   x_uln=round(value / 56, 2))
    return Finding(
        rule=rule, severity=severity, title="t", summary="s", evidence=(alt,), order=None,
        recommendations=("recheck",), references=(), occurred_at=at,
    )


def alert(**changes: Any) -> Alert:
    base = reconcile([finding(Severity.CRITICAL)], {}, patient=PATIENT, source=SOURCE, next_episode={})[0].alert
    return replace(base, **changes)


def published(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "published_at": "2026-11-24T20:00:00Z"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b'{"alert_id":"a1","by":"dr who","at":"2026-11-24T20:00:00Z"}',
                     AckRequest(alert_id="a1", by="dr who", at=NOW), id="utc-z"),
        pytest.param(b'{"alert_id":"a1","by":" dr who ","at":"2026-11-24T21:00:00+01:00"}',
                     AckRequest(alert_id="a1", by="dr who", at=NOW), id="offset-and-spaces"),
        pytest.param(b'{"alert_id":"a1","by":"x","at":"2026-11-24T20:00:00Z","note":"ok"}',
                     AckRequest(alert_id="a1", by="x", at=NOW), id="extra-keys-ignored"),
    ],
)
def test_parse_ack_reads_valid_acks(raw: bytes, expected: AckRequest) -> None:
    assert parse_ack(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"not json", "not UTF-8 JSON", id="not-json"),
        pytest.param(b"\xff\xfe", "not UTF-8 JSON", id="not-utf8"),
        pytest.param(b"[1]", "not a JSON object", id="array"),
        pytest.param(b'{"by":"x","at":"2026-11-24T20:00:00Z"}', "alert_id", id="no-alert-id"),
        pytest.param(b'{"alert_id":"a","by":"","at":"2026-11-24T20:00:00Z"}', "by must", id="empty-by"),
        pytest.param(b'{"alert_id":"a","by":"x","at":"2026-11-24T20:00:00"}', "offset", id="naive-at"),
        pytest.param(b'{"alert_id":"a","by":"x","at":"yesterday"}', "ISO 8601", id="bad-at"),
        pytest.param(b'{"alert_id":"a","by":"x","at":5}', "ISO 8601", id="numeric-at"),
        pytest.param(b"{" + b" " * 5000 + b"}", "larger than", id="oversize"),
    ],
)
def test_parse_ack_rejects_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidAck, match=reason):
        parse_ack(raw)


REQUEST = AckRequest(alert_id="x", by="dr who", at=NOW)


@pytest.mark.parametrize(
    ("state", "tracking", "outcome", "changes"),
    [
        pytest.param(AlertState.OPEN, Tracking(), AckOutcome.ACKNOWLEDGED, True, id="open-unacked"),
        pytest.param(AlertState.OPEN, Tracking(acknowledged_by="a", acknowledged_at=NOW), AckOutcome.ALREADY,
                     False, id="already-acked"),
        pytest.param(AlertState.RESOLVED, Tracking(), AckOutcome.CLOSED, False, id="resolved"),
        pytest.param(AlertState.WITHDRAWN, Tracking(), AckOutcome.CLOSED, False, id="withdrawn"),
    ],
)
def test_acknowledge_is_recorded_once(state: AlertState, tracking: Tracking, outcome: AckOutcome,
                                      changes: bool) -> None:
    before = alert(state=state)
    after, got = acknowledge(before, tracking, REQUEST)
    assert got is outcome
    assert (after is not None) is changes
    if after is not None:
        assert after.version == before.version + 1
        assert after.severity == before.severity


SENT = NOW - timedelta(minutes=15)


@pytest.mark.parametrize(
    ("alert_changes", "tracking", "now", "due"),
    [
        pytest.param({}, Tracking(notified_at=SENT), NOW, True, id="critical-unacked-15min"),
        pytest.param({}, Tracking(notified_at=SENT), NOW - timedelta(seconds=1), False, id="not-yet"),
        pytest.param({"severity": Severity.HIGH}, Tracking(notified_at=SENT), NOW, True, id="high"),
        pytest.param({"severity": Severity.WARNING}, Tracking(notified_at=SENT), NOW, False, id="warning-never"),
        pytest.param({"severity": Severity.INFO}, Tracking(notified_at=SENT), NOW, False, id="info-never"),
        pytest.param({}, Tracking(notified_at=SENT, acknowledged_by="a", acknowledged_at=SENT), NOW, False,
                     id="acknowledged"),
        pytest.param({}, Tracking(notified_at=SENT, reminders_sent=1), NOW, True, id="second-reminder"),
        pytest.param({}, Tracking(notified_at=SENT, reminders_sent=2), NOW, False, id="max-reached"),
        pytest.param({"state": AlertState.RESOLVED}, Tracking(notified_at=SENT), NOW, False, id="resolved"),
        pytest.param({}, Tracking(), NOW, False, id="never-paged"),
    ],
)
def test_reminder_due(alert_changes: dict[str, Any], tracking: Tracking, now: datetime, due: bool) -> None:
    before = alert(**alert_changes)
    after = remind(before, tracking, POLICY, now=now)
    assert (after is not None) is due
    if after is not None:
        assert after.version == before.version + 1
        assert after.severity == before.severity  # reminders never raise severity
        assert reminder_due(before, tracking, POLICY) == SENT + timedelta(minutes=15)


def test_versions_rise_with_every_event_through_the_lifecycle() -> None:
    """firing → updated → escalated → acknowledged → reminder: one alert_id,
    versions 1..5, each payload valid against the published schema."""
    panels = [finding(Severity.WARNING, T0), finding(Severity.WARNING, T0 + timedelta(days=7)),
              finding(Severity.HIGH, T0 + timedelta(days=14))]
    open_alerts: dict[str, Alert] = {}
    events: list[tuple[AlertEvent, Alert]] = []
    bodies: list[dict[str, Any]] = []
    for f in panels:
        (change,) = reconcile([f], open_alerts, patient=PATIENT, source=SOURCE, next_episode={})
        open_alerts[f.rule] = change.alert
        events.append((change.event, change.alert))
        bodies.append(payload(change))
    current = events[-1][1]
    acked, outcome = acknowledge(current, Tracking(notified_at=NOW), REQUEST)
    assert acked is not None
    assert outcome is AckOutcome.ACKNOWLEDGED
    events.append((AlertEvent.ACKNOWLEDGED, acked))
    bodies.append(carried_payload(bodies[-1], acked, AlertEvent.ACKNOWLEDGED, acknowledged=REQUEST))
    # A later escalation would re-arm reminders; here the store's tracking
    # says unacknowledged again (see test_delivery for the stored flow).
    reminded = remind(acked, Tracking(notified_at=SENT), POLICY, now=NOW)
    assert reminded is not None
    events.append((AlertEvent.REMINDER, reminded))
    bodies.append(carried_payload(bodies[-1], reminded, AlertEvent.REMINDER, reminder=1, reminder_max=2))

    assert [e for e, _ in events] == ["firing", "updated", "escalated", "acknowledged", "reminder"]
    assert [a.version for _, a in events] == [1, 2, 3, 4, 5]
    assert len({a.alert_id for _, a in events}) == 1
    assert [a.severity for _, a in events] == ["warning", "warning", "high", "high", "high"]
    for body in bodies:
        assert_valid_alert(published(body))
    assert bodies[3]["acknowledged"] == {"by": "dr who", "at": "2026-11-24T20:00:00+00:00"}
    assert "acknowledged" not in bodies[4]  # each event carries only its own block
    assert bodies[4]["reminder"] == {"number": 1, "max": 2}
    assert bodies[4]["title"] == bodies[2]["title"]  # the content is carried, not re-derived


def test_carried_payload_drops_the_previous_publish_stamp() -> None:
    (change,) = reconcile([finding(Severity.CRITICAL)], {}, patient=PATIENT, source=SOURCE, next_episode={})
    last = published(payload(change))
    body = carried_payload(json.loads(json.dumps(last)), replace(change.alert, version=2), AlertEvent.REMINDER,
                           reminder=1, reminder_max=3)
    assert "published_at" not in body
    assert (body["event"], body["version"]) == ("reminder", 2)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(PhiPolicy(), {"id", "id_type", "authority"}, id="default-identifier-only"),
        pytest.param(PhiPolicy(include_name=True), {"id", "id_type", "authority", "name"}, id="name"),
        pytest.param(PhiPolicy(include_birth_date=True), {"id", "id_type", "authority", "birth_date"},
                     id="birth-date"),
    ],
)
def test_phi_policy_decides_patient_fields(policy: PhiPolicy, expected: set[str]) -> None:
    (change,) = reconcile([finding(Severity.CRITICAL)], {}, patient=PATIENT, source=SOURCE, next_episode={})
    demographics = PatientDemographics(name="TESTPATIENT^ALPHA", birth_date="19700101", sex="F")
    body = payload(change, demographics=demographics, phi=policy)
    assert set(body["patient"]) == expected
    assert_valid_alert(published(body))


def test_the_schema_lists_every_rule_id_and_describes_reason() -> None:
    """Issue 19: the schema gains aza.hyperbilirubinemia and aza.result.unscored
    (the rule pattern accepted them already: alert@1 stays compatible) and an
    optional `reason` for closing events."""
    assert set(ALERT_SCHEMA["properties"]["rule"]["examples"]) == ALL_RULES
    assert {"aza.hyperbilirubinemia", "aza.result.unscored"} <= ALL_RULES
    assert ALERT_SCHEMA["properties"]["reason"] == {"description": ALERT_SCHEMA["properties"]["reason"]["description"],
                                                    "type": "string"}
    assert "reason" not in ALERT_SCHEMA["required"]


def test_closing_events_say_why_and_others_do_not() -> None:
    (fired,) = reconcile([finding(Severity.CRITICAL)], {}, patient=PATIENT, source=SOURCE, next_episode={})
    assert "reason" not in payload(fired)
    closed = resolve(fired.alert, T0 + timedelta(days=1), SOURCE, reason="a liver panel arrived")
    body = published(payload(closed))
    assert (body["event"], body["reason"]) == ("resolved", "a liver panel arrived")
    assert_valid_alert(body)
    superseded = supersede(fired.alert, "aza.hys_law", T0 + timedelta(days=1), SOURCE)
    assert payload(superseded)["reason"] == "superseded by aza.hys_law"
    carried = carried_payload(payload(closed), closed.alert, AlertEvent.REMINDER, reminder=1, reminder_max=2)
    assert "reason" not in carried
