"""Page time of the web view over a big store: 10^5 patients, 10^6 results.

    .venv/bin/python -m bench.web_page                 # build the store (once, kept in --dir) and time pages
    .venv/bin/python -m bench.web_page --requests 300  # more samples

Builds a SQLite store (the daemon's schema, migrations run by the store
itself) with ``--patients`` patients of ``--results`` results each (a liver
panel of five every few weeks over the last 170 days), 2 % of them on
azathioprine with an open alert (payload, outbox event and audit row as the
pipeline writes them), plus the seed story's patient through the real
pipeline. Then runs ``hl7-alerts web`` as a process and requests alert
pages of random alerted patients over real HTTP, one at a time after
signing in: each request reads the alert, its events and the patient's
180-day trend, writes its access audit row (durably) and draws the chart.
Prints p50/p95/p99 and the list page's, with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx

from tests.support.webkit import PASSWORD, WebProcess, add_user, seed, store_config

NOW = datetime.now(UTC).replace(microsecond=0)
PANEL = (
    ("ALT", "1742-6", 7, 56),
    ("AST", "1920-8", 10, 40),
    ("ALP", "6768-6", 42, 141),
    ("GGT", "2324-2", 9, 48),
    ("bilirubin_total", "1975-2", 0.1, 1.2),
)


def build(path: Path, patients: int, results: int, alerted_share: float) -> list[str]:
    """The big store; returns the alert ids of the alerted patients."""
    seed(store_config({"path": str(path)}), users={})  # schema, and the seed story through the pipeline
    rng = random.Random(16)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    panels = max(1, results // len(PANEL))
    alert_ids: list[str] = []
    for p in range(patients):
        key = f"BENCH|MR|P{p:06d}"
        msg = db.execute(
            "INSERT INTO messages (sending_application, sending_facility, control_id, message_type, version, "
            "received_at, digest, raw, ack_code, ack_text) "
            "VALUES ('LAB', 'BENCH', ?, 'ORU^R01', '2.5.1', ?, ?, ?, "
            "'AA', '') RETURNING id",
            (f"B{p}", NOW.isoformat(), f"d{p}", b""),
        ).fetchone()[0]
        rows = []
        for n in range(panels):
            at = NOW - timedelta(days=170 * (panels - n) / panels)  # inside the 180-day trend
            for analyte, code, low, high in PANEL:
                value = round(rng.uniform(low, high * 1.5), 1)
                rows.append(
                    (
                        msg,
                        key,
                        analyte,
                        code,
                        "LN",
                        analyte,
                        "NM",
                        str(value),
                        value,
                        "",
                        "U/L",
                        low,
                        high,
                        f"{low}-{high}",
                        "",
                        "F",
                        at.isoformat(),
                        at.timestamp(),
                        f"S{p}-{n}",
                        str(n),
                    )
                )
        db.executemany(
            "INSERT INTO observations (message_id, patient, analyte, code, code_system, text, value_type, "
            "value_text, "
            "value, comparator, unit, ref_low, ref_high, ref_text, flag, status, observed_at, observed_ts, "
            "specimen_id, set_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        if rng.random() < alerted_share:
            start = NOW - timedelta(days=200)
            db.execute(
                "INSERT INTO orders (patient, order_id, ingredient, drug_text, dose, start, stop, holds, "
                "message_id) "
                "VALUES (?, 'RX1', 'azathioprine', 'AZATHIOPRINE', '150 mg', ?, NULL, '[]', ?)",
                (key, start.isoformat(), msg),
            )
            alert_id = f"{p:032x}"
            opened = NOW - timedelta(days=3)
            payload = {
                "schema": "hl7-alerts/alert@1",
                "alert_id": alert_id,
                "version": 1,
                "event": "firing",
                "rule": "aza.hepatotoxicity.stop",
                "severity": "critical",
                "title": "Azathioprine hepatotoxicity: ALT 3.4 × ULN",
                "summary": "bench",
                "patient": {"id": f"P{p:06d}", "id_type": "MR", "authority": "BENCH"},
                "observations": [],
                "recommendations": ["Discontinue azathioprine now"],
                "references": [],
                "source": {"control_id": f"B{p}", "sending_application": "LAB", "sending_facility": "BENCH"},
                "occurred_at": opened.isoformat(),
            }
            db.execute(
                "INSERT INTO alerts (alert_id, patient, patient_id, patient_id_type, patient_authority, "
                "rule, episode, state, severity, version, opened_at, evidence_at, payload, rests_on, "
                "evidence_key) "
                "VALUES (?, ?, ?, 'MR', 'BENCH', 'aza.hepatotoxicity.stop', 1, 'open', 'critical', 1, "
                "?, ?, ?, "
                "'ALT', 'k')",
                (alert_id, key, f"P{p:06d}", opened.isoformat(), opened.isoformat(), json.dumps(payload)),
            )
            outbox = db.execute(
                "INSERT INTO outbox (alert_id, version, event, topic, payload, patient, created_at, "
                "delivered_at) "
                "VALUES (?, 1, 'firing', 'b', ?, ?, ?, ?) RETURNING id",
                (alert_id, json.dumps(payload), key, opened.isoformat(), opened.isoformat()),
            ).fetchone()[0]
            db.execute(
                "INSERT INTO audit (at, kind, alert_id, version, event, outbox_id, detail) "
                "VALUES (?, 'event', ?, 1, 'firing', ?, 'b')",
                (opened.isoformat(), alert_id, outbox),
            )
            alert_ids.append(alert_id)
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()
    return alert_ids


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hl7-alerts-web-bench"))
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--results", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    store = args.dir / f"store-{args.patients}x{args.results}.sqlite3"
    ids_file = store.with_suffix(".alerts.json")
    if not ids_file.exists():
        for stale in args.dir.glob(f"{store.name}*"):
            stale.unlink()
        started = time.perf_counter()
        ids = build(store, args.patients, args.results, 0.02)
        ids_file.write_text(json.dumps(ids))
        print(f"built {store} in {time.perf_counter() - started:.0f} s")
    ids = json.loads(ids_file.read_text())
    with sqlite3.connect(store) as db:
        counts = {
            t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("observations", "alerts")
        }
        patients = db.execute("SELECT count(DISTINCT patient) FROM observations").fetchone()[0]
    print(f"store: {patients} patients, {counts['observations']} results, {counts['alerts']} alerts")
    config = args.dir / "config.yaml"
    config.write_text(f"store:\n  path: {store}\nlogging:\n  format: json\n  level: info\nweb:\n  port: 0\n")
    assert add_user(config).returncode == 0
    load_before = os.getloadavg()
    rng = random.Random(7)
    with (
        WebProcess(config, log=args.dir / "web.log") as site,
        httpx.Client(base_url=site.url, timeout=30) as c,
    ):
        c.post("/login", data={"username": "dr.web", "password": PASSWORD})
        for alert in ids[:5]:  # warm-up: matplotlib's first import and font cache
            c.get(f"/alerts/{alert}").raise_for_status()
        pages, lists = [], []
        for _ in range(args.requests):
            alert = rng.choice(ids)
            t = time.perf_counter()
            r = c.get(f"/alerts/{alert}")
            pages.append(time.perf_counter() - t)
            assert r.status_code == 200
            assert "series-ALT" in r.text
        for _ in range(max(20, args.requests // 10)):
            t = time.perf_counter()
            c.get("/").raise_for_status()
            lists.append(time.perf_counter() - t)
    load_after = os.getloadavg()
    ms = [v * 1000 for v in pages]
    print(
        f"alert page ({len(ms)} requests, one at a time): p50 {percentile(ms, 0.5):.0f} ms, "
        f"p95 {percentile(ms, 0.95):.0f} ms, p99 {percentile(ms, 0.99):.0f} ms, "
        f"mean {statistics.mean(ms):.0f} ms"
    )
    lm = [v * 1000 for v in lists]
    print(
        f"alert list ({len(lm)} requests, {len(ids)} open alerts, 200 shown): "
        f"p50 {percentile(lm, 0.5):.0f} ms, "
        f"p95 {percentile(lm, 0.95):.0f} ms"
    )
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True, check=False).stdout.strip()}"
    )


if __name__ == "__main__":
    main()
