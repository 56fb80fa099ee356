"""Throughput over a store that already holds N messages, beside an empty one.

    .venv/bin/python -m bench.grown_store --prefill 1000000    # build once (kept in --dir), then 3 × ABAB
    .venv/bin/python -m bench.grown_store --prefill 20000 --rounds 2 --messages 2000   # a quick look

Issue 15 asks that throughput over a store holding 10^6 messages stay within
20 % of an empty one's, and that the store's growth be told apart from the
machine's noise. So:

1. Build, once per N (kept in ``--dir``, reused by later runs), a SQLite
   store the way the daemon stores messages: the benchmark's warm-up orders
   and results 0 … N-1 of `bench.gen`'s stream (the same 1,000 patients and
   message mix as `bench.run`) go through the daemon's own frame handler
   (`frames.FrameHandler`: parse, `pipeline.process`, rules, alerts, outbox)
   into the store's own writer, many frames in flight so commits are grouped.
   Only the build skips fsync (`store.ScratchSqliteStore`); the alerts it
   raised are marked delivered, as a daemon's publisher would have. The
   empty store is the same build with N = 0 (the warm-up orders only).
2. Copy the grown store once into a work folder (the kept one stays as
   built), then run rounds A B A B …: A is a fresh copy of the empty store,
   B the grown copy. Each round starts ``hl7-alerts serve`` (durable:
   ``synchronous=FULL``, as `bench.run`) on that store, sends the warm-up
   orders, then ``--messages`` results over ``--connections`` at saturation
   from the load client (its own process), and reads the daemon's CPU time.
   Round pair k (an A and the B after it) gets the same messages: results
   N + k·M … N + (k+1)·M − 1 of the stream, i.e. the stream going on where
   the build stopped.

Prints per round msg/s, CPU µs per message, ACK p99 and the daemon's
start-up time, then grown ÷ empty of the medians; the spread between rounds
of the same store is the noise the ratio is to be read against. Writes JSON
to ``bench/results/grown_store.json``. SQLite only (issue 15's target).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.gen import Generator
from bench.run import RESULTS, daemon_server, load, mosquitto, uptime
from hl7_alerts import logs
from hl7_alerts.config import parse_config
from hl7_alerts.frames import FrameHandler, FrameSettings
from hl7_alerts.metrics import Metrics
from hl7_alerts.store import ScratchSqliteStore

# Frames in flight while building: enough for the writer to group commits.
WINDOW = 256
BUILD_RUN_ID = "G"


async def _feed(frames: FrameHandler, messages: Iterable[bytes], *, report_every: int = 0) -> int:
    """Answer every frame, ``WINDOW`` at a time in flight; return how many.
    Anything but AA means the build is not what the daemon would hold."""
    pending: set[asyncio.Task[Any]] = set()
    done = 0
    started = time.perf_counter()

    def check(task: asyncio.Task[Any]) -> None:
        answer = task.result()
        if str(answer.code) != "AA":
            raise RuntimeError(f"the build's message was answered {answer.code}: {answer.ack[:200]!r}")

    for raw in messages:
        pending.add(asyncio.ensure_future(frames.answer(raw, peer="bench.grown_store")))
        if len(pending) >= WINDOW:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                check(task)
                done += 1
                if report_every and done % report_every == 0:
                    rate = done / (time.perf_counter() - started)
                    print(f"  built {done:>9,} messages ({rate:,.0f}/s)", flush=True)
    for task in asyncio.as_completed(pending):
        answer = await task
        if str(answer.code) != "AA":
            raise RuntimeError(f"the build's message was answered {answer.code}")
        done += 1
    return done


async def _build(path: Path, prefill: int) -> None:
    logs.configure("warning", "console")  # as the offline commands: not a line per message
    config = parse_config("{}")
    current = FrameSettings(options=config.parse_options(), pipeline=config.pipeline_settings())
    store = await ScratchSqliteStore.open(path)
    try:
        frames = FrameHandler(
            store, lambda: current, Metrics(), lambda: datetime.now(UTC),
            max_message_bytes=config.mllp.max_message_bytes,
        )
        gen = Generator(run_id=BUILD_RUN_ID)
        await _feed(frames, gen.orders())
        await _feed(frames, gen.results(0, prefill), report_every=100_000)
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        # A running daemon's publisher would have delivered these long ago;
        # left pending, the measured daemon would spend its rounds publishing.
        db.execute("UPDATE outbox SET delivered_at = created_at WHERE delivered_at IS NULL")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def build_store(directory: Path, prefill: int) -> Path:
    """The store holding ``prefill`` messages, built unless ``directory``
    already has it (a ``.done`` marker says a build finished)."""
    path = directory / f"store-{prefill}.sqlite3"
    done = path.with_suffix(".done")
    if done.exists() and path.exists():
        return path
    for stale in directory.glob(f"{path.name}*"):
        stale.unlink()
    started = time.perf_counter()
    print(f"building {path} ({prefill:,} results) …", flush=True)
    asyncio.run(_build(path, prefill))
    seconds = time.perf_counter() - started
    done.write_text(json.dumps({"seconds": round(seconds, 1), "built": datetime.now(UTC).isoformat()}) + "\n")
    print(f"built {path} in {seconds:.0f} s ({path.stat().st_size / 2**20:,.0f} MiB)", flush=True)
    return path


def store_messages(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        (count,) = db.execute("SELECT count(*) FROM messages").fetchone()
    return int(count)


def copy_store(source: Path, target: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)


def run_round(
    label: str, store: Path, work: Path, broker_port: int, args: argparse.Namespace, number: int
) -> dict[str, Any]:
    """One daemon process on ``store``: warm-up orders, then the saturation run."""
    name = f"daemon-{label}"
    server = daemon_server(work, broker_port, args.log_level, name=name, client_id=f"bench-grown-{label}")
    daemon_store = work / f"{name}.sqlite3"
    if daemon_store != store:
        raise AssertionError(f"{daemon_store} is not {store}")
    held = store_messages(store)
    run_id = f"R{number}{label[0]}"
    started = time.monotonic()
    server.start(work / f"{name}.log")
    ready = time.monotonic() - started
    try:
        load(server.port, count=0, orders=True, connections=args.connections, run_id=run_id)
        cpu_start = server.cpu_seconds()
        # The stream goes on where the build stopped; each pair of rounds
        # (empty, grown) gets the same messages.
        start = args.prefill + number // 2 * args.messages
        sat = load(server.port, count=args.messages, start=start, connections=args.connections, run_id=run_id)
        cpu = server.cpu_seconds() - cpu_start
        memory = server.memory()
    finally:
        server.stop()
    return {
        "round": number,
        "store": label,
        "messages_held": held,
        "start_seconds": round(ready, 2),
        "messages_per_second": sat["messages_per_second"],
        "cpu_us_per_message": round(cpu / args.messages * 1e6, 1),
        "latency_ms": sat["latency_ms"],
        "rss_kib": memory["VmRSS"],
        "uptime": uptime(),
    }


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per store the median and the spread (max − min, in % of the median)
    of msg/s and CPU µs/msg; grown ÷ empty of the medians."""
    out: dict[str, Any] = {}
    for label in ("empty", "grown"):
        mine = [r for r in rounds if r["store"] == label]
        for key in ("messages_per_second", "cpu_us_per_message"):
            values = [r[key] for r in mine]
            median = statistics.median(values)
            out.setdefault(label, {})[key] = {
                "median": round(median, 1),
                "spread_percent": round(100 * (max(values) - min(values)) / median, 1),
            }
    for key in ("messages_per_second", "cpu_us_per_message"):
        out[f"ratio_{key}"] = round(out["grown"][key]["median"] / out["empty"][key]["median"], 3)
    return out


def table(rounds: list[dict[str, Any]]) -> str:
    rows = [f"{'round':>5} {'store':<6} {'held':>10} {'start s':>7} {'msg/s':>7} {'CPU µs/msg':>10} "
            f"{'p99 ms':>7}  load"]
    for r in rounds:
        load_avg = r["uptime"].rpartition("load average:")[2].strip()
        rows.append(
            f"{r['round']:>5} {r['store']:<6} {r['messages_held']:>10,} {r['start_seconds']:>7.2f} "
            f"{r['messages_per_second']:>7,.0f} {r['cpu_us_per_message']:>10,.0f} "
            f"{r['latency_ms']['p99']:>7.1f}  {load_avg}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.grown_store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefill", type=int, default=1_000_000, help="results the grown store holds")
    parser.add_argument("--messages", type=int, default=10_000, help="results per round (default 10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per store, alternating (default 3)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hl7-alerts-grown-store"),
                        help="where the built stores are kept between runs")
    parser.add_argument("--log-level", default="info", help="the daemon's logging.level (default: info)")
    parser.add_argument("--out", type=Path, default=RESULTS / "grown_store.json")
    args = parser.parse_args(argv)
    if args.prefill < 1 or args.messages < 1 or args.rounds < 1:
        parser.error("--prefill, --messages and --rounds are at least 1")
    args.dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv if argv is None else ["bench.grown_store", *argv],
        "uptime_start": uptime(),
    }
    empty = build_store(args.dir, 0)
    grown = build_store(args.dir, args.prefill)
    rounds: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hl7-grown-")))
        broker_dir = work / "mosquitto"
        broker_dir.mkdir()
        broker_port = stack.enter_context(mosquitto(broker_dir))
        copy_store(grown, work / "daemon-grown.sqlite3")  # once: its rounds add to it, as a site's would
        print(f"rounds: {args.messages:,} results each over {args.connections} connections, "
              f"empty (A) and {args.prefill:,} held (B) alternately", flush=True)
        for number in range(2 * args.rounds):
            label = "empty" if number % 2 == 0 else "grown"
            if label == "empty":
                copy_store(empty, work / "daemon-empty.sqlite3")  # a fresh one every round
            result = run_round(label, work / f"daemon-{label}.sqlite3", work, broker_port, args, number)
            rounds.append(result)
            print(table([result]).splitlines()[-1], flush=True)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["uptime_end"] = uptime()
    report["rounds"] = rounds
    report["summary"] = summary = summarize(rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rounds))
    for label in ("empty", "grown"):
        s = summary[label]
        print(
            f"{label}: median {s['messages_per_second']['median']:,.0f} msg/s "
            f"(spread {s['messages_per_second']['spread_percent']} %), "
            f"{s['cpu_us_per_message']['median']:,.0f} CPU µs/msg "
            f"(spread {s['cpu_us_per_message']['spread_percent']} %)"
        )
    print(
        f"grown ÷ empty, medians: msg/s {summary['ratio_messages_per_second']}, "
        f"CPU µs/msg {summary['ratio_cpu_us_per_message']}  (issue 15: msg/s within 20 %, ≥ 0.8)"
    )
    print(f"uptime before: {report['uptime_start']}\nuptime after:  {report['uptime_end']}")
    print(f"results: {args.out}")
    return report


if __name__ == "__main__":
    main()
