"""Outbox → Mosquitto throughput at several in-flight windows.

    .venv/bin/python bench/publisher_window.py [rows]

Starts its own Mosquitto on a free port, fills a fresh store's outbox with
``rows`` alert rows, and times the publisher draining it (QoS 1, PUBACK
awaited, rows marked delivered in order, every attempt and delivery audited)
at several `mqtt.max_inflight` values. Synthetic payloads only.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from hl7_alerts.publisher import Publisher
from hl7_alerts.settings import MqttSettings
from hl7_alerts.store import OutboxItem, SqliteStore, Transaction

WINDOWS = (1, 5, 20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def now() -> datetime:
    return datetime.now(UTC)


class CountingStore(SqliteStore):
    """Sets `done` once ``target`` rows are marked delivered."""

    target = 0
    delivered = 0
    done: asyncio.Event

    async def mark_delivered(self, ids: Sequence[int], at: datetime) -> None:
        await super().mark_delivered(ids, at)
        self.delivered += len(ids)
        if self.delivered >= self.target:
            self.done.set()


async def drain(folder: Path, port: int, rows: int, window: int) -> float:
    store = await CountingStore.open(folder / f"w{window}.sqlite3")
    assert isinstance(store, CountingStore)
    store.target, store.done = rows, asyncio.Event()
    body = json.dumps({"schema": "hl7-alerts/alert@1", "title": "x" * 400})
    prefix = f"bench{window}"

    def fill(tx: Transaction) -> None:
        for i in range(rows):
            item = OutboxItem(alert_id=f"{i:032x}", version=1, event="firing", topic=f"{prefix}/alerts/x",
                              payload=body, patient="p")
            tx.enqueue(item, now())

    await store.transact(fill)
    settings = MqttSettings(port=port, topic_prefix=prefix, client_id=prefix, max_inflight=window)
    publisher = Publisher(store, settings, clock=now)
    started = time.perf_counter()
    task = asyncio.create_task(publisher.run())
    await store.done.wait()
    elapsed = time.perf_counter() - started
    publisher.stop()
    await task
    await store.close()
    return elapsed


def main(rows: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hl7-alerts-bench-"))
    port = free_port()
    conf = folder / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 20\n")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    quiet = subprocess.DEVNULL
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=quiet, stderr=quiet)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        for window in WINDOWS:
            elapsed = asyncio.run(drain(folder, port, rows, window))
            print(f"max_inflight={window:>2}: {rows} alerts in {elapsed:.2f}s = {rows / elapsed:,.0f}/s")
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(folder)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
