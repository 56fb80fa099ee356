"""The sans-IO framer: fed whole, one byte at a time, with junk between frames."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hl7_alerts.framer import NEED_DATA, Event, Frame, Framer, Junk, Oversize, frame

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


# -- properties ---------------------------------------------------------------


_payload = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
_junk = st.binary(max_size=20).map(lambda b: b.replace(b"\x0b", b""))


def feed_at(stream: bytes, cuts: list[int], limit: int) -> list[Event]:
    framer = Framer(max_frame_bytes=limit)
    events: list[Event] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        if cut > last:  # feed(b"") would mean end of stream
            framer.feed(stream[last:cut])
        events.extend(drain(framer))
        last = cut
    framer.feed(b"")
    events.extend(drain(framer))
    return events


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(st.tuples(_payload, _junk, st.booleans()), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=2500), max_size=40),
    limit=st.integers(min_value=16, max_value=400),
)
def test_any_split_of_a_valid_stream_yields_the_same_frames(
    messages: list[tuple[bytes, bytes, bool]], cuts: list[int], limit: int
) -> None:
    """Frames split anywhere, junk between them, FS with or without its CR:
    the frames (and the heads of over-size ones) come out the same, in order."""
    stream = b"".join(
        junk + b"\x0b" + payload + (b"\x1c\r" if with_cr else b"\x1c") for payload, junk, with_cr in messages
    )
    events = feed_at(stream, [c for c in cuts if c <= len(stream)], limit)
    got = [(type(e).__name__, e.data if isinstance(e, Frame) else e.head)
           for e in events if isinstance(e, Frame | Oversize)]
    expected = [("Frame", p) if len(p) <= limit else ("Oversize", p[: min(4096, limit)]) for p, _, _ in messages]
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=30),
    limit=st.integers(min_value=16, max_value=500),
)
def test_random_bytes_never_raise_and_stay_bounded(data: bytes, cuts: list[int], limit: int) -> None:
    framer = Framer(max_frame_bytes=limit)
    last = 0
    for cut in [*sorted({c for c in cuts if 0 < c <= len(data)}), len(data)]:
        if cut > last:
            framer.feed(data[last:cut])
        for event in drain(framer):
            assert isinstance(event, Frame | Junk | Oversize)
            if isinstance(event, Frame):
                assert len(event.data) <= limit
                assert b"\x0b" not in event.data
                assert b"\x1c" not in event.data
        assert framer.buffered <= limit + (cut - last) + 1
        last = cut
    framer.feed(b"")
    drain(framer)
    assert framer.buffered == 0
    assert not framer.in_frame


_TOKENS = [b"\x0b", b"\x1c", b"\r", b"\n", b"MSH", b"MS", b"BHS", b"\xef\xbb\xbf", b"|", b"x", b"y" * 9]


def frames_and_heads(events: list[Event]) -> list[tuple[str, bytes]]:
    return [(type(e).__name__, e.data if isinstance(e, Frame) else e.head)
            for e in events if isinstance(e, Frame | Oversize)]


@settings(max_examples=500, deadline=None)
@given(
    data=st.lists(st.sampled_from(_TOKENS), max_size=120).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=40),
    limit=st.integers(min_value=16, max_value=64),
)
def test_framing_does_not_depend_on_read_boundaries(data: bytes, cuts: list[int], limit: int) -> None:
    """Streams dense in VT, FS, CR and message starts: split anywhere, the
    same frames and over-size heads come out as when fed whole."""
    whole = feed_at(data, [], limit)
    split = feed_at(data, [c for c in cuts if c <= len(data)], limit)
    assert frames_and_heads(split) == frames_and_heads(whole)


@pytest.mark.parametrize("chunk", [1, 2, 10_000], ids=lambda c: f"chunk{c}")
def test_stray_vt_inside_a_message_is_content_not_a_restart(chunk: int) -> None:
    # A VT that does not begin a message header (here before CR LF at the end
    # of a report) stays in the frame; one that begins MSH restarts.
    stray = MSG1 + b"\x0b\r\n"
    events = feed_in_chunks(frame(stray) + b"\x0b\xef\xbb\xbfMSH|abandoned" + frame(MSG2), chunk)
    assert [e for e in events if isinstance(e, Frame)] == [Frame(stray), Frame(MSG2)]
