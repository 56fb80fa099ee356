"""Scenarios through the daemon's own pipeline (`hl7-alerts check`'s path):
result status, time, patients, orders and the alert lifecycle. Each test pins
one of CLINICAL.md's "Decisions that settle edge cases" or a point of issue 4."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hl7_alerts.alerts import ReminderPolicy, Source, reconcile
from hl7_alerts.config import Config, parse_config
from hl7_alerts.lifecycle import send_reminders
from hl7_alerts.messages import parse_message
from hl7_alerts.outbox import enqueue_change
from hl7_alerts.pipeline import process
from hl7_alerts.rules.common import RuleSettings
from hl7_alerts.rules.engine import assess
from hl7_alerts.store import SqliteStore
from hl7_alerts.terminology import Analyte
from tests.support.hl7kit import (
    ALLOPURINOL,
    ALP,
    AZA,
    BILI,
    alt,
    events,
    merge_msg,
    order_msg,
    oru,
    result,
    run_check,
)
from tests.support.rulekit import context, obs, order

STOP, MILD, MISSING = "aza.hepatotoxicity.stop", "aza.liver.mild", "aza.pgx.missing"
START = order_msg("RX1", "NW", "RX1", AZA, "20260901090000")


def tpmt(text: str) -> str:
    return f"CWE|TPMT^TPMT activity^L||^{text}^L||||||F"


def nudt15(text: str) -> str:
    return f"ST|NUDT15^NUDT15 genotype^L||{text}||||||F"


def test_resolved_then_new_episode_with_new_alert_id(tmp_path: Path) -> None:
    """Decisions 2 and 3: a later panel without the abnormality resolves; the
    next finding opens a new episode with a new alert_id."""
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190")),
                    oru("L2", "20261008080000", alt("40"), specimen="S2"),
                    oru("L3", "20261015080000", alt("200"), specimen="S3"))
    assert events(out)[1:] == [(STOP, "firing", "critical"), (STOP, "resolved", "critical"),
                               (STOP, "firing", "critical")]
    first, resolved, second = out[1:]
    assert first["alert_id"] == resolved["alert_id"] != second["alert_id"]
    assert (resolved["version"], second["version"]) == (2, 1)
    assert resolved["observations"][0]["value"] == 40


def test_late_result_never_resolves_or_updates(tmp_path: Path) -> None:
    """Decision 3: a normal result older than the alert's evidence is history."""
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190")),
                    oru("L0", "20260930080000", alt("40"), specimen="S0"),
                    oru("L00", "20260929080000", alt("300"), specimen="S00"))
    assert events(out)[1:] == [(STOP, "firing", "critical")]


def test_panel_without_the_analyte_does_not_resolve(tmp_path: Path) -> None:
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190")),
                    oru("L2", "20261008080000", result(ALP, "100", "U/L", "42-141"), specimen="S2"))
    assert events(out)[1:] == [(STOP, "firing", "critical")]


def test_correction_that_removes_the_abnormality_withdraws(tmp_path: Path) -> None:
    """Decision 4 and issue point 2: C replaces the value and re-evaluates."""
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190"), result(ALP, "100", "U/L", "42-141")),
                    oru("L1C", "20261001080000", alt("19", status="C")))
    assert events(out)[1:] == [(STOP, "firing", "critical"), (STOP, "withdrawn", "critical")]
    assert out[1]["alert_id"] == out[2]["alert_id"]
    # After withdrawal, a new abnormal panel is a new episode.
    again = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190")),
                      oru("L1C", "20261001080000", alt("19", status="C")),
                      oru("L2", "20261002080000", alt("190"), specimen="S2"))
    assert events(again)[1:] == [(STOP, "firing", "critical"), (STOP, "withdrawn", "critical"),
                                 (STOP, "firing", "critical")]
    assert again[3]["alert_id"] != again[1]["alert_id"]


def test_correction_that_keeps_the_abnormality_updates(tmp_path: Path) -> None:
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190")),
                    oru("L1C", "20261001080000", alt("250", status="C")))
    assert events(out)[1:] == [(STOP, "firing", "critical"), (STOP, "updated", "critical")]
    assert out[2]["observations"][0]["value"] == 250
    assert out[2]["observations"][0]["status"] == "C"


def test_correction_to_a_milder_value_withdraws_one_rule_and_fires_another(tmp_path: Path) -> None:
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190")),
                    oru("L1C", "20261001080000", alt("60", status="C")))
    assert sorted(events(out)[1:]) == sorted([(STOP, "firing", "critical"), (MILD, "firing", "warning"),
                                              (STOP, "withdrawn", "critical")])


def test_cancellation_withdraws(tmp_path: Path) -> None:
    """X and D cancel: an empty OBX-5 under X is accepted (decision 8)."""
    for status in ("X", "D"):
        out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190")),
                        oru("L1X", "20261001080000", alt("", status=status)))
        assert events(out)[1:] == [(STOP, "firing", "critical"), (STOP, "withdrawn", "critical")], status


def test_cancelling_one_of_two_values_keeps_the_alert(tmp_path: Path) -> None:
    ast = result("1920-8", "150", "U/L", "10-40", name="AST")
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190"), ast),
                    oru("L1X", "20261001080000", alt("", status="X")))
    assert events(out)[1:] == [(STOP, "firing", "critical"), (STOP, "updated", "critical")]
    assert [o["analyte"] for o in out[2]["observations"]] == ["AST"]


def test_preliminary_is_evaluated_and_marked_pending_is_stored_only(tmp_path: Path) -> None:
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190", status="P")))
    assert events(out)[1:] == [(STOP, "firing", "critical")]
    assert out[1]["observations"][0]["status"] == "P"
    assert out[1]["title"].startswith("Preliminary: ")
    # Decision 19: P → F with the same values is stored silently (no `updated`; the
    # stored alert drops "Preliminary:", test_p_to_f_same_values_is_stored_silently);
    # F with other values updates, without the mark.
    final = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190", status="P")),
                      oru("L1F", "20261001080000", alt("190")), oru("L1G", "20261001080000", alt("200")))
    assert events(final)[1:] == [(STOP, "firing", "critical"), (STOP, "updated", "critical")]
    assert not final[2]["title"].startswith("Preliminary")
    for status in ("I", "R"):
        assert events(run_check(tmp_path, START, oru("L1", "20261001080000", alt("190", status=status))))[1:] == []


def test_same_panel_again_sends_no_spurious_update(tmp_path: Path) -> None:
    """A reused control ID with identical results (other MSH-7, so not a resend),
    or the same panel inside another message: no `updated`."""
    panel = oru("L1", "20261001080000", alt("190"))
    restamped = panel.replace("|20261001080000||ORU", "|20261001090000||ORU", 1)
    other_control = panel.replace("|L1|", "|L9|", 1)
    # Decision 19: a later panel with the same values (L2) is no news either;
    # other values (L3) are.
    out = run_check(tmp_path, START, panel, restamped, other_control,
                    oru("L2", "20261002080000", alt("190"), specimen="S2"),
                    oru("L3", "20261003080000", alt("210"), specimen="S3"))
    assert events(out)[1:] == [(STOP, "firing", "critical"), (STOP, "updated", "critical")]
    assert out[2]["occurred_at"].startswith("2026-10-03")


def test_second_consecutive_mild_panel_escalates(tmp_path: Path) -> None:
    """Decisions 2 and 5: same alert_id, event escalated, severity high."""
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("60")),
                    oru("L2", "20261008080000", alt("62"), specimen="S2"))
    assert events(out)[1:] == [(MILD, "firing", "warning"), (MILD, "escalated", "high")]
    assert out[1]["alert_id"] == out[2]["alert_id"]


def test_results_before_the_order_are_baseline(tmp_path: Path) -> None:
    """Issue point 3: a result observed before the order started, arriving
    after it, never alerts."""
    out = run_check(tmp_path, START, oru("L0", "20260825080000", alt("400")))
    assert events(out) == [(MISSING, "firing", "info")]


def test_patient_identity_from_repeating_pid3(tmp_path: Path) -> None:
    """Decision 7: the MR repetition keys the patient, wherever it stands;
    a PI identifier never matches; authority is part of the key."""
    pi_first = "900123^^^GENHOSP^PI~H0990001^^^GENHOSP^MR"
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190"), mrn=pi_first))
    assert events(out)[1:] == [(STOP, "firing", "critical")]
    assert out[1]["patient"] == {"id": "H0990001", "id_type": "MR", "authority": "GENHOSP"}
    other_authority = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190"),
                                                    mrn="H0990001^^^OTHERHOSP^MR"))
    assert events(other_authority)[1:] == []
    pi_only = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190"), mrn="H0990001^^^GENHOSP^PI"))
    assert pi_only[1]["ack"] == "AE"
    restricted = parse_config("patient:\n  authority: OTHERHOSP\n")
    assert run_check(tmp_path, START, config=restricted)[0]["ack"] == "AE"


def test_comparator_and_sn_values_are_accepted_and_evaluated(tmp_path: Path) -> None:
    """Decision 8: AA for `>1000` and SN `>^1000`; the bound is used."""
    for value, value_type in ((">1000", "NM"), (">^1000", "SN")):
        out = run_check(tmp_path, START, oru("L1", "20261001080000", alt(value, value_type=value_type)))
        assert events(out)[1:] == [(STOP, "firing", "critical")], value
        assert out[1]["observations"][0]["comparator"] == ">"


def test_hold_and_release(tmp_path: Path) -> None:
    """Decision 9: HD holds from ORC-9 until RL; XO keeps the same order.
    Results observed while held are still exposed (decision 16): the alert
    fires "while held" and never says to stop a held drug; the same values
    on later panels (held, then released) are no news (decision 19)."""
    hold = order_msg("RX2", "HD", "RX1", AZA, "20260901090000", tx="20260930120000")
    release = order_msg("RX3", "RL", "RX1", AZA, "20260901090000", tx="20261005120000")
    change = order_msg("RX4", "XO", "RX1", AZA, "20260901090000", tx="20261006120000")
    out = run_check(tmp_path, START, hold, oru("L1", "20261001080000", alt("190")), release,
                    oru("L2", "20261004080000", alt("190"), specimen="S2"), change,
                    oru("L3", "20261007080000", alt("190"), specimen="S3"))
    # Held through 1 and 4 October; active again on the 7th; XO is no new order.
    assert events(out) == [(MISSING, "firing", "info"), (STOP, "firing", "critical")]
    assert out[1]["occurred_at"].startswith("2026-10-01")
    assert out[1]["medication"]["status"] == "held"
    assert out[1]["recommendations"][0] == "Azathioprine on hold since 2026-09-30: urgent clinical review; keep it held"
    assert "held since 2026-09-30" in out[1]["summary"]


def test_pgx_and_allopurinol_on_file_before_the_thiopurine_order(tmp_path: Path) -> None:
    """Results and orders that came while the patient had no thiopurine order
    (and so were not evaluated) count when the order arrives."""
    out = run_check(
        tmp_path,
        oru("G1", "20250101080000", tpmt("Intermediate metabolizer"), nudt15("*1/*1"), specimen="G1"),
        order_msg("RX0", "NW", "AL1", ALLOPURINOL, "20260801090000"),
        START,
    )
    assert sorted(events(out)) == [("aza.interaction.allopurinol", "firing", "high"),
                                   ("aza.pgx.poor_metabolizer", "firing", "high")]


def test_pgx_missing_once_per_new_order_naming_which(tmp_path: Path) -> None:
    out = run_check(tmp_path, oru("G1", "20250101080000", tpmt("Normal metabolizer"), specimen="G1"),
                    START, START.replace("|RX1|P|", "|RX1B|P|"))
    assert events(out) == [(MISSING, "firing", "info")]
    assert "NUDT15" in out[0]["title"]
    assert "TPMT" not in out[0]["title"]


def test_allopurinol_after_the_thiopurine(tmp_path: Path) -> None:
    out = run_check(tmp_path, START, order_msg("RX5", "NW", "AL1", ALLOPURINOL, "20261001090000"))
    assert events(out)[1:] == [("aza.interaction.allopurinol", "firing", "high")]
    assert out[1]["medication"]["drug"] == "azathioprine"


def test_hys_law_across_two_messages_within_48h(tmp_path: Path) -> None:
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190")),
                    oru("L2", "20261002200000", result(BILI, "2.6", "mg/dL", "0.1-1.2"), specimen="S2"))
    # Decision 19: the open stop alert closes, superseded, and hys_law alone goes on.
    assert events(out)[1:] == [(STOP, "firing", "critical"), ("aza.hys_law", "firing", "critical"),
                               (STOP, "resolved", "critical")]
    assert out[3]["reason"] == "superseded by aza.hys_law"


def test_a40_merge_moves_history_orders_and_alerts(tmp_path: Path) -> None:
    """Issue point 4: ADT^A40 (MRG-1 prior id → PID-3 surviving id)."""
    old = "H0990009^^^GENHOSP^MR"
    merge = merge_msg("A1", "20261002080000", prior="H0990009^^^GENHOSP^MR")
    out = run_check(
        tmp_path,
        order_msg("RX1", "NW", "RX1", AZA, "20260901090000", mrn=old),
        oru("L1", "20261001080000", alt("60"), mrn=old),
        merge,
        oru("L2", "20261008080000", alt("62"), specimen="S2"),
    )
    # The order moved (the result alerts), the history moved (second
    # consecutive mild panel), and the open alert moved (escalated, same id).
    assert events(out) == [(MISSING, "firing", "info"), (MILD, "firing", "warning"), (MILD, "escalated", "high")]
    assert out[1]["alert_id"] == out[2]["alert_id"]
    assert out[2]["patient"]["id"] == "H0990001"


def test_pgx_missing_resolves_when_the_results_arrive(tmp_path: Path) -> None:
    out = run_check(tmp_path, START,
                    oru("G1", "20260905080000", tpmt("Normal metabolizer"), nudt15("*1/*1"), specimen="G1"))
    assert events(out) == [(MISSING, "firing", "info"), (MISSING, "resolved", "info")]


def test_late_result_after_resolution_is_history_not_a_new_episode(tmp_path: Path) -> None:
    """Issue point 3: a late abnormal result observed before the panel that
    resolved the alert does not reopen it; a newer one does."""
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("190")),
                    oru("L3", "20261008080000", alt("40"), specimen="S3"),
                    oru("L2", "20261004080000", alt("250"), specimen="S2"),
                    oru("L4", "20261010080000", alt("250"), specimen="S4"))
    assert events(out)[1:] == [(STOP, "firing", "critical"), (STOP, "resolved", "critical"),
                               (STOP, "firing", "critical")]
    assert out[3]["occurred_at"].startswith("2026-10-10")


async def test_a40_merge_announces_the_alert_it_folds(tmp_path: Path) -> None:
    """Both records had hepatotoxicity.stop open: one open episode survives, and
    the prior record's alert is announced `resolved`, so no pager keeps it
    firing for ever."""
    old = "H0990009^^^GENHOSP^MR"
    config = Config()
    options, settings = config.parse_options(), config.pipeline_settings()
    merge = merge_msg("A1", "20261002080000", prior=old)
    store = await SqliteStore.open(tmp_path / "s.db")
    for text in (
        order_msg("RX1", "NW", "RX1", AZA, "20260901090000", mrn=old),
        order_msg("RX2", "NW", "RX2", AZA, "20260901090000"),
        oru("L1", "20261001080000", alt("300"), mrn=old),
        oru("L2", "20261001090000", alt("320"), specimen="S2"),
        merge,
    ):
        raw = text.encode()
        await store.transact(lambda tx, raw=raw: process(tx, parse_message(raw, options), raw,
                                                         received_at=datetime(2026, 10, 2, tzinfo=UTC),
                                                         settings=settings))
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        alerts = db.execute("SELECT alert_id, patient_id, state FROM alerts WHERE rule = ? ORDER BY opened_at",
                            (STOP,)).fetchall()
        folded_id = alerts[0][0]
        announced = db.execute("SELECT event, payload FROM outbox WHERE alert_id = ? ORDER BY id",
                               (folded_id,)).fetchall()
        # Both records also had aza.pgx.missing open (each order lacked TPMT/NUDT15): folded alike.
        pgx = db.execute("SELECT state, count(*) FROM alerts WHERE rule = 'aza.pgx.missing' GROUP BY state "
                         "ORDER BY state").fetchall()
    assert [(pid, state) for _, pid, state in alerts] == [("H0990001", "resolved"), ("H0990001", "open")]
    assert [event for event, _ in announced] == ["firing", "resolved"]
    assert pgx == [("open", 1), ("resolved", 1)]
    body = json.loads(announced[-1][1])
    assert (body["event"], body["version"], body["patient"]["id"]) == ("resolved", 2, "H0990001")


def test_a_late_order_evaluates_the_results_it_covers(tmp_path: Path) -> None:
    """Decision 18 (issue 19 item 6): ALT 300 on 1 October, then an order
    arrives with start 1 September: the result is judged on arrival, the
    alert dated by it; before, only aza.pgx.missing (which an order started
    more than 30 days before it arrived no longer raises, decision 11)."""
    late = order_msg("RX1", "NW", "RX1", AZA, "20260901090000", tx="20261005090000")
    out = run_check(tmp_path, oru("L1", "20261001080000", alt("300")), late)
    assert events(out) == [(STOP, "firing", "critical")]
    assert out[0]["occurred_at"] == "2026-10-01T08:00:00+00:00"
    assert out[0]["source"]["control_id"] == "RX1"


@pytest.mark.parametrize(("start", "observed", "expected"), [
    ("20260801090000", "20260905090000", [(STOP, "firing", "critical")]),  # 30 days before the arrival: judged
    ("20260801090000", "20260905085959", []),  # a second more: history
    ("20260920090000", "20260920090000", [(STOP, "firing", "critical")]),  # at the order's start: judged
    ("20260920090000", "20260920085959", []),  # a second before it started: baseline
], ids=["30-days-before-arrival", "a-second-more", "at-start", "a-second-before-start"])
def test_a_late_order_looks_back_30_days_at_most_and_never_before_its_start(
    tmp_path: Path, start: str, observed: str, expected: list
) -> None:
    late = order_msg("RX1", "NW", "RX1", AZA, start, tx="20261005090000")
    out = run_check(tmp_path, oru("L1", observed, alt("300")), late)
    assert [e for e in events(out) if e[0] != MISSING] == expected


def test_an_order_arriving_after_results_another_order_judged_adds_nothing(tmp_path: Path) -> None:
    """A dose change (new NW) after the alert: the results are on file and
    already judged; the same values are no news (decision 19)."""
    again = order_msg("RX2", "NW", "RX2", AZA, "20260915090000", tx="20261002090000")
    out = run_check(tmp_path, START, oru("L1", "20261001080000", alt("300")), again)
    assert events(out) == [(MISSING, "firing", "info"), (STOP, "firing", "critical")]


async def _store_with(tmp_path: Path, *texts: str) -> SqliteStore:
    config = Config()
    options, settings = config.parse_options(), config.pipeline_settings()
    store = await SqliteStore.open(tmp_path / "s.db")
    for text in texts:
        raw = text.encode()
        await store.transact(lambda tx, raw=raw: process(tx, parse_message(raw, options), raw,
                                                         received_at=datetime(2026, 10, 2, tzinfo=UTC),
                                                         settings=settings))
    return store


def _outbox(tmp_path: Path) -> list[tuple[str, str, dict]]:
    with sqlite3.connect(tmp_path / "s.db") as db:
        rows = db.execute("SELECT alert_id, event, payload FROM outbox ORDER BY id").fetchall()
    return [(alert_id, event, json.loads(body)) for alert_id, event, body in rows]


async def test_p_to_f_same_values_is_stored_silently(tmp_path: Path) -> None:
    """Decision 19: no `updated` for P → F with the same values; the stored
    alert (what reminders carry) is the final one, at the same version."""
    store = await _store_with(tmp_path, START, oru("L1", "20261001080000", alt("190", status="P")),
                              oru("L1F", "20261001080000", alt("190")))
    await store.close()
    assert [(b["rule"], event) for _, event, b in _outbox(tmp_path)] == [(MISSING, "firing"), (STOP, "firing")]
    with sqlite3.connect(tmp_path / "s.db") as db:
        version, payload = db.execute("SELECT version, payload FROM alerts WHERE rule = ?", (STOP,)).fetchone()
    body = json.loads(payload)
    assert version == 1
    assert (body["version"], body["event"]) == (1, "firing")
    assert not body["title"].startswith("Preliminary")
    assert body["observations"][0]["status"] == "F"


async def test_reminders_go_on_for_hys_law_alone(tmp_path: Path) -> None:
    """Decision 19: a stop alert left open beside an open hys_law (as a store
    from before this rule has them) is closed as superseded by the reminder
    timer, not reminded; hys_law is reminded."""
    store = await _store_with(tmp_path, START, oru("L1", "20261001080000", alt("300")))
    config = Config()
    settings = config.pipeline_settings()
    patient = parse_message(START.encode(), config.parse_options()).patient
    # A Hy's law alert opened beside it, as the daemon did before this rule.
    findings = assess(context(order()), [obs(Analyte.ALT, 300, ref="7-56"),
                                         obs(Analyte.BILI_TOTAL, 3.0, ref="0.1-1.2")], RuleSettings()).findings
    old = Source(control_id="OLD", sending_application="LAB", sending_facility="GENHOSP")
    (hys,) = reconcile(findings, {}, patient=patient, source=old, next_episode={})
    paged = datetime(2026, 10, 2, tzinfo=UTC)
    await store.transact(lambda tx: enqueue_change(tx, hys, None, settings=settings, at=paged))
    sent = await store.transact(lambda tx: send_reminders(
        tx, policy=ReminderPolicy(after_seconds=60), settings=settings, now=paged + timedelta(days=1)))
    await store.close()
    later = [(b["rule"], event, b.get("reason")) for _, event, b in _outbox(tmp_path)][2:]
    assert later == [("aza.hys_law", "firing", None), (STOP, "resolved", "superseded by aza.hys_law"),
                     ("aza.hys_law", "reminder", None)]
    assert sent == [hys.alert.alert_id]
