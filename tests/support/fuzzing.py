"""Fuzzed MLLP traffic, shared by the fuzz test (`tests/test_fuzz.py`, 10^5
frames) and the soak (`bench/fuzz_soak.py`, 10^6 against a real process):
seeded mutations of the sample messages (bit flips, delimiter and control
bytes dropped in, spans deleted, duplicated or truncated, messages
spliced), how many frames the listener will see in a stream, and a lane
that sends one stream and checks every answer."""

from __future__ import annotations

import asyncio
import random

from hl7_alerts.framer import NEED_DATA, Frame, Framer, Oversize
from hl7_alerts.segments import split_file
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.samples import SAMPLES

CODES = {"AA", "AE", "AR", "CA", "CE", "CR"}
SPICE = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\r\n", b"\x0b", b"\x1c", b"\x00", b"\xff", b"\xc3", b"MSH|", b"PID|"]


def seeds() -> list[bytes]:
    messages = [m for path in sorted(SAMPLES.glob("*.hl7")) for m in split_file(path.read_bytes())]
    messages.append(b"MSH|^~\\&|A|B|C|D|20261020||ADT^A08|ADT1|P|2.3|||NE|AL|||8859/1\rPID|1||H5^^^X^MR||M\xfcller\r")
    messages.append(b"\xef\xbb\xbfMSH#$%*@#A#B#C#D#20261020##ADT$A01#ADT2#P#2.5\rPID#1##H6$$$X$MR\r")
    return messages


def personalise(message: bytes, n: int) -> bytes:
    """A control ID and a patient of its own for frame ``n``, as on a real
    feed: the fuzz is for the listener, not for one patient with 100,000
    results under one reused control ID."""
    bom = b"\xef\xbb\xbf" if message.startswith(b"\xef\xbb\xbf") else b""
    msh, sep, rest = message.removeprefix(bom).partition(b"\r")
    fs = msh[3:4]
    fields = msh.split(fs)
    fields[9] = b"FZ%d" % n
    return (bom + fs.join(fields) + sep + rest).replace(b"H0", b"F%d-" % n)


def mutate(rng: random.Random, message: bytes, pool: list[bytes]) -> bytes:
    data = bytearray(message)
    for _ in range(rng.randint(1, 4)):
        if not data:
            data += rng.choice(pool)
        kind = rng.randrange(7)
        at = rng.randrange(len(data))
        if kind == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[at:at] = rng.choice(SPICE)
        elif kind == 2:
            del data[at : at + rng.randint(1, 40)]
        elif kind == 3:
            span = data[at : at + rng.randint(1, 60)]
            data[at:at] = span * rng.randint(1, 3)
        elif kind == 4:
            del data[at:]
        elif kind == 5:
            other = rng.choice(pool)
            cut = rng.randrange(len(other))
            data[at:] = other[cut:]
        else:
            data[at : at + 1] = bytes([rng.randrange(256)])
    return bytes(data)


def expected_answers(stream: bytes) -> int:
    """How many frames (over-size ones included) the listener will see."""
    framer = Framer()
    framer.feed(stream)
    count = 0
    while (event := framer.next_event()) is not NEED_DATA:
        count += isinstance(event, Frame | Oversize)
    return count


async def lane(port: int, stream: bytes, expected: int) -> int:
    client = await AsyncMllpClient.connect(port)

    async def write() -> None:
        for i in range(0, len(stream), 256 * 1024):
            await client.send_raw(stream[i : i + 256 * 1024])

    writer = asyncio.create_task(write())
    answered = 0
    try:
        while answered < expected:
            ack = await client.receive(timeout=30)
            assert ack.startswith(b"MSH"), ack[:40]
            assert ack_fields(ack)["code"] in CODES, ack
            answered += 1
        await writer
    finally:
        writer.cancel()
        await client.close()
    return answered
