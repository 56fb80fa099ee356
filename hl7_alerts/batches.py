"""Batches in one frame: the FHS/BHS envelope and the messages inside it.

CLINICAL.md decision 13: a batch is the same whether it arrives as a file or
as one MLLP frame, so a frame is split the way `segments.split_file` splits
a file: a message starts at each MSH, envelope segments (FHS, BHS, BTS, FTS)
are dropped wherever they stand, and every other segment belongs to the
message before it. What the answer needs of the envelope is kept: each
BHS's (and the FHS's) sender, receiver, delimiters and control id (xHS-11),
and which batch each message came in. A frame of several MSH without any
header is read the same way: its messages are never folded into one.
Reading is lenient on purpose (a missing BTS or FTS, a header without
messages): what matters is that no message is lost or merged with another.
Pure, and linear in the frame's length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")
# After a first MSH: a header segment, or a second MSH (what preceded the
# first segment is stripped, so an MSH after a segment end is another one).
_MORE = re.compile(rb"[\r\n](?:FHS|BHS|MSH)")
_LINES = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """What the answer echoes of an FHS or BHS segment."""

    segment: str  # "FHS" or "BHS"
    field_separator: str = "|"
    encoding_characters: str = "^~\\&"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""  # FHS-11 / BHS-11


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """One BHS group (``header`` None: messages outside any BHS), its messages
    in order, each with CR segment ends. A message that does not start with
    MSH is what preceded the first MSH: unreadable, but answered."""

    header: Envelope | None
    messages: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchFrame:
    """A frame holding a batch: the FHS (None without one), the batches that
    hold messages in order, and the first BHS, which names the batch when
    no message could be read."""

    file_header: Envelope | None
    batches: tuple[Batch, ...]
    first_header: Envelope | None

    @property
    def messages(self) -> tuple[bytes, ...]:
        return tuple(m for b in self.batches for m in b.messages)


def read_batch(data: bytes) -> BatchFrame | None:
    """The batch in one frame, or None when the frame is one message: a batch
    starts with FHS or BHS, or starts with MSH and holds another MSH (or a
    header) later. Anything else, junk before an MSH included, takes the
    single-message path (which refuses what does not start with MSH)."""
    body = data[len(_BOM) :] if data.startswith(_BOM) else data
    body = body.lstrip(b"\r\n \t")
    if not body.startswith((b"FHS", b"BHS")) and not (body.startswith(b"MSH") and _MORE.search(body)):
        return None
    file_header: Envelope | None = None
    first_header: Envelope | None = None
    current: Envelope | None = None
    groups: list[tuple[Envelope | None, list[list[bytes]]]] = []
    message: list[bytes] | None = None
    for raw in _LINES.split(body):
        line = raw.removeprefix(_BOM)
        if not line.strip():
            continue
        head = line[:3]
        if head in _ENVELOPE:
            if head == b"FHS" and file_header is None:
                file_header = _envelope(line)
            elif head == b"BHS":
                current = _envelope(line)
                first_header = first_header or current
            continue  # trailers and repeated headers: nothing to keep
        if head == b"MSH" or message is None:
            if not groups or groups[-1][0] is not current:
                groups.append((current, []))
            message = [line]
            groups[-1][1].append(message)
        else:
            message.append(line)
    batches = tuple(
        Batch(header=header, messages=tuple(b"\r".join(m) + b"\r" for m in messages))
        for header, messages in groups
    )
    return BatchFrame(file_header=file_header, batches=batches, first_header=first_header)


def _envelope(line: bytes) -> Envelope:
    """FHS/BHS fields as the answer echoes them (text as sent, escapes kept:
    the answer uses the same delimiters)."""
    text = line.decode("utf-8", errors="replace")
    segment = text[:3]
    if len(text) < 4 or text[3].isalnum() or text[3].isspace():
        return Envelope(segment=segment)
    fs = text[3]
    fields = text.split(fs)
    # xHS-1 is the separator itself: fields[n - 1] is xHS-n, as in MSH.
    enc = fields[1][:4] if len(fields) > 1 else ""

    def field(n: int) -> str:
        return fields[n - 1].strip() if len(fields) >= n else ""

    return Envelope(
        segment=segment,
        field_separator=fs,
        encoding_characters=enc if len(enc) == 4 and len(set(fs + enc)) == 5 else "^~\\&",
        sending_application=field(3),
        sending_facility=field(4),
        receiving_application=field(5),
        receiving_facility=field(6),
        control_id=field(11),
    )
