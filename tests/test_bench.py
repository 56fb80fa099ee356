"""The benchmark's own machinery, briefly: what it sends is what the issue
asks for, and the quick mode's code path runs end to end (real Mosquitto,
the daemon on SQLite and two daemons on one PostgreSQL database, reference
servers, load client) on a few hundred messages. Nothing
here is timed: the figures come from `python -m bench.run`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import fuzz_soak, grown_store, hostile, run
from bench.gen import Generator
from hl7_alerts.config import parse_config
from hl7_alerts.messages import parse_message
from hl7_alerts.model import OrderMessage, ResultMessage


def test_generator_sends_unique_ids_a_tenth_on_azathioprine_and_some_abnormal() -> None:
    gen = Generator(seed=3, run_id="T")
    options = parse_config("{}").parse_options()
    orders = [parse_message(m, options) for m in gen.orders()]
    results = [parse_message(m, options) for m in gen.results(0, 2000)]
    assert all(isinstance(o, OrderMessage) and o.orders[0].ingredient == "azathioprine" for o in orders)
    assert len({o.patient.id for o in orders if isinstance(o, OrderMessage)}) == 100  # 10 % of 1,000
    ids = [m.header.control_id for m in [*orders, *results]]
    assert len(set(ids)) == len(ids)
    abnormal = [
        r for r in results if isinstance(r, ResultMessage) and any(o.flag == "H" for o in r.observations)
    ]
    assert 40 < len(abnormal) < 180  # about 5 %
    assert gen.result(17) == Generator(seed=3, run_id="T").result(17)  # deterministic


def test_quick_mode_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    report = run.main(
        ["--messages", "200", "--rate", "250", "--paced-seconds", "0.4", "--stores", "sqlite,pg2", "--sweep", "1",
         "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    # One table per run, every server at each connection count (two daemons
    # need two connections: their 1-connection cell is a dash), in a file.
    table = (tmp_path / "results.md").read_text().splitlines()
    assert "| server | 1 connection | 8 connections | CPU µs/msg (8 conn.) | p99 ms @250/s over 8 | peak RSS |" in table
    rows = [line for line in table if line.startswith("| hl7-alerts") or line.startswith(("| python", "| bare"))]
    assert [row.split(" | ")[0] for row in rows] == [
        "| hl7-alerts, SQLite", "| hl7-alerts, PostgreSQL, 2 daemons", "| python-hl7", "| bare asyncio"
    ]
    assert all(row.count(" msg/s, p50 ") == (1 if "2 daemons" in row else 2) for row in rows)
    assert any(line.startswith("Load before: `") and "load average" in line for line in table)
    # The README's Performance table is this Markdown, pasted: the same
    # header (columns in order) and a README row for each row printed.
    printed = run.markdown_table(report["results"], argparse.Namespace(rate=500.0)).splitlines()
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").splitlines()
    assert printed[0] in readme
    names = [row.split(" | ")[0] for row in printed[2:]]
    assert names == ["| hl7-alerts, SQLite", "| hl7-alerts, PostgreSQL, 2 daemons", "| python-hl7", "| bare asyncio"]
    assert all(any(line.startswith(f"{name} | ") for line in readme) for name in names)


def test_the_fuzz_soak_runs_rounds_against_a_real_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench.fuzz_soak` end to end on a few frames: every frame
    answered, round after round, the daemon alive and cleanly stopped."""
    fuzz_soak.main(["--frames", "80", "--round", "40", "--connections", "2"])
    out = capsys.readouterr().out
    assert "       40 frames sent" in out
    assert "fuzz soak: 80 mutated frames" in out
    assert "0 crashes" in out


def test_hostile_soak_runs_end_to_end(tmp_path: Path) -> None:
    """`bench.hostile` on a few seconds and small worst inputs: every sender
    runs, every worst input gets the ACK it is owed, the feed gets AA, the
    probe reports on the loop, and the daemon is still up afterwards. Its
    figures are the benchmark's, not this test's."""
    report = hostile.main([
        "--seconds", "2", "--window", "1", "--rate", "50", "--size", "2000", "--hostile-rate", "8",
        "--idle", "2", "--out", str(tmp_path / "hostile.json"),
    ])
    assert report["daemon_alive"]
    assert report["hostile_unexpected"] == {}
    assert set(report["hostile_sent"]) >= {
        "idle_connections", "stalled_frames", "pipelined", "oversize", "garbage", "spaces_value",
    }
    for name in ("quiet", "hostile"):
        assert report[name]["feed"]["ack_codes"] == {"AA": 100}
        assert report[name]["loop_busy_ms"] is not None
    assert report["hostile_answers"]["oversize:AR"] >= 1


def test_long_mode_reports_rss_after_every_chunk_in_its_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bench.run --long` on a few hundred messages: an RSS point after each
    chunk (the last one short), written to long.json, never over the
    latest.json that latest.md was written from."""
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    report = run.main(["--long", "--stores", "sqlite", "--long-messages", "500", "--long-every", "200"])
    points = report["long"]["points"]
    assert [p["messages"] for p in points] == [200, 400, 500]
    assert all(p["rss_kib"] > 10_000 and p["messages_per_second"] > 0 for p in points)
    results = tmp_path / "results"
    assert json.loads((results / "long.json").read_text())["long"] == report["long"]
    assert sorted(f.name for f in results.iterdir()) == ["long.json"]


def test_grown_store_alternates_an_empty_and_a_grown_store_built_once(tmp_path: Path) -> None:
    """`bench.grown_store` end to end on a tiny N: the grown store holds the
    orders and N results, as the daemon stored them; rounds alternate empty
    and grown, each on the same messages; the kept store is not touched by
    the rounds and is not built again."""
    kept = tmp_path / "stores"
    out = tmp_path / "grown.json"
    report = grown_store.main(
        ["--prefill", "150", "--messages", "100", "--rounds", "1", "--dir", str(kept), "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rounds = report["rounds"]
    assert [(r["store"], r["messages_held"]) for r in rounds] == [("empty", 100), ("grown", 250)]
    assert all(r["messages_per_second"] > 0 and r["cpu_us_per_message"] > 0 for r in rounds)
    assert report["summary"]["ratio_messages_per_second"] > 0
    built = kept / "store-150.sqlite3"
    assert grown_store.store_messages(built) == 250  # the rounds ran on a copy
    stamp = built.stat().st_mtime_ns
    assert grown_store.build_store(kept, 150) == built
    assert built.stat().st_mtime_ns == stamp
