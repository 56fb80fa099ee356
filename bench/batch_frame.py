"""A batch in one frame against the same messages one frame each.

    .venv/bin/python -m bench.batch_frame [messages]

Feeds ``messages`` synthetic results (an azathioprine order for every tenth
patient first, so some are evaluated) through the daemon's frame handler
into a fresh SQLite store (WAL, synchronous=FULL, as in production): first
one frame per message, awaited in turn as one MLLP connection sends them,
then the same messages under other control ids as one FHS/BHS batch frame.
Prints messages per second for each. No broker: nothing reads the outbox.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from hl7_alerts.config import Config
from hl7_alerts.frames import FrameHandler, FrameSettings
from hl7_alerts.logs import configure
from hl7_alerts.metrics import Metrics
from hl7_alerts.store import SqliteStore
from tests.support.hl7kit import AZA, alt, order_msg, oru


def feed(count: int, tag: str) -> list[str]:
    out = []
    for i in range(count):
        mrn = f"B{i:06d}^^^GENHOSP^MR"
        if i % 10 == 0:
            out.append(order_msg(f"{tag}O{i}", "NW", f"RX{i}", AZA, "202609010900", mrn=mrn))
        else:
            out.append(oru(f"{tag}L{i}", "202610200800", alt("190" if i % 3 else "30"), mrn=mrn))
    return out


async def run(count: int) -> None:
    config = Config()
    settings = FrameSettings(options=config.parse_options(), pipeline=config.pipeline_settings())
    with tempfile.TemporaryDirectory(prefix="hl7-alerts-bench-") as folder:
        store = await SqliteStore.open(Path(folder) / "bench.sqlite3")
        try:
            frames = FrameHandler(
                store, lambda: settings, Metrics(), lambda: datetime.now(UTC), max_message_bytes=1 << 30
            )
            singles = feed(count, "S")
            started = time.perf_counter()
            for message in singles:
                answer = await frames.answer(message.encode())
                assert answer.code.accepted, answer.text
            single = time.perf_counter() - started
            body = "".join(feed(count, "T"))
            envelope = "FHS|^~\\&|LAB|GENHOSP\rBHS|^~\\&|LAB|GENHOSP||||||B1\r"
            frame = f"{envelope}{body}BTS|{count}\rFTS|1\r".encode()
            started = time.perf_counter()
            answer = await frames.answer(frame)
            batch = time.perf_counter() - started
            assert len(answer.parts) == count
            assert all(p.code.accepted for p in answer.parts)
        finally:
            await store.close()
    print(f"{count} messages, one frame each: {count / single:,.0f} msg/s ({single:.2f} s)")
    print(f"{count} messages, one batch frame: {count / batch:,.0f} msg/s ({batch:.2f} s)")


def main() -> None:
    configure("warning", "json")  # as the daemon logs at load: no line per message
    asyncio.run(run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))


if __name__ == "__main__":
    main()
