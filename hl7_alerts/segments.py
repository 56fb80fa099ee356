"""The lazy HL7v2 reader: bytes to text, text to segments, nothing more.

Owns the charset decision (BOM, then MSH-18, then UTF-8, with a fallback that
never loses a message over one bad byte), the delimiters MSH declares, and
`Segment`, which splits a segment into fields and a field into components only
when asked: no parse tree per message. Knows no message type and no domain
value; `messages.py` maps what it reads. Pure. The rule it keeps: what cannot
be read raises `MessageError` with the ACK code the sender deserves and where
the problem is, never a bare exception.
"""

from __future__ import annotations

import codecs
import enum
import re
from dataclasses import dataclass

from hl7_alerts.model import AckCode


class ErrorCode(enum.StrEnum):
    """HL7 table 0357 (message error condition codes) for ERR-3."""

    SEGMENT_SEQUENCE = "100"
    REQUIRED_FIELD_MISSING = "101"
    DATA_TYPE = "102"
    TABLE_VALUE = "103"
    UNSUPPORTED_MESSAGE_TYPE = "200"
    UNSUPPORTED_EVENT = "201"
    UNSUPPORTED_PROCESSING_ID = "202"
    UNSUPPORTED_VERSION = "203"
    UNKNOWN_KEY = "204"
    DUPLICATE_KEY = "205"
    RECORD_LOCKED = "206"
    INTERNAL_ERROR = "207"


class MessageError(Exception):
    """A message we will not process, with the ACK code it deserves.

    Raised by the reader here and by the mapping (`messages.py`), which sits
    on top of it: defined with the reader so that neither imports the other.
    ``segment``/``sequence``/``field`` locate the problem for ERR-2 (segment id,
    1-based occurrence, field number); ``reason`` is human text for MSA-3/ERR-8
    and the log. It names the field and the HL7 table (``OBX-11 not in HL7
    table 0085``), never a value from the message: the NAK goes back to an
    interface engine that logs it, and our log is read by people who may not
    see patient data. `tests/test_redaction.py` holds every reason to a
    literal (or one built from config only).
    """

    def __init__(
        self,
        reason: str,
        *,
        ack_code: AckCode,
        error_code: ErrorCode,
        segment: str = "",
        sequence: int = 1,
        field: int = 0,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ack_code = ack_code
        self.error_code = error_code
        self.segment = segment
        self.sequence = sequence
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:
        # Built without __init__ and its keyword-only arguments (an exception
        # pickles as ``type(*args)``): a message read in the reader process
        # comes back by pickle.
        return (MessageError.__new__, (type(self), *self.args), self.__dict__)


# ---------------------------------------------------------------------------
# Charset

_BOM = codecs.BOM_UTF8

# MSH-18 names (HL7 table 0211) to Python codecs.
_CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}


def codec_for(charset: str) -> str | None:
    """The Python codec for an MSH-18 value (its first component), or None
    when we do not know the name."""
    return _CHARSETS.get(charset.strip().upper())


def decode(data: bytes, fallback: str = "cp1252") -> str:
    """Bytes of one message to text.

    A UTF-8 BOM wins; otherwise MSH-18 names the charset (read from the raw
    bytes, which are ASCII up to there in every charset we accept); otherwise
    UTF-8. If the bytes do not decode as claimed, the configured fallback
    (default cp1252) decodes them, replacing what it cannot, so one bad byte
    never costs a message.
    """
    if data.startswith(_BOM):
        return data[len(_BOM) :].decode("utf-8", errors="replace")
    declared = "utf-8"
    name = _msh18(data)
    if name:
        declared = _CHARSETS.get(name.upper(), "utf-8")
    try:
        return data.decode(declared)
    except UnicodeDecodeError:
        return data.decode(fallback, errors="replace")


def _msh18(data: bytes) -> str:
    end = len(data)
    for sep in (b"\r", b"\n"):
        pos = data.find(sep)
        if pos != -1:
            end = min(end, pos)
    msh = data[:end]
    if not msh.startswith(b"MSH") or len(msh) < 4:
        return ""
    fields = msh.split(msh[3:4])
    if len(fields) <= 17:
        return ""
    raw = fields[17].decode("ascii", errors="replace")
    return raw.split(chr(msh[4]) if len(msh) > 4 else "^")[0].split("~")[0].strip()


# ---------------------------------------------------------------------------
# The lazy reader

_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        return f"{self.component}{self.repetition}{self.escape}{self.subcomponent}"


class Segment:
    """One segment split into fields; components are split on demand."""

    __slots__ = ("delims", "fields", "name")

    def __init__(self, name: str, fields: list[str], delims: Delimiters) -> None:
        self.name = name
        self.fields = fields
        self.delims = delims

    def raw(self, n: int) -> str:
        """Field n as sent (escapes intact), for n as the standard numbers it."""
        # MSH-1 is the field separator itself, so MSH's fields sit one to the left.
        index = n - 1 if self.name == "MSH" else n
        if index < 1 and self.name != "MSH":
            return self.name
        return self.fields[index] if 0 <= index < len(self.fields) else ""

    def repetitions(self, n: int) -> list[str]:
        raw = self.raw(n)
        return raw.split(self.delims.repetition) if raw else []

    def get(self, n: int, component: int = 1, subcomponent: int = 1) -> str:
        """Field n, component, subcomponent of the first repetition, unescaped."""
        # The hot path of the reader (dozens of calls per message): one call,
        # C-level partitions, no intermediate lists for the first component.
        fields = self.fields
        index = n - 1 if self.name == "MSH" else n
        if index < 2 and (index < 1 or self.name == "MSH"):
            raw = self.raw(n)
            if not raw or self.name == "MSH":
                return raw
            return component_of(raw.split(self.delims.repetition, 1)[0], self.delims, component, subcomponent)
        if index >= len(fields):
            return ""
        d = self.delims
        value = fields[index].partition(d.repetition)[0]
        if not value:
            return ""
        if component == 1:
            value = value.partition(d.component)[0]
        else:
            parts = value.split(d.component)
            if component > len(parts):
                return ""
            value = parts[component - 1]
        if subcomponent == 1:
            value = value.partition(d.subcomponent)[0]
        else:
            subs = value.split(d.subcomponent)
            if subcomponent > len(subs):
                return ""
            value = subs[subcomponent - 1]
        return unescape(value, d) if d.escape in value else value

    def components(self, n: int) -> list[str]:
        """Every component of field n's first repetition (first subcomponent,
        unescaped): ``components(n)[k - 1] == get(n, k)`` wherever ``get``
        has a value. One split for fields the mapping reads several parts of."""
        if n < 3 and self.name == "MSH":
            return [self.get(n)]
        raw = self.raw(n)
        if not raw:
            return []
        d = self.delims
        parts = [c.partition(d.subcomponent)[0] for c in raw.partition(d.repetition)[0].split(d.component)]
        esc = d.escape
        return [unescape(c, d) if esc in c else c for c in parts]

    def text(self, n: int) -> str:
        """Field n, first repetition, all components joined back as text."""
        raw = self.raw(n)
        return unescape(raw.split(self.delims.repetition, 1)[0], self.delims) if raw else ""


def component_of(rep: str, d: Delimiters, component: int = 1, subcomponent: int = 1) -> str:
    parts = rep.split(d.component)
    if component > len(parts):
        return ""
    subs = parts[component - 1].split(d.subcomponent)
    if subcomponent > len(subs):
        return ""
    value = subs[subcomponent - 1]
    return unescape(value, d) if d.escape in value else value


_HEX = re.compile(r"X((?:[0-9A-Fa-f]{2})+)")
# The longest escape sequence read (``\\Xhh...\\`` of 32 bytes): a longer one is
# no escape we know and is kept as sent, without a regex over it.
_MAX_ESCAPE_CHARS = 65


def unescape(value: str, d: Delimiters) -> str:
    """Resolve HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\);
    formatting escapes we do not render (\\H\\, \\N\\) are dropped."""
    esc = d.escape
    if esc not in value:
        return value
    replacements = {
        "F": d.field,
        "S": d.component,
        "T": d.subcomponent,
        "R": d.repetition,
        "E": esc,
        ".br": "\n",
        "H": "",
        "N": "",
    }
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end == -1:
            out.append(value[i:])
            break
        seq = value[i + 1 : end]
        replacement = replacements.get(seq)
        if replacement is None and len(seq) <= _MAX_ESCAPE_CHARS and (m := _HEX.fullmatch(seq)):
            replacement = bytes.fromhex(m.group(1)).decode("latin-1")
        if replacement is None:
            out.append(value[i : end + 1])  # unknown escape: keep it as sent
        else:
            out.append(replacement)
        i = end + 1
    return "".join(out)


def split_segments(text: str) -> list[str]:
    return [s for s in _SEGMENT_SPLIT.split(text) if s.strip()]


def _check_delimiters(fs: str, enc: str) -> None:
    """AE when MSH-1/MSH-2 cannot be used. HAPI and hl7apy refuse the same
    messages (fewer than four encoding characters, a repeated one, letters or
    digits as delimiters)."""
    if fs.isalnum() or fs.isspace():
        raise _delimiter_error("MSH-1 field separator is a letter, digit or space", 1)
    if len(enc) < 4:
        raise _delimiter_error(
            "MSH-2 has fewer than four encoding characters (component, repetition, escape, subcomponent)", 2
        )
    if any(c.isalnum() or c.isspace() for c in enc):
        raise _delimiter_error("MSH-2 encoding characters include a letter, digit or space", 2)
    if len(set(fs + enc)) != 5:
        raise _delimiter_error("MSH-1/MSH-2 delimiters repeat a character; all five must differ", 2)


def _delimiter_error(reason: str, field: int) -> MessageError:
    return MessageError(
        reason, ack_code=AckCode.AE, error_code=ErrorCode.DATA_TYPE, segment="MSH", field=field
    )


def read_segments(text: str) -> tuple[Delimiters, list[Segment]]:
    """Split a message into segments with the delimiters MSH declares."""
    lines = split_segments(text.lstrip("\ufeff"))
    if lines and lines[0].startswith(("FHS", "BHS")):
        raise MessageError(
            "a batch (FHS/BHS) in one frame is not accepted: send its messages one per frame",
            ack_code=AckCode.AE,
            error_code=ErrorCode.SEGMENT_SEQUENCE,
            segment=lines[0][:3],
        )
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
        raise MessageError(
            "message does not start with an MSH segment",
            ack_code=AckCode.AE,
            error_code=ErrorCode.SEGMENT_SEQUENCE,
            segment="MSH",
        )
    msh = lines[0]
    fs = msh[3]
    enc = msh[4:].split(fs, 1)[0][:4]
    _check_delimiters(fs, enc)
    d = Delimiters(field=fs, component=enc[0], repetition=enc[1], escape=enc[2], subcomponent=enc[3])
    segments = []
    for line in lines:
        fields = line.split(fs)
        segments.append(Segment(fields[0].strip(), fields, d))
    # MSH-2 may carry a fifth (truncation) character in v2.7+; keep it as sent.
    segments[0].fields[1] = msh[4:].split(fs, 1)[0]
    return d, segments


_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")


def split_file(data: bytes) -> list[bytes]:
    """Messages in a file: one or many, CR/LF/CRLF segment ends, optional BOM,
    batch envelopes (FHS/BHS/BTS/FTS) dropped, MLLP framing bytes of a
    captured stream dropped. Each message comes back with
    CR segment ends, ready to frame."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    # Captures of MLLP traffic carry VT/FS around each message: not content.
    data = data.replace(b"\x0b", b"").replace(b"\x1c", b"\r")
    lines = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    messages: list[list[bytes]] = []
    # Concatenated files keep their own BOMs.
    for line in (raw.removeprefix(_BOM) for raw in lines):
        if not line.strip() or line.startswith(_BATCH_SEGMENTS):
            continue
        if line.startswith(b"MSH") or not messages:
            messages.append([])
        messages[-1].append(line)
    return [b"\r".join(m) + b"\r" for m in messages]
