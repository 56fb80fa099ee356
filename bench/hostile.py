"""The hostile soak (issue 18): a normal feed beside the worst a sender can do.

Starts a real daemon (`hl7-alerts serve` on SQLite, its own Mosquitto, as
`bench.run` does) with a timer probe on its event loop, sends the warm-up
orders, then two phases of ``--seconds`` each:

- quiet: the normal feed alone. The load client (`bench.load`, its own
  process) sends liver panels at ``--rate`` msg/s over ``--connections``
  connections, each latency measured from its scheduled send time. On a
  shared machine this is the baseline the hostile phase is read against.
- hostile: the same feed, and beside it, from this process, the worst
  inputs of `tests/support/hostile.py` (spaces, digits, escapes,
  repetitions, bare segments... at ``--size``) at ``--hostile-rate``
  frames/s; idle connections that never send; a sender that stalls inside a
  frame; a pipelining sender (``--pipeline`` frames in one write, then
  their ACKs); oversize frames; garbage bytes (``--skip`` leaves some out).

Reports, per ``--window`` seconds, the normal feed's ACK latency p50/p99/max
and two figures of the daemon's event loop from a probe that asks to wake
every 2 ms: how late it woke (``late``: held by anything, the machine's other
work included) and how much CPU the loop's thread spent between two wake-ups
(``busy``: held by the daemon's own callbacks). Writes JSON to
``bench/results/hostile.json``. Target: feed p99 under 20 ms in every window.

    .venv/bin/python -m bench.hostile                  # 2 x 60 s: the README's figures
    .venv/bin/python -m bench.hostile --seconds 20     # a shorter look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from bench import run
from hl7_alerts.framer import NEED_DATA, Frame, Framer, frame
from tests.support.hostile import WORST

RESULTS = run.ROOT / "bench" / "results" / "hostile.json"
PROBE_INTERVAL = 0.002  # seconds between the loop probe's wake-ups


# ---------------------------------------------------------------------------
# The daemon with a loop probe: `python -m bench.hostile serve --probe FILE --config CFG`


async def _probe(path: Path, stop: threading.Event) -> None:
    """Wake every PROBE_INTERVAL and note how late (``late_ms``: the loop held
    by anything, a callback, a thread holding the GIL, or the machine not
    running the process) and how much CPU the loop's thread spent meanwhile
    (``busy_ms``: the loop held by its own callbacks). One JSON line per
    second of wall-clock time, with the worst of each."""
    with path.open("a", buffering=1) as out:
        second, late_max, busy_max = int(time.time()), 0.0, 0.0
        while not stop.is_set():
            before, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(PROBE_INTERVAL)
            late_max = max(late_max, time.perf_counter() - before - PROBE_INTERVAL)
            busy_max = max(busy_max, time.thread_time() - cpu)
            now = int(time.time())
            if now != second:
                row = {"second": second, "late_ms": round(late_max * 1e3, 2)}
                out.write(json.dumps({**row, "busy_ms": round(busy_max * 1e3, 2)}) + "\n")
                second, late_max, busy_max = now, 0.0, 0.0


def serve_probed(probe: Path, config: Path) -> None:
    """`hl7-alerts serve` with `_probe` running on its event loop."""
    original = asyncio.run
    stop = threading.Event()

    def with_probe(main: Coroutine[Any, Any, Any], **kwargs: Any) -> Any:
        async def both() -> Any:
            task = asyncio.create_task(_probe(probe, stop))
            try:
                return await main
            finally:
                stop.set()
                task.cancel()

        return original(both(), **kwargs)

    asyncio.run = with_probe  # type: ignore[assignment]
    from hl7_alerts.cli import main  # noqa: PLC0415 (after the patch)

    main.main(["serve", "--config", str(config)], prog_name="hl7-alerts")


# ---------------------------------------------------------------------------
# Hostile senders, all in this process's loop


class Tally:
    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.closed_by_server: Counter[str] = Counter()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)


async def _acks(reader: asyncio.StreamReader, framer: Framer, count: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < count:
        event = framer.next_event()
        if isinstance(event, Frame):
            out.append(event.data)
        elif event is NEED_DATA:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("closed by the daemon")
            framer.feed(data)
    return out


def _code(ack: bytes) -> str:
    at = ack.find(b"\rMSA")
    return ack[at + 5 : at + 7].decode("ascii", "replace") if at != -1 else "??"


async def worst_inputs(
    port: int, rate: float, size: int, until: float, tally: Tally, lane: int, kinds: set[str]
) -> None:
    """The worst inputs in turn, each awaiting its ACK, paced at ``rate``."""
    reader, writer = await _connect(port)
    framer = Framer(max_frame_bytes=1 << 24)
    names = sorted(kinds)
    k = lane
    next_at = time.monotonic()
    while time.monotonic() < until:
        name = names[k % len(names)]
        k += 2
        writer.write(frame(WORST[name].build(size, control=f"H{lane}-{k}")))
        tally.sent[name] += 1
        (ack,) = await _acks(reader, framer, 1)
        code = _code(ack)
        tally.answers[f"{name}:{code}"] += 1
        if code != WORST[name].ack:
            tally.unexpected[name] += 1
        next_at += 1 / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    writer.close()


async def idle(port: int, count: int, until: float, tally: Tally) -> None:
    """Connections that never send a byte (the daemon's slots)."""
    conns = [await _connect(port) for _ in range(count)]
    tally.sent["idle_connections"] += count
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    for reader, writer in conns:
        if reader.at_eof():
            tally.closed_by_server["idle"] += 1
        writer.close()


async def stalled(port: int, until: float, tally: Tally) -> None:
    """A frame begun and never finished: the read deadline drops it; again."""
    while time.monotonic() < until:
        reader, writer = await _connect(port)
        writer.write(b"\x0bMSH|^~\\&|STALL|GENHOSP|")
        tally.sent["stalled_frames"] += 1
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(max(0.0, until - time.monotonic())):
                while await reader.read(1 << 16):
                    pass
                tally.closed_by_server["stalled"] += 1
        writer.close()


async def pipelined(port: int, batch: int, until: float, tally: Tally) -> None:
    """``batch`` frames in one write, then their ACKs; once a second."""
    reader, writer = await _connect(port)
    framer = Framer()
    k = 0
    while time.monotonic() < until:
        frames = b""
        for _ in range(batch):
            k += 1
            frames += frame(WORST["spaces_unit"].build(8, control=f"P{k}"))
        writer.write(frames)
        tally.sent["pipelined"] += batch
        for ack in await _acks(reader, framer, batch):
            tally.answers[f"pipelined:{_code(ack)}"] += 1
        await asyncio.sleep(1.0)
    writer.close()


async def oversize(port: int, size: int, until: float, tally: Tally) -> None:
    """Frames over the daemon's limit (AR), every 2 s."""
    reader, writer = await _connect(port)
    framer = Framer(max_frame_bytes=1 << 24)
    message = WORST["spaces_value"].build(size, control="OVERSIZE")
    while time.monotonic() < until:
        writer.write(frame(message))
        tally.sent["oversize"] += 1
        (ack,) = await _acks(reader, framer, 1)
        tally.answers[f"oversize:{_code(ack)}"] += 1
        await asyncio.sleep(2.0)
    writer.close()


async def garbage(port: int, until: float, tally: Tally, rng: random.Random) -> None:
    """Random bytes (stray VT and FS among them) five times a second; what
    the daemon answers is read and dropped."""
    while time.monotonic() < until:
        reader, writer = await _connect(port)
        drain = asyncio.create_task(_drain(reader))
        with contextlib.suppress(ConnectionError):
            for _ in range(25):
                if time.monotonic() >= until:
                    break
                writer.write(rng.randbytes(rng.randrange(1, 4096)))
                tally.sent["garbage"] += 1
                await writer.drain()
                await asyncio.sleep(0.2)
        writer.close()
        drain.cancel()


async def _drain(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(1 << 16):
            pass


async def hostile(port: int, args: argparse.Namespace, until: float, tally: Tally) -> None:
    rng = random.Random(args.seed)
    senders = {
        "worst": lambda: asyncio.gather(
            *(worst_inputs(port, args.hostile_rate / 2, args.size, until, tally, lane, args.kinds)
              for lane in (0, 1))
        ),
        "idle": lambda: idle(port, args.idle, until, tally),
        "stalled": lambda: stalled(port, until, tally),
        "pipelined": lambda: pipelined(port, args.pipeline, until, tally),
        "oversize": lambda: oversize(port, args.max_message_bytes + 4096, until, tally),
        "garbage": lambda: garbage(port, until, tally, rng),
    }
    await asyncio.gather(*(start() for name, start in senders.items() if name not in args.skip))


# ---------------------------------------------------------------------------
# The run


def probe_seconds(path: Path) -> dict[int, dict[str, float]]:
    return {row["second"]: row for row in map(json.loads, path.read_text().splitlines())}


def feed(port: int, args: argparse.Namespace, *, start: int, run_id: str) -> subprocess.Popen[bytes]:
    """The normal feed for one phase: the load client in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.load", "--port", str(port), "--connections", str(args.connections),
         "--start", str(start), "--count", str(int(args.rate * args.seconds)), "--rate", str(args.rate),
         "--run-id", run_id, "--window", str(args.window)],
        cwd=run.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def finished(process: subprocess.Popen[bytes], args: argparse.Namespace) -> dict[str, Any]:
    out, err = process.communicate(timeout=args.seconds + 600)
    if process.returncode != 0:
        raise RuntimeError(f"feed failed: {err.decode(errors='replace')[-2000:]}")
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report


def phase(
    report: dict[str, Any], loop: dict[int, dict[str, float]], args: argparse.Namespace
) -> dict[str, Any]:
    """One phase's feed figures with the loop probe's, per window and overall."""
    windows = []
    for w in report.pop("windows", []):
        rows = [r for s, r in loop.items() if w["start"] <= s < w["start"] + args.window]
        windows.append({
            **w,
            "loop_late_ms": max((r["late_ms"] for r in rows), default=None),
            "loop_busy_ms": max((r["busy_ms"] for r in rows), default=None),
        })
    return {
        "feed": report,
        "windows": windows,
        "loop_late_ms": max((w["loop_late_ms"] or 0 for w in windows), default=None),
        "loop_busy_ms": max((w["loop_busy_ms"] or 0 for w in windows), default=None),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.hostile", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    probed = sub.add_parser("serve", help="(internal) the daemon with a loop probe")
    probed.add_argument("--probe", type=Path, required=True)
    probed.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=200.0, help="normal feed, msg/s")
    parser.add_argument("--connections", type=int, default=4, help="normal feed")
    parser.add_argument("--hostile-rate", type=float, default=4.0, help="worst inputs, frames/s")
    parser.add_argument("--size", type=int, default=100_000, help="n of the worst inputs")
    parser.add_argument("--idle", type=int, default=16, help="idle connections")
    parser.add_argument("--pipeline", type=int, default=20, help="frames per pipelined write")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument(
        "--skip", type=lambda v: set(v.split(",")), default=set(),
        help="senders left out: worst,idle,stalled,pipelined,oversize,garbage",
    )
    parser.add_argument(
        "--kinds", type=lambda v: set(v.split(",")), default=set(WORST),
        help="worst inputs sent (default: all of tests/support/hostile.py's WORST)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve_probed(args.probe, args.config)
        return {}
    args.max_message_bytes = 1 << 20  # the daemon's default (mllp.max_message_bytes)

    with tempfile.TemporaryDirectory(prefix="hl7-alerts-hostile-") as tmp:
        work = Path(tmp)
        with run.mosquitto(work) as broker_port:
            server = run.daemon_server(work, broker_port, "warning", client_id="bench-hostile")
            config = server.argv[server.argv.index("--config") + 1]
            probe = work / "probe.jsonl"
            server.argv = [
                sys.executable, "-m", "bench.hostile", "serve", "--probe", str(probe), "--config", config
            ]
            server.start(work / "daemon.log")
            try:
                run_id = f"HX{int(time.time()) % 100000}"
                run.load(server.port, count=0, orders=True, connections=args.connections, run_id=run_id)
                started = time.time()
                quiet = finished(feed(server.port, args, start=0, run_id=run_id), args)
                tally = Tally()
                loud = feed(server.port, args, start=int(args.rate * args.seconds), run_id=run_id)
                asyncio.run(hostile(server.port, args, time.monotonic() + args.seconds, tally))
                noisy = finished(loud, args)
                alive = server.proc is not None and server.proc.poll() is None
            finally:
                server.stop()
            loop = probe_seconds(probe)
    report = {
        "at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "load_average": os.getloadavg(),
        "args": {k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v)
                 for k, v in vars(args).items()},
        "quiet": phase(quiet, loop, args),
        "hostile": phase(noisy, loop, args),
        "hostile_sent": dict(tally.sent),
        "hostile_answers": dict(tally.answers),
        "hostile_unexpected": dict(tally.unexpected),
        "closed_by_server": dict(tally.closed_by_server),
        "daemon_alive": alive,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        "| phase | window | feed ACKs | p50 ms | p99 ms | max ms | loop late, max ms "
        "| loop busy, max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("quiet", "hostile"):
        part = report[name]
        t0 = part["windows"][0]["start"] if part["windows"] else 0
        for w in part["windows"]:
            lines.append(
                f"| {name} | {w['start'] - t0:.0f} s | {w['count']} | {w['p50']:.1f} | {w['p99']:.1f} "
                f"| {w['max']:.1f} | {w['loop_late_ms']} | {w['loop_busy_ms']} |"
            )
    lines.append("")
    for name in ("quiet", "hostile"):
        part = report[name]
        feed = part["feed"]
        latency = feed["latency_ms"]
        lines.append(
            f"{name}: {feed['messages']} messages at {feed['offered_rate']:g}/s, ACK codes "
            f"{feed['ack_codes']}, p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, "
            f"max {latency['max']:.1f} ms; loop late at most {part['loop_late_ms']} ms, "
            f"busy at most {part['loop_busy_ms']} ms"
        )
    lines += [
        f"daemon alive: {report['daemon_alive']}; load average at the end {report['load_average']}",
        f"hostile sent: {report['hostile_sent']}",
        f"hostile answers: {report['hostile_answers']}",
        f"not answered as owed: {report['hostile_unexpected'] or 'none'}",
        f"closed by the daemon: {report['closed_by_server'] or 'none'}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
