"""Row mapping: database rows to the store's values, and values to rows.

Each ``*_COLUMNS`` text is the column list a ``*_from_row`` function reads,
in its order, so a query and its mapper cannot drift apart; the queries
(`queries.py`) select with them and never index a row themselves. Times are
stored as ISO 8601 text (what people read) and, where queries compare them,
as epoch seconds beside it (``*_ts``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any

from hl7_alerts.alerts import Alert, AlertEvent, AlertState, Tracking
from hl7_alerts.model import HoldPeriod, Observation, OrderState, PatientKey, ResultStatus, Severity
from hl7_alerts.rules.monitoring import ScheduleState
from hl7_alerts.store.base import (
    AccessRow,
    AlertRecord,
    AuditRow,
    CodeCount,
    EventRow,
    OutboxRow,
    PatientAlert,
    RejectedMessage,
    ScheduleRow,
    WebSession,
)
from hl7_alerts.strictjson import loads
from hl7_alerts.timeutil import from_iso, to_iso


def epoch(value: datetime) -> float:
    """A time as the epoch seconds the ``*_ts`` columns hold."""
    return value.timestamp()


def _when(text: str) -> datetime:
    value = from_iso(text)
    assert value is not None
    return value


SCHEDULE_COLUMNS = (
    "patient_id, patient_id_type, patient_authority, order_id, start, last_panel, due, fires_at, "
    "fired_due, state, first_seen"
)


def schedule_from_row(r: Sequence[Any]) -> ScheduleRow:
    return ScheduleRow(
        patient=PatientKey(id=r[0], id_type=r[1], authority=r[2]),
        order_id=r[3],
        start=_when(r[4]),
        last_panel=from_iso(r[5]),
        due=_when(r[6]),
        fires_at=_when(r[7]),
        fired_due=from_iso(r[8]),
        state=ScheduleState(r[9]),
        first_seen=from_iso(r[10]),
    )


ORDER_COLUMNS = "order_id, ingredient, drug_text, dose, start, stop, holds, dispensed"


def order_from_row(row: Sequence[Any]) -> OrderState:
    holds = tuple(
        HoldPeriod(start=start, end=from_iso(end))
        for s, end in json.loads(row[6])
        if (start := from_iso(s)) is not None
    )
    return OrderState(
        order_id=row[0],
        ingredient=row[1],
        drug_text=row[2],
        dose=row[3],
        start=from_iso(row[4]),
        stop=from_iso(row[5]),
        holds=holds,
        dispensed=from_iso(row[7]),
    )


def holds_text(order: OrderState) -> str:
    """An order's hold periods as the ``holds`` column stores them."""
    return json.dumps([[to_iso(h.start), to_iso(h.end)] for h in order.holds])


OBSERVATION_COLUMNS = (
    "analyte, code, code_system, text, value_type, value_text, value, comparator, unit, "
    "ref_low, ref_high, ref_text, flag, status, observed_at, specimen_id, set_id"
)


def observation_from_row(r: Sequence[Any]) -> Observation:
    return Observation(
        analyte=r[0],
        code=r[1],
        code_system=r[2],
        text=r[3],
        value_type=r[4],
        value_text=r[5],
        value=r[6],
        comparator=r[7],
        unit=r[8],
        ref_low=r[9],
        ref_high=r[10],
        ref_text=r[11],
        flag=r[12],
        status=ResultStatus(r[13]),
        observed_at=_when(r[14]),
        specimen_id=r[15],
        set_id=r[16],
    )


# The columns a new observation row fills, and each one's PostgreSQL type
# (its panel insert sends one array per column).
OBSERVATION_TYPES = (
    ("message_id", "bigint"), ("patient", "text"), ("analyte", "text"), ("code", "text"),
    ("code_system", "text"), ("text", "text"), ("value_type", "text"), ("value_text", "text"),
    ("value", "float8"), ("comparator", "text"), ("unit", "text"), ("ref_low", "float8"),
    ("ref_high", "float8"), ("ref_text", "text"), ("flag", "text"), ("status", "text"),
    ("observed_at", "text"), ("observed_ts", "float8"), ("specimen_id", "text"), ("set_id", "text"),
)
OBSERVATION_INSERT = ", ".join(name for name, _ in OBSERVATION_TYPES)


def observation_rows(
    message_id: int, patient: PatientKey, observations: Sequence[Observation]
) -> list[tuple[Any, ...]]:
    """New observation rows, in `OBSERVATION_TYPES` order."""
    # A panel's results share their observation time (and always the patient):
    # each is converted once per message, not once per row (a tenth of the
    # write's CPU in bench/).
    # Keyed by the zone too: equal instants in two zones are two texts.
    key = patient.key
    times: dict[tuple[datetime, tzinfo | None], tuple[str | None, float]] = {}
    rows = []
    for o in observations:
        when = (o.observed_at, o.observed_at.tzinfo)
        at = times.get(when)
        if at is None:
            at = times[when] = (to_iso(o.observed_at), epoch(o.observed_at))
        rows.append((
            message_id, key, o.analyte, o.code, o.code_system, o.text, o.value_type, o.value_text,
            o.value, o.comparator, o.unit, o.ref_low, o.ref_high, o.ref_text, o.flag, str(o.status),
            *at, o.specimen_id, o.set_id,
        ))
    return rows


ALERT_COLUMNS = (
    "alert_id, patient_id, patient_id_type, patient_authority, rule, episode, state, severity, version, "
    "opened_at, evidence_at, rests_on, evidence_key, payload"
)
RECORD_COLUMNS = f"acknowledged_by, acknowledged_at, notified_at, reminders_sent, payload, {ALERT_COLUMNS}"


def alert_from_row(r: Sequence[Any]) -> Alert:
    return Alert(
        alert_id=r[0],
        patient=PatientKey(id=r[1], id_type=r[2], authority=r[3]),
        rule=r[4],
        episode=r[5],
        state=AlertState(r[6]),
        severity=Severity(r[7]),
        version=r[8],
        opened_at=_when(r[9]),
        evidence_at=_when(r[10]),
        rests_on=tuple(a for a in r[11].split(",") if a),
        evidence_key=r[12],
        title=str(loads(r[13]).get("title", "")),
    )


def record_from_row(r: Sequence[Any]) -> AlertRecord:
    return AlertRecord(
        alert=alert_from_row(r[5:]),
        tracking=Tracking(
            acknowledged_by=r[0],
            acknowledged_at=from_iso(r[1]),
            notified_at=from_iso(r[2]),
            reminders_sent=r[3],
        ),
        # Read leniently: a payload stored before payloads were strict JSON
        # may hold Infinity; it is carried forward (acks, reminders) as null.
        payload=loads(r[4]),
    )


OUTBOX_COLUMNS = "id, alert_id, version, event, topic, payload, created_at"


def outbox_from_row(r: Sequence[Any]) -> OutboxRow:
    return OutboxRow(
        id=r[0], alert_id=r[1], version=r[2], event=AlertEvent(r[3]), topic=r[4], payload=r[5],
        created_at=r[6],
    )


AUDIT_COLUMNS = "id, at, kind, alert_id, version, event, outbox_id, detail"


def audit_from_row(r: Sequence[Any]) -> AuditRow:
    return AuditRow(
        id=r[0], at=r[1], kind=r[2], alert_id=r[3], version=r[4], event=r[5], outbox_id=r[6], detail=r[7]
    )


# -- the web view's rows ---------------------------------------------------------

EVENT_COLUMNS = "o.id, o.version, o.event, o.created_at, o.delivered_at, o.payload"


def event_from_row(r: Sequence[Any]) -> EventRow:
    return EventRow(
        outbox_id=r[0], version=r[1], event=AlertEvent(r[2]), created_at=r[3], delivered_at=r[4],
        payload=json.loads(r[5]),
    )


PATIENT_ALERT_COLUMNS = "alert_id, rule, severity, state, opened_at"


def patient_alert_from_row(r: Sequence[Any]) -> PatientAlert:
    return PatientAlert(alert_id=r[0], rule=r[1], severity=r[2], state=r[3], opened_at=_when(r[4]))


ACCESS_COLUMNS = "id, at, username, via, peer, action, alert_id, patient, detail"


def access_from_row(r: Sequence[Any]) -> AccessRow:
    return AccessRow(
        id=r[0], at=r[1], username=r[2], via=r[3], peer=r[4], action=r[5], alert_id=r[6], patient=r[7],
        detail=r[8],
    )


SESSION_COLUMNS = "token_hash, username, via, csrf, created_ts, seen_ts"


def session_from_row(r: Sequence[Any]) -> WebSession:
    return WebSession(token_hash=r[0], username=r[1], via=r[2], csrf=r[3], created_ts=r[4], seen_ts=r[5])


# -- the admin commands' rows -------------------------------------------------

REJECTED_COLUMNS = (
    "id, sending_application, sending_facility, control_id, received_at, ack_code, reason, length(raw), "
    "resent_at, resend_ack, resend_text"
)


def rejected_from_row(r: Sequence[Any], raw: bytes | None = None) -> RejectedMessage:
    return RejectedMessage(
        id=r[0], sending_application=r[1], sending_facility=r[2], control_id=r[3], received_at=r[4],
        ack_code=r[5], reason=r[6], size=r[7], resent_at=r[8], resend_ack=r[9], resend_text=r[10],
        raw=None if raw is None else bytes(raw),
    )


CODE_COUNT_COLUMNS = "code, code_system, max(text), count(*), analyte"


def code_count_from_row(r: Sequence[Any]) -> CodeCount:
    return CodeCount(code=r[0], system=r[1], text=r[2] or "", results=r[3], analyte=r[4])
