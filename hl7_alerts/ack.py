"""ACK and NAK construction, original and enhanced mode, and the batch
acknowledgment that wraps the ACKs of a batch in one frame.

The ACK's MSH swaps sender and receiver, echoes MSH-10 in MSA-2, and uses the
message's own version and delimiters, so the interface engine can match it to
what it sent. A NAK carries an ERR segment naming segment, field and reason in
the layout of the message's version (ERR-1 before 2.5, ERR-2/3/4/8 from 2.5).
Pure: the caller passes the clock and the ACK's own control ID.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from hl7_alerts.batches import BatchFrame, Envelope
from hl7_alerts.model import AckCode, Header
from hl7_alerts.segments import ErrorCode, MessageError, codec_for
from hl7_alerts.timeutil import format_dtm

_ENHANCED = {AckCode.AA: AckCode.CA, AckCode.AE: AckCode.CE, AckCode.AR: AckCode.CR}

# What the ACK's MSH takes back from the message beyond the routing fields
# (MSH-3 to MSH-6, swapped) and MSH-10: only values of the shape their HL7
# table allows. A NAK for "MSH-12 not in table 0104" must not carry a bad
# value back that could be anything, patient data included: it says 2.5.
_TRIGGER = re.compile(r"[A-Z0-9]{3}")
_VERSION = re.compile(r"[0-9.]{1,8}")  # "2." too: digits and dots quote nobody
_PROCESSING_ID = re.compile(r"[A-Z]")


@dataclass(frozen=True, slots=True, kw_only=True)
class AckError:
    """What goes into ERR: where the problem is and why."""

    reason: str
    error_code: ErrorCode
    segment: str = ""
    sequence: int = 1
    field: int = 0

    @classmethod
    def from_exception(cls, exc: MessageError) -> AckError:
        return cls(
            reason=exc.reason,
            error_code=exc.error_code,
            segment=exc.segment,
            sequence=exc.sequence,
            field=exc.field,
        )


def ack_code_for(header: Header | None, code: AckCode) -> AckCode:
    """The code family the sender asked for, for the one answer we send.

    Original mode (MSH-15 and MSH-16 empty): AA/AE/AR. Enhanced mode: the
    answer on the connection is the commit ACK, CA/CE/CR, sent after the
    commit. When MSH-15 is NE but MSH-16 asks for an application ACK, the
    sender wants only the application ACK: we have it at once (processing is
    synchronous), so it is that answer, AA/AE/AR. We always answer, whatever
    MSH-15/16 say (NE, ER, SU included): interface engines wait for a reply on
    the connection, and silence makes them time out and resend.
    """
    if header is None or not header.enhanced_mode:
        return code
    if header.accept_ack_type == "NE" and header.application_ack_type not in ("", "NE"):
        return code
    return _ENHANCED.get(code, code)


def _escape(text: str, fs: str, enc: str) -> str:
    if text.isalnum():
        return text  # the common case (codes, IDs): nothing to escape
    esc = enc[2] if len(enc) > 2 else "\\"
    out = text.replace(esc, f"{esc}E{esc}")
    names = {fs: "F", enc[0]: "S", enc[1]: "R"}
    if len(enc) > 3:
        names[enc[3]] = "T"
    for ch, name in names.items():
        out = out.replace(ch, f"{esc}{name}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def build_ack(
    header: Header | None,
    code: AckCode,
    *,
    text: str = "",
    error: AckError | None = None,
    now: datetime,
    control_id: str,
    application: str = "HL7ALERTS",
    facility: str = "",
) -> bytes:
    """The ACK message (without MLLP framing) answering ``header``.

    With no readable header (no MSH at all) the ACK uses default delimiters,
    version 2.5, and an empty MSA-2: there is nothing to echo.
    """
    fs = header.field_separator if header else "|"
    enc = (header.encoding_characters if header else "") or "^~\\&"
    comp = enc[0]
    version = header.version if header and _VERSION.fullmatch(header.version) else "2.5"
    code = ack_code_for(header, code)

    def esc(value: str) -> str:
        return _escape(value, fs, enc)

    trigger = header.trigger_event if header and _TRIGGER.fullmatch(header.trigger_event) else ""
    msh = fs.join(
        [
            "MSH",
            enc,
            esc(header.receiving_application if header and header.receiving_application else application),
            esc(header.receiving_facility if header and header.receiving_facility else facility),
            esc(header.sending_application) if header else "",
            esc(header.sending_facility) if header else "",
            format_dtm(now),
            "",
            comp.join(["ACK", esc(trigger), "ACK"]) if trigger else "ACK",
            esc(control_id),
            (header.processing_id if header and _PROCESSING_ID.fullmatch(header.processing_id) else "P"),
            esc(version),
        ]
    )
    # Answer in the charset the message declared (MSH-18), and say so, so a
    # sender on 8859/1 can read back its own application and facility names.
    codec = codec_for(header.charset.split(comp)[0]) if header and header.charset else None
    if codec is not None:
        assert header is not None
        msh += fs * 6 + esc(header.charset.split(comp)[0].strip())
    msa_fields = ["MSA", str(code), esc(header.control_id) if header else ""]
    if text:
        msa_fields.append(esc(text[:80]))
    segments = [msh, fs.join(msa_fields)]
    if error is not None:
        segments.append(_err_segment(error, code, fs=fs, enc=enc, version=version, esc=esc))
    return ("\r".join(segments) + "\r").encode(codec or "utf-8", errors="replace")


def build_batch_ack(
    frame: BatchFrame,
    acks: Sequence[Sequence[bytes]],
    *,
    now: datetime,
    control_id: Callable[[], str],
    application: str = "HL7ALERTS",
    facility: str = "",
) -> bytes:
    """The batch acknowledgment (without MLLP framing) of a batch in one
    frame (CLINICAL.md decision 13): per batch of ``frame.batches``, a BHS
    whose BHS-12 echoes the batch's BHS-11, the ACK of each of its messages
    in order (``acks``, as `build_ack` made them), and a BTS with their
    count; an FHS and FTS (with the batch count) around it all when the
    frame came in an FHS, FHS-12 echoing its FHS-11. Sender and receiver are
    swapped, as in an ACK's MSH. The answer has the shape of what came: BHS
    and BTS are optional in an HL7 batch, and messages that came without a
    BHS are answered without one (several MSH in one frame: one ACK after
    the other, MSH first, as a sender expecting ACKs reads them)."""
    file_header = frame.file_header
    out: list[bytes] = []
    if file_header is not None:
        out.append(
            _envelope_segment(
                file_header,
                now=now,
                control_id=control_id(),
                application=application,
                facility=facility,
            )
        )
    for batch, batch_acks in zip(frame.batches, acks, strict=True):
        header = batch.header
        if header is None:
            out.extend(batch_acks)
            continue
        out.append(
            _envelope_segment(
                header, now=now, control_id=control_id(), application=application, facility=facility
            )
        )
        out.extend(batch_acks)
        out.append(f"BTS{header.field_separator}{len(batch_acks)}\r".encode())
    if file_header is not None:
        out.append(f"FTS{file_header.field_separator}{len(frame.batches)}\r".encode())
    return b"".join(out)


def _envelope_segment(
    header: Envelope, *, now: datetime, control_id: str, application: str, facility: str
) -> bytes:
    """Our FHS or BHS answering ``header``. Their fields are echoed as sent:
    the answer uses their delimiters."""
    fs = header.field_separator
    fields = [
        header.segment,
        header.encoding_characters,
        header.receiving_application or application,
        header.receiving_facility or facility,
        header.sending_application,
        header.sending_facility,
        format_dtm(now),
        "",
        "",
        "",
        _escape(control_id, fs, header.encoding_characters),
        header.control_id,
    ]
    return (fs.join(fields) + "\r").encode("utf-8", errors="replace")


def _err_segment(
    error: AckError, code: AckCode, *, fs: str, enc: str, version: str, esc: Callable[[str], str]
) -> str:
    comp, sub = enc[0], (enc[3] if len(enc) > 3 else "&")
    location_parts = [error.segment, str(error.sequence) if error.segment else "", str(error.field or "")]
    severity = "W" if code in (AckCode.AA, AckCode.CA) else "E"
    if _version_tuple(version) >= (2, 5):
        location = comp.join(esc(p) for p in location_parts).rstrip(comp)
        condition = comp.join([str(error.error_code), esc(_CONDITION_TEXT[error.error_code]), "HL70357"])
        return fs.join(["ERR", "", location, condition, severity, "", "", "", esc(error.reason)])
    # v2.2-2.4: ERR-1 is CM_ELD: segment ^ sequence ^ field ^ code&text&table
    code_part = sub.join([str(error.error_code), esc(error.reason), "HL70357"])
    return fs.join(["ERR", comp.join([*(esc(p) for p in location_parts), code_part])])


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        if not (piece.isascii() and piece.isdigit()):
            break
        parts.append(int(piece))
    return tuple(parts) or (2, 5)


_CONDITION_TEXT = {
    ErrorCode.SEGMENT_SEQUENCE: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE: "Data type error",
    ErrorCode.TABLE_VALUE: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT: "Unsupported event code",
    ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ErrorCode.UNSUPPORTED_VERSION: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY: "Duplicate key identifier",
    ErrorCode.RECORD_LOCKED: "Application record locked",
    ErrorCode.INTERNAL_ERROR: "Application internal error",
}
