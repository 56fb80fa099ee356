"""Run the benchmark: the daemon and two reference servers, measured alike.

For each server: start it as its own process (the daemon with a temporary
config, store and Mosquitto), send the warm-up orders, then drive it from the
load client (another process) — at saturation over each connection count of
``--sweep`` (1, 8 and 32) and ``--connections`` (8, the primary count), then
paced at ``--rate`` messages/s over ``--connections`` — and read its CPU time
and peak RSS from ``/proc``. For the daemon, alerts are counted by an MQTT
subscriber on the topic prefix. Prints the tables, writes JSON
(``bench/results/latest.json``) and the run's one table, every server at
every connection count with the command and the machine's load
(``bench/results/latest.md``).

The daemon is measured once per store in ``--stores``: ``sqlite`` (a store
file), ``pg1`` (one daemon on PostgreSQL) and ``pg2`` (two daemon processes
on one PostgreSQL database, the load client's connections split between
their ports: msg/s is the two together, latency over every ACK). The
PostgreSQL server is the benchmark's own (`tests.support.pgserver.PgServer`,
shared with the tests; a free port, removed afterwards), durable like
production: ``fsync`` and ``synchronous_commit`` on, ``full_page_writes`` at
its default (on); each configuration gets a fresh database.

    .venv/bin/python -m bench.run --quick      # about a minute and a half
    .venv/bin/python -m bench.run              # the figures in the README
    .venv/bin/python -m bench.run --sweep 1,8,32,64 --stores sqlite   # other connection counts
    .venv/bin/python -m bench.run --stores sqlite --servers hl7-alerts   # one row
    .venv/bin/python -m bench.run --long       # RSS from 100k to 1M messages (daemon only; long.json)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from tests.support.pgserver import PgServer
from tests.support.ports import free_port, port_open
from tests.support.waiting import eventually_sync

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "bench"
RESULTS = ROOT / "bench" / "results"  # not committed

# The daemon's store configurations: --stores name -> (label, daemons).
STORES = {"sqlite": ("sqlite", 1), "pg1": ("postgresql×1", 1), "pg2": ("postgresql×2", 2)}
# Durable, as a site would run it (full_page_writes stays at its default, on).
PG_SETTINGS = {"fsync": "on", "synchronous_commit": "on"}
PG_REPORTED = (
    "server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method",
    "shared_buffers", "max_wal_size", "checkpoint_timeout",
)


def outbox_delivered(store: Path | str) -> float:
    """Outbox rows the daemon has committed, or infinity while any is
    undelivered; ``store`` is a SQLite file or a PostgreSQL DSN."""
    query = "SELECT count(*), count(*) - count(delivered_at) FROM outbox"
    if isinstance(store, str):
        import psycopg  # noqa: PLC0415 (only the PostgreSQL rows need it)

        with psycopg.connect(store, connect_timeout=10) as conn:
            row = conn.execute(query).fetchone()
    else:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)) as db:
            row = db.execute(query).fetchone()
    assert row is not None
    total, pending = row
    return float("inf") if pending else float(total)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far: unlike messages/s,
    CPU per message barely moves when other work shares the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pg_cpu_seconds(pg: PgServer) -> float:
    """CPU time of the whole PostgreSQL server so far: the postmaster, its
    live children (backends, WAL writer, checkpointer, autovacuum) and, via
    the postmaster's cutime/cstime, the children it has already reaped."""
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{postmaster}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            child = stat.read_text().rpartition(")")[2].split()
            if int(child[1]) == postmaster:
                ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


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
        eventually_sync(lambda: port_open(port), 10, what="mosquitto", interval=0.02)
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
        self.spawn(log_path)
        self.wait_ready(log_path)

    def spawn(self, log_path: Path) -> None:
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, cwd=ROOT, env={**os.environ, **self.env}
            )

    def wait_ready(self, log_path: Path) -> None:
        eventually_sync(
            lambda: port_open(self.port) or self.proc is None or self.proc.poll() is not None,
            30, what=self.name, interval=0.02,
        )
        if self.proc is None or self.proc.poll() is not None:
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
    ports: int | Sequence[int],
    *,
    count: int,
    start: int = 0,
    rate: float | None = None,
    connections: int,
    orders: bool = False,
    run_id: str,
    window: float | None = None,
) -> dict[str, Any]:
    """Run the load client in its own process; return its JSON report. With
    several ports, the client deals its connections out among them."""
    argv = [
        sys.executable,
        "-m",
        "bench.load",
        "--connections",
        str(connections),
        "--start",
        str(start),
        "--count",
        str(count),
        "--run-id",
        run_id,
    ]
    for port in [ports] if isinstance(ports, int) else ports:
        argv += ["--port", str(port)]
    if rate:
        argv += ["--rate", str(rate)]
    if orders:
        argv.append("--orders")
    if window:
        argv += ["--window", str(window)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, check=False, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"load client failed: {done.stderr.decode(errors='replace')[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    bad = {k: v for k, v in report["ack_codes"].items() if k not in ("AA", "CA")}
    if bad:
        raise RuntimeError(f"server answered other than AA: {bad}")
    return report


@dataclass
class Target:
    """What one row of the table measures: one server process, or several
    daemon processes sharing one store (the load is split between them)."""

    name: str
    servers: list[Server]
    store: str | None = None  # the daemon's store, as the table names it
    outbox: Path | str | None = None  # SQLite file or DSN whose outbox must drain (daemons)
    pg: PgServer | None = None  # its CPU is counted per message too
    dsn: str | None = None  # the database of a PostgreSQL target

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]


def daemon_server(
    work: Path,
    broker_port: int,
    log_level: str,
    *,
    name: str = "hl7-alerts",
    dsn: str | None = None,
    client_id: str = "bench",
) -> Server:
    """`hl7-alerts serve` with its own config: SQLite at ``work/<name>.sqlite3``
    unless ``dsn`` names a PostgreSQL database. Daemons sharing a database
    need their own ``client_id`` (the broker insists; it names outbox claims)."""
    # A fixed port, unlike the tests' serve(): Server starts the daemon and the
    # reference servers alike and the load client is handed their ports.
    port = free_port()
    config = work / f"{name}.yaml"
    store = {"dsn": dsn} if dsn else {"path": str(work / f"{name}.sqlite3")}
    config.write_text(
        yaml.safe_dump(
            {
                # The load client opens every connection of the sweep from
                # one address: the per-peer cap (16) must not churn them.
                "mllp": {"host": "127.0.0.1", "port": port, "max_connections": 1024,
                         "max_connections_per_peer": 1024},
                "store": store,
                "mqtt": {
                    "host": "127.0.0.1",
                    "port": broker_port,
                    "topic_prefix": PREFIX,
                    "client_id": client_id,
                },
                "logging": {"level": log_level, "format": "json"},
            },
            sort_keys=False,
        )
    )
    return Server(name, [sys.executable, "-m", "hl7_alerts", "serve", "--config", str(config)], port)


def daemon_target(
    store: str, work: Path, broker_port: int, log_level: str, pg: PgServer | None, *, statements: bool = False
) -> Target:
    """The daemon (or daemons) for one ``--stores`` entry; a fresh database
    on ``pg`` for PostgreSQL (with pg_stat_statements if ``statements``)."""
    label, daemons = STORES[store]
    if store == "sqlite":
        server = daemon_server(work, broker_port, log_level, client_id="bench-sqlite")
        return Target("hl7-alerts", [server], store=label, outbox=work / "hl7-alerts.sqlite3")
    assert pg is not None
    dsn = pg.create_database(f"bench_{store}")
    servers = [
        daemon_server(
            work, broker_port, log_level, name=f"hl7-alerts-{store}-{i}", dsn=dsn,
            client_id=f"bench-{store}-{i}",
        )
        for i in range(1, daemons + 1)
    ]
    if statements:
        with _pg_connect(dsn) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    name = f"hl7-alerts {store.replace('pg', 'pg×')}"
    return Target(name, servers, store=label, outbox=dsn, pg=pg, dsn=dsn)


def reference_target(kind: str, name: str) -> Target:
    port = free_port()
    argv = [sys.executable, "-m", "bench.servers", kind, "--port", str(port)]
    return Target(name, [Server(name, argv, port)])


def start_all(target: Target, work: Path) -> None:
    """Start every process of the target together; return once all listen."""
    try:
        for server in target.servers:
            server.spawn(work / f"{server.name}.log")
        for server in target.servers:
            server.wait_ready(work / f"{server.name}.log")
    except BaseException:
        stop_all(target)
        raise


def stop_all(target: Target) -> None:
    for server in target.servers:
        server.stop()


def sweep_counts(args: argparse.Namespace) -> list[int]:
    """The connection counts of the saturation runs, in order: ``--sweep``
    with ``--connections`` (the primary count) among them."""
    return sorted({*args.sweep, args.connections})


def saturate(
    target: Target,
    ports: list[int],
    connections: int,
    start: int,
    args: argparse.Namespace,
    run_id: str,
    *,
    pg_stats: bool,
) -> tuple[dict[str, Any], float, float]:
    """One saturation run over ``connections``: the load client's report
    plus the server's (and PostgreSQL's) CPU per message; with ``pg_stats``,
    the database's counters per message too. Returns it with its start and
    end (monotonic) for counting alerts."""
    counters = pg_counters(target.dsn) if target.dsn is not None and pg_stats else None
    cpu_start = sum(s.cpu_seconds() for s in target.servers)
    db_start = pg_cpu_seconds(target.pg) if target.pg is not None else 0.0
    t_start = time.monotonic()
    sat = load(ports, count=args.messages, start=start, connections=connections, run_id=run_id)
    t_end = time.monotonic()
    cpu = sum(s.cpu_seconds() for s in target.servers) - cpu_start
    sat["server_cpu_us_per_message"] = round(cpu / args.messages * 1e6, 1)
    if target.pg is not None:
        db = pg_cpu_seconds(target.pg) - db_start
        sat["database_cpu_us_per_message"] = round(db / args.messages * 1e6, 1)
    if target.dsn is not None and counters is not None:
        # Backends publish their counters once idle for a moment.
        time.sleep(1.5)
        sat["database"] = pg_per_message(counters, pg_counters(target.dsn), args.messages)
    return sat, t_start, t_end


def measure(
    target: Target, work: Path, args: argparse.Namespace, alerts: AlertCounter | None
) -> dict[str, Any]:
    run_id = f"{target.name[:3].upper()}{int(time.time()) % 100000}"
    start_all(target, work)
    try:
        result: dict[str, Any] = {"server": target.name}
        if target.store is not None:
            result["store"] = target.store
            result["processes"] = len(target.servers)
        ports = target.ports
        load(ports, count=0, orders=True, connections=max(args.connections, len(ports)), run_id=run_id)
        # The saturation runs, one per connection count, each on messages of
        # its own (the stream goes on: no run resends another's control IDs);
        # the primary count's run is the one the other tables show.
        sent = 0
        result["by_connections"] = {}
        for connections in sweep_counts(args):
            if connections < len(ports):
                continue  # two daemons need a connection each
            primary = connections == args.connections
            sat, t_start, t_end = saturate(target, ports, connections, sent, args, run_id, pg_stats=primary)
            sent += args.messages
            result["by_connections"][str(connections)] = sat
            if primary:
                result["saturation"] = sat
                if alerts is not None:
                    during = alerts.between(t_start, t_end)
                    result["alerts_during_saturation"] = during
                    result["alerts_per_second"] = round(during / (t_end - t_start), 1)
        paced_count = int(args.rate * args.paced_seconds)
        result["paced"] = load(
            ports,
            count=paced_count,
            start=sent,
            rate=args.rate,
            connections=args.connections,
            run_id=run_id,
        )
        if alerts is not None and target.outbox is not None:
            # Every alert the daemon committed is an outbox row: wait until the
            # publisher has delivered them all and the subscriber has them.
            outbox = target.outbox
            eventually_sync(
                lambda: outbox_delivered(outbox) <= alerts.count(), 120,
                what="the outbox to drain", interval=0.02,
            )
            result["alerts_total"] = alerts.count()
        memory = [s.memory() for s in target.servers]
        # One process's figures: with two daemons, the larger of each.
        result["memory_kib"] = {key: max(m[key] for m in memory) for key in ("VmRSS", "VmHWM")}
        if len(memory) > 1:
            result["memory_kib_each"] = memory
        return result
    finally:
        stop_all(target)


def measure_long(target: Target, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """RSS after every ``--long-every`` messages (100,000) up to ``--long-messages``."""
    run_id = f"L{int(time.time()) % 100000}"
    (server,) = target.servers
    server.start(work / f"{server.name}-long.log")
    try:
        load(server.port, count=0, orders=True, connections=args.connections, run_id=run_id)
        points = []
        sent = 0
        while sent < args.long_messages:
            chunk = min(args.long_every, args.long_messages - sent)
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


def _pg_connect(dsn: str) -> Any:
    import psycopg  # noqa: PLC0415 (only the PostgreSQL rows need it)

    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def pg_counters(dsn: str) -> dict[str, Any]:
    """The database's counters now: transactions, WAL, tuples read per index
    and, when pg_stat_statements is loaded, calls and time per statement."""
    with _pg_connect(dsn) as conn:
        commits, rollbacks = conn.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        (wal_bytes,) = conn.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()
        indexes = dict(conn.execute("SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes"))
        statements: dict[str, list[float]] = {}
        has_pgss = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()
        if has_pgss:
            rows = conn.execute(
                "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls, total_exec_time "
                "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) AND query NOT LIKE '%pg_stat%'"
            )
            for query, calls, ms in rows:
                entry = statements.setdefault(query, [0, 0.0])
                entry[0] += calls
                entry[1] += ms
    return {
        "commits": commits,
        "rollbacks": rollbacks,
        "wal_bytes": int(wal_bytes),
        "indexes": indexes,
        "statements": statements if has_pgss else None,
    }


def pg_per_message(before: dict[str, Any], after: dict[str, Any], messages: int) -> dict[str, Any]:
    """What the database did per message between two `pg_counters` (approximate:
    a backend publishes its counters up to a second late)."""
    out: dict[str, Any] = {
        "commits": round((after["commits"] - before["commits"]) / messages, 3),
        "rollbacks": round((after["rollbacks"] - before["rollbacks"]) / messages, 3),
        "wal_bytes": round((after["wal_bytes"] - before["wal_bytes"]) / messages),
        # An index read much more than its neighbours is a plan gone wrong.
        "index_tuples_read": {
            name: round((reads - before["indexes"].get(name, 0)) / messages, 2)
            for name, reads in sorted(after["indexes"].items(), key=lambda kv: -kv[1])
            if reads > before["indexes"].get(name, 0)
        },
    }
    if after["statements"] is not None:
        prior = before["statements"] or {}
        calls = {
            q: (c - prior.get(q, [0, 0.0])[0], ms - prior.get(q, [0, 0.0])[1])
            for q, (c, ms) in after["statements"].items()
        }
        out["statements"] = round(sum(c for c, _ in calls.values()) / messages, 2)
        out["statement_exec_ms"] = round(sum(ms for _, ms in calls.values()) / messages, 3)
        out["top_statements"] = [
            {"calls": round(c / messages, 3), "exec_ms": round(ms / messages, 4), "query": q}
            for q, (c, ms) in sorted(calls.items(), key=lambda kv: -kv[1][1])[:15]
            if c > 0
        ]
    return out


# Index tuples read per message beyond which a plan is scanning, not probing:
# a message reads a few dozen rows at most (its patient's recent history).
SCAN_SUSPECT = 200


def database_table(results: list[dict[str, Any]]) -> str:
    """Per message at saturation, for the PostgreSQL rows: commits (1 / the
    group-commit size), WAL, the most-read index, and, with --pg-statements,
    statements as pg_stat_statements counts them (BEGIN, SAVEPOINT, RELEASE
    and COMMIT are not among them; each INSERT of a batch is) and their
    execution time."""
    head = f"{'per message':<14} {'commits':>7} {'WAL kB':>7} {'statements':>10} {'exec ms':>8}"
    rows = [head + "  most-read index (tuples)"]
    for r in results:
        db = r["saturation"].get("database")
        if db is None:
            continue
        index = next(iter(db["index_tuples_read"].items()), ("-", 0))
        suspect = "  <- a plan scanning, not probing" if index[1] > SCAN_SUSPECT else ""
        rows.append(
            f"{r['store']:<14} {db['commits']:>7.3f} {db['wal_bytes'] / 1024:>7.1f} "
            f"{db.get('statements', '-'):>10} {db.get('statement_exec_ms', '-'):>8}  "
            f"{index[0]} ({index[1]}){suspect}"
        )
        for top in db.get("top_statements", [])[:8]:
            rows.append(f"    {top['calls']:>7.2f} calls {top['exec_ms']:>8.4f} ms  {top['query'][:80]}")
    return "\n".join(rows)


def pg_settings(pg: PgServer, extra: dict[str, str]) -> dict[str, str]:
    """The settings that decide what a commit costs (and any --pg-set), as
    the server reports them."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(pg.dsn(), connect_timeout=10) as conn:
        return {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in dict.fromkeys([*PG_REPORTED, *extra])
        }


def paced_p99(result: dict[str, Any], args: argparse.Namespace) -> str:
    """The paced run's p99, marked ``!`` when the server fell behind the
    offered rate (achieved < 95 %): then it measures the queue, not the server."""
    paced = result["paced"]
    behind = (paced["messages_per_second"] or 0) < 0.95 * args.rate
    return format(paced["latency_ms"]["p99"], ".2f") + ("!" if behind else "")


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        f"{'server':<16} {'msg/s':>8} {'CPU µs/msg':>10} {'PG µs/msg':>9} {'p50 ms':>7} {'p99 ms':>7}   "
        f"{'@' + format(args.rate, 'g') + '/s p50':>10} {'p99':>6}  {'alerts/s':>8} {'peak RSS':>9}"
    ]
    for r in results:
        sat, paced = r["saturation"], r["paced"]
        alerts = r.get("alerts_per_second")
        db = sat.get("database_cpu_us_per_message")
        rows.append(
            f"{r['server']:<16} {sat['messages_per_second']:>8.0f} {sat['server_cpu_us_per_message']:>10.0f} "
            f"{'-' if db is None else format(db, '.0f'):>9} "
            f"{sat['latency_ms']['p50']:>7.2f} "
            f"{sat['latency_ms']['p99']:>7.2f}   {paced['latency_ms']['p50']:>10.2f} "
            f"{paced_p99(r, args):>6}  {'-' if alerts is None else format(alerts, '.1f'):>8} "
            f"{r['memory_kib']['VmHWM'] / 1024:>7.1f}Mi"
        )
    return "\n".join(rows)


_README_NAMES = {
    "sqlite": "hl7-alerts, SQLite",
    "postgresql×1": "hl7-alerts, PostgreSQL, 1 daemon",
    "postgresql×2": "hl7-alerts, PostgreSQL, 2 daemons",
    "bare": "bare asyncio",
}


def _ms(value: float) -> str:
    """Latencies as the README gives them: whole ms from 100 on, else one decimal."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def markdown_table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The table as the README's Performance section shows it, ready to paste:
    the same rows as `table`, rounded, "!" where the paced run fell behind."""
    rate = format(args.rate, "g")
    header = ["server", "msg/s", "CPU µs/msg", "PG µs/msg", "p50 ms", "p99 ms", f"@{rate}/s p50",
              f"@{rate}/s p99", "alerts/s", "peak RSS"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        sat, paced = r["saturation"], r["paced"]
        name = _README_NAMES.get(r.get("store") or r["server"], r["server"])
        cpu = f"{sat['server_cpu_us_per_message']:,.0f}" + (" (both)" if r.get("processes", 1) > 1 else "")
        db, alerts = sat.get("database_cpu_us_per_message"), r.get("alerts_per_second")
        behind = paced_p99(r, args).endswith("!")
        cells = [
            name,
            f"{sat['messages_per_second']:,.0f}",
            cpu,
            "–" if db is None else f"{db:,.0f}",
            _ms(sat["latency_ms"]["p50"]),
            _ms(sat["latency_ms"]["p99"]),
            _ms(paced["latency_ms"]["p50"]),
            _ms(paced["latency_ms"]["p99"]) + (" !" if behind else ""),
            "–" if alerts is None else f"{alerts:.1f}",
            f"{r['memory_kib']['VmHWM'] / 1024:.0f} MiB",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cell(sat: dict[str, Any] | None) -> str:
    if sat is None:
        return "–"
    lat = sat["latency_ms"]
    return f"{sat['messages_per_second']:,.0f} msg/s, p50 {_sub_ms(lat['p50'])}, p99 {_sub_ms(lat['p99'])} ms"


def _sub_ms(value: float) -> str:
    """`_ms`, with two decimals below 1 ms (the echo server's latencies)."""
    return f"{value:.2f}" if value < 1 else _ms(value)


def sweep_table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The one table of a run, in Markdown: every server at each connection
    count of the sweep (msg/s at saturation and its ACK latency), its CPU
    per message and the paced run's p99, all measured in this run."""
    counts = sweep_counts(args)
    rate = format(args.rate, "g")
    header = [
        "server",
        *(f"{n} connection{'s' if n != 1 else ''}" for n in counts),
        f"CPU µs/msg ({args.connections} conn.)",
        f"p99 ms @{rate}/s over {args.connections}",
        "peak RSS",
    ]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        by = r.get("by_connections", {})
        name = _README_NAMES.get(r.get("store") or r["server"], r["server"])
        cpu = f"{r['saturation']['server_cpu_us_per_message']:,.0f}"
        if r.get("processes", 1) > 1:
            cpu += " (both)"
        rows.append(
            "| " + " | ".join(
                [
                    name,
                    *(_cell(by.get(str(n))) for n in counts),
                    cpu,
                    _ms(r["paced"]["latency_ms"]["p99"]) + (" !" if paced_p99(r, args).endswith("!") else ""),
                    f"{r['memory_kib']['VmHWM'] / 1024:.0f} MiB",
                ]
            ) + " |"
        )
    return "\n".join(rows)


def report_markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    """What ``bench/results/latest.md`` holds: when, the command, the
    machine's load before and after, the one table and the ratios."""
    machine = report["machine"]
    lines = [
        f"# bench.run, {report['started']} to {report['finished']}",
        "",
        f"Command: `{' '.join(['.venv/bin/python', '-m', 'bench.run', *report['argv'][1:]])}`",
        f"Commit: {report.get('commit', '?')}; {machine['cpus']} CPUs, Python {machine['python']}",
        f"Load before: `{machine['uptime_start']}`",
        f"Load after: `{machine['uptime_end']}`",
        "",
        f"{args.messages:,} messages per saturation run; the paced run offers {args.rate:g} msg/s over "
        f"{args.connections} connections for {args.paced_seconds:g} s (latency from the scheduled send time; "
        "! = the server fell behind the offered rate).",
        "",
        sweep_table(report["results"], args),
        "",
    ]
    lines += [f"- {name}: {ratio}×" for name, ratio in report["ratios"].items()]
    return "\n".join(lines) + "\n"


def uptime() -> str:
    """`uptime`'s line (the load averages every figure is quoted with)."""
    try:
        done = subprocess.run(["uptime"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return done.stdout.strip()


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return done.stdout.strip()


def store_table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The daemon's rows side by side: msg/s, p99 saturated and paced, and
    msg/s as a fraction of SQLite's."""
    daemons = [r for r in results if "store" in r]
    sqlite_rate = next(
        (r["saturation"]["messages_per_second"] for r in daemons if r["store"] == "sqlite"), None
    )
    paced = "@" + format(args.rate, "g") + "/s p99"
    rows = [f"{'store':<14} {'daemons':>7} {'msg/s':>8} {'p99 ms':>7} {paced:>11} {'÷ sqlite':>8}"]
    for r in daemons:
        rate = r["saturation"]["messages_per_second"]
        ratio = "-" if sqlite_rate is None else format(rate / sqlite_rate, ".2f")
        rows.append(
            f"{r['store']:<14} {r['processes']:>7} {rate:>8.0f} {r['saturation']['latency_ms']['p99']:>7.2f} "
            f"{paced_p99(r, args):>11} {ratio:>8}"
        )
    return "\n".join(rows)


def ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """hl7-alerts (SQLite) against the reference servers, and the stores
    against each other (postgresql×1/sqlite: issue 15 asks ≥ 0.6)."""
    rate = {r["server"]: r["saturation"]["messages_per_second"] for r in results}
    by_store = {r["store"]: r["saturation"]["messages_per_second"] for r in results if "store" in r}
    out: dict[str, float] = {}
    if "hl7-alerts" in rate:
        out |= {
            f"hl7-alerts/{name}": round(rate["hl7-alerts"] / value, 2)
            for name, value in rate.items()
            if not name.startswith("hl7-alerts")
        }
    pairs = (("postgresql×1", "sqlite"), ("postgresql×2", "sqlite"), ("postgresql×2", "postgresql×1"))
    for over, under in pairs:
        if over in by_store and under in by_store:
            out[f"{over}/{under}"] = round(by_store[over] / by_store[under], 2)
    return out


def _counts(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",") if n]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of connection counts: {text!r}") from None
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError("connection counts are at least 1")
    return counts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (2,000 messages per server)")
    parser.add_argument(
        "--long",
        action="store_true",
        help="daemon only: RSS every 100k messages up to 1M (on the first of --stores)",
    )
    parser.add_argument("--messages", type=int, help="saturation messages per server (default 10,000)")
    parser.add_argument(
        "--connections", type=int, default=8,
        help="the primary count: the paced run's, and the tables' (default 8)",
    )
    parser.add_argument(
        "--sweep",
        type=_counts,
        default=[1, 8, 32],
        metavar="N,N,...",
        help="saturation runs at each of these connection counts too (default 1,8,32)",
    )
    parser.add_argument("--rate", type=float, default=500.0, help="offered rate of the paced run (msg/s)")
    parser.add_argument("--paced-seconds", type=float, help="length of the paced run (default 10 s)")
    parser.add_argument("--long-messages", type=int, default=1_000_000, help="--long: messages in all")
    parser.add_argument("--long-every", type=int, default=100_000, help="--long: RSS after every this many")
    parser.add_argument("--log-level", default="info", help="the daemon's logging.level (default: info)")
    parser.add_argument(
        "--servers",
        default="hl7-alerts,python-hl7,bare",
        help="of hl7-alerts, python-hl7, bare, and mllp-echo (the daemon's listener answering at once)",
    )
    parser.add_argument(
        "--stores",
        default="sqlite,pg1,pg2",
        help="the daemon's stores: sqlite, pg1 (PostgreSQL, one daemon), pg2 (two daemons, one database)",
    )
    parser.add_argument(
        "--pg-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra setting for the benchmark's PostgreSQL server (repeatable), to try one out",
    )
    parser.add_argument(
        "--pg-statements",
        action="store_true",
        help="load pg_stat_statements: statements per message and the costliest ones, per PostgreSQL row",
    )
    parser.add_argument(
        "--out", type=Path,
        help="the JSON report (default bench/results/latest.json; with --long, bench/results/long.json)",
    )
    parser.add_argument(
        "--markdown", type=Path,
        help="where the one table goes (default: --out with .md, bench/results/latest.md)",
    )
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = 2_000 if args.quick else 10_000
    if args.paced_seconds is None:
        args.paced_seconds = 5.0 if args.quick else 10.0
    stores = [s for s in args.stores.split(",") if s]
    unknown = [s for s in stores if s not in STORES]
    if unknown or not stores:
        parser.error(f"--stores: unknown {unknown or 'empty list'}; choose from {', '.join(STORES)}")
    if args.out is None:
        # --long's report holds no table: it must not replace the one latest.md was written with.
        args.out = RESULTS / ("long.json" if args.long else "latest.json")
    if args.long and (args.long_every < 1 or args.long_messages < 1):
        parser.error("--long-messages and --long-every are at least 1")
    if args.long and stores[0] == "pg2":
        parser.error("--long measures one daemon: its store is the first of --stores (sqlite or pg1)")
    if len(set(stores)) != len(stores):
        parser.error("--stores: each store once")
    if args.connections < 2 and "pg2" in stores:
        parser.error("pg2 needs --connections of at least 2")
    pg_extra = dict(item.partition("=")[::2] for item in args.pg_set)
    if any(not name or not value for name, value in pg_extra.items()):
        parser.error("--pg-set takes NAME=VALUE")

    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "argv": sys.argv if argv is None else ["bench.run", *argv],
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
            "uptime_start": uptime(),
        },
        "commit": git_commit(),
        "results": [],
    }
    wanted = args.servers.split(",")
    daemon_stores = stores[:1] if args.long else stores if "hl7-alerts" in wanted else []
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hl7-bench-")))
        broker_dir = work / "mosquitto"
        broker_dir.mkdir()
        broker_port = stack.enter_context(mosquitto(broker_dir))
        pg = None
        if any(s != "sqlite" for s in daemon_stores):
            if args.pg_statements:
                pg_extra.setdefault("shared_preload_libraries", "pg_stat_statements")
            pg = stack.enter_context(PgServer({**PG_SETTINGS, **pg_extra}))
            report["postgresql"] = pg_settings(pg, pg_extra)
        if args.long:
            print(
                f"long run: daemon on {STORES[stores[0]][0]}, RSS every {args.long_every:,} messages up to "
                f"{args.long_messages:,}",
                flush=True,
            )
            target = daemon_target(stores[0], work, broker_port, args.log_level, pg)
            report["long"] = measure_long(target, work, args)
        else:
            for store in daemon_stores:
                alerts = AlertCounter(broker_port)
                try:
                    target = daemon_target(
                        store, work, broker_port, args.log_level, pg, statements=args.pg_statements
                    )
                    report["results"].append(measure(target, work, args, alerts))
                finally:
                    alerts.close()
                if pg is not None and store != "sqlite":
                    pg.drop_database(f"bench_{store}")
            if "python-hl7" in wanted:
                report["results"].append(measure(reference_target("hl7", "python-hl7"), work, args, None))
            if "bare" in wanted:
                report["results"].append(measure(reference_target("bare", "bare"), work, args, None))
            if "mllp-echo" in wanted:
                report["results"].append(measure(reference_target("mllp", "mllp-echo"), work, args, None))
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["machine"]["uptime_end"] = uptime()
    report["ratios"] = ratios(report["results"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    markdown = args.markdown or args.out.with_suffix(".md")
    if report["results"]:
        markdown.write_text(report_markdown(report, args))
    if report["results"]:
        print(
            f"{args.messages:,} messages at saturation over {args.connections} connections; "
            f"paced run {args.paced_seconds:g} s at {args.rate:g} msg/s "
            f"(latency from the scheduled send time; ! = fell behind the offered rate)"
        )
        print(table(report["results"], args))
        if any("store" in r for r in report["results"]):
            print()
            print(store_table(report["results"], args))
        if any("database" in r["saturation"] for r in report["results"]):
            print()
            print(database_table(report["results"]))
        for name, ratio in report["ratios"].items():
            target_note = "  (target ≥ 0.6, issue 15)" if name == "postgresql×1/sqlite" else ""
            print(f"{name}: {ratio}x{target_note}")
        print()
        print(f"Every server at {', '.join(map(str, sweep_counts(args)))} connections ({markdown}):")
        print(sweep_table(report["results"], args))
        print()
        print("For the README's Performance section:")
        print(markdown_table(report["results"], args))
    if "long" in report:
        print(f"RSS growth from first to last point: {report['long']['rss_growth_percent']} %")
        machine = report["machine"]
        print(f"uptime before: {machine['uptime_start']}\nuptime after:  {machine['uptime_end']}")
    print(f"results: {args.out}")
    return report


if __name__ == "__main__":
    main()
