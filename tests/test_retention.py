"""Retention: what a prune removes and what it must keep, driven by real MLLP
messages under an injected clock (no waiting for a day)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hl7_alerts.model import AckCode
from hl7_alerts.store import Pruned, SqliteStore
from tests.support.backends import Backend
from tests.support.clock import FakeClock
from tests.support.daemon import make_config, running
from tests.support.hl7kit import BAD_NO_MRN
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.samples import OPEN_CRITICAL, sample_messages
from tests.support.waiting import eventually

T0 = datetime(2026, 10, 20, 10, 0, tzinfo=UTC)

ADT = (
    b"MSH|^~\\&|ADT|GENHOSP|HL7ALERTS|GENHOSP|20261020093000||ADT^A08|ADT001|P|2.5.1\r"
    b"PID|1||H010001^^^GENHOSP^MR||TESTPATIENT^ALPHA||19700101|F\r"
    b"PV1|1|I\r"
)


def fresh_panel(patient: str, when: datetime) -> bytes:
    ts = when.strftime("%Y%m%d%H%M%S")
    return (
        f"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|{ts}||ORU^R01^ORU_R01|LATE{patient}|P|2.5.1\r"
        f"PID|1||{patient}^^^GENHOSP^MR||TESTPATIENT^FRESH||19700101|F\r"
        f"OBR|1|ORD{patient}|SPC{patient}|24325-3^Hepatic function panel^LN|||{ts}\r"
        f"OBX|1|NM|1742-6^ALT^LN||30|U/L|7-56|N|||F|||{ts}\r"
    ).encode()


def rows(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path) as db:
        return db.execute(sql).fetchall()


async def send_all(port: int, messages: list[bytes]) -> list[str]:
    client = await AsyncMllpClient.connect(port)
    codes = [ack_fields(await client.send(m))["code"] for m in messages]
    await client.close()
    return codes


async def test_prune_drops_old_messages_and_observations_and_keeps_the_audit(
    tmp_path: Path, prefix: str, refused_port: int
) -> None:
    clock = FakeClock(T0)
    db = tmp_path / "store.sqlite3"
    # No broker: the alert stays undelivered in the outbox, which retention must keep.
    config = make_config(tmp_path, refused_port, prefix, retention={"days": 400})
    async with running(config, clock=clock) as run:
        old = [*sample_messages(*OPEN_CRITICAL), BAD_NO_MRN, ADT]
        assert await send_all(run.port, old) == ["CA", "AA", "AE", "AA"]
        clock.now = T0 + timedelta(days=300)
        assert await send_all(run.port, [fresh_panel("F1", clock.now)]) == ["AA"]
        assert rows(db, "SELECT count(*) FROM observations") == [(6,)]

        clock.now = T0 + timedelta(days=401)
        pruned = await run.daemon.prune_once()
        assert pruned == Pruned(observations=5, messages=2, raw_cleared=1, rejected_messages=1)
        # What is left: the order's message (its raw bytes gone), the fresh panel.
        assert rows(db, "SELECT control_id, length(raw) > 0 FROM messages ORDER BY id") == [
            ("RX0001", 0), ("LATEF1", 1)
        ]
        assert rows(db, "SELECT count(*) FROM observations") == [(1,)]
        assert rows(db, "SELECT count(*) FROM rejected_messages") == [(0,)]
        assert rows(db, "SELECT order_id FROM orders") == [("RX1",)]
        # The order raised aza.pgx.missing, the panel aza.hepatotoxicity.stop: both kept.
        assert rows(db, "SELECT rule, state FROM alerts ORDER BY rule") == [
            ("aza.hepatotoxicity.stop", "open"), ("aza.pgx.missing", "open")
        ]
        assert rows(db, "SELECT count(*) FROM outbox WHERE delivered_at IS NULL") == [(2,)]
        assert rows(db, "PRAGMA foreign_key_check") == []
        assert rows(db, "SELECT task, last_run FROM maintenance") == [("retention", clock.now.isoformat())]
        registry = run.daemon.metrics.registry
        assert registry.get_sample_value("hl7_alerts_retention_pruned_rows_total", {"table": "observations"}) == 5

        assert await run.daemon.prune_once() == Pruned()  # a second run finds nothing


async def test_daily_task_runs_at_start_when_the_last_run_is_overdue(
    tmp_path: Path, prefix: str, refused_port: int
) -> None:
    clock = FakeClock(T0)
    db = tmp_path / "store.sqlite3"
    config = make_config(tmp_path, refused_port, prefix)  # no broker
    async with running(config, clock=clock) as run:
        assert await send_all(run.port, sample_messages(*OPEN_CRITICAL)) == ["CA", "AA"]
    # A new store started the count at T0 instead of pruning during start-up.
    assert rows(db, "SELECT task, last_run FROM maintenance") == [("retention", T0.isoformat())]
    assert rows(db, "SELECT count(*) FROM observations") == [(5,)]

    clock.now = T0 + timedelta(days=401)  # the daemon was down; the daily run is overdue
    async with running(config, clock=clock):
        # The run is recorded once it has finished.
        await eventually(lambda: rows(db, "SELECT last_run FROM maintenance") == [(clock.now.isoformat(),)],
                         what="the overdue retention run", interval=0.02)
    assert rows(db, "SELECT count(*) FROM observations") == [(0,)]
    assert rows(db, "SELECT control_id FROM messages") == [("RX0001",)]


async def test_prune_keeps_tpmt_and_nudt15_results(tmp_path: Path) -> None:
    """A poor metabolizer's genotype from years ago still stands between the
    next azathioprine order and a full dose: retention never removes it."""

    store = await SqliteStore.open(tmp_path / "s.db")
    old = datetime(2020, 1, 1, tzinfo=UTC)

    def seed(tx: object) -> None:
        conn = tx.connection  # type: ignore[attr-defined]
        conn.execute(
            "INSERT INTO messages (id, sending_application, sending_facility, control_id, message_type, version,"
            " received_at, digest, raw, ack_code) VALUES (1, 'LAB', 'H', 'M1', 'ORU^R01', '2.5', ?, 'd', X'41', 'AA')",
            (old.isoformat(),),
        )
        for analyte in ("TPMT", "NUDT15", "ALT"):
            conn.execute(
                "INSERT INTO observations (message_id, patient, analyte, code, code_system, text, value_type,"
                " value_text, comparator, unit, ref_text, flag, status, observed_at, observed_ts, specimen_id,"
                " set_id) VALUES (1, 'p', ?, ?, 'L', '', 'ST', 'x', '', '', '', '', 'F', ?, ?, 'S', '1')",
                (analyte, analyte, old.isoformat(), old.timestamp()),
            )

    await store.transact(seed)
    pruned = await store.prune(datetime(2026, 1, 1, tzinfo=UTC))
    await store.close()
    assert pruned.observations == 1
    assert rows(tmp_path / "s.db", "SELECT analyte FROM observations ORDER BY analyte") == [("NUDT15",), ("TPMT",)]


# -- rejected messages: their own, shorter retention and a row cap (issue 18 item 8)


def rejected(control: str) -> bytes:
    """An ORU whose only identifier is not an MRN: AE, kept raw in rejected_messages."""
    return BAD_NO_MRN.replace(b"|BAD001|", f"|{control}|".encode())


async def test_rejected_frames_keep_their_own_shorter_retention(
    tmp_path: Path, prefix: str, refused_port: int, backend: Backend
) -> None:
    clock = FakeClock(T0)
    config = make_config(tmp_path, refused_port, prefix, store=backend.store_section(),
                         retention={"days": 400, "rejected_days": 30})
    async with running(config, clock=clock) as run:
        assert await send_all(run.port, [rejected("OLD1"), rejected("OLD2"), ADT]) == ["AE", "AE", "AA"]
        clock.now = T0 + timedelta(days=20)
        assert await send_all(run.port, [rejected("NEW1")]) == ["AE"]
        clock.now = T0 + timedelta(days=31)
        pruned = await run.daemon.prune_once()
        assert pruned == Pruned(rejected_messages=2)  # the accepted ADT stays for retention.days
        assert backend.query("SELECT control_id FROM rejected_messages") == [("NEW1",)]
        assert backend.query("SELECT control_id FROM messages") == [("ADT001",)]
        clock.now = T0 + timedelta(days=51)
        assert await run.daemon.prune_once() == Pruned(rejected_messages=1)


async def test_rejected_frames_are_capped_at_every_insert(
    tmp_path: Path, prefix: str, refused_port: int, backend: Backend
) -> None:
    """A sender that floods rejects (at up to mllp.max_message_bytes each)
    cannot fill the disk before the daily prune: the oldest go first."""
    config = make_config(tmp_path, refused_port, prefix, store=backend.store_section(),
                         retention={"rejected_max_rows": 100})
    async with running(config) as run:
        codes = await send_all(run.port, [rejected(f"R{i:03}") for i in range(105)])
        assert set(codes) == {"AE"}
        kept = backend.query("SELECT control_id FROM rejected_messages ORDER BY id")
        registry = run.daemon.metrics.registry
        trimmed = registry.get_sample_value("hl7_alerts_retention_pruned_rows_total", {"table": "rejected_over_cap"})
    assert [c for (c,) in kept] == [f"R{i:03}" for i in range(5, 105)]
    assert trimmed == 5


async def test_insert_rejected_keeps_at_most_keep_rows(backend: Backend) -> None:
    store = await backend.open()
    try:
        def keep(raw: bytes, rows: int | None) -> Callable[[Any], int]:
            return lambda tx: tx.insert_rejected(None, raw, received_at=T0, ack_code=AckCode.AE,
                                                 reason="message does not start with an MSH segment",
                                                 keep_rows=rows)

        trimmed = [await store.transact(keep(f"junk {i}".encode(), 3)) for i in range(5)]
        assert await store.transact(keep(b"uncapped", None)) == 0
    finally:
        await store.close()
    assert trimmed == [0, 0, 0, 1, 1]
    assert [bytes(r) for (r,) in backend.query("SELECT raw FROM rejected_messages ORDER BY id")] == [
        b"junk 2", b"junk 3", b"junk 4", b"uncapped"
    ]
