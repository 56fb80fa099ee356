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


@pytest.mark.parametrize(("share", "cost", "idle", "rest"), [
    (0.25, 0.8, 0.0, 2.4),  # a read of 0.8 s CPU, the next at once: 2.4 s of rest first
    (0.25, 0.8, 1.0, 1.4),  # the next a second later: what is left of the rest
    (0.25, 0.8, 5.0, None),  # long after: no rest
    (0.5, 0.2, 0.0, 0.2),
    (1.0, 0.8, 0.0, None),  # a share of 1: never rests
], ids=["at-once", "a-second-later", "long-after", "half", "all"])
def test_the_reader_rests_for_what_it_took(share: float, cost: float, idle: float, rest: float | None) -> None:
    """After a read that cost t of CPU, the reader takes the next only after
    t x (1/share - 1) has passed: at most `READER_SHARE` of the process's
    time goes to reading long frames, whatever a sender sends."""
    clocks = _Clocks()
    reader = frames.Reader(share=share, cpu=lambda: clocks.cpu, wall=lambda: clocks.wall, sleep=clocks.sleep)

    def read() -> str:
        clocks.cpu += cost
        clocks.wall += cost
        return "read"

    assert reader.run(read) == "read"
    assert clocks.slept == []  # the first read waits for nothing
    clocks.wall += idle
    assert reader.run(lambda: "next") == "next"
    assert clocks.slept == ([] if rest is None else [pytest.approx(rest)])
