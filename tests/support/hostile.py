"""The worst inputs a sender can write into one message (issue 18 item 1),
as one catalogue for the tests and for `bench/hostile.py`.

Each builder takes ``n``, how long the hostile part is (characters or
repeated units), and gives a whole message with its own MSH-10; `WORST`
names each with the ACK code the daemon owes it whatever ``n`` is. Every
one of them was, or could have been, read in time that grows faster than
``n``: runs of spaces before a value, a range, a time; digits a number
parser would take; escape sequences; repetitions; thousands of bare
segments; a drug name buried in text. Synthetic patients only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

E = "\\"


def _msh(control: str, kind: str = "ORU^R01^ORU_R01") -> str:
    return f"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|20261020093000||{kind}|{control}|P|2.5.1"


PID = "PID|1||H0180001^^^GENHOSP^MR||TESTPATIENT^HOSTILE||19700101|F"
OBR = "OBR|1|O18|S18|24325-3^Hepatic function panel^LN|||20261020080000"


def _oru(control: str, *obx: str) -> bytes:
    return ("\r".join([_msh(control), PID, OBR, *obx]) + "\r").encode()


def _obx(value: str = "42", *, value_type: str = "NM", unit: str = "U/L", ref: str = "7-56",
         status: str = "F", when: str = "20261020080000") -> str:
    return f"OBX|1|{value_type}|1742-6^ALT^LN||{value}|{unit}|{ref}|N|||{status}|||{when}"


def spaces_value(n: int, control: str = "HS1") -> bytes:
    """The probe of issue 18: OBX-5 of ``n`` spaces then ``x``."""
    return _oru(control, _obx(" " * n + "x", value_type="ST"))


def spaces_then_number(n: int, control: str = "HS2") -> bytes:
    return _oru(control, _obx(" " * n + "190"))


def digits_value(n: int, control: str = "HS3") -> bytes:
    """A value of ``n`` digits (the 400-digit ALT): not a number."""
    return _oru(control, _obx("9" * n))


def spaces_range(n: int, control: str = "HS4") -> bytes:
    return _oru(control, _obx(ref=" " * n + "7-56 x"))


def spaces_unit(n: int, control: str = "HS5") -> bytes:
    return _oru(control, _obx(unit=" " * n + "U/L"))


def long_timestamp(n: int, control: str = "HS6") -> bytes:
    """OBX-14 of a DTM followed by ``n`` digits: no time (OBR-7 applies)."""
    return _oru(control, _obx(when="2026" + "0" * n))


def escapes(n: int, control: str = "HS7") -> bytes:
    """OBX-5 of ``n`` escape characters, pairs of which are no escape we know."""
    return _oru(control, _obx((E + "X") * (n // 2), value_type="ST"))


def long_hex_escape(n: int, control: str = "HS8") -> bytes:
    return _oru(control, _obx(E + "X" + "41" * (n // 2) + E, value_type="ST"))


def repetitions(n: int, control: str = "HS9") -> bytes:
    """PID-3 of ``n`` empty repetitions before the identifier."""
    return ("\r".join([_msh(control), PID.replace("||H0", "||" + "~" * n + "H0", 1), OBR, _obx()]) + "\r").encode()


def components(n: int, control: str = "HS10") -> bytes:
    return _oru(control, _obx("^" * n, value_type="SN"))


def invalid_status(n: int, control: str = "HS11") -> bytes:
    """An OBX-11 outside HL7 table 0085 (text that looks like PHI): AE."""
    return _oru(control, _obx(status="SECRETFAMILY PHIID9999" + "9" * n))


def bare_segments(n: int, control: str = "HS12") -> bytes:
    """``n`` bare OBX segments (4 bytes each, the dearest input per byte to
    read), the last with an invalid OBX-11: read in full, then refused (AE),
    so that the store keeps one raw frame, not ``n`` results."""
    return _oru(control, *(["OBX"] * n), _obx(status="?"))


def blank_lines(n: int, control: str = "HS13") -> bytes:
    return _oru(control, "\r" * n, _obx())


def drug_text(n: int, control: str = "HS14") -> bytes:
    """An RDE whose RXE-2 text is ``n`` characters of words before the name."""
    text = "tablet " * (n // 7) + "azathioprine"
    return ("\r".join([
        _msh(control, "RDE^O11^RDE_O11"), PID, "ORC|NW|RX18|||||||20261020080000",
        f"RXE|^^^20261020080000|^{text}|150||mg|TAB",
    ]) + "\r").encode()


def long_version(n: int, control: str = "HS15") -> bytes:
    """MSH-12 of ``n`` digits after "2.": no version this receiver takes (AR)."""
    return _oru(control, _obx()).replace(b"|P|2.5.1", b"|P|2." + b"1" * n, 1)


@dataclass(frozen=True, slots=True)
class Worst:
    build: Callable[..., bytes]
    ack: str  # MSA-1 the daemon owes it, for any n


WORST: dict[str, Worst] = {
    "spaces_value": Worst(spaces_value, "AA"),
    "spaces_then_number": Worst(spaces_then_number, "AA"),
    "digits_value": Worst(digits_value, "AA"),
    "spaces_range": Worst(spaces_range, "AA"),
    "spaces_unit": Worst(spaces_unit, "AA"),
    "long_timestamp": Worst(long_timestamp, "AA"),
    "escapes": Worst(escapes, "AA"),
    "long_hex_escape": Worst(long_hex_escape, "AA"),
    "repetitions": Worst(repetitions, "AA"),
    "components": Worst(components, "AA"),
    "invalid_status": Worst(invalid_status, "AE"),
    "bare_segments": Worst(bare_segments, "AE"),
    "blank_lines": Worst(blank_lines, "AA"),
    "drug_text": Worst(drug_text, "AA"),
    "long_version": Worst(long_version, "AR"),
}
