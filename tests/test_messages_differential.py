"""The lazy reader against python-hl7, field for field.

Every sample, every message the benchmark generates, and Hypothesis-made
messages (escape sequences, repetitions, components and subcomponents, custom
delimiters) must read the same through `Segment.raw`, `Segment.get` and
`Segment.components` as through python-hl7's parse and ``extract_field``.
"""

from __future__ import annotations

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.gen import Generator
from hl7_alerts.segments import read_segments, split_file
from tests.support.samples import SAMPLES

# python-hl7 and we agree on these escapes; formatting ones (\H\, \.br\) are
# rendered differently on purpose (we drop highlighting, use \n for breaks).
ESCAPES = ("F", "S", "T", "R", "E", "X41", "X7A30")
DELIMITER_CHARS = "|^~\\&#!*$@%"


def assert_agrees(text: str) -> None:
    oracle = hl7.parse(text)
    _, segments = read_segments(text)
    assert len(segments) == len(oracle)
    for ours, theirs in zip(segments, oracle, strict=True):
        assert ours.name == str(theirs[0])
        for n in range(1, len(theirs)):
            if ours.name == "MSH" and n <= 2:
                continue
            assert ours.raw(n) == str(theirs[n]), (ours.name, n)
            components = ours.components(n)
            for c in range(1, len(components) + 2):
                for s in (1, 2):
                    try:
                        expected = theirs.extract_field(1, n, 1, c, s)
                    except IndexError:
                        expected = ""  # python-hl7 refuses a path past a leaf: absent
                    assert ours.get(n, c, s) == expected, (ours.name, n, c, s)
                if c <= len(components):
                    assert components[c - 1] == ours.get(n, c), (ours.name, n, c)


def all_sample_messages() -> list[bytes]:
    return [m for path in sorted(SAMPLES.glob("*.hl7")) for m in split_file(path.read_bytes())]


@pytest.mark.parametrize("raw", all_sample_messages(), ids=lambda m: m.split(b"|")[9].decode())
def test_samples_agree_component_for_component(raw: bytes) -> None:
    assert_agrees(raw.decode())


def test_bench_messages_agree() -> None:
    gen = Generator(seed=7)
    for raw in [*gen.orders()[:5], *gen.results(0, 40)]:
        assert_agrees(raw.decode())


@st.composite
def messages(draw: st.DrawFn) -> str:
    delims = draw(st.permutations(DELIMITER_CHARS).map(lambda p: "".join(p[:5])))
    fs, comp, rep, esc, sub = delims
    # A field is a run of tokens: plain characters, escape sequences and the
    # three inner delimiters, so repetitions, components and subcomponents
    # (empty ones too) come in every arrangement.
    tokens = [*"ABCXYZabcxyz0189 .-/:", comp, rep, sub, *(f"{esc}{code}{esc}" for code in ESCAPES)]
    field = st.lists(st.sampled_from(tokens), max_size=14).map("".join)
    fields = st.lists(field, min_size=1, max_size=6)
    lines = [fs.join([f"MSH{fs}{comp}{rep}{esc}{sub}", *draw(fields)])]
    for name in draw(st.lists(st.sampled_from(("PID", "OBR", "OBX", "ZB1")), min_size=1, max_size=3)):
        lines.append(fs.join([name, *draw(fields)]))
    # python-hl7 strips trailing blanks off a segment; we keep what was sent.
    return "\r".join(line + "." if line.endswith(" ") else line for line in lines) + "\r"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_generated_messages_agree(text: str) -> None:
    assert_agrees(text)
