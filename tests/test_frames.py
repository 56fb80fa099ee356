"""Answering frames (`frames.py`): where long frames are read, and how much
of the process the reader may take."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hl7_alerts import frames
from tests.support.broker import Broker
from tests.support.daemon import make_config, running
from tests.support.hostile import WORST
from tests.support.mllp import AsyncMllpClient, ack_fields


async def test_long_frames_are_read_off_the_event_loop(
    tmp_path: Path, broker: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame over `frames.INLINE_READ_BYTES` is read on the reader thread
    (a 1 MiB frame of bare segments takes seconds to read), a short one on
    the loop; both get their answer, over real MLLP."""
    threads: dict[str, str] = {}
    read = frames._read

    def recording(data: bytes, options: frames.ParseOptions) -> frames._Read:
        result = read(data, options)
        threads[result.header.control_id if result.header else "?"] = threading.current_thread().name
        return result

    monkeypatch.setattr(frames, "_read", recording)
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        short = WORST["spaces_value"].build(10, control="SHORT")
        long = WORST["bare_segments"].build(frames.INLINE_READ_BYTES, control="LONG")
        assert len(short) <= frames.INLINE_READ_BYTES < len(long)
        assert ack_fields(await client.send(short))["code"] == "AA"
        assert ack_fields(await client.send(long))["code"] == "AE"
        await client.close()
    assert threads["SHORT"] == threading.current_thread().name  # the test's loop is the daemon's
    assert threads["LONG"].startswith("hl7-alerts-read")


class _Clocks:
    """The reader's CPU and wall clocks, and its sleep, under the test's hand."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.wall += seconds


@pytest.mark.parametrize(("costs", "gaps", "sleeps"), [
    ([0.8, 0.8, 0.8], [0, 0], [None, None, 1.6]),  # the burst covers two; the third waits 0.4 / 0.25
    ([0.8, 0.8, 0.8], [0, 2.0], [None, None, None]),  # two seconds later the budget is back
    ([2.0, 0.1], [0], [None, 4.0]),  # longer than the burst: the next waits until the budget is back to 0
    ([0.005] * 200, [0.01] * 199, [None] * 200),  # a feed of long messages (5 ms each, 100/s): never waits
], ids=["burst-then-share", "refilled", "over-the-burst", "a-feed-of-long-messages"])
def test_the_reader_takes_its_share_after_a_burst(
    costs: list[float], gaps: list[float], sleeps: list[float | None]
) -> None:
    """After `READER_BURST` seconds of reading, reads wait so that reading
    takes at most `READER_SHARE` of the time, whatever a sender sends; a
    feed whose reads fit in the share never waits."""
    clocks = _Clocks()
    reader = frames.Reader(share=0.25, burst=1.0, cpu=lambda: clocks.cpu, wall=lambda: clocks.wall,
                           sleep=clocks.sleep)
    seen: list[float | None] = []
    for k, cost in enumerate(costs):
        if k:
            clocks.wall += gaps[k - 1]
        before = len(clocks.slept)

        def read(cost: float = cost) -> float:
            clocks.cpu += cost
            clocks.wall += cost
            return cost

        assert reader.run(read) == cost
        seen.append(clocks.slept[before] if len(clocks.slept) > before else None)
    assert seen == [None if s is None else pytest.approx(s) for s in sleeps]
