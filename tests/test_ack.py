"""ACK/NAK construction: MSH swap, MSA echo, ERR layouts, enhanced mode."""

from __future__ import annotations

from datetime import UTC, datetime

from hl7_alerts.ack import AckError, build_ack, build_batch_ack
from hl7_alerts.batches import read_batch
from hl7_alerts.messages import read_header
from hl7_alerts.model import AckCode, Header
from hl7_alerts.segments import ErrorCode, read_segments

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def header(msh: str) -> Header:
    _, segments = read_segments(msh + "\r")
    return read_header(segments, UTC)


def test_ack_swaps_sender_and_receiver_and_echoes_control_id() -> None:
    h = header("MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||ORU^R01^ORU_R01|M1|P|2.5.1")
    ack = build_ack(h, AckCode.AA, now=NOW, control_id="A1").decode()
    msh, msa = ack.strip("\r").split("\r")
    assert msh == "MSH|^~\\&|HL7ALERTS|ICU|LAB|GENHOSP|20261125100000+0000||ACK^R01^ACK|A1|P|2.5.1"
    assert msa == "MSA|AA|M1"


def test_ack_uses_the_message_delimiters() -> None:
    h = header("MSH#$%*@#LAB#GENHOSP#HL7ALERTS#ICU#20261020##ORU$R01#M2#P#2.3")
    ack = build_ack(h, AckCode.AE, text="bad|value", now=NOW, control_id="A2").decode()
    msh, msa = ack.strip("\r").split("\r")
    assert msh.startswith("MSH#$%*@#HL7ALERTS#ICU#LAB#GENHOSP#")
    assert "ACK$R01$ACK" in msh
    assert msa == "MSA#AE#M2#bad|value"


def test_err_segment_v25_and_v23_layouts() -> None:
    error = AckError(reason="PID-3 missing", error_code=ErrorCode.REQUIRED_FIELD_MISSING, segment="PID", field=3)
    v25 = header("MSH|^~\\&|L|F|R|G|20261020||ORU^R01|M3|P|2.5")
    v23 = header("MSH|^~\\&|L|F|R|G|20261020||ORU^R01|M3|P|2.3")
    err25 = build_ack(v25, AckCode.AE, error=error, now=NOW, control_id="x").decode().split("\r")[2]
    err23 = build_ack(v23, AckCode.AE, error=error, now=NOW, control_id="x").decode().split("\r")[2]
    assert err25 == "ERR||PID^1^3|101^Required field missing^HL70357|E||||PID-3 missing"
    assert err23 == "ERR|PID^1^3^101&PID-3 missing&HL70357"


def test_enhanced_mode_answers_commit_codes() -> None:
    h = header("MSH|^~\\&|L|F|R|G|20261020||ORU^R01|M4|P|2.5|||AL|NE")
    assert b"MSA|CA|M4" in build_ack(h, AckCode.AA, now=NOW, control_id="x")
    assert b"MSA|CR|M4" in build_ack(h, AckCode.AR, now=NOW, control_id="x")


def test_nak_without_any_header_still_answers() -> None:
    ack = build_ack(None, AckCode.AE, text="no MSH", now=NOW, control_id="x").decode()
    assert ack.startswith("MSH|^~\\&|HL7ALERTS||||")
    assert "\rMSA|AE||no MSH\r" in ack


def test_ack_is_in_the_declared_charset_and_says_so() -> None:
    h = header("MSH|^~\\&|LABÖ|GENHOSP|R|G|20261020||ORU^R01|M5|P|2.5|||||DE|8859/1")
    ack = build_ack(h, AckCode.AA, now=NOW, control_id="x")
    msh = ack.split(b"\r")[0]
    assert msh.startswith("MSH|^~\\&|R|G|LABÖ|".encode("iso8859-1"))
    assert msh.endswith(b"|2.5||||||8859/1")
    plain = build_ack(header("MSH|^~\\&|LABÖ|G|R|G|20261020||ORU^R01|M6|P|2.5"), AckCode.AA, now=NOW, control_id="x")
    assert "|LABÖ|".encode() in plain  # no MSH-18: UTF-8, and no MSH-18 in the answer
    assert plain.split(b"\r")[0].endswith(b"|P|2.5")


BATCH = (
    "FHS|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||labfile.hl7||F1\r"
    "BHS|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||||B1\r"
    "MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||ADT^A08|M1|P|2.5\rPID|1\r"
    "MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||ADT^A08|M2|P|2.5\rPID|1\r"
    "BTS|2\rFTS|1\r"
)


def test_batch_acknowledgment_echoes_the_envelope_around_each_ack() -> None:
    frame = read_batch(BATCH.encode())
    assert frame is not None
    ids = iter(["A1", "A2"])
    acks = [[b"MSH|^~\\&|X\rMSA|AA|M1\r", b"MSH|^~\\&|X\rMSA|AE|M2\r"]]
    rows = [s.split("|") for s in build_batch_ack(frame, acks, now=NOW, control_id=lambda: next(ids)).decode().split("\r") if s]
    assert [r[0] for r in rows] == ["FHS", "BHS", "MSH", "MSA", "MSH", "MSA", "BTS", "FTS"]
    assert rows[0][2:7] == ["HL7ALERTS", "ICU", "LAB", "GENHOSP", "20261125100000+0000"]  # sender and receiver swapped
    assert rows[0][10:12] == ["A1", "F1"]  # FHS-11 ours, FHS-12 the file's FHS-11
    assert rows[1][10:12] == ["A2", "B1"]  # BHS-11 ours, BHS-12 the batch's BHS-11
    assert (rows[6], rows[7]) == (["BTS", "2"], ["FTS", "1"])


def test_batch_acknowledgment_has_the_shape_of_what_came() -> None:
    """Several MSH in one frame, no envelope: one ACK after the other, MSH
    first (BHS and BTS are optional in an HL7 batch); a BHS inside an FHS
    without messages before it: FHS, BHS ... BTS, FTS."""
    frame = read_batch(b"MSH|^~\\&|LAB|G|HL7ALERTS|ICU|1||ADT^A08|M1|P|2.5\rMSH|^~\\&|LAB|G|R|F|1||ADT^A08|M2|P|2.5\r")
    assert frame is not None
    acks = [[b"MSH|^~\\&|X\rMSA|AA|M1\r", b"MSH|^~\\&|X\rMSA|AA|M2\r"]]
    out = build_batch_ack(frame, acks, now=NOW, control_id=lambda: "A9")
    assert out == b"MSH|^~\\&|X\rMSA|AA|M1\rMSH|^~\\&|X\rMSA|AA|M2\r"
    bhs_only = read_batch(BATCH.replace("FHS|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020||labfile.hl7||F1\r", "")
                          .replace("FTS|1\r", "").encode())
    assert bhs_only is not None
    rows = build_batch_ack(bhs_only, acks, now=NOW, control_id=lambda: "A9").decode().split("\r")
    assert [r[:3] for r in rows if r] == ["BHS", "MSH", "MSA", "MSH", "MSA", "BTS"]
