"""The SQLite store: atomic units, grouped commits, dedup, migrations."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from hl7_alerts.messages import ParseOptions, parse_message
from hl7_alerts.model import AckCode, Observation, PatientKey, ResultStatus
from hl7_alerts.pipeline import digest, process
from hl7_alerts.segments import split_file
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import SchemaTooNewError, SqliteStore, StoreError, Transaction
from hl7_alerts.store.rows import ALERT_COLUMNS, observation_rows
from hl7_alerts.terminology import Terminology
from tests.support.samples import SAMPLES

OPTIONS = ParseOptions(terminology=Terminology(), timezone=UTC)
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def messages(name: str) -> list[bytes]:
    return split_file((SAMPLES / name).read_bytes())


async def test_failing_unit_rolls_back_alone_in_a_grouped_commit(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    settings = PipelineSettings()

    def ok(raw: bytes):
        return lambda tx: process(tx, parse_message(raw, OPTIONS), raw, received_at=NOW, settings=settings)

    def boom(tx: Transaction) -> None:
        raw = messages("05_no_thiopurine_high_enzymes.hl7")[0]
        process(tx, parse_message(raw, OPTIONS), raw, received_at=NOW, settings=settings)
        raise RuntimeError("defect after writing")

    order, panel = messages("01_seed_order_azathioprine.hl7")[0], messages("02_seed_liver_panel_above_3xuln.hl7")[0]
    results = await asyncio.gather(store.transact(ok(order)), store.transact(boom), store.transact(ok(panel)),
                                   return_exceptions=True)
    await store.close()
    assert results[0].ack_code is AckCode.CA or results[0].ack_code is AckCode.AA  # type: ignore[union-attr]
    assert isinstance(results[1], RuntimeError)
    assert len(results[2].changes) == 1  # type: ignore[union-attr]
    with sqlite3.connect(tmp_path / "s.db") as db:
        ids = [r[0] for r in db.execute("SELECT control_id FROM messages ORDER BY id")]
        outbox = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert ids == ["RX0001", "LAB0001"]  # LAB0003 rolled back with its unit
    assert outbox == 2  # aza.pgx.missing for the order, aza.hepatotoxicity.stop for the panel


async def test_many_concurrent_units_share_commits(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    commits = 0

    def count(tx: Transaction) -> int:
        return 1

    # 300 units queued at once must finish in far fewer than 300 commits.
    original_run_batch = store._run_batch

    def counting(tx, batch, **options):
        nonlocal commits
        commits += 1
        return original_run_batch(tx, batch, **options)

    store._run_batch = counting  # type: ignore[method-assign]
    results = await asyncio.gather(*(store.transact(count) for _ in range(300)))
    await store.close()
    assert sum(results) == 300
    assert commits < 300


async def test_dedup_key_returns_the_first_answer(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    raw = messages("05_no_thiopurine_high_enzymes.hl7")[0]
    settings = PipelineSettings()

    def unit(tx: Transaction):
        return process(tx, parse_message(raw, OPTIONS), raw, received_at=NOW, settings=settings)

    first = await store.transact(unit)
    second = await store.transact(unit)
    await store.close()
    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.ack_code == second.ack_code == AckCode.AA


def test_digest_is_blind_to_segment_ends_and_keeps_the_digests_already_stored() -> None:
    raw = messages("05_no_thiopurine_high_enzymes.hl7")[0]
    # What the digest of this message was before segment ends were normalised:
    # a store's rows carry it, and its resends must still find them.
    assert digest(raw) == "89966d9a28cec07fbea1b729baff3ac0"
    for form in (raw.rstrip(b"\r"), raw.replace(b"\r", b"\n"), raw.replace(b"\r", b"\r\n"),
                 raw.replace(b"\r", b"\r\r")):
        assert digest(form) == digest(raw), form[:40]
    assert digest(raw.replace(b"||310|", b"||311|")) != digest(raw)


async def test_refuses_a_schema_newer_than_it_knows(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("INSERT INTO schema_version (version) VALUES (999)")
    with pytest.raises(SchemaTooNewError, match="newer than this hl7-alerts knows"):
        await SqliteStore.open(tmp_path / "s.db")


async def test_reused_control_id_with_other_content_is_processed_not_dropped(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    settings = PipelineSettings()
    first = messages("05_no_thiopurine_high_enzymes.hl7")[0]
    restamped = first.replace(b"|20261021101500|", b"|20261021111500|")  # MSH-7 only
    other = first.replace(b"||310|", b"||311|")  # same MSH-10, another result

    def unit(raw: bytes):
        return lambda tx: process(tx, parse_message(raw, OPTIONS), raw, received_at=NOW, settings=settings)

    outcomes = [await store.transact(unit(m)) for m in (first, restamped, other)]
    await store.close()
    assert [o.duplicate for o in outcomes] == [False, True, False]
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (2,)
        assert sorted(r[0] for r in db.execute("SELECT value FROM observations WHERE analyte = 'ALT'")) == [310, 311]


async def test_ordered_ingredients_follow_commits_not_rolled_back_units(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    settings = PipelineSettings()
    raw = messages("01_seed_order_azathioprine.hl7")[0]
    order = parse_message(raw, OPTIONS)
    patient = order.patient  # type: ignore[union-attr]

    def ordered(tx: Transaction) -> frozenset[str]:
        return tx.ordered_ingredients(patient)

    def order_then_fail(tx: Transaction) -> None:
        process(tx, order, raw, received_at=NOW, settings=settings)
        assert tx.ordered_ingredients(patient) == {"azathioprine"}  # seen inside its own unit
        raise RuntimeError("defect after writing")

    # A unit rolled back to its savepoint, in the same grouped commit as a reader.
    results = await asyncio.gather(store.transact(order_then_fail), store.transact(ordered), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert results[1] == frozenset()
    assert await store.transact(ordered) == frozenset()

    await store.transact(lambda tx: process(tx, order, raw, received_at=NOW, settings=settings))
    assert await store.transact(ordered) == {"azathioprine"}
    await store.close()

    reopened = await SqliteStore.open(tmp_path / "s.db")  # loaded from the orders table
    assert await reopened.transact(ordered) == {"azathioprine"}
    await reopened.close()


async def test_orders_moved_by_plain_sql_reach_the_index(tmp_path: Path) -> None:
    """Any writer of `orders` (an ADT^A40 merge moving them, say) keeps the
    index true: triggers feed it, not the callers."""
    store = await SqliteStore.open(tmp_path / "s.db")
    raw = messages("01_seed_order_azathioprine.hl7")[0]
    order = parse_message(raw, OPTIONS)
    survivor = order.patient.__class__(id="H999", id_type="MR", authority="GENHOSP")  # type: ignore[union-attr]
    await store.transact(lambda tx: process(tx, order, raw, received_at=NOW, settings=PipelineSettings()))

    def merge(tx: Transaction) -> frozenset[str]:
        tx.connection.execute(  # type: ignore[attr-defined]
            "UPDATE orders SET patient = ? WHERE patient = ?", (survivor.key, order.patient.key)  # type: ignore[union-attr]
        )
        return tx.ordered_ingredients(survivor)

    assert await store.transact(merge) == {"azathioprine"}
    assert await store.transact(lambda tx: tx.ordered_ingredients(survivor)) == {"azathioprine"}
    await store.close()


async def test_results_before_the_order_are_kept_and_the_next_one_alerts(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    settings = PipelineSettings()
    panel = messages("02_seed_liver_panel_above_3xuln.hl7")[0]
    # Another value: the same values again would be no news (CLINICAL.md decision 19).
    later_panel = panel.replace(b"|LAB0001|", b"|LAB0001B|").replace(b"SPC100", b"SPC101").replace(b"||190|", b"||250|")
    order = messages("01_seed_order_azathioprine.hl7")[0]

    def unit(raw: bytes):
        return lambda tx: process(tx, parse_message(raw, OPTIONS), raw, received_at=NOW, settings=settings)

    before = await store.transact(unit(panel))
    ordered = await store.transact(unit(order))
    after = await store.transact(unit(later_panel))
    await store.close()
    assert before.changes == ()  # no thiopurine order yet: stored, not evaluated
    # Decision 18: the order started before that panel, so its arrival evaluates it.
    assert [(c.alert.rule, str(c.event)) for c in ordered.changes] == [
        ("aza.pgx.missing", "firing"), ("aza.hepatotoxicity.stop", "firing")]
    assert len(after.changes) == 1
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT count(*) FROM observations").fetchone() == (10,)


async def test_orders_committed_by_another_process_reach_the_running_index(tmp_path: Path) -> None:
    """`hl7-alerts orders import` writes through its own connection while the
    daemon runs: the daemon's next result for that patient is evaluated."""
    daemon_store = await SqliteStore.open(tmp_path / "s.db")
    settings = PipelineSettings()
    order = messages("01_seed_order_azathioprine.hl7")[0]
    panel = messages("02_seed_liver_panel_above_3xuln.hl7")[0]
    assert await daemon_store.transact(lambda tx: tx.ordered_ingredients(parse_message(order, OPTIONS).patient)) == set()
    cli_store = await SqliteStore.open(tmp_path / "s.db")
    await cli_store.transact(lambda tx: process(tx, parse_message(order, OPTIONS), order, received_at=NOW, settings=settings))
    await cli_store.close()
    outcome = await daemon_store.transact(
        lambda tx: process(tx, parse_message(panel, OPTIONS), panel, received_at=NOW, settings=settings)
    )
    await daemon_store.close()
    assert [c.alert.rule for c in outcome.changes] == ["aza.hepatotoxicity.stop"]


async def test_a_transaction_sqlite_rolled_back_itself_fails_its_batch_and_the_writer_lives(tmp_path: Path) -> None:
    """On SQLITE_FULL or an I/O error SQLite may roll the whole transaction back
    itself; the savepoint is then gone. The batch fails (AR upstream) and the
    writer thread keeps serving the next ones."""
    store = await SqliteStore.open(tmp_path / "s.db")

    def lost(tx: Transaction) -> None:
        tx.connection.execute("ROLLBACK")  # type: ignore[attr-defined]  # what SQLite does on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(StoreError):
        await asyncio.wait_for(store.transact(lost), 10)
    raw = messages("05_no_thiopurine_high_enzymes.hl7")[0]
    outcome = await asyncio.wait_for(
        store.transact(lambda tx: process(tx, parse_message(raw, OPTIONS), raw, received_at=NOW, settings=PipelineSettings())),
        10,
    )
    await store.close()
    assert outcome.ack_code is AckCode.AA


@pytest.mark.parametrize("placeholder", ["00010101", "99991231235959"])
async def test_placeholder_years_fall_back_and_never_block_the_feed(tmp_path: Path, placeholder: str) -> None:
    """A sender's placeholder time (year 0001 or 9999) in OBX-14 used to
    overflow the rules' date arithmetic: an AR the sender retries forever,
    holding its queue. It is no time at all: OBR-7 stands in."""
    store = await SqliteStore.open(tmp_path / "s.db")
    settings = PipelineSettings()
    order = messages("01_seed_order_azathioprine.hl7")[0]
    panel = messages("02_seed_liver_panel_above_3xuln.hl7")[0].replace(b"|||20261020080000\rOBX", f"|||{placeholder}\rOBX".encode())
    for raw in (order, panel):
        outcome = await store.transact(
            lambda tx, raw=raw: process(tx, parse_message(raw, OPTIONS), raw, received_at=NOW, settings=settings)
        )
    await store.close()
    assert outcome.ack_code is AckCode.AA
    assert "aza.hepatotoxicity.stop" in [c.alert.rule for c in outcome.changes]


async def test_a_patients_open_alerts_are_read_by_patient_not_by_state(tmp_path: Path) -> None:
    """The query every result message makes (a patient's open alerts) must
    search the one-open-alert index by patient: an index leading with
    `state` once made SQLite scan every open alert of the site instead, and
    the timer's overdue tick held every ACK behind it."""
    store = await SqliteStore.open(tmp_path / "store.sqlite3")
    await store.close()
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        plan = db.execute(
            f"EXPLAIN QUERY PLAN SELECT {ALERT_COLUMNS} FROM alerts WHERE patient = ? AND state = 'open'",
            ("GENHOSP|MR|H1",),
        ).fetchall()
    assert [row[3] for row in plan] == ["SEARCH alerts USING INDEX alerts_one_open (patient=?)"]


def _observed(at: datetime) -> Observation:
    return Observation(
        analyte="ALT", code="1742-6", code_system="LN", text="ALT", value_type="NM", value_text="40", value=40.0,
        comparator="", unit="U/L", ref_low=7.0, ref_high=56.0, ref_text="7-56", flag="", status=ResultStatus.FINAL,
        observed_at=at, specimen_id="S1", set_id="1",
    )


@pytest.mark.parametrize(
    ("times", "texts"),
    [
        ([datetime(2026, 10, 1, 8, tzinfo=UTC)] * 3, ["2026-10-01T08:00:00+00:00"] * 3),
        (
            [datetime(2026, 10, 1, 8, tzinfo=UTC), datetime(2026, 10, 1, 9, tzinfo=timezone(timedelta(hours=1)))],
            ["2026-10-01T08:00:00+00:00", "2026-10-01T09:00:00+01:00"],
        ),
        (
            [datetime(2026, 10, 1, 8, tzinfo=UTC), datetime(2026, 10, 2, 8, tzinfo=UTC)],
            ["2026-10-01T08:00:00+00:00", "2026-10-02T08:00:00+00:00"],
        ),
    ],
    ids=["one-panel-time", "same-instant-two-zones", "two-times"],
)
def test_observation_rows_convert_each_time_as_its_result_gave_it(times: list[datetime], texts: list[str]) -> None:
    """Times are converted once per message (the write's fast path), yet
    every row keeps its own text and epoch."""
    rows = observation_rows(7, PatientKey(id="H1", id_type="MR", authority="GENHOSP"), [_observed(t) for t in times])
    assert [r[16] for r in rows] == texts
    assert [r[17] for r in rows] == [t.timestamp() for t in times]
    assert {r[1] for r in rows} == {"GENHOSP|MR|H1"}
