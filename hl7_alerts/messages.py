"""HL7v2 messages to domain values: the header check and the mapping.

Owns everything between a read message (`segments.read_segments`) and a
`model.Message`: the MSH header and what this receiver accepts of it
(`check_header`), and the mapping of ORU, RDE/ORM/OMP/RDS and ADT^A40 into
results, orders and merges, with the site's `ParseOptions`. It reads only the
segments and fields the pipeline needs (MSH, PID, MRG, OBR, OBX, ORC, RXE,
RXO, RXD, TQ1); python-hl7 stays the test oracle for the field values this
produces. Pure. The rule it keeps: a message we will not process raises
`MessageError` (defined with the reader) carrying the ACK code the sender
deserves and where the problem is, never a bare exception.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo

from hl7_alerts.model import (
    AckCode,
    Header,
    MedicationOrder,
    MergeMessage,
    Message,
    Observation,
    OrderControl,
    OrderMessage,
    OtherMessage,
    PatientDemographics,
    PatientKey,
    ResultMessage,
    ResultStatus,
)
from hl7_alerts.segments import (
    Delimiters,
    ErrorCode,
    MessageError,
    Segment,
    component_of,
    decode,
    read_segments,
    split_segments,
    unescape,
)
from hl7_alerts.terminology import Terminology, parse_range, parse_value
from hl7_alerts.timeutil import parse_dtm


def _content_error(reason: str, code: ErrorCode, segment: str, field: int, seq: int = 1) -> MessageError:
    return MessageError(
        reason, ack_code=AckCode.AE, error_code=code, segment=segment, field=field, sequence=seq
    )


def _header_rejection(reason: str, code: ErrorCode, field: int) -> MessageError:
    """AR for an MSH field this receiver does not take (type, version, processing ID)."""
    return MessageError(reason, ack_code=AckCode.AR, error_code=code, segment="MSH", field=field)


@dataclass(frozen=True, slots=True, kw_only=True)
class ParseOptions:
    """Site settings the mapping needs (built once from config)."""

    terminology: Terminology
    timezone: tzinfo
    fallback_charset: str = "cp1252"
    patient_id_types: tuple[str, ...] = ("MR",)
    patient_authority: str | None = None
    accept_untyped_ids: bool = True
    accepted_versions: tuple[str, ...] = ("2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8")
    accepted_processing_ids: tuple[str, ...] = ("P", "T", "D")


# ---------------------------------------------------------------------------
# Header


def read_header(segments: list[Segment], tz: tzinfo) -> Header:
    msh = segments[0]
    return Header(
        field_separator=msh.delims.field,
        encoding_characters=msh.raw(2),
        sending_application=msh.get(3),
        sending_facility=msh.get(4),
        receiving_application=msh.get(5),
        receiving_facility=msh.get(6),
        message_time=parse_dtm(msh.get(7), tz),
        message_type=msh.get(9, 1).strip().upper(),
        trigger_event=msh.get(9, 2).strip().upper(),
        control_id=msh.get(10).strip(),
        processing_id=msh.get(11, 1).strip().upper(),
        version=msh.get(12, 1).strip(),
        accept_ack_type=msh.get(15).strip().upper(),
        application_ack_type=msh.get(16).strip().upper(),
        charset=msh.get(18).strip(),
    )


def salvage_header(data: bytes, tz: tzinfo, fallback: str = "cp1252") -> Header | None:
    """Best-effort MSH of a message we could not otherwise read, so that even a
    NAK for it can swap sender and receiver and echo MSH-10. Reads the first
    segment only: its cost does not grow with the rest of the message."""
    text = decode(_first_segment(data), fallback)
    try:
        _, segments = read_segments(text)
        return read_header(segments, tz)
    except MessageError:
        return _header_with_default_delimiters(text, tz)
    except (IndexError, ValueError):
        return None


def _first_segment(data: bytes) -> bytes:
    """The bytes up to the end of the first segment that is not blank."""
    body = data.removeprefix(codecs.BOM_UTF8)
    start = len(data) - len(body.lstrip())
    ends = [i for i in (data.find(b"\r", start), data.find(b"\n", start)) if i != -1]
    return data[: min(ends)] if ends else data


def _header_with_default_delimiters(text: str, tz: tzinfo) -> Header | None:
    """MSH read with the field separator it declares and the standard
    encoding characters, for a message whose MSH-2 is unusable: the NAK can
    still swap sender and receiver and echo MSH-10."""
    lines = split_segments(text.lstrip("\ufeff"))
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 4:
        return None
    fs = lines[0][3]
    if fs.isalnum() or fs.isspace() or fs in "^~\\&":
        return None
    d = Delimiters(field=fs)
    fields = lines[0].split(fs)
    fields[1] = d.encoding_characters
    try:
        return read_header([Segment("MSH", fields, d)], tz)
    except (IndexError, ValueError):
        return None


# ---------------------------------------------------------------------------
# Mapping

_RESULT_TYPES = frozenset({"ORU"})
_ORDER_TYPES = frozenset({"RDE", "ORM", "OMP", "RDS"})


def parse_message(data: bytes, options: ParseOptions) -> Message:
    """One frame's bytes to a domain message, or `MessageError`."""
    _, segments = read_segments(decode(data, options.fallback_charset))
    header = read_header(segments, options.timezone)
    check_header(header, options)
    if header.message_type in _RESULT_TYPES:
        patient, demographics = read_patient(segments, options)
        return ResultMessage(
            header=header,
            patient=patient,
            demographics=demographics,
            observations=tuple(read_observations(segments, header, options, sex=demographics.sex)),
        )
    if header.message_type == "ADT" and header.trigger_event == "A40":
        patient, _ = read_patient(segments, options)
        return MergeMessage(header=header, patient=patient, prior=read_prior_patient(segments, options))
    if header.message_type in _ORDER_TYPES:
        patient, demographics = read_patient(segments, options)
        return OrderMessage(
            header=header,
            patient=patient,
            demographics=demographics,
            orders=tuple(read_orders(segments, header, options)),
        )
    return OtherMessage(header=header)


# "Unsupported message type" means an empty or malformed MSH-9: well-formed
# types we do not evaluate (ADT, MDM, ...) are stored and answered AA.
_MESSAGE_CODE = re.compile(r"[A-Z0-9]{3}")
_VERSION = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)*")
_MAX_VERSION_CHARS = 16  # "2.5.1"; longer is no version of table 0104


def check_header(header: Header, options: ParseOptions) -> None:
    """AR for what this receiver does not take: an empty or malformed MSH-9,
    a version or processing ID outside the configured ones."""
    if not header.message_type or not _MESSAGE_CODE.fullmatch(header.message_type):
        raise _header_rejection(
            "MSH-9.1 not in HL7 table 0076" if header.message_type else "MSH-9 message type is empty",
            ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
            9,
        )
    if header.trigger_event and not _MESSAGE_CODE.fullmatch(header.trigger_event):
        raise _header_rejection(
            "MSH-9.2 not in HL7 table 0003",
            ErrorCode.UNSUPPORTED_EVENT,
            9,
        )
    if not header.control_id:
        raise _content_error(
            "MSH-10 message control ID is empty", ErrorCode.REQUIRED_FIELD_MISSING, "MSH", 10
        )
    if len(header.version) > _MAX_VERSION_CHARS or not _VERSION.fullmatch(header.version):
        raise _header_rejection(
            "MSH-12 not in HL7 table 0104 (a version like 2.5 or 2.5.1)"
            if header.version
            else "MSH-12 version ID is empty",
            ErrorCode.UNSUPPORTED_VERSION,
            12,
        )
    if not version_accepted(header.version, options.accepted_versions):
        raise _header_rejection(
            "MSH-12 version is not one this receiver accepts (hl7.versions)",
            ErrorCode.UNSUPPORTED_VERSION,
            12,
        )
    if header.processing_id and header.processing_id not in options.accepted_processing_ids:
        raise _header_rejection(
            "MSH-11 processing ID is not one this receiver accepts (hl7.processing_ids)",
            ErrorCode.UNSUPPORTED_PROCESSING_ID,
            11,
        )


def version_accepted(version: str, accepted: tuple[str, ...]) -> bool:
    """2.5.1 is accepted when 2.5 is: a minor release keeps its major's rules."""
    return any(version == v or version.startswith(v + ".") for v in accepted)


def _identifier(reps: list[str], d: Delimiters, options: ParseOptions) -> PatientKey | None:
    """The patient key among PID-3 (or MRG-1) repetitions (decision 12): the
    first repetition of the most preferred configured type wins; failing
    that, the first with an identifier and an *empty* type counts as the
    most preferred type (unless untyped identifiers are refused); another
    type (PI, SS, ...) never matches. With ``patient.authority`` set, only
    repetitions of that authority count."""
    untyped: PatientKey | None = None
    typed: dict[str, PatientKey] = {}
    wanted = options.patient_id_types
    for rep in reps:
        ident = component_of(rep, d, 1).strip()
        if not ident:
            continue
        authority = component_of(rep, d, 4, 1).strip()
        if options.patient_authority is not None and authority != options.patient_authority:
            continue
        id_type = component_of(rep, d, 5).strip().upper()
        if not id_type:
            if untyped is None and options.accept_untyped_ids:
                untyped = PatientKey(id=ident, id_type=wanted[0], authority=authority)
        elif id_type in wanted and id_type not in typed:
            typed[id_type] = PatientKey(id=ident, id_type=id_type, authority=authority)
    for id_type in wanted:
        if id_type in typed:
            return typed[id_type]
    return untyped


def _wanted_text(options: ParseOptions) -> str:
    """What the identifier rule looks for, for NAK text (no identifier values)."""
    text = "type " + " or ".join(options.patient_id_types)
    if options.accept_untyped_ids:
        text += " (or untyped)"
    if options.patient_authority:
        text += f" from {options.patient_authority}"
    return text


def read_patient(segments: list[Segment], options: ParseOptions) -> tuple[PatientKey, PatientDemographics]:
    """PID-3's patient key (`_identifier`, CLINICAL.md decision 12)."""
    pid = next((s for s in segments if s.name == "PID"), None)
    if pid is None:
        raise _content_error("message has no PID segment", ErrorCode.SEGMENT_SEQUENCE, "PID", 0)
    patient = _identifier(pid.repetitions(3), pid.delims, options)
    if patient is None:
        wanted = _wanted_text(options)  # from config.yaml: no value of the message
        raise _content_error(
            f"PID-3 has no patient identifier of {wanted}",
            ErrorCode.REQUIRED_FIELD_MISSING,
            "PID",
            3,
        )
    demographics = PatientDemographics(
        name=_person_name(pid.get(5, 1), pid.get(5, 2)),
        birth_date=pid.get(7)[:8],
        sex=pid.get(8).strip().upper()[:1],
    )
    return patient, demographics


def read_prior_patient(segments: list[Segment], options: ParseOptions) -> PatientKey:
    """MRG-1 of an ADT^A40, read by the same rule as PID-3 (decision 12)."""
    mrg = next((s for s in segments if s.name == "MRG"), None)
    if mrg is None:
        raise _content_error("ADT^A40 has no MRG segment", ErrorCode.SEGMENT_SEQUENCE, "MRG", 0)
    prior = _identifier(mrg.repetitions(1), mrg.delims, options)
    if prior is None:
        wanted = _wanted_text(options)  # from config.yaml: no value of the message
        raise _content_error(
            f"MRG-1 has no prior patient identifier of {wanted}",
            ErrorCode.REQUIRED_FIELD_MISSING,
            "MRG",
            1,
        )
    return prior


def _person_name(family: str, given: str) -> str:
    return ", ".join(p for p in (family.strip(), given.strip()) if p)


def read_observations(
    segments: list[Segment], header: Header, options: ParseOptions, *, sex: str = ""
) -> Iterator[Observation]:
    """Every OBX, with what it takes from its OBR; ``sex`` (PID-8) picks the
    limits of a sex-specific OBX-7 range."""
    panel = _Panel(None, None, "", "")
    obx_count = 0
    for seg in segments:
        if seg.name == "OBR":
            specimen = seg.get(3).strip() or seg.get(2).strip()
            status = seg.get(25).strip().upper()
            panel = _Panel(seg, parse_dtm(seg.get(7), options.timezone), specimen, status)
        elif seg.name == "OBX":
            obx_count += 1
            yield _observation(seg, panel, header, options, obx_count, sex=sex)


@dataclass(frozen=True, slots=True)
class _Panel:
    """What every OBX under one OBR takes from it, read once per OBR."""

    obr: Segment | None
    observed_at: datetime | None  # OBR-7
    specimen_id: str  # OBR-3, else OBR-2
    status: str  # OBR-25, the report's status


# OBR-25 (HL7 table 0123) as the status of an OBX that leaves OBX-11 empty
# (CLINICAL.md decision 15). "Some results available" reads as preliminary
# (evaluated, marked so); "ordered" or "scheduled" with no result as pending.
# Codes that say nothing about a result (no order, no patient on record) or
# that we do not know read as final, like an empty OBR-25: a status field we
# only inherit never costs the sender its message.
_REPORT_STATUS = {
    "F": ResultStatus.FINAL,
    "C": ResultStatus.CORRECTED,
    "P": ResultStatus.PRELIMINARY,
    "A": ResultStatus.PRELIMINARY,
    "X": ResultStatus.CANCELLED,
    "R": ResultStatus.RESULTS_ENTERED,
    "I": ResultStatus.PENDING,
    "S": ResultStatus.PENDING,
    "O": ResultStatus.PENDING,
}


def _observation(
    obx: Segment, panel: _Panel, header: Header, options: ParseOptions, seq: int, *, sex: str
) -> Observation:
    d = obx.delims
    value_type = obx.get(2).strip().upper()
    status_text = obx.get(11).strip().upper()
    try:
        if status_text:
            status = ResultStatus(status_text)
        else:
            status = _REPORT_STATUS.get(panel.status, ResultStatus.FINAL)
    except ValueError:
        raise _content_error(
            "OBX-11 not in HL7 table 0085",
            ErrorCode.TABLE_VALUE,
            "OBX",
            11,
            seq,
        ) from None
    observed_at = parse_dtm(obx.get(14), options.timezone) or panel.observed_at or header.message_time
    if observed_at is None:
        raise _content_error(
            "no observation time in OBX-14, OBR-7 or MSH-7", ErrorCode.REQUIRED_FIELD_MISSING, "OBX", 14, seq
        )
    identifier = [c.strip() for c in obx.components(3)] + [""] * 6
    code, text, system = identifier[0], identifier[1], identifier[2]
    alt_code, alt_system = identifier[3], identifier[5]
    raw_value = obx.raw(5).split(d.repetition, 1)[0] if obx.raw(5) else ""
    if value_type == "SN":
        value_text = unescape(raw_value, d)
        value, comparator = parse_value("SN", raw_value, d.component)
    elif value_type in ("CWE", "CE", "CNE"):
        # Coded results (a PGx phenotype): the text component says it.
        value_text = obx.get(5, 2) or obx.get(5, 1)
        value, comparator = None, ""
    else:
        value_text = obx.get(5)
        # NM, and ST/TX that is wholly a number (decision 15): parse_value decides.
        value, comparator = parse_value(value_type, value_text)
    ref_text = obx.text(7)
    rng = parse_range(ref_text, sex)
    units = obx.components(6)
    unit = (units[0].strip() if units else "") or (units[1].strip() if len(units) > 1 else "")
    return Observation(
        analyte=options.terminology.analyte(((code, system), (alt_code, alt_system))),
        code=code,
        code_system=system,
        text=text,
        value_type=value_type,
        value_text=value_text,
        value=value,
        comparator=comparator,
        unit=unit,
        ref_low=rng.low,
        ref_high=rng.high,
        ref_text=ref_text,
        flag=obx.get(8).strip().upper(),
        status=status,
        observed_at=observed_at,
        specimen_id=panel.specimen_id,
        set_id=obx.get(1).strip(),
    )


_STOPS = frozenset(
    {OrderControl.DISCONTINUE, OrderControl.DISCONTINUED, OrderControl.CANCEL, OrderControl.CANCELLED}
)


def read_orders(segments: list[Segment], header: Header, options: ParseOptions) -> Iterator[MedicationOrder]:
    """Each ORC with a following RXE, RXO or RXD (before the next ORC) is one
    order event; ORC-1 RE with an RXD is a dispense (`_dispense`). ORCs
    without a pharmacy segment (lab orders in an ORM) are skipped."""
    groups: list[list[Segment]] = []
    for seg in segments:
        if seg.name == "ORC":
            groups.append([seg])
        elif groups and seg.name in ("RXE", "RXO", "TQ1", "RXD", "RXG"):
            groups[-1].append(seg)
    for index, group in enumerate(groups, start=1):
        order = _order(group, header, options, index)
        if order is not None:
            yield order


def _order(group: list[Segment], header: Header, options: ParseOptions, seq: int) -> MedicationOrder | None:
    orc = group[0]
    rx = next((s for s in group if s.name in ("RXE", "RXO", "RXD")), None)
    if rx is None:
        return None
    tq1 = next((s for s in group if s.name == "TQ1"), None)
    tz = options.timezone
    control_text = orc.get(1).strip().upper()
    try:
        control = OrderControl(control_text)
    except ValueError:
        raise _content_error(
            "ORC-1 order control (HL7 table 0119) is not one this receiver handles",
            ErrorCode.TABLE_VALUE,
            "ORC",
            1,
            seq,
        ) from None
    if control is OrderControl.DISPENSE:
        return _dispense(orc, group, header, options, seq)
    order_id = orc.get(2).strip() or orc.get(3).strip()
    if rx.name == "RXO":
        order_id = order_id or rx.get(1, 1)
    if not order_id:
        raise _content_error(
            "ORC-2 and ORC-3 order numbers are both empty", ErrorCode.REQUIRED_FIELD_MISSING, "ORC", 2, seq
        )
    # Give code: RXE-2, RXO-1, RXD-2 (CE: id ^ text ^ system).
    code_field = 1 if rx.name == "RXO" else 2
    drug_code, drug_text, drug_system = (rx.get(code_field, i).strip() for i in (1, 2, 3))
    if rx.name == "RXO":
        amount, units = rx.get(2), rx.get(4, 1) or rx.get(4, 2)
    elif rx.name == "RXE":
        amount, units = rx.get(3), rx.get(5, 1) or rx.get(5, 2)
    else:
        amount, units = rx.get(4), rx.get(5, 1) or rx.get(5, 2)
    dose = " ".join(p for p in (amount.strip(), units.strip()) if p)
    transaction = parse_dtm(orc.get(9), tz)
    # Timing: TQ1-7/8 (v2.5+), else RXE-1 / ORC-7 TQ components 4 and 5.
    start = _first_time(
        tz, tq1.get(7) if tq1 else "", rx.get(1, 4) if rx.name == "RXE" else "", orc.get(7, 4)
    )
    end = _first_time(tz, tq1.get(8) if tq1 else "", rx.get(1, 5) if rx.name == "RXE" else "", orc.get(7, 5))
    if start is None:
        start = parse_dtm(orc.get(15), tz) or transaction or header.message_time
    stop = transaction or end or header.message_time if control in _STOPS else end
    return MedicationOrder(
        order_id=order_id,
        control=control,
        drug_code=drug_code,
        drug_system=drug_system,
        drug_text=drug_text or drug_code,
        ingredient=options.terminology.ingredient(drug_code, drug_system, drug_text),
        dose=dose,
        start=start,
        stop=stop,
        transaction_time=transaction or header.message_time,
    )


def _dispense(
    orc: Segment, group: list[Segment], header: Header, options: ParseOptions, seq: int
) -> MedicationOrder:
    """ORC-1 RE with an RXD (RDS^O13, decision 14): the drug in RXD-2, the
    dispense time in RXD-3 (else MSH-7), the placer order in ORC-2 (else the
    filler's, ORC-3)."""
    rxd = next((s for s in group if s.name == "RXD"), None)
    if rxd is None:
        raise _content_error(
            "ORC-1 RE (a dispense) has no RXD segment", ErrorCode.SEGMENT_SEQUENCE, "RXD", 0, seq
        )
    order_id = orc.get(2).strip() or orc.get(3).strip()
    if not order_id:
        raise _content_error(
            "ORC-2 and ORC-3 order numbers are both empty", ErrorCode.REQUIRED_FIELD_MISSING, "ORC", 2, seq
        )
    drug_code, drug_text, drug_system = (rxd.get(2, i).strip() for i in (1, 2, 3))
    dose = " ".join(p for p in (rxd.get(4).strip(), (rxd.get(5, 1) or rxd.get(5, 2)).strip()) if p)
    at = parse_dtm(rxd.get(3), options.timezone) or header.message_time
    return MedicationOrder(
        order_id=order_id,
        control=OrderControl.DISPENSE,
        drug_code=drug_code,
        drug_system=drug_system,
        drug_text=drug_text or drug_code,
        ingredient=options.terminology.ingredient(drug_code, drug_system, drug_text),
        dose=dose,
        start=at,
        stop=None,
        transaction_time=at,
    )


def _first_time(tz: tzinfo, *texts: str) -> datetime | None:
    for text in texts:
        value = parse_dtm(text, tz)
        if value is not None:
            return value
    return None
