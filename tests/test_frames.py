"""Answering frames (`frames.py`) and the reader process
(`reader_process.py`): where long frames are read, what survives the trip
back from the reader process, and how much of its time the reader may take."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import threading
from datetime import UTC
from pathlib import Path

import pytest

from hl7_alerts import frames, reader_process
from hl7_alerts.batches import BatchFrame, read_batch
from hl7_alerts.messages import parse_message
from hl7_alerts.model import ResultMessage
from hl7_alerts.segments import MessageError, split_file
from hl7_alerts.terminology import Terminology
from tests.support.broker import Broker
from tests.support.daemon import make_config, running
from tests.support.hostile import WORST
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.samples import SAMPLES
from tests.support.waiting import eventually

_REAL_READ = frames._read
_WHERE = "HL7_ALERTS_TEST_READS"  # a directory: who read which message (the reader process inherits it)


def _read_and_say_where(data: bytes, options: frames.ParseOptions) -> frames._Read:
    """`frames._read`, writing the process and thread that ran it to a file
    named by the message's control id. Module-level, so that it reaches the
    reader process by pickle."""
    result = _REAL_READ(data, options)
    name = result.header.control_id if result.header else "unknown"
    (Path(os.environ[_WHERE]) / name).write_text(f"{os.getpid()} {threading.current_thread().name}")
    return result


def _read_batch_and_say_where(data: bytes) -> BatchFrame | None:
    """`batches.read_batch`, writing the process that ran it to ``BATCH``."""
    (Path(os.environ[_WHERE]) / "BATCH").write_text(str(os.getpid()))
    return read_batch(data)


def _read_once_killed(data: bytes, options: frames.ParseOptions) -> frames._Read:
    """`frames._read`, but the first reader process to get here says its pid
    and waits to be killed."""
    marker = Path(os.environ[_WHERE]) / "reader.pid"
    if not marker.exists():
        marker.with_suffix(".new").write_text(str(os.getpid()))
        marker.with_suffix(".new").rename(marker)  # whole or not at all
        signal.pause()  # until the test's SIGKILL
    return _REAL_READ(data, options)


async def test_long_frames_are_read_off_the_event_loop(
    tmp_path: Path, broker: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame over `reader_process.INLINE_READ_BYTES` is read in the reader process
    (a 1 MiB frame of bare segments takes a second to read, holding the
    interpreter lock of the process that reads it), a short one on the loop;
    both get their answer, over real MLLP."""
    monkeypatch.setenv(_WHERE, str(tmp_path))
    monkeypatch.setattr(frames, "_read", _read_and_say_where)
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        short = WORST["spaces_value"].build(10, control="SHORT")
        long = WORST["bare_segments"].build(reader_process.INLINE_READ_BYTES, control="LONG")
        assert len(short) <= reader_process.INLINE_READ_BYTES < len(long)
        assert ack_fields(await client.send(short))["code"] == "AA"
        assert ack_fields(await client.send(long))["code"] == "AE"
        await client.close()
    here = f"{os.getpid()} {threading.current_thread().name}"  # the test's loop is the daemon's
    assert (tmp_path / "SHORT").read_text() == here
    assert (tmp_path / "LONG").read_text().split()[0] != str(os.getpid())


async def test_a_long_batch_is_split_and_read_in_the_reader_process(
    tmp_path: Path, broker: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch frame over `reader_process.INLINE_READ_BYTES` is split in the reader
    process, its long message read there too, and the batch answered with
    each message's code, in order."""
    monkeypatch.setenv(_WHERE, str(tmp_path))
    monkeypatch.setattr(frames, "read_batch", _read_batch_and_say_where)
    monkeypatch.setattr(frames, "_read", _read_and_say_where)
    long = WORST["spaces_value"].build(reader_process.INLINE_READ_BYTES, control="B-LONG").decode()
    short = WORST["invalid_status"].build(5, control="B-SHORT").decode()
    frame = f"BHS|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||||B1\r{long}{short}BTS|2\r".encode()
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        ack = (await client.send(frame)).decode()
        await client.close()
    msa = [line.split("|")[1:3] for line in ack.split("\r") if line.startswith("MSA")]
    assert msa == [["AA", "B-LONG"], ["AE", "B-SHORT"]]
    assert (tmp_path / "BATCH").read_text() != str(os.getpid())
    assert (tmp_path / "B-LONG").read_text().split()[0] != str(os.getpid())
    assert (tmp_path / "B-SHORT").read_text().split()[0] == str(os.getpid())


async def test_a_reader_process_killed_under_a_frame_loses_no_answer(
    tmp_path: Path, broker: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader process SIGKILLed (as the OOM killer would) while it reads
    a long frame: the frame is read again in a new reader and gets the answer
    it is owed, and the next long frame too."""
    monkeypatch.setenv(_WHERE, str(tmp_path))
    monkeypatch.setattr(frames, "_read", _read_once_killed)
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        first = WORST["bare_segments"].build(reader_process.INLINE_READ_BYTES, control="KILLED")
        answer = asyncio.create_task(client.send(first))
        marker = tmp_path / "reader.pid"
        await eventually(marker.exists, what="the reader process reading the frame")
        pid = int(marker.read_text())
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        ack = ack_fields(await answer)
        assert (ack["code"], ack["control_id"]) == ("AE", "KILLED")
        after = ack_fields(await client.send(WORST["spaces_value"].build(4000, control="AFTER")))
        assert (after["code"], after["control_id"]) == ("AA", "AFTER")
        await client.close()


async def test_a_reader_process_killed_between_frames_is_replaced(
    tmp_path: Path, broker: Broker, prefix: str
) -> None:
    """The reader process killed while idle: the next long frame finds it
    dead, is read in a new one and answered."""
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config) as daemon:
        reader = daemon.daemon.reader
        assert reader is not None
        pid = await reader.read(os.getpid)
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        client = await AsyncMllpClient.connect(daemon.port)
        long = WORST["spaces_value"].build(4000, control="NEXT")
        ack = ack_fields(await client.send(long))
        assert (ack["code"], ack["control_id"]) == ("AA", "NEXT")
        await client.close()
        assert await reader.read(os.getpid) not in (pid, os.getpid())


def _raises(data: bytes) -> None:
    raise ValueError(f"could not read {data!r}")


async def test_what_reading_raises_in_the_reader_comes_back_as_text() -> None:
    """A defect of ours raising in the reader process comes back as
    `ReadFailed` (an exception object may not survive pickling), logged with
    its traceback but not its message, which may quote the frame."""
    reader = reader_process.ReadProcess()
    reader.start()
    try:
        with pytest.raises(reader_process.ReadFailed):
            await reader.read(_raises, b"SECRETVALUE")
        assert await reader.read(read_batch, b"MSH|^~\\&|L\r") is None  # still up
    finally:
        await reader.stop()
    text = ""
    try:
        reader_process._paced(_raises, b"SECRETVALUE")
    except reader_process.ReadFailed as exc:
        text = str(exc)
    assert "Traceback" in text
    assert "ValueError: (message withheld" in text
    assert "SECRETVALUE" not in text


def _sample(name: str, index: int = 0) -> bytes:
    return split_file((SAMPLES / name).read_bytes())[index]


@pytest.mark.parametrize("name", [
    "02_seed_liver_panel_above_3xuln.hl7", "01_seed_order_azathioprine.hl7", "06_v23_orm_feed.hl7",
    "07_rule_catalog.hl7", "08_correction_withdraws.hl7",
])
def test_a_read_message_survives_pickling(name: str) -> None:
    """What `frames._read` gives back from the reader process: the message
    (an ORU with its observations, orders), its header and the unmapped
    codes, equal after the trip."""
    read = _REAL_READ(_sample(name), _options())
    assert read.rejection is None
    assert read.message is not None
    if name.startswith("02"):
        assert isinstance(read.message, ResultMessage)
        assert read.message.observations
    again = pickle.loads(pickle.dumps(read))
    assert again == read
    assert pickle.loads(pickle.dumps(parse_message(_sample(name), _options()))) == read.message


@pytest.mark.parametrize("raw", [
    pytest.param(b"PID|1||H1^^^G^MR\r", id="no-msh"),
    pytest.param(b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|C1|P|2.1\rPID|1\r", id="version-2.1"),
    pytest.param(b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|C1|X|2.5\rPID|1\r", id="processing-id"),
    pytest.param(b"MSH|^~\\&|L|F|R|G|2026|||C1|P|2.5\r", id="no-type"),
    pytest.param(b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|C1|P|2.5\rOBX|1\r", id="no-pid"),
    pytest.param(b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|C1|P|2.5\rPID|1||123^^^SSA^SS\r", id="no-mr"),
    *(pytest.param(w.build(50), id=f"worst-{name}") for name, w in WORST.items() if w.ack != "AA"),
])
def test_a_refusal_survives_pickling(raw: bytes) -> None:
    """Each shape of `MessageError` (its ACK code, error code, segment,
    occurrence, field, reason) and the salvaged header, equal after the
    trip back from the reader process."""
    read = _REAL_READ(raw, _options())
    error = read.rejection
    assert error is not None
    assert read.crashed is None
    again = pickle.loads(pickle.dumps(read))
    assert isinstance(again.rejection, MessageError)
    shape = (error.reason, error.ack_code, error.error_code, error.segment, error.sequence, error.field)
    theirs = again.rejection
    assert (theirs.reason, theirs.ack_code, theirs.error_code, theirs.segment, theirs.sequence,
            theirs.field) == shape
    assert str(theirs) == str(error)
    assert again.header == read.header


def test_a_crash_while_reading_survives_pickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parser that crashes: an AE refusal whose ``crashed`` is the
    traceback as text (no exception object to pickle), without the message."""
    def crash(data: bytes, *_: object) -> None:
        raise ValueError(f"could not read {data.decode()}")

    monkeypatch.setattr(frames, "parse_message", crash)
    read = _REAL_READ(_sample("02_seed_liver_panel_above_3xuln.hl7"), _options())
    again = pickle.loads(pickle.dumps(read))
    assert again.rejection is not None
    assert again.rejection.ack_code == "AE"
    assert again.crashed is not None
    assert "Traceback" in again.crashed
    assert "in crash" in again.crashed
    assert "ValueError: (message withheld" in again.crashed
    assert "PID|" not in again.crashed


def _options() -> frames.ParseOptions:
    return frames.ParseOptions(terminology=Terminology(), timezone=UTC)


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
    reader = reader_process.Reader(share=0.25, burst=1.0, cpu=lambda: clocks.cpu, wall=lambda: clocks.wall,
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
