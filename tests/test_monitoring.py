"""aza.monitoring.overdue in the store and the pipeline: orders start, pause
and stop the schedule, liver panels advance it, the timer's unit of work
raises one alert per due time and the panel resolves it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hl7_alerts.cli import main
from hl7_alerts.config import ConfigError, parse_config
from hl7_alerts.messages import ParseOptions, parse_message
from hl7_alerts.overdue import fire_overdue, next_overdue
from hl7_alerts.pipeline import process
from hl7_alerts.rules.ids import MONITORING_OVERDUE
from hl7_alerts.settings import PipelineSettings
from hl7_alerts.store import ScheduleRow, SqliteStore
from hl7_alerts.terminology import Terminology
from tests.support.hl7kit import ALP, AST, AZA, alt, order_msg, oru, result
from tests.support.mqtt import assert_valid_alert

OPTIONS = ParseOptions(terminology=Terminology(), timezone=UTC)
SETTINGS = PipelineSettings()
START = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
D = timedelta(days=1)
EPS = timedelta(seconds=1)


def hl7(at: datetime) -> str:
    return at.strftime("%Y%m%d%H%M%S")


def nw(at: datetime = START, order_id: str = "RX1", ctl: str = "NW", control: str = "ORD1") -> str:
    return order_msg(control, ctl, order_id, AZA, hl7(at))


class Harness:
    def __init__(self, store: SqliteStore, path: Path) -> None:
        self.store, self.path, self.n = store, path, 0

    async def send(self, text: str, at: datetime) -> None:
        raw = text.encode()
        await self.store.transact(
            lambda tx: process(tx, parse_message(raw, OPTIONS), raw, received_at=at, settings=SETTINGS)
        )

    async def panel(self, at: datetime, *results: str) -> None:
        self.n += 1
        await self.send(oru(f"LAB{self.n}", hl7(at), *(results or (alt("30"),)), specimen=f"S{self.n}"), at)

    async def tick(self, now: datetime) -> list[str]:
        return await self.store.transact(lambda tx: fire_overdue(tx, settings=SETTINGS, now=now))

    async def next(self) -> datetime | None:
        return await self.store.transact(lambda tx: next_overdue(tx, settings=SETTINGS))

    async def rows(self) -> list[ScheduleRow]:
        return await self.store.list_schedules(include_stopped=True)

    def events(self) -> list[tuple[str, str]]:
        """The overdue alert's events in the outbox, each checked against the schema."""
        with sqlite3.connect(self.path) as db:
            bodies = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]
        out = []
        for body in bodies:
            assert_valid_alert({**body, "published_at": "2026-11-25T00:00:00Z"})  # the publisher adds it
            if body["rule"] == MONITORING_OVERDUE:
                out.append((body["event"], body["severity"]))
        return out

    def payloads(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.path) as db:
            bodies = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]
        return [b for b in bodies if b["rule"] == MONITORING_OVERDUE]


async def harness(tmp_path: Path) -> Harness:
    path = tmp_path / "s.db"
    return Harness(await SqliteStore.open(path), path)


async def test_a_new_order_starts_a_schedule_that_fires_once_after_the_grace_period(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(nw(), START)
    [row] = await h.rows()
    assert (row.order_id, row.state, row.due, row.fires_at, row.fired_due) == (
        "RX1", "active", START + 7 * D, START + 9 * D, None)
    assert await h.next() == START + 9 * D
    assert await h.tick(START + 9 * D - EPS) == []
    [alert_id] = await h.tick(START + 9 * D)
    assert await h.tick(START + 9 * D) == []  # fired for this due time: never twice
    assert await h.tick(START + 20 * D) == []
    assert await h.next() is None
    [body] = h.payloads()
    assert (body["event"], body["severity"], body["alert_id"]) == ("firing", "warning", alert_id)
    assert body["recommendations"] == ["Order ALT, AST, ALP, GGT, bilirubin"]
    assert body["medication"]["order_id"] == "RX1"
    assert body["occurred_at"] == (START + 7 * D).isoformat()
    await h.store.close()


async def test_a_liver_panel_resolves_the_overdue_alert_and_moves_the_schedule_on(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(nw(), START)
    await h.tick(START + 9 * D)
    await h.panel(START + 10 * D)
    assert h.events() == [("firing", "warning"), ("resolved", "warning")]
    [row] = await h.rows()
    assert (row.last_panel, row.due, row.fires_at) == (START + 10 * D, START + 17 * D, START + 19 * D)
    # The next due time fires a new episode.
    [second] = await h.tick(START + 19 * D)
    ids = {b["alert_id"] for b in h.payloads()}
    assert len(ids) == 2
    assert second in ids
    await h.store.close()


async def test_a_panel_in_time_means_no_alert(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(nw(), START)
    await h.panel(START + 6 * D)
    assert await h.tick(START + 9 * D) == []
    assert await h.next() == START + 15 * D
    assert h.events() == []
    await h.store.close()


async def test_what_counts_as_a_liver_panel(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(nw(), START)
    await h.panel(START + 2 * D, result(ALP, "80", ref="42-141"))  # ALP alone: not a liver panel
    await h.panel(START + 3 * D, alt("30", status="X"))  # a cancelled ALT: not done
    [row] = await h.rows()
    assert row.last_panel is None
    await h.panel(START + 4 * D, result(AST, "20", ref="10-40"))  # AST alone counts
    [row] = await h.rows()
    assert row.last_panel == START + 4 * D
    await h.panel(START + 3.5 * D)  # older than the last panel: history
    [row] = await h.rows()
    assert (row.last_panel, row.due) == (START + 4 * D, START + 11 * D)
    await h.store.close()


async def test_stopping_the_order_cancels_the_schedule_and_resolves_the_alert(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(nw(), START)
    await h.tick(START + 9 * D)
    await h.send(nw(START + 10 * D, ctl="DC", control="ORD2"), START + 10 * D)
    [row] = await h.rows()
    assert row.state == "stopped"
    assert h.events() == [("firing", "warning"), ("resolved", "warning")]
    assert await h.tick(START + 60 * D) == []
    assert await h.next() is None
    assert await h.store.list_schedules() == []  # stopped rows are left out unless asked for
    await h.store.close()


async def test_a_hold_pauses_the_schedule_and_a_release_resumes_it(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(nw(), START)
    await h.send(nw(START + 5 * D, ctl="HD", control="ORD2"), START + 5 * D)
    assert [r.state for r in await h.rows()] == ["paused"]
    assert await h.tick(START + 12 * D) == []
    await h.send(nw(START + 13 * D, ctl="RL", control="ORD3"), START + 13 * D)
    assert [r.state for r in await h.rows()] == ["active"]
    assert len(await h.tick(START + 13 * D)) == 1  # overdue since day 9: fires on release
    await h.store.close()


async def test_a_hold_resolves_an_open_overdue_alert(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(nw(), START)
    await h.tick(START + 9 * D)
    await h.send(nw(START + 10 * D, ctl="HD", control="ORD2"), START + 10 * D)
    assert h.events() == [("firing", "warning"), ("resolved", "warning")]
    await h.store.close()


async def test_a_reintroduction_is_a_new_order_with_its_own_weekly_schedule(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(nw(), START)
    await h.panel(START + 100 * D)  # monthly by now
    await h.send(nw(START + 101 * D, ctl="DC", control="ORD2"), START + 101 * D)
    await h.send(nw(START + 140 * D, order_id="RX2", control="ORD3"), START + 140 * D)
    rows = {r.order_id: r for r in await h.rows()}
    assert rows["RX1"].state == "stopped"
    assert (rows["RX2"].state, rows["RX2"].due) == ("active", START + 147 * D)
    await h.store.close()


async def test_orders_of_other_drugs_have_no_schedule(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(order_msg("ORD1", "NW", "RX9", "519^Allopurinol 100 MG Oral Tablet^RXNORM", hl7(START)), START)
    assert await h.rows() == []
    await h.store.close()


async def test_a_resent_order_message_changes_nothing(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(nw(), START)
    await h.tick(START + 9 * D)
    await h.send(nw(), START + 9 * D)  # the same message again (dedup)
    await h.send(nw(control="ORD9"), START + 9 * D)  # a repeated NW of the same order
    [row] = await h.rows()
    assert (row.state, row.fired) == ("active", True)
    assert h.events() == [("firing", "warning")]
    await h.store.close()


async def test_schedule_list_shows_who_is_due_when(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(nw(), START)
    await h.send(order_msg("ORD2", "NW", "RX2", AZA, hl7(START), mrn="H0990002^^^GENHOSP^MR"), START)
    await h.panel(START + 3 * D)  # the first patient's panel
    await h.tick(START + 9 * D)  # the second patient is overdue
    await h.store.close()
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  path: {h.path}\n")
    # The command runs its own event loop: give it a thread, as a shell would a process.
    result = await asyncio.to_thread(CliRunner().invoke, main, ["schedule", "list", "--config", str(config)])
    assert result.exit_code == 0, result.output
    header, *rows = [line.split("\t") for line in result.output.splitlines()]
    table = [dict(zip(header, r, strict=True)) for r in rows]
    assert [(r["patient"], r["order_id"], r["state"], r["next_due"], r["overdue"], r["fired"]) for r in table] == [
        ("H0990002", "RX2", "active", (START + 7 * D).isoformat(), "yes", "yes"),
        ("H0990001", "RX1", "active", (START + 10 * D).isoformat(), "yes", "no"),
    ]


async def test_a_merge_moves_the_schedule_to_the_surviving_identifier(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.send(order_msg("ORD1", "NW", "RX1", AZA, hl7(START), mrn="H0990009^^^GENHOSP^MR"), START)
    merge = "\r".join([
        f"MSH|^~\\&|ADT|GENHOSP|HL7ALERTS|GENHOSP|{hl7(START + D)}||ADT^A40^ADT_A39|A1|P|2.5.1",
        f"EVN|A40|{hl7(START + D)}",
        "PID|1||H0990001^^^GENHOSP^MR||TESTPATIENT^ECHO||19700101|F",
        "MRG|H0990009^^^GENHOSP^MR",
    ]) + "\r"
    await h.send(merge, START + D)
    await h.panel(START + 3 * D)  # under the surviving identifier
    [row] = await h.rows()
    assert (row.patient.id, row.last_panel) == ("H0990001", START + 3 * D)
    await h.store.close()


def test_schedule_settings_come_from_config_and_errors_name_the_key() -> None:
    config = parse_config("rules:\n  monitoring:\n    weekly_grace: 12h\n    liver_analytes: [ALT]\n")
    m = config.pipeline_settings().monitoring
    assert (m.weekly_grace, m.weekly_interval, m.liver_analytes) == (timedelta(hours=12), 7 * D, frozenset({"ALT"}))
    with pytest.raises(ConfigError, match=r"config.yaml:3: rules.monitoring.weekly_interval"):
        parse_config("rules:\n  monitoring:\n    weekly_interval: soon\n")
    with pytest.raises(ConfigError, match="twice_monthly_until must not be before weekly_until"):
        parse_config("rules:\n  monitoring:\n    weekly_until: 100d\n")


GO_LIVE = START


@pytest.mark.parametrize(("started_days_before", "late"), [(90, False), (91, True), (2000, True)],
                         ids=["first-seen-90-days-after-start", "91-days", "years"])
async def test_a_long_running_order_first_seen_late_is_monthly_from_then(
    tmp_path: Path, started_days_before: int, late: bool
) -> None:
    """Issue 19 item 9 (the overdue row): an order first seen more than 90 days
    after its start (long-running therapy at go-live) is on the monthly
    schedule from when it was first seen, never "due 2019-01-08"."""
    h = await harness(tmp_path)
    start = GO_LIVE - started_days_before * D
    await h.send(order_msg("ORD1", "NW", "RX1", AZA, hl7(start), tx=hl7(GO_LIVE)), GO_LIVE)
    [row] = await h.rows()
    assert row.first_seen == GO_LIVE
    if late:
        assert (row.due, row.fires_at) == (GO_LIVE + 30 * D, GO_LIVE + 37 * D)
        assert await h.tick(GO_LIVE + D) == []
        assert await h.tick(GO_LIVE + 37 * D - EPS) == []
        [_] = await h.tick(GO_LIVE + 37 * D)
        [body] = h.payloads()
        assert body["summary"] == (f"No liver panel since the order was first seen on {GO_LIVE.date()}; "
                                   f"the next was due {(GO_LIVE + 30 * D).date()} (monthly schedule)")
    else:  # 90 days after its start is still the twice-monthly phase: due from its start
        assert row.due < GO_LIVE
        assert len(await h.tick(GO_LIVE + D)) == 1
    # A panel moves it on from the panel, monthly, as for any order that old.
    await h.panel(GO_LIVE + 40 * D)
    [row] = await h.rows()
    assert row.due == GO_LIVE + 70 * D
    await h.store.close()


async def test_liver_panels_already_on_file_count_when_the_schedule_starts(tmp_path: Path) -> None:
    """A pharmacy feed that lags the lab's: the ALT observed on day 3 arrived
    before the order (start day 0, sent day 5); the schedule counts from it."""
    h = await harness(tmp_path)
    await h.panel(START + 3 * D)
    await h.send(order_msg("ORD1", "NW", "RX1", AZA, hl7(START), tx=hl7(START + 5 * D)), START + 5 * D)
    [row] = await h.rows()
    assert (row.last_panel, row.due, row.fires_at) == (START + 3 * D, START + 10 * D, START + 12 * D)
    await h.store.close()
