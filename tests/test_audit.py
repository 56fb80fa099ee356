"""The store's side of the alert lifecycle (migration 2): the append-only
audit trail, the reminder clock, and upgrading a first-schema store."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hl7_alerts.alerts import AckOutcome, AckRequest, AlertEvent, ReminderPolicy
from hl7_alerts.lifecycle import acknowledge_alert, next_reminder
from hl7_alerts.messages import ParseOptions, parse_message
from hl7_alerts.model import Severity
from hl7_alerts.pipeline import process
from hl7_alerts.rules.ids import HEPATOTOXICITY_STOP, PGX_MISSING
from hl7_alerts.segments import split_file
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import MIGRATIONS, Dialect, OutboxItem, SqliteStore, Transaction
from hl7_alerts.terminology import Terminology
from tests.support.samples import SAMPLES

OPTIONS = ParseOptions(terminology=Terminology(), timezone=UTC)
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def messages(name: str) -> list[bytes]:
    return split_file((SAMPLES / name).read_bytes())


async def _fired(tmp_path: Path) -> tuple[SqliteStore, str]:
    store = await SqliteStore.open(tmp_path / "s.db")
    settings = PipelineSettings()
    for raw in messages("01_seed_order_azathioprine.hl7") + messages("02_seed_liver_panel_above_3xuln.hl7"):
        await store.transact(lambda tx, raw=raw: process(tx, parse_message(raw, OPTIONS), raw, received_at=NOW,
                                                         settings=settings))
    # The order (no TPMT/NUDT15 on file) raises aza.pgx.missing, then the panel the critical alert.
    pgx, critical = await store.pending_outbox(10)
    assert (pgx.topic.rsplit("/", 1)[1], critical.topic.rsplit("/", 1)[1]) == (PGX_MISSING, HEPATOTOXICITY_STOP)
    return store, critical.alert_id


async def test_audit_is_append_only(tmp_path: Path) -> None:
    store, critical = await _fired(tmp_path)
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT kind, event, alert_id = ? FROM audit ORDER BY id", (critical,)).fetchall() == [
            ("event", "firing", 0), ("event", "firing", 1)]
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE audit SET detail = 'x'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM audit")


async def test_an_escalation_needs_a_fresh_acknowledgement(tmp_path: Path) -> None:
    store, alert_id = await _fired(tmp_path)
    settings, policy = PipelineSettings(), ReminderPolicy(after_seconds=600)
    request = AckRequest(alert_id=alert_id, by="dr.a", at=NOW)
    assert await store.transact(lambda tx: acknowledge_alert(tx, request, settings=settings, at=NOW)) == "acknowledged"
    assert await store.transact(lambda tx: next_reminder(tx, policy=policy)) is None

    def escalate(tx: Transaction) -> None:
        record = tx.alert_record(alert_id)
        assert record is not None
        tx.save_alert(record.alert, record.payload)
        tx.enqueue(OutboxItem(alert_id=alert_id, version=3, event=str(AlertEvent.ESCALATED), topic="t",
                              payload="{}", patient=record.alert.patient.key), NOW)

    await store.transact(escalate)
    record = await store.transact(lambda tx: tx.alert_record(alert_id))
    assert record is not None
    assert (record.tracking.acknowledged_by, record.tracking.reminders_sent) == (None, 0)
    assert record.alert.severity is Severity.CRITICAL
    due = await store.transact(lambda tx: next_reminder(tx, policy=policy))
    assert due is not None
    assert (due - NOW).total_seconds() == 600
    await store.close()


async def test_acknowledge_alert_answers_with_an_ack_outcome_member(tmp_path: Path) -> None:
    store, alert_id = await _fired(tmp_path)
    settings = PipelineSettings()

    async def ack(alert_id: str) -> AckOutcome:
        request = AckRequest(alert_id=alert_id, by="dr.a", at=NOW)
        return await store.transact(lambda tx: acknowledge_alert(tx, request, settings=settings, at=NOW))

    assert await ack("no-such-alert") is AckOutcome.UNKNOWN_ALERT
    assert await ack(alert_id) is AckOutcome.ACKNOWLEDGED
    assert await ack(alert_id) is AckOutcome.ALREADY
    await store.close()


async def test_a_first_schema_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0].render(Dialect.SQLITE))
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
    store = await SqliteStore.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT max(version) FROM schema_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("SELECT count(*) FROM audit").fetchone() == (0,)


async def test_an_alert_record_reads_the_alert_as_open_alerts_does(tmp_path: Path) -> None:
    store, alert_id = await _fired(tmp_path)

    def both(tx: Transaction) -> tuple[object, object]:
        record = tx.alert_record(alert_id)
        assert record is not None
        return record.alert, tx.open_alerts(record.alert.patient)[record.alert.rule]

    via_record, via_open = await store.transact(both)
    await store.close()
    assert via_record == via_open
