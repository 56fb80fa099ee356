"""Batches in one frame (CLINICAL.md decision 13): how a frame is read
(`batches.read_batch`), the batch acknowledgment, and the daemon over real
MLLP: one frame in, one frame out, each message processed in order as if
sent alone, with its own dedup key and code, all durable before the answer,
and never an AA for a message the store did not keep."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hl7_alerts.batches import Envelope, read_batch
from hl7_alerts.config import Config
from hl7_alerts.frames import FrameHandler, FrameSettings
from hl7_alerts.metrics import Metrics
from hl7_alerts.model import AckCode
from hl7_alerts.store import StoreError, Transaction
from tests.support.backends import Backend
from tests.support.broker import Broker
from tests.support.daemon import NO_MONITORING, make_config, running
from tests.support.hl7kit import AZA, alt, order_msg, oru
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.mqtt import recording
from tests.support.samples import PGX, STOP

NOW = datetime(2026, 11, 25, tzinfo=UTC)
FHS = "FHS|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||labfile.hl7||F20261020"
BHS = "BHS|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||||B20261020"
NO_ID = "PID|1||900123456^^^SSA^SS"  # no usable identifier: AE


def batch(*messages: str, fhs: bool = True, bhs: bool = True) -> bytes:
    """An FHS/BHS batch in one frame, CR segment ends."""
    lines = ([FHS] if fhs else []) + ([BHS] if bhs else [])
    body = "".join(messages)
    trailer = ([f"BTS|{len(messages)}"] if bhs else []) + (["FTS|1"] if fhs else [])
    head = "\r".join(lines) + "\r" if lines else ""
    return (head + body + "\r".join(trailer) + ("\r" if trailer else "")).encode()


def segments(answer: bytes) -> list[list[str]]:
    return [s.split("|") for s in answer.decode().strip("\r").split("\r")]


def msas(answer: bytes) -> list[tuple[str, str]]:
    """(MSA-1, MSA-2) of every message answered, in order."""
    return [(s[1], s[2]) for s in segments(answer) if s[0] == "MSA"]


def order(control: str) -> str:
    return order_msg(control, "NW", "RX1", AZA, "202609010900")


def panel(control: str, value: str = "190") -> str:
    return oru(control, "202610200800", alt(value))


def bad(control: str) -> str:
    return oru(control, "202610200800", alt("30")).replace("PID|1||H0990001^^^GENHOSP^MR", NO_ID)


# -- reading a frame ---------------------------------------------------------


def test_a_single_message_is_not_a_batch() -> None:
    assert read_batch(order("O1").encode()) is None
    assert read_batch(b"\r\n" + order("O1").encode()) is None  # blank lines before the MSH
    assert read_batch(b"EVN|A01\r" + order("O1").encode()) is None  # junk first: the single path refuses it
    assert read_batch((order("O1") + "BTS|1\r").encode()) is None  # a stray trailer


def test_a_batch_is_split_like_a_file() -> None:
    frame = batch(order("O1"), panel("L1")).replace(b"\r", b"\r\n")
    read = read_batch(frame)
    assert read is not None
    assert read.file_header == Envelope(
        segment="FHS", sending_application="LAB", sending_facility="GENHOSP", receiving_application="HL7ALERTS",
        receiving_facility="ICU", control_id="F20261020",
    )
    (only,) = read.batches
    assert only.header is not None
    assert only.header.control_id == "B20261020"
    assert [m.split(b"|")[9] for m in only.messages] == [b"O1", b"L1"]
    assert all(m.endswith(b"\r") and b"\n" not in m for m in only.messages)


def test_several_batches_and_messages_without_a_header() -> None:
    two = f"{FHS}\r{BHS}\r{order('O1')}BTS|1\r{BHS.replace('B2026', 'C2026')}\r{panel('L1')}{panel('L2')}BTS|2\rFTS|2\r"
    read = read_batch(two.encode())
    assert read is not None
    assert [(b.header.control_id if b.header else None, len(b.messages)) for b in read.batches] == [
        ("B20261020", 1), ("C20261020", 2)]
    plain = read_batch((order("O1") + "\r" + panel("L1")).encode())  # two MSH, no envelope
    assert plain is not None
    assert (plain.file_header, [len(b.messages) for b in plain.batches]) == (None, [2])
    nothing = read_batch(f"{BHS}\rEVN|A04\rPID|1\rBTS|0\r".encode())
    assert nothing is not None
    assert nothing.messages == (b"EVN|A04\rPID|1\r",)  # what stood before any MSH, kept to be answered


# -- over real MLLP ----------------------------------------------------------


def store_rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        return db.execute(sql).fetchall()


async def test_one_frame_in_one_batch_acknowledgment_out(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix, rules=NO_MONITORING)
    other_patient = oru("B4", "202610200800", alt("30"), mrn="H0990002^^^GENHOSP^MR")
    frame = batch(order("B1"), panel("B2"), bad("B3"), other_patient)
    async with recording(broker, prefix) as pager, running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        answer = await client.send(frame)
        after = ack_fields(await client.send(panel("S1", "40").encode()))  # the next frame's answer is its own
        await client.close()
        alerts = await pager.wait_alerts(2)
    rows = segments(answer)
    assert [r[0] for r in rows] == [
        "FHS", "BHS", "MSH", "MSA", "MSH", "MSA", "MSH", "MSA", "ERR", "MSH", "MSA", "BTS", "FTS"]
    assert rows[0][11] == "F20261020"
    assert rows[1][11] == "B20261020"
    assert msas(answer) == [("AA", "B1"), ("AA", "B2"), ("AE", "B3"), ("AA", "B4")]
    assert rows[8][8].startswith("PID-3 has no patient identifier")  # ERR-8 of the AE, after its MSA
    assert (rows[-2], rows[-1]) == (["BTS", "4"], ["FTS", "1"])
    assert (after["code"], after["control_id"]) == ("AA", "S1")
    # In order, as if sent alone: the order was on file when its panel came.
    assert [(a["rule"], a["source"]["control_id"]) for a in alerts] == [(PGX, "B1"), (STOP, "B2")]
    assert store_rows(tmp_path, "SELECT control_id FROM messages ORDER BY id") == [("B1",), ("B2",), ("B4",), ("S1",)]
    assert store_rows(tmp_path, "SELECT control_id, ack_code FROM rejected_messages") == [("B3", "AE")]


async def test_dedup_is_per_message_and_a_resent_batch_changes_nothing(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    config = make_config(tmp_path, broker.port, prefix, rules=NO_MONITORING)
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        alone = ack_fields(await client.send(order("D1").encode()))
        first = await client.send(batch(order("D1"), panel("D2"), fhs=False))
        outbox = store_rows(tmp_path, "SELECT count(*) FROM outbox")
        again = await client.send(batch(order("D1"), panel("D2"), fhs=False))
        await client.close()
    assert alone["code"] == "AA"
    assert [r[0] for r in segments(first)] == ["BHS", "MSH", "MSA", "MSH", "MSA", "BTS"]  # no FHS in, none out
    assert msas(first) == msas(again) == [("AA", "D1"), ("AA", "D2")]
    assert store_rows(tmp_path, "SELECT control_id FROM messages ORDER BY id") == [("D1",), ("D2",)]
    assert store_rows(tmp_path, "SELECT count(*) FROM outbox") == outbox == [(2,)]  # pgx.missing, stop


async def test_each_message_keeps_its_own_ack_mode_and_a_batch_without_messages_gets_one_ae(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    enhanced = panel("E2").replace("|P|2.5.1", "|P|2.5.1|||AL|NE", 1)
    config = make_config(tmp_path, broker.port, prefix, rules=NO_MONITORING)
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        mixed = await client.send(batch(order("E1"), enhanced, fhs=False))
        empty = await client.send(f"{BHS}\rEVN|A04\rPID|1||H1^^^GENHOSP^MR\rBTS|1\r".encode())
        plain = await client.send((order("E3") + order("E4")).encode())  # two MSH, no envelope
        await client.close()
    assert msas(mixed) == [("AA", "E1"), ("CA", "E2")]
    nak = ack_fields(empty)
    assert (nak["code"], nak["control_id"]) == ("AE", "B20261020")  # one ACK, answering the batch
    assert nak["MSH"].startswith("MSH|^~\\&|HL7ALERTS|ICU|LAB|GENHOSP|")
    assert "no message" in nak["text"]
    assert [r[0] for r in segments(plain)] == ["MSH", "MSA", "MSH", "MSA"]  # what came: no envelope
    assert msas(plain) == [("AA", "E3"), ("AA", "E4")]
    assert store_rows(tmp_path, "SELECT control_id FROM rejected_messages") == [("B20261020",)]


async def test_a_store_failure_mid_batch_never_answers_aa_for_what_was_not_kept(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    """The store fails the third message: the two before it are durable (AA),
    it and every one after it get AR (the later ones are not run: they must
    not overtake it) and the sender resends the batch, which then completes
    without doubling anything."""
    config = make_config(tmp_path, broker.port, prefix, rules=NO_MONITORING)
    frame = batch(order("F1"), panel("F2"), panel("F3", "200"), panel("F4", "220"))
    async with running(config) as daemon:
        with sqlite3.connect(tmp_path / "store.sqlite3") as db:
            db.execute(
                "CREATE TRIGGER fail_f3 BEFORE INSERT ON messages WHEN NEW.control_id = 'F3' "
                "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
            )
        client = await AsyncMllpClient.connect(daemon.port)
        failed = await client.send(frame)
        kept = store_rows(tmp_path, "SELECT control_id FROM messages ORDER BY id")
        with sqlite3.connect(tmp_path / "store.sqlite3") as db:
            db.execute("DROP TRIGGER fail_f3")
        resent = await client.send(frame)
        await client.close()
    assert msas(failed) == [("AA", "F1"), ("AA", "F2"), ("AR", "F3"), ("AR", "F4")]
    assert kept == [("F1",), ("F2",)]
    assert msas(resent) == [("AA", "F1"), ("AA", "F2"), ("AA", "F3"), ("AA", "F4")]
    assert store_rows(tmp_path, "SELECT control_id FROM messages ORDER BY id") == [
        ("F1",), ("F2",), ("F3",), ("F4",)]
    events = store_rows(tmp_path, "SELECT event FROM outbox ORDER BY id")
    assert events == [("firing",), ("firing",), ("updated",), ("updated",)]  # pgx.missing; stop, then F3, F4


# -- when the store fails the whole batch ----------------------------------------


class _FailingCommit:
    """A store whose commit fails (disk full at COMMIT): every unit of the
    batch fails, whatever it did."""

    def __init__(self, store: Any) -> None:
        self._store = store

    async def transact_each(self, units: list[Callable[[Transaction], Any]]) -> list[Any]:
        return [StoreError("database or disk is full") for _ in units]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_commit_that_fails_answers_every_message_ar(backend: Backend) -> None:
    config = Config()
    settings = FrameSettings(options=config.parse_options(), pipeline=config.pipeline_settings())
    store = await backend.open()
    try:
        frames = FrameHandler(_FailingCommit(store), lambda: settings, Metrics(), lambda: NOW,  # type: ignore[arg-type]
                              max_message_bytes=1 << 20)
        answer = await frames.answer(batch(order("G1"), bad("G2")))
    finally:
        await store.close()
    assert [p.code for p in answer.parts] == [AckCode.AR, AckCode.AR]  # not even the AE: its raw was not kept
    assert answer.code is AckCode.AR
    assert msas(answer.ack) == [("AR", "G1"), ("AR", "G2")]
    assert backend.query("SELECT count(*) FROM messages") == [(0,)]


async def test_a_real_commit_failure_fails_the_whole_batch(pg_dsn: str, tmp_path: Path) -> None:
    """PostgreSQL: a deferred constraint fails at COMMIT, after every unit
    ran: none of the batch is kept, every message gets AR."""
    backend = Backend("postgresql", tmp_path, dsn=pg_dsn)
    config = Config()
    settings = FrameSettings(options=config.parse_options(), pipeline=config.pipeline_settings())
    store = await backend.open()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$"
        )
        conn.execute(
            "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON messages "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    try:
        frames = FrameHandler(store, lambda: settings, Metrics(), lambda: NOW, max_message_bytes=1 << 20)
        answer = await frames.answer(batch(order("H1"), panel("H2")))
    finally:
        await store.close()
    assert msas(answer.ack) == [("AR", "H1"), ("AR", "H2")]
    assert backend.query("SELECT count(*) FROM messages") == [(0,)]


@pytest.mark.parametrize("fhs", [True, False], ids=["fhs", "bhs-only"])
async def test_a_batch_through_the_frame_handler_on_each_backend(backend: Backend, fhs: bool) -> None:
    config = Config()
    settings = FrameSettings(options=config.parse_options(), pipeline=config.pipeline_settings())
    store = await backend.open()
    try:
        frames = FrameHandler(store, lambda: settings, Metrics(), lambda: NOW, max_message_bytes=1 << 20)
        answer = await frames.answer(batch(order("K1"), panel("K2"), bad("K3"), fhs=fhs))
        again = await frames.answer(batch(order("K1"), panel("K2"), bad("K3"), fhs=fhs))
    finally:
        await store.close()
    assert msas(answer.ack) == msas(again.ack) == [("AA", "K1"), ("AA", "K2"), ("AE", "K3")]
    assert [c.alert.rule for p in answer.parts if p.outcome for c in p.outcome.changes] == [PGX, STOP]
    assert [c for p in again.parts if p.outcome for c in p.outcome.changes] == []
    assert backend.query("SELECT control_id FROM messages ORDER BY id") == [("K1",), ("K2",)]
