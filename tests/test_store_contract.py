"""The store's contract, on every backend: what the pipeline, the publisher
and the timers rely on holds on SQLite and on PostgreSQL alike. Then what
only several daemons sharing one PostgreSQL can break: dedup across
daemons, one alert per fingerprint, outbox claims and their leases, timers
that fire once, and a unit that must wait for another daemon's lock."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hl7_alerts.alerts import ReminderPolicy
from hl7_alerts.lifecycle import send_reminders
from hl7_alerts.messages import ParseOptions, parse_message
from hl7_alerts.model import AckCode, Severity
from hl7_alerts.pipeline import Outcome, digest, process
from hl7_alerts.segments import split_file
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import SCHEMA_VERSION, DedupKey, SchemaTooNewError, StoreError, Transaction
from hl7_alerts.store.postgres import PostgresStore
from hl7_alerts.store.queries import SqlTransaction
from hl7_alerts.terminology import Terminology
from tests.support.backends import Backend
from tests.support.hl7kit import AST, AZA, WITH_NUL, alt, merge_msg, order_msg, oru, result
from tests.support.samples import SAMPLES
from tests.support.waiting import WAIT, eventually

OPTIONS = ParseOptions(terminology=Terminology(), timezone=UTC)
NOW = datetime(2026, 11, 25, tzinfo=UTC)
SETTINGS = PipelineSettings()
ORDER = split_file((SAMPLES / "01_seed_order_azathioprine.hl7").read_bytes())[0]
PANEL = split_file((SAMPLES / "02_seed_liver_panel_above_3xuln.hl7").read_bytes())[0]
STOP = "aza.hepatotoxicity.stop"


def unit(raw: bytes):  # type: ignore[no-untyped-def]
    message = parse_message(raw, OPTIONS)
    return lambda tx: process(tx, message, raw, received_at=NOW, settings=SETTINGS)


def patient(raw: bytes, pid: str, control: str) -> bytes:
    """A sample message for another synthetic patient, under another control id."""
    return raw.replace(b"H010001", pid.encode()).replace(b"|RX0001|", f"|{control}|".encode()).replace(
        b"|LAB0001|", f"|{control}|".encode()
    )


def sql(tx: Transaction) -> SqlTransaction:
    assert isinstance(tx, SqlTransaction)
    return tx


# ---------------------------------------------------------------------------
# Every backend


async def test_migrations_run_once_and_a_newer_schema_is_refused(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    store = await backend.open()  # nothing left to migrate
    await store.close()
    assert backend.query("SELECT max(version), count(*) FROM schema_version") == [(SCHEMA_VERSION, SCHEMA_VERSION)]
    backend.query("INSERT INTO schema_version (version) VALUES (?) RETURNING version", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNewError, match="newer than this hl7-alerts knows"):
        await backend.open()


async def test_a_failing_unit_rolls_back_alone_in_a_grouped_commit(backend: Backend) -> None:
    store = await backend.open()

    def boom(tx: Transaction) -> None:
        unit(patient(PANEL, "H777", "LABX"))(tx)
        raise RuntimeError("defect after writing")

    results = await asyncio.gather(
        store.transact(unit(ORDER)), store.transact(boom), store.transact(unit(PANEL)), return_exceptions=True
    )
    await store.close()
    assert isinstance(results[1], RuntimeError)
    assert [c.alert.rule for c in results[2].changes] == [STOP]
    assert backend.query("SELECT control_id FROM messages ORDER BY id") == [("RX0001",), ("LAB0001",)]
    assert backend.query("SELECT count(*) FROM outbox") == [(2,)]


async def test_a_unit_is_answered_as_committed_only_if_it_was(backend: Backend) -> None:
    """A unit that swallows a database error: SQLite rolls back only that
    statement; PostgreSQL aborts the transaction and answers its COMMIT with
    a ROLLBACK, without an error. Either the unit's work is there, or the
    caller hears that it is not (AR upstream); never an answer for nothing."""
    store = await backend.open()

    def careless(tx: Transaction) -> Outcome:
        outcome = unit(ORDER)(tx)
        with contextlib.suppress(Exception):
            sql(tx).execute("INSERT INTO no_such_table VALUES (1)")
        return outcome

    try:
        answered = await store.transact(careless)
    except StoreError:
        answered = None
    await store.close()
    stored = backend.query("SELECT count(*) FROM messages")[0][0]
    assert (answered is not None) == (stored == 1)
    assert stored == (1 if backend.name == "sqlite" else 0)


async def test_a_group_runs_in_order_and_a_defect_fails_only_its_unit(backend: Backend) -> None:
    """`transact_each` (a batch of messages in one frame): in order, one
    savepoint each, every result once all are durable."""
    store = await backend.open()

    def defect(tx: Transaction) -> None:
        unit(patient(PANEL, "H777", "LABX"))(tx)
        raise RuntimeError("defect after writing")

    results = await store.transact_each([unit(ORDER), defect, unit(PANEL), unit(PANEL)])
    await store.close()
    order, failed, panel, again = results
    assert isinstance(failed, RuntimeError)
    assert isinstance(order, Outcome)
    assert isinstance(panel, Outcome)
    assert isinstance(again, Outcome)
    assert [c.alert.rule for c in panel.changes] == [STOP]  # the order before it is seen
    assert (again.duplicate, again.ack_code) == (True, AckCode.AA)
    assert backend.query("SELECT control_id FROM messages ORDER BY id") == [("RX0001",), ("LAB0001",)]


async def test_a_store_failure_in_a_group_fails_the_units_after_it(backend: Backend) -> None:
    """Once the store fails a unit, the later ones are not run (StoreError
    too): applying them would put the sender's messages out of order. What
    came before commits; units outside the group are not held up."""
    store = await backend.open()

    def broken(tx: Transaction) -> None:
        sql(tx).execute("INSERT INTO no_such_table VALUES (1)")

    other = asyncio.ensure_future(store.transact(unit(patient(ORDER, "H555", "RXZ"))))
    results = await store.transact_each([unit(ORDER), broken, unit(PANEL)])
    await other
    await store.close()
    assert isinstance(results[0], Outcome)
    assert isinstance(results[1], StoreError)
    assert isinstance(results[2], StoreError)
    assert "not run" in str(results[2])
    assert sorted(backend.query("SELECT control_id FROM messages")) == [("RX0001",), ("RXZ",)]


async def test_a_resend_gets_the_first_answer_and_changes_nothing(backend: Backend) -> None:
    store = await backend.open()
    await store.transact(unit(ORDER))
    first = await store.transact(unit(PANEL))
    again = await store.transact(unit(PANEL))
    await store.close()
    assert (first.duplicate, again.duplicate, again.ack_code, again.changes) == (False, True, AckCode.AA, ())
    assert backend.query("SELECT count(*) FROM messages") == [(2,)]


async def test_a_reused_control_id_is_processed_and_every_resend_gets_its_own_answer(backend: Backend) -> None:
    """A sender reusing MSH-10 (counters reset): each new content under the
    key is processed; a resend of any of them is found by its digest, not
    mistaken for the first one under the key (`prior_message` reads at most
    two rows, however many share the key)."""
    store = await backend.open()
    panels = [PANEL.replace(b"|190|", f"|{v}|".encode()) for v in (190, 191, 192, 193)]
    assert len(set(panels)) == 4
    first = [await store.transact(unit(p)) for p in panels]
    resent = [await store.transact(unit(p)) for p in reversed(panels)]
    key = DedupKey(sending_application="LAB", sending_facility="GENHOSP", control_id="LAB0001")
    found = [await store.read(lambda tx, p=p: tx.prior_message(key, digest(p))) for p in panels]
    other = await store.read(lambda tx: tx.prior_message(key, "0" * 32))
    unknown = await store.read(
        lambda tx: tx.prior_message(DedupKey(sending_application="LAB", sending_facility="GENHOSP",
                                             control_id="NEVER"), digest(PANEL))
    )
    await store.close()
    assert [o.duplicate for o in first] == [False] * 4
    assert [o.duplicate for o in resent] == [True] * 4
    ids = [row[0] for row in backend.query("SELECT id FROM messages WHERE control_id = 'LAB0001' ORDER BY id")]
    assert len(ids) == 4
    assert [f.message_id if f else None for f in found] == ids  # each resend finds its own message
    assert [f.digest if f else None for f in found] == [digest(p) for p in panels]
    assert other is not None  # new content under a used key: one of the messages there
    assert (other.message_id, other.digest) in {(i, digest(p)) for i, p in zip(ids, panels, strict=True)}
    assert unknown is None


async def test_latest_results_per_analyte_in_one_statement(backend: Backend) -> None:
    """Per analyte the latest evaluable result before ``before`` (and from
    ``since``): pending (I) and superseded results are not evaluable;
    ``analytes`` narrows it to those asked for."""
    store = await backend.open()
    messages = [
        oru("L0", "20250101080000", result(AST, "21", ref="10-40", name="AST"), specimen="S0"),
        oru("L1", "20261001080000", alt("30"), result(AST, "20", ref="10-40", name="AST"), specimen="S1"),
        oru("L2", "20261002080000", alt("40", status="P"), result(AST, "25", ref="10-40", name="AST", status="I"),
            specimen="S2"),
        oru("L3", "20261003080000", alt("50"), specimen="S3"),
        oru("L4", "20261003080000", alt("55", status="C"), specimen="S3"),  # corrects L3's ALT
        oru("L5", "20261004080000", alt("60"), specimen="S4"),
    ]
    for m in messages:
        await store.transact(unit(m.encode()))
    who = parse_message(messages[1].encode(), OPTIONS).patient  # type: ignore[union-attr]

    def at(text: str) -> datetime:
        return datetime.strptime(text, "%Y%m%d%H").replace(tzinfo=UTC)

    async def latest(before: str, since: str | None, analytes: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
        rows = await store.read(
            lambda tx: tx.latest_results(who, at(before), at(since) if since else None, analytes=analytes)
        )
        return [(str(o.analyte), o.value_text) for o in rows]

    everything = await latest("2026100320", None)
    recent = await latest("2026100320", "2026100208")
    asked = await latest("2026100320", None, ("AST", "TPMT"))
    old = await latest("2026100100", None, ("AST",))
    before_all = await latest("2024010100", None)
    none_asked = await latest("2026100320", None, ())
    await store.close()
    # Sorted by observation time: AST of 1 Oct (2 Oct's is pending), ALT 55 (corrected) of 3 Oct.
    assert everything == [("AST", "20"), ("ALT", "55")]
    assert recent == [("ALT", "55")]
    assert asked == [("AST", "20")]
    assert old == [("AST", "21")]
    assert before_all == []
    assert none_asked == []


async def test_a_result_skipped_for_want_of_an_order_counts_once_one_arrives(backend: Backend) -> None:
    """The fast path reads no history for a patient with no thiopurine order;
    the order that arrives later (its own commit) judges that result
    (decision 18), and the next result is judged as it comes."""
    store = await backend.open()
    skipped = await store.transact(unit(oru("S1", "20261001080000", alt("300")).encode()))
    order = await store.transact(
        unit(order_msg("RX1", "NW", "RX1", AZA, "20260901090000", tx="20261005090000").encode())
    )
    later = await store.transact(unit(oru("S2", "20261006080000", alt("400"), specimen="S2").encode()))
    await store.close()
    assert skipped.changes == ()
    assert [c.alert.rule for c in order.changes] == [STOP]
    assert later.changes  # the open alert moves on with the new panel
    assert {c.alert.rule for c in later.changes} == {STOP}


async def test_the_outbox_goes_out_in_order_and_is_audited(backend: Backend) -> None:
    store = await backend.open()
    for raw in (ORDER, PANEL):
        await store.transact(unit(raw))
    rows = await store.pending_outbox(10)
    assert [r.event for r in rows] == ["firing", "firing"]
    assert await store.pending_outbox(10, after_id=rows[-1].id) == []  # those are in flight
    backlog = await store.outbox_backlog()
    assert backlog.depth == 2
    await store.mark_delivered([r.id for r in rows], NOW)
    assert (await store.outbox_backlog()).depth == 0
    detail = await store.alert_detail(rows[1].alert_id)
    await store.close()
    assert detail is not None
    assert [line.kind for line in detail[1]] == ["event", "delivered"]


async def test_the_audit_trail_is_append_only(backend: Backend) -> None:
    store = await backend.open()
    await store.transact(unit(ORDER))
    with pytest.raises(StoreError, match="append-only"):
        await store.transact(lambda tx: sql(tx).execute("UPDATE audit SET detail = 'x'"))
    with pytest.raises(StoreError, match="append-only"):
        await store.transact(lambda tx: sql(tx).execute("DELETE FROM audit"))
    await store.close()


async def test_lists_reminders_and_prune_read_the_same_on_both(backend: Backend) -> None:
    store = await backend.open()
    for raw in (ORDER, PANEL):
        await store.transact(unit(raw))
    alerts = await store.list_alerts()
    assert sorted(a.alert.rule for a in alerts) == ["aza.hepatotoxicity.stop", "aza.pgx.missing"]
    policy = ReminderPolicy(after_seconds=60, max_reminders=1, severities=frozenset({Severity.CRITICAL}))
    later = NOW + timedelta(hours=1)
    sent = await store.transact(lambda tx: send_reminders(tx, policy=policy, settings=SETTINGS, now=later))
    again = await store.transact(lambda tx: send_reminders(tx, policy=policy, settings=SETTINGS, now=later))
    assert len(sent) == 1
    assert again == []
    schedules = await store.list_schedules()
    assert [s.order_id for s in schedules] == ["RX1"]
    pruned = await store.prune(NOW + timedelta(days=3650))
    await store.close()
    assert pruned.observations > 0
    assert backend.query("SELECT count(*) FROM orders") == [(1,)]  # orders are never pruned


async def test_nul_bytes_in_fields_never_make_a_message_fail_for_ever(backend: Backend) -> None:
    """Stored (the raw bytes as sent), evaluated, and a resend is still
    recognised: not an AR that the sender would retry without end."""
    store = await backend.open()
    await store.transact(unit(ORDER))
    first = await store.transact(unit(WITH_NUL))
    again = await store.transact(unit(WITH_NUL))
    await store.close()
    assert (first.ack_code, first.duplicate, again.duplicate) == (AckCode.AA, False, True)
    assert [c.alert.rule for c in first.changes] == [STOP]
    assert backend.query("SELECT raw FROM messages WHERE message_type LIKE ?", ("ORU%",)) == [(WITH_NUL,)]


async def test_a40_merge_moves_orders_history_and_alerts(backend: Backend) -> None:
    """The merge's SQL differs most between dialects (moving rows that may
    collide with the survivor's): the survivor's next panel escalates the
    prior record's open alert, under the same id."""
    old = "H0990009^^^GENHOSP^MR"
    messages = [
        order_msg("RX1", "NW", "RX1", AZA, "20260901090000", mrn=old),
        order_msg("RX2", "NW", "RX1", AZA, "20260901090000"),  # the survivor's own copy of the order wins
        oru("L1", "20261001080000", alt("60"), mrn=old),
        merge_msg("A1", "20261002080000", prior=old),
        oru("L2", "20261008080000", alt("62"), specimen="S2"),
    ]
    store = await backend.open()
    outcomes = [await store.transact(unit(m.encode())) for m in messages]
    await store.close()
    mild = [(c.event, c.alert.alert_id) for o in outcomes for c in o.changes if c.alert.rule == "aza.liver.mild"]
    assert [e for e, _ in mild] == ["firing", "escalated"]
    assert mild[0][1] == mild[1][1]
    assert backend.query("SELECT patient, order_id FROM orders") == [("GENHOSP|MR|H0990001", "RX1")]
    assert backend.query("SELECT DISTINCT patient FROM observations") == [("GENHOSP|MR|H0990001",)]


async def test_a_failed_commit_is_remembered_and_the_writer_reopens_its_connection(backend: Backend) -> None:
    """What /healthz and the reopen rest on: a statement the store refuses
    marks the last commit failed until a later write commits (the health
    probe's own write does not clear it), and the writer's next batch runs
    on a new connection (one writer here, so "the writer" is the one that failed)."""
    store = await (backend.open() if backend.dsn is None else PostgresStore.open(backend.dsn, writers=1))
    connection = await store.read(lambda tx: sql(tx).connection)  # held: its id is not reused
    assert store.commit_failure is None

    def refused(tx: Transaction) -> None:
        sql(tx).execute("INSERT INTO no_such_table (x) VALUES (1)")

    with pytest.raises(StoreError, match="no_such_table"):
        await store.transact(refused)
    assert store.commit_failure is not None
    assert "no_such_table" in store.commit_failure
    await store.probe_write(NOW)  # one tiny row commits: that says nothing of the next message
    assert store.commit_failure is not None
    assert await store.read(lambda tx: sql(tx).connection) is not connection  # reopened after the failure
    await store.mark_run("test", NOW)
    assert store.commit_failure is None
    await store.close()


# ---------------------------------------------------------------------------
# Several daemons on one PostgreSQL


@pytest.fixture
def shared(pg_dsn: str, tmp_path: Path) -> Backend:
    return Backend("postgresql", tmp_path, dsn=pg_dsn)


async def test_the_same_message_at_two_daemons_at_once_is_processed_once(shared: Backend) -> None:
    a, b = await shared.open(owner="a"), await shared.open(owner="b")
    await a.transact(unit(ORDER))
    panels = [patient(PANEL, "H010001", f"LABR{i}") for i in range(10)]
    for raw in panels:
        answers: list[Outcome] = await asyncio.gather(a.transact(unit(raw)), b.transact(unit(raw)))
        assert [o.ack_code for o in answers] == [AckCode.AA, AckCode.AA]
        assert sorted(o.duplicate for o in answers) == [False, True]
    await a.close()
    await b.close()
    assert shared.query("SELECT count(*) FROM messages") == [(11,)]
    assert shared.query("SELECT count(*) FROM alerts WHERE rule = ?", (STOP,)) == [(1,)]


async def test_two_daemons_evaluating_one_patient_open_one_alert(shared: Backend) -> None:
    a, b = await shared.open(owner="a"), await shared.open(owner="b")
    await a.transact(unit(ORDER))
    # Different panels (other control ids and specimens), same patient, same moment.
    panels = [patient(PANEL, "H010001", f"LABP{i}").replace(b"SPC100", f"SPC9{i}".encode()) for i in range(8)]
    stores = [a, b] * 4
    outcomes = await asyncio.gather(*(s.transact(unit(raw)) for s, raw in zip(stores, panels, strict=True)))
    await a.close()
    await b.close()
    fired = [c for o in outcomes for c in o.changes if c.alert.rule == STOP and c.event == "firing"]
    assert len(fired) == 1
    assert shared.query("SELECT count(*) FROM alerts WHERE rule = ?", (STOP,)) == [(1,)]


async def test_a_patients_outbox_rows_are_claimed_by_one_daemon_in_order(shared: Backend) -> None:
    a, b = await shared.open(owner="a"), await shared.open(owner="b")
    for i in range(3):
        await a.transact(unit(patient(ORDER, f"H5{i}", f"RXO{i}")))
        await a.transact(unit(patient(PANEL, f"H5{i}", f"LABO{i}")))
    # A claims the first two rows: patient H50's order and panel alerts.
    mine = await a.pending_outbox(2)
    assert len(mine) == 2
    # B gets the other patients' rows, never H50's.
    theirs = await b.pending_outbox(10)
    assert {r.id for r in theirs}.isdisjoint(r.id for r in mine)
    assert len(theirs) == 4
    assert all('"H50"' not in r.payload for r in theirs)
    assert await b.pending_outbox(10, after_id=max(r.id for r in theirs)) == []
    # A's connection ends: its claims are released, B takes them, in order.
    await a.release_outbox()
    taken = await b.pending_outbox(10, after_id=max(r.id for r in theirs))
    assert [r.id for r in taken] == [r.id for r in mine]
    await a.close()
    await b.close()


async def test_a_dead_daemons_claims_go_to_another_once_the_lease_runs_out(shared: Backend) -> None:
    a = await shared.open(owner="a", lease_seconds=0.5)
    b = await shared.open(owner="b")
    await a.transact(unit(ORDER))
    await a.transact(unit(PANEL))
    claimed = await a.pending_outbox(10)
    await a.close()  # dies without releasing or delivering
    assert await b.pending_outbox(10) == []  # the lease still runs
    # Polling the database's clock: B gets the rows once the lease has run out there.
    taken = await eventually(lambda: b.pending_outbox(10), what="A's lease to run out", interval=0.05)
    assert [r.id for r in taken] == [r.id for r in claimed]
    await b.close()


async def test_timers_on_two_daemons_fire_once(shared: Backend) -> None:
    a, b = await shared.open(owner="a"), await shared.open(owner="b")
    for raw in (ORDER, PANEL):
        await a.transact(unit(raw))
    policy = ReminderPolicy(after_seconds=60, max_reminders=3, severities=frozenset({Severity.CRITICAL}))
    later = NOW + timedelta(hours=1)

    def tick(tx: Transaction) -> list[str]:
        if not tx.try_timers():
            return []
        return send_reminders(tx, policy=policy, settings=SETTINGS, now=later)

    results = await asyncio.gather(*(s.transact(tick) for s in (a, b, a, b)))
    await a.close()
    await b.close()
    assert sum(len(r) for r in results) == 1
    assert shared.query("SELECT count(*) FROM outbox WHERE event = 'reminder'") == [(1,)]


async def test_a_unit_that_would_wait_inside_a_batch_runs_alone_after_it(shared: Backend) -> None:
    """Daemon A holds the patient's lock; daemon B's batch reaches a unit for
    that patient after another unit: waiting there could deadlock, so the
    unit is deferred, then run alone (waiting is safe there) once A commits."""
    a = await shared.open(owner="a")
    assert shared.dsn is not None
    b = await PostgresStore.open(shared.dsn, owner="b", writers=1)  # one writer: the two units share a batch
    await a.transact(unit(ORDER))
    held, release, b_busy, b_go = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    key = parse_message(ORDER, OPTIONS).patient  # type: ignore[union-attr]

    def hold(tx: Transaction) -> None:
        tx.lock(patients=[key])
        held.set()
        assert release.wait(WAIT)

    def occupy(tx: Transaction) -> None:
        b_busy.set()
        assert b_go.wait(WAIT)

    holding = asyncio.ensure_future(a.transact(hold))
    busy = asyncio.ensure_future(b.transact(occupy))  # B's writer waits: the next two share a batch
    await asyncio.to_thread(lambda: held.wait(WAIT) and b_busy.wait(WAIT))
    other = asyncio.ensure_future(b.transact(unit(patient(PANEL, "H888", "LABQ"))))
    panel = asyncio.ensure_future(b.transact(unit(PANEL)))
    b_go.set()
    done, _ = await asyncio.wait({other}, timeout=WAIT)
    assert other in done  # its batch committed without waiting for A
    assert not panel.done()  # deferred behind A's lock
    release.set()
    outcome = await asyncio.wait_for(panel, WAIT)
    await asyncio.wait_for(asyncio.gather(holding, busy), WAIT)
    await a.close()
    await b.close()
    assert [c.alert.rule for c in outcome.changes] == [STOP]


async def test_a_group_waiting_for_another_daemons_lock_keeps_its_order(shared: Backend) -> None:
    """Daemon A holds a patient's lock; B's group reaches that patient's
    unit after another one: that unit is deferred, and the group's later
    units with it, all run alone after A commits, in the group's order."""
    a = await shared.open(owner="a")
    assert shared.dsn is not None
    b = await PostgresStore.open(shared.dsn, owner="b", writers=2)
    await a.transact(unit(ORDER))
    held, release = threading.Event(), threading.Event()
    key = parse_message(ORDER, OPTIONS).patient  # type: ignore[union-attr]

    def hold(tx: Transaction) -> None:
        tx.lock(patients=[key])
        held.set()
        assert release.wait(WAIT)

    holding = asyncio.ensure_future(a.transact(hold))
    await asyncio.to_thread(held.wait, WAIT)
    group = asyncio.ensure_future(b.transact_each([
        unit(patient(ORDER, "H888", "RXQ")),
        unit(PANEL),  # H010001: A holds its lock
        unit(patient(PANEL, "H888", "LABQ")),
    ]))
    # The first unit commits in the group's batch; the rest wait for A.
    await eventually(
        lambda: shared.query("SELECT control_id FROM messages WHERE control_id = 'RXQ'") or None,
        what="the group's first unit to commit",
    )
    assert not group.done()
    assert shared.query("SELECT count(*) FROM messages WHERE control_id = 'LABQ'") == [(0,)]
    release.set()
    results = await asyncio.wait_for(group, WAIT)
    await asyncio.wait_for(holding, WAIT)
    await a.close()
    await b.close()
    assert all(isinstance(r, Outcome) for r in results)
    assert [c.alert.rule for c in results[1].changes] == [STOP]  # type: ignore[union-attr]
    ids = dict(shared.query("SELECT control_id, id FROM messages"))
    assert ids["RXQ"] < ids["LAB0001"] < ids["LABQ"]


async def test_a_dropped_connection_fails_one_batch_then_the_writer_reconnects(shared: Backend) -> None:
    """The server restarts or a network blip kills the connection: the batch
    in progress fails (AR upstream: the sender resends), the next one runs on
    a new connection; nothing hangs."""
    store = await shared.open(owner="a")
    await store.transact(unit(ORDER))
    shared.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?", ("hl7-alerts a",)
    )
    # Each writer's connection fails the one batch it is given, then comes back.
    failures = 0
    while True:
        try:
            outcome = await asyncio.wait_for(store.transact(unit(PANEL)), WAIT)
        except StoreError:
            failures += 1
            assert failures <= 2, "a writer did not reconnect"
        else:
            break
    await store.close()
    assert failures >= 1
    assert [c.alert.rule for c in outcome.changes] == [STOP]
