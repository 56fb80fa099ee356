"""The sans-IO framer: fed whole, one byte at a time, with junk between frames."""

from __future__ import annotations

import pytest

from hl7_alerts.mllp import NEED_DATA, Event, Frame, Framer, Junk, Oversize, frame

MSG1 = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5\rPID|1||X^^^H^MR\r"
MSG2 = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|2|P|2.5\nPID|1||Y^^^H^MR\n"


def drain(framer: Framer) -> list[Event]:
    events = []
    while (event := framer.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def feed_in_chunks(stream: bytes, size: int, **kwargs: int) -> list[Event]:
    framer = Framer(**kwargs)
    events: list[Event] = []
    for i in range(0, len(stream), size):
        framer.feed(stream[i : i + size])
        events.extend(drain(framer))
    framer.feed(b"")
    events.extend(drain(framer))
    return events


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 10_000], ids=lambda c: f"chunk{c}")
def test_two_frames_survive_any_split(chunk: int) -> None:
    stream = frame(MSG1) + frame(MSG2)
    assert feed_in_chunks(stream, chunk) == [Frame(MSG1), Frame(MSG2)]


@pytest.mark.parametrize("chunk", [1, 5, 10_000], ids=lambda c: f"chunk{c}")
def test_junk_between_frames_is_reported_and_dropped(chunk: int) -> None:
    stream = b"garbage" + frame(MSG1) + b"\r\nnoise" + frame(MSG2)
    events = feed_in_chunks(stream, chunk)
    assert [e for e in events if isinstance(e, Frame)] == [Frame(MSG1), Frame(MSG2)]
    junk = b"".join(e.data for e in events if isinstance(e, Junk))
    assert junk == b"garbage\r\nnoise"


def test_missing_cr_after_end_block() -> None:
    stream = b"\x0b" + MSG1 + b"\x1c" + b"\x0b" + MSG2 + b"\x1c"
    assert feed_in_chunks(stream, 10_000) == [Frame(MSG1), Frame(MSG2)]
    # ...and when the FS is the last byte of a read, the next read's CR is eaten.
    assert feed_in_chunks(frame(MSG1) + frame(MSG2), len(MSG1) + 2) == [Frame(MSG1), Frame(MSG2)]


def test_start_block_inside_unfinished_frame_resyncs() -> None:
    stream = b"\x0bMSH|partial frame that never ends" + frame(MSG1)
    events = feed_in_chunks(stream, 10_000)
    assert events == [Junk(b"MSH|partial frame that never ends", truncated=True), Frame(MSG1)]


def test_end_of_stream_inside_a_frame_is_truncated_junk() -> None:
    events = feed_in_chunks(b"\x0b" + MSG1, 10_000)
    assert events == [Junk(MSG1, truncated=True)]


@pytest.mark.parametrize("chunk", [1, 100, 100_000], ids=lambda c: f"chunk{c}")
def test_oversize_frame_is_reported_once_then_the_stream_resyncs(chunk: int) -> None:
    big = MSG1 + b"OBX|" + b"x" * 5000 + b"\r"
    events = feed_in_chunks(frame(big) + frame(MSG2), chunk, max_frame_bytes=1024)
    oversize = [e for e in events if isinstance(e, Oversize)]
    assert len(oversize) == 1
    assert oversize[0].head.startswith(MSG1)
    assert [e for e in events if isinstance(e, Frame)] == [Frame(MSG2)]


def test_buffer_never_exceeds_the_limit_plus_one_read() -> None:
    framer = Framer(max_frame_bytes=1024)
    framer.feed(b"\x0b")
    for _ in range(100):
        framer.feed(b"y" * 512)
        drain(framer)
        assert framer.buffered <= 1024 + 512 + 1
