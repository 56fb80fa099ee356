"""Run the benchmark: the daemon and two reference servers, measured alike.

For each server: start it as its own process (the daemon with a temporary
config, store and Mosquitto), send the warm-up orders, then drive it from the
load client (another process) — at saturation over ``--connections``
connections, then paced at ``--rate`` messages/s — and read its peak RSS from
``/proc``. For the daemon, alerts are counted by an MQTT subscriber on the
topic prefix. Prints a table and writes JSON.

    .venv/bin/python -m bench.run --quick      # about a minute
    .venv/bin/python -m bench.run              # the figures in the README
    .venv/bin/python -m bench.run --long       # RSS from 100k to 1M messages (daemon only)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def outbox_delivered(store: Path) -> float:
    """Outbox rows the daemon has committed, or infinity while any is undelivered."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)) as db:
        total, pending = db.execute("SELECT count(*), count(*) - count(delivered_at) FROM outbox").fetchone()
    return float("inf") if pending else float(total)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far: unlike messages/s,
    CPU per message barely moves when other work shares the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@contextlib.contextmanager
def mosquitto(directory: Path) -> Iterator[int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    os.chmod(directory, 0o777)
    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n")
    with (directory / "mosquitto.log").open("ab") as log:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
    try:
        wait_until(lambda: port_open(port), 10, "mosquitto")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


class AlertCounter:
    """Counts alerts on ``<prefix>/alerts/#`` with their arrival times."""

    def __init__(self, port: int) -> None:
        self.times: list[float] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/alerts/#", qos=1)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("alert subscriber did not subscribe")

    def _on_message(self, *_: Any) -> None:
        with self._lock:
            self.times.append(time.monotonic())

    def count(self) -> int:
        with self._lock:
            return len(self.times)

    def between(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for t in self.times if start <= t <= end)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, log_path: Path) -> None:
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, cwd=ROOT, env={**os.environ, **self.env}
            )
        wait_until(
            lambda: port_open(self.port) or self.proc is None or self.proc.poll() is not None, 30, self.name
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited at start-up; see {log_path}")

    def memory(self) -> dict[str, int]:
        assert self.proc is not None
        return proc_memory(self.proc.pid)

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def load(
    port: int,
    *,
    count: int,
    start: int = 0,
    rate: float | None = None,
    connections: int,
    orders: bool = False,
    run_id: str,
) -> dict[str, Any]:
    """Run the load client in its own process; return its JSON report."""
    argv = [
        sys.executable,
        "-m",
        "bench.load",
        "--port",
        str(port),
        "--connections",
        str(connections),
        "--start",
        str(start),
        "--count",
        str(count),
        "--run-id",
        run_id,
    ]
    if rate:
        argv += ["--rate", str(rate)]
    if orders:
        argv.append("--orders")
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, check=False, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"load client failed: {done.stderr.decode(errors='replace')[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    bad = {k: v for k, v in report["ack_codes"].items() if k not in ("AA", "CA")}
    if bad:
        raise RuntimeError(f"server answered other than AA: {bad}")
    return report


def daemon_server(work: Path, broker_port: int, log_level: str) -> Server:
    port = free_port()
    config = work / "config.yaml"
    config.write_text(
        f"mllp: {{host: 127.0.0.1, port: {port}}}\n"
        f"store: {{path: {work / 'store.sqlite3'}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker_port}, topic_prefix: {PREFIX}, client_id: bench}}\n"
        f"logging: {{level: {log_level}, format: json}}\n"
    )
    return Server("hl7-alerts", [sys.executable, "-m", "hl7_alerts", "serve", "--config", str(config)], port)


def measure(
    server: Server, work: Path, args: argparse.Namespace, alerts: AlertCounter | None
) -> dict[str, Any]:
    run_id = f"{server.name[:3].upper()}{int(time.time()) % 100000}"
    server.start(work / f"{server.name}.log")
    try:
        result: dict[str, Any] = {"server": server.name}
        load(server.port, count=0, orders=True, connections=args.connections, run_id=run_id)
        cpu_start = server.cpu_seconds()
        t_start = time.monotonic()
        sat = load(server.port, count=args.messages, connections=args.connections, run_id=run_id)
        t_end = time.monotonic()
        sat["server_cpu_us_per_message"] = round((server.cpu_seconds() - cpu_start) / args.messages * 1e6, 1)
        result["saturation"] = sat
        if alerts is not None:
            during = alerts.between(t_start, t_end)
            result["alerts_during_saturation"] = during
            result["alerts_per_second"] = round(during / (t_end - t_start), 1)
        paced_count = int(args.rate * args.paced_seconds)
        result["paced"] = load(
            server.port,
            count=paced_count,
            start=args.messages,
            rate=args.rate,
            connections=args.connections,
            run_id=run_id,
        )
        if alerts is not None:
            # Every alert the daemon committed is an outbox row: wait until the
            # publisher has delivered them all and the subscriber has them.
            store = work / "store.sqlite3"
            wait_until(lambda: outbox_delivered(store) <= alerts.count(), 120, "the outbox to drain")
            result["alerts_total"] = alerts.count()
        result["memory_kib"] = server.memory()
        return result
    finally:
        server.stop()


def measure_long(server: Server, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """RSS after every 100,000 messages up to ``--long-messages``."""
    run_id = f"L{int(time.time()) % 100000}"
    server.start(work / f"{server.name}-long.log")
    try:
        load(server.port, count=0, orders=True, connections=args.connections, run_id=run_id)
        points = []
        chunk = 100_000
        sent = 0
        while sent < args.long_messages:
            report = load(server.port, count=chunk, start=sent, connections=args.connections, run_id=run_id)
            sent += chunk
            mem = server.memory()
            points.append(
                {
                    "messages": sent,
                    "rss_kib": mem["VmRSS"],
                    "peak_kib": mem["VmHWM"],
                    "messages_per_second": report["messages_per_second"],
                }
            )
            print(
                f"  {sent:>9,} messages  RSS {mem['VmRSS'] / 1024:7.1f} MiB  "
                f"{report['messages_per_second']:8.0f} msg/s",
                flush=True,
            )
        first = points[0]["rss_kib"]
        last = points[-1]["rss_kib"]
        return {"points": points, "rss_growth_percent": round(100 * (last - first) / first, 1)}
    finally:
        server.stop()


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        f"{'server':<12} {'msg/s':>8} {'CPU µs/msg':>10} {'p50 ms':>7} {'p99 ms':>7}   "
        f"{'@' + format(args.rate, 'g') + '/s p50':>10} {'p99':>6}  {'alerts/s':>8} {'peak RSS':>9}"
    ]
    for r in results:
        sat, paced = r["saturation"], r["paced"]
        alerts = r.get("alerts_per_second")
        rows.append(
            f"{r['server']:<12} {sat['messages_per_second']:>8.0f} {sat['server_cpu_us_per_message']:>10.0f} "
            f"{sat['latency_ms']['p50']:>7.2f} "
            f"{sat['latency_ms']['p99']:>7.2f}   {paced['latency_ms']['p50']:>10.2f} "
            f"{paced['latency_ms']['p99']:>6.2f}  {'-' if alerts is None else format(alerts, '.1f'):>8} "
            f"{r['memory_kib']['VmHWM'] / 1024:>7.1f}Mi"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (5,000 messages per server)")
    parser.add_argument("--long", action="store_true", help="daemon only: RSS every 100k messages up to 1M")
    parser.add_argument("--messages", type=int, help="saturation messages per server (default 50,000)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rate", type=float, default=500.0, help="offered rate of the paced run (msg/s)")
    parser.add_argument("--paced-seconds", type=float, help="length of the paced run (default 20 s)")
    parser.add_argument("--long-messages", type=int, default=1_000_000)
    parser.add_argument("--log-level", default="info", help="the daemon's logging.level (default: info)")
    parser.add_argument("--servers", default="hl7-alerts,python-hl7,bare")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = 5_000 if args.quick else 50_000
    if args.paced_seconds is None:
        args.paced_seconds = 5.0 if args.quick else 20.0

    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "argv": sys.argv if argv is None else ["bench.run", *argv],
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
        "results": [],
    }
    wanted = args.servers.split(",")
    with tempfile.TemporaryDirectory(prefix="hl7-bench-") as tmp:
        work = Path(tmp)
        broker_dir = work / "mosquitto"
        broker_dir.mkdir()
        with mosquitto(broker_dir) as broker_port:
            if args.long:
                print(
                    f"long run: daemon, RSS every 100,000 messages up to {args.long_messages:,}", flush=True
                )
                report["long"] = measure_long(daemon_server(work, broker_port, args.log_level), work, args)
            else:
                if "hl7-alerts" in wanted:
                    alerts = AlertCounter(broker_port)
                    try:
                        server = daemon_server(work, broker_port, args.log_level)
                        report["results"].append(measure(server, work, args, alerts))
                    finally:
                        alerts.close()
                if "python-hl7" in wanted:
                    port = free_port()
                    server = Server(
                        "python-hl7",
                        [sys.executable, "-m", "bench.servers", "hl7", "--port", str(port)],
                        port,
                    )
                    report["results"].append(measure(server, work, args, None))
                if "bare" in wanted:
                    port = free_port()
                    server = Server(
                        "bare", [sys.executable, "-m", "bench.servers", "bare", "--port", str(port)], port
                    )
                    report["results"].append(measure(server, work, args, None))
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    by_name = {r["server"]: r["saturation"]["messages_per_second"] for r in report["results"]}
    if "hl7-alerts" in by_name:
        ours = by_name["hl7-alerts"]
        report["ratios"] = {
            f"hl7-alerts/{name}": round(ours / rate, 2)
            for name, rate in by_name.items()
            if name != "hl7-alerts"
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if report["results"]:
        print(
            f"{args.messages:,} messages at saturation over {args.connections} connections; "
            f"paced run {args.paced_seconds:g} s at {args.rate:g} msg/s "
            f"(latency from the scheduled send time)"
        )
        print(table(report["results"], args))
        for name, ratio in report.get("ratios", {}).items():
            print(f"{name}: {ratio}x")
    if "long" in report:
        print(f"RSS growth from first to last point: {report['long']['rss_growth_percent']} %")
    print(f"results: {args.out}")
    return report


if __name__ == "__main__":
    main()
