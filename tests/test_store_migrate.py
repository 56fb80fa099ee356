"""`hl7-alerts store migrate`: a running site's SQLite store moved into
PostgreSQL, through the real command, checked through the store interface
and row by row; re-run after more work on SQLite; refused when it must be."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hl7_alerts.alerts import AckRequest
from hl7_alerts.lifecycle import acknowledge_alert
from hl7_alerts.messages import ParseOptions, parse_message
from hl7_alerts.model import AckCode, OrderState, PatientKey
from hl7_alerts.pipeline import process
from hl7_alerts.segments import split_file
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import MIGRATIONS, SCHEMA_VERSION, Dialect, SqliteStore, Store, Transaction
from hl7_alerts.store.postgres import PostgresStore
from hl7_alerts.store.schema import statements
from hl7_alerts.store.transfer import NOT_COPIED, TABLES
from hl7_alerts.store.web import web
from hl7_alerts.terminology import Terminology
from tests.support.daemon import CLI
from tests.support.hl7kit import WITH_NUL
from tests.support.samples import SAMPLES
from tests.support.waiting import WAIT

OPTIONS = ParseOptions(terminology=Terminology(), timezone=UTC)
NOW = datetime(2026, 11, 25, tzinfo=UTC)
SETTINGS = PipelineSettings()
NAMES = [t.name for t in TABLES]
SEED_PATIENT = PatientKey(id="H010001", id_type="MR", authority="GENHOSP")  # samples 01-04
RULE = "aza.hepatotoxicity.stop"
SURVIVOR = PatientKey(id="H999999", id_type="MR", authority="GENHOSP")


def sample_messages() -> list[bytes]:
    return [m for path in sorted(SAMPLES.glob("*.hl7")) for m in split_file(path.read_bytes())]


def patients() -> set[PatientKey]:
    found = {getattr(parse_message(raw, OPTIONS), "patient", None) for raw in sample_messages()}
    return {p for p in found if isinstance(p, PatientKey)} | {SURVIVOR}


async def feed(store: Store, raw: bytes, at: datetime = NOW) -> None:
    await store.transact(lambda tx: process(tx, parse_message(raw, OPTIONS), raw, received_at=at, settings=SETTINGS))


async def ack(store: Store, alert_id: str, by: str = "dr.who") -> str:
    request = AckRequest(alert_id=alert_id, by=by, at=NOW)
    return await store.transact(lambda tx: acknowledge_alert(tx, request, settings=SETTINGS, at=NOW))


def another_result(n: int) -> bytes:
    """Sample 05 again as a new message (new control id, new specimen)."""
    raw = split_file((SAMPLES / "05_no_thiopurine_high_enzymes.hl7").read_bytes())[0]
    return raw.replace(b"|LAB0003|", f"|LAB9{n:03}|".encode()).replace(b"SPC200", f"SPC9{n:02}".encode())


async def filled_sqlite(path: Path) -> None:
    """A site's SQLite store after the sample feed: orders, results, alerts
    (some closed, one acknowledged), outbox rows (some delivered), audit,
    schedules, a rejected message and a maintenance mark."""
    store = await SqliteStore.open(path)
    try:
        for raw in sample_messages():
            await feed(store, raw)
        await store.transact(
            lambda tx: tx.insert_rejected(None, b"not HL7\xff", received_at=NOW, ack_code=AckCode.AR, reason="no MSH")
        )
        await store.mark_run("retention", NOW)
        pending = await store.pending_outbox(1000)
        await store.mark_delivered([r.id for r in pending[:3]], NOW)
        open_alerts = await store.list_alerts()
        assert await ack(store, open_alerts[0].alert.alert_id) == "acknowledged"
        # The web view's user and its access audit (its sessions are not copied).
        await store.transact(lambda tx: web(tx).put_user("dr.who", "$argon2id$fake", NOW))
        await store.transact(lambda tx: web(tx).record_access(
            at=NOW, username="dr.who", via="password", peer="10.0.0.1", action="view_alert",
            alert_id=open_alerts[0].alert.alert_id, patient=open_alerts[0].alert.patient,
        ))
    finally:
        await store.close()


@contextlib.contextmanager
def lite(path: Path, **options: Any) -> Iterator[sqlite3.Connection]:
    """A plain connection to a SQLite file, committed and closed after."""
    db = sqlite3.connect(path, **options)
    try:
        with db:
            yield db
    finally:
        db.close()


def migrate(source: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "store", "migrate", "--from", str(source), "--to", dsn],
                          capture_output=True, text=True, timeout=4 * WAIT, check=False)


def migrated(source: Path, dsn: str) -> str:
    result = migrate(source, dsn)
    assert result.returncode == 0, result.stderr
    return result.stdout


def columns(path: Path, table: str) -> list[str]:
    with lite(path) as db:
        return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]


def sqlite_rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    key = ", ".join(next(t.key for t in TABLES if t.name == table))
    with lite(path) as db:
        return db.execute(f"SELECT {', '.join(columns(path, table))} FROM {table} ORDER BY {key}").fetchall()


def pg_rows(dsn: str, table: str, cols: Sequence[str]) -> list[tuple[Any, ...]]:
    key = ", ".join(next(t.key for t in TABLES if t.name == table))
    with psycopg.connect(dsn) as db:
        return db.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {key}").fetchall()


def sqlite_counts(path: Path) -> dict[str, int]:
    with lite(path) as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in NAMES}


def pg_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as db:
        return {t: int(db.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]) for t in NAMES}


def assert_same_rows(path: Path, dsn: str) -> None:
    for table in NAMES:
        cols = columns(path, table)
        assert pg_rows(dsn, table, cols) == sqlite_rows(path, table), table


def max_ids(path: Path) -> dict[str, int]:
    with lite(path) as db:
        return {t.name: db.execute(f"SELECT max(id) FROM {t.name}").fetchone()[0] for t in TABLES if t.identity}


def pg_max_id(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as db:
        row = db.execute(f"SELECT max(id) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def orders_of(patient: PatientKey) -> Callable[[Transaction], tuple[OrderState, ...]]:
    return lambda tx: tx.patient_orders(patient)


async def view(store: Store) -> dict[str, Any]:
    """What the daemons and the CLI see of a store."""
    return {
        "open": await store.list_alerts(),
        "all": await store.list_alerts(include_closed=True, limit=10_000),
        "pending": [(r.id, r.alert_id, r.event, r.payload) for r in await store.pending_outbox(10_000)],
        "orders": {p: await store.read(orders_of(p)) for p in patients()},
        "schedules": await store.list_schedules(include_stopped=True),
        "retention": await store.last_run("retention"),
        "backlog": (await store.outbox_backlog()).depth,
    }


def test_every_table_of_a_store_is_copied_or_deliberately_left() -> None:
    created = {
        s.split()[2] for m in MIGRATIONS for s in statements(m.render(Dialect.SQLITE))
        if s.upper().startswith("CREATE TABLE")
    }
    assert created == set(NAMES) | (NOT_COPIED - {"schema_version"})


async def test_migrate_copies_everything_and_postgresql_serves_the_same(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "store.sqlite3"
    await filled_sqlite(source)
    counts = sqlite_counts(source)
    assert all(counts.values()), counts  # the feed leaves rows in every table
    os.chmod(source, 0o644)  # as an older version left it: opened for writing, it is narrowed first

    out = migrated(source, pg_dsn)
    assert stat.S_IMODE(source.stat().st_mode) == 0o600

    for table in NAMES:
        assert f"  {table:<18} {counts[table]:>9} rows ({counts[table]} new or changed)" in out
    assert f"copied {sum(counts.values())} rows in {len(NAMES)} tables from {source} to the PostgreSQL database" in out
    assert pg_counts(pg_dsn) == counts
    assert_same_rows(source, pg_dsn)

    sqlite_store = await SqliteStore.open(source)
    pg_store = await PostgresStore.open(pg_dsn, owner="x")
    try:
        before, after = await view(sqlite_store), await view(pg_store)
    finally:
        await sqlite_store.close()
        await pg_store.close()
    assert before["open"]
    assert before["pending"]
    assert any(before["orders"].values())
    assert before["schedules"]
    assert any(r.tracking.acknowledged_by == "dr.who" for r in before["open"])
    assert after == before


async def test_daemons_on_postgresql_after_the_move_get_new_ids_and_a_rerun_is_refused(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = tmp_path / "store.sqlite3"
    await filled_sqlite(source)
    copied = max_ids(source)
    migrated(source, pg_dsn)

    store = await PostgresStore.open(pg_dsn, owner="x")
    try:
        await feed(store, another_result(1), NOW + timedelta(hours=1))
        await store.transact(
            lambda tx: tx.insert_rejected(None, b"junk", received_at=NOW, ack_code=AckCode.AR, reason="no MSH")
        )
        open_alert = next(r for r in await store.list_alerts() if r.tracking.acknowledged_by is None)
        assert await ack(store, open_alert.alert.alert_id, by="dr.pg") == "acknowledged"
        await store.transact(lambda tx: web(tx).record_access(  # the web view on PostgreSQL
            at=NOW, username="dr.pg", via="password", peer="10.0.0.2", action="view_alert",
        ))
    finally:
        await store.close()
    with psycopg.connect(pg_dsn) as db:
        for table, highest in copied.items():
            new = db.execute(f"SELECT count(*), min(id) FROM {table} WHERE id > %s", (highest,)).fetchone()
            assert new is not None
            assert new[1] == highest + 1, table

    before = pg_counts(pg_dsn)
    result = migrate(source, pg_dsn)
    assert result.returncode == 1
    assert "already has messages the SQLite store does not" in result.stderr
    assert "daemons have written to it" in result.stderr
    assert "Traceback" not in result.stderr
    assert pg_counts(pg_dsn) == before


async def test_both_stores_written_after_the_move_is_refused(tmp_path: Path, pg_dsn: str) -> None:
    """Daemons on both: the same ids now name different messages."""
    source = tmp_path / "store.sqlite3"
    await filled_sqlite(source)
    migrated(source, pg_dsn)
    for store in (await SqliteStore.open(source), await PostgresStore.open(pg_dsn, owner="x")):
        try:
            await feed(store, another_result(3 if isinstance(store, SqliteStore) else 4), NOW + timedelta(hours=1))
        finally:
            await store.close()
    assert max_ids(source)["messages"] == pg_max_id(pg_dsn, "messages")

    result = migrate(source, pg_dsn)
    assert result.returncode == 1
    assert f"already has messages the SQLite store does not (row {max_ids(source)['messages']} differs)" in result.stderr


async def test_rerun_is_harmless_and_picks_up_what_changed_on_sqlite(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "store.sqlite3"
    await filled_sqlite(source)
    migrated(source, pg_dsn)
    again = migrated(source, pg_dsn)
    assert "copied" in again
    assert ": 0 new or changed, 0 removed" in again
    assert pg_counts(pg_dsn) == sqlite_counts(source)

    # The SQLite daemon keeps working until it is stopped: an outbox row is
    # delivered, an alert acknowledged, a result arrives, two patients merge.
    store = await SqliteStore.open(source)
    try:
        delivered = (await store.pending_outbox(1))[0].id
        await store.mark_delivered([delivered], NOW + timedelta(minutes=5))
        unacked = next(r for r in await store.list_alerts() if r.tracking.acknowledged_by is None)
        assert await ack(store, unacked.alert.alert_id, by="dr.late") == "acknowledged"
        await feed(store, another_result(2), NOW + timedelta(hours=2))
        assert await store.read(lambda tx: tx.patient_orders(SEED_PATIENT))
        await store.transact(lambda tx: tx.merge_patient(SEED_PATIENT, SURVIVOR))
    finally:
        await store.close()

    out = migrated(source, pg_dsn)
    assert "  orders" in out
    assert "removed)" in out
    assert pg_counts(pg_dsn) == sqlite_counts(source)
    assert_same_rows(source, pg_dsn)
    assert ": 0 new or changed, 0 removed" in migrated(source, pg_dsn)

    pg_store = await PostgresStore.open(pg_dsn, owner="x")
    try:
        pending = [r.id for r in await pg_store.pending_outbox(10_000)]
        acked = {r.alert.alert_id: r.tracking.acknowledged_by for r in await pg_store.list_alerts()}
        seed_orders = await pg_store.read(lambda tx: tx.patient_orders(SEED_PATIENT))
        survivor_orders = await pg_store.read(lambda tx: tx.patient_orders(SURVIVOR))
    finally:
        await pg_store.close()
    assert delivered not in pending
    assert acked[unacked.alert.alert_id] == "dr.late"
    assert seed_orders == ()
    assert survivor_orders


async def test_an_alert_closed_and_opened_again_between_runs(tmp_path: Path, pg_dsn: str) -> None:
    """PostgreSQL still has episode 1 open when episode 2 of the same rule
    arrives: episode 1 must be closed first (one open alert per rule; here
    episode 2's id sorts first)."""
    source = tmp_path / "store.sqlite3"
    order, panel, correction = split_file((SAMPLES / "08_correction_withdraws.hl7").read_bytes())
    again = panel.replace(b"|C1002|", b"|C1004|").replace(b"S4001", b"S4002").replace(b"20261001080000", b"20261002080000")
    store = await SqliteStore.open(source)
    try:
        await feed(store, order)
        await feed(store, panel)
        migrated(source, pg_dsn)
        first = next(r.alert for r in await store.list_alerts() if r.alert.rule == RULE)
        await feed(store, correction)
        await feed(store, again)
        second = next(r.alert for r in await store.list_alerts() if r.alert.rule == RULE)
    finally:
        await store.close()
    assert (first.episode, second.episode) == (1, 2)

    migrated(source, pg_dsn)

    assert_same_rows(source, pg_dsn)
    pg_store = await PostgresStore.open(pg_dsn, owner="x")
    try:
        states = {
            r.alert.alert_id: r.alert.state for r in await pg_store.list_alerts(include_closed=True) if r.alert.rule == RULE
        }
    finally:
        await pg_store.close()
    assert states == {first.alert_id: "withdrawn", second.alert_id: "open"}


async def test_the_copy_is_all_or_nothing(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "store.sqlite3"
    await filled_sqlite(source)
    with lite(source) as db:  # foreign keys unchecked on a plain connection
        db.execute("UPDATE observations SET message_id = 999999 WHERE id = (SELECT max(id) FROM observations)")
    result = migrate(source, pg_dsn)
    assert result.returncode == 1
    assert "writing to the PostgreSQL database" in result.stderr
    assert "foreign key" in result.stderr
    assert set(pg_counts(pg_dsn).values()) == {0}  # messages went in before observations: rolled back too


async def test_an_older_sqlite_store_is_migrated_first_and_blobs_become_bytea(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "old.sqlite3"
    with lite(source, isolation_level=None) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version in (1, 2, 3):
            for statement in statements(MIGRATIONS[version - 1].render(Dialect.SQLITE)):
                db.execute(statement)
            db.execute("INSERT INTO schema_version VALUES (?)", (version,))
        db.execute(
            "INSERT INTO messages (id, sending_application, sending_facility, control_id, message_type, version, "
            "received_at, digest, raw, ack_code) VALUES (7, 'LAB', 'GENHOSP', 'X1', 'ORU^R01', '2.5.1', "
            "'2026-11-25T00:00:00+00:00', 'd', 'MSH|text not blob', 'AA')"
        )
    out = migrated(source, pg_dsn)
    assert f"  {'messages':<18} {1:>9} rows (1 new or changed)" in out
    with lite(source) as db:
        assert db.execute("SELECT max(version) FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    with psycopg.connect(pg_dsn) as pg:
        assert pg.execute("SELECT id, raw FROM messages").fetchall() == [(7, b"MSH|text not blob")]
        assert pg.execute("SELECT max(version) FROM schema_version").fetchone() == (SCHEMA_VERSION,)
        assert pg.execute("SELECT nextval(pg_get_serial_sequence('messages', 'id'))").fetchone() == (8,)
        assert pg.execute("SELECT nextval(pg_get_serial_sequence('audit', 'id'))").fetchone() == (1,)


def test_a_missing_source_is_an_error_and_no_file_is_created(tmp_path: Path, pg_dsn: str) -> None:
    missing = tmp_path / "nowhere" / "store.sqlite3"
    result = migrate(missing, pg_dsn)
    assert result.returncode == 1
    assert f"no SQLite store at {missing}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not missing.exists()
    assert not missing.parent.exists()


def test_a_file_that_is_no_store_is_refused_untouched(tmp_path: Path, pg_dsn: str) -> None:
    other = tmp_path / "other.db"
    with lite(other) as db:
        db.execute("CREATE TABLE notes (x TEXT)")
    content = other.read_bytes()
    result = migrate(other, pg_dsn)
    assert result.returncode == 1
    assert "is not an hl7-alerts store" in result.stderr
    assert other.read_bytes() == content

    text = tmp_path / "config.yaml"
    text.write_text("store:\n  path: store.sqlite3\n" * 100)
    result = migrate(text, pg_dsn)
    assert result.returncode == 1
    assert f"cannot migrate {text}: file is not a database" in result.stderr


async def test_an_unreachable_postgresql_is_a_clear_error(tmp_path: Path, refused_port: int) -> None:
    source = tmp_path / "store.sqlite3"
    await (await SqliteStore.open(source)).close()
    result = migrate(source, f"postgresql://postgres@127.0.0.1:{refused_port}/hl7?connect_timeout=3")
    assert result.returncode == 1
    assert "cannot connect to the PostgreSQL store" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("newer", ["source", "target"])
async def test_a_store_newer_than_this_code_is_refused(tmp_path: Path, pg_dsn: str, newer: str) -> None:
    source = tmp_path / "store.sqlite3"
    await (await SqliteStore.open(source)).close()
    if newer == "source":
        with lite(source) as db:
            db.execute("INSERT INTO schema_version VALUES (999)")
    else:
        with psycopg.connect(pg_dsn) as pg:
            pg.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            pg.execute("INSERT INTO schema_version VALUES (999)")
    result = migrate(source, pg_dsn)
    assert result.returncode == 1
    what = "the SQLite store" if newer == "source" else "the PostgreSQL database"
    assert what in result.stderr
    assert f"has schema version 999, newer than this hl7-alerts knows ({SCHEMA_VERSION})" in result.stderr
    with psycopg.connect(pg_dsn) as pg:  # nothing created in PostgreSQL
        assert pg.execute("SELECT to_regclass('messages')").fetchone() == (None,)


async def test_nul_bytes_in_sqlite_text_do_not_stop_the_move(tmp_path: Path, pg_dsn: str) -> None:
    """SQLite's text holds a sender's NUL bytes, PostgreSQL's cannot: they
    arrive as U+FFFD, the raw message (BYTEA) exactly as it was sent."""
    source = tmp_path / "s.sqlite3"
    store = await SqliteStore.open(source)
    await feed(store, WITH_NUL)
    await store.close()
    migrated(source, pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT sending_facility, control_id, raw FROM messages").fetchall()
        notes = conn.execute("SELECT value_text FROM observations WHERE code = 'NOTE'").fetchall()
    assert rows == [("GEN\ufffdHOSP", "N\ufffd01", WITH_NUL)]
    assert notes == [("hae\ufffdmolysed",)]
