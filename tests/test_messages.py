"""Parsing and mapping, with python-hl7 as the oracle for field values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from hl7_alerts.messages import ParseOptions, parse_message
from hl7_alerts.model import (
    AckCode,
    MergeMessage,
    Observation,
    OrderControl,
    OrderMessage,
    OtherMessage,
    ResultMessage,
    ResultStatus,
)
from hl7_alerts.segments import MessageError, decode, split_file
from hl7_alerts.terminology import Analyte, Terminology
from tests.support.samples import SAMPLES

OPTIONS = ParseOptions(terminology=Terminology(), timezone=UTC)


def sample(name: str, index: int = 0) -> bytes:
    return split_file((SAMPLES / name).read_bytes())[index]


def test_oru_maps_observations() -> None:
    message = parse_message(sample("02_seed_liver_panel_above_3xuln.hl7"), OPTIONS)
    assert isinstance(message, ResultMessage)
    assert (message.patient.id, message.patient.id_type, message.patient.authority) == ("H010001", "MR", "GENHOSP")
    assert message.demographics.sex == "F"
    alt = message.observations[0]
    assert (alt.analyte, alt.value, alt.unit, alt.ref_low, alt.ref_high, alt.flag) == ("ALT", 190, "U/L", 7, 56, "H")
    assert alt.status is ResultStatus.FINAL
    assert alt.observed_at == datetime(2026, 10, 20, 8, 0, tzinfo=UTC)
    assert alt.specimen_id == "SPC100"


def test_pid3_picks_the_configured_type_not_the_first_repetition() -> None:
    raw = sample("01_seed_order_azathioprine.hl7").replace(
        b"H010001^^^GENHOSP^MR~900123456^^^SSA^SS", b"900123456^^^SSA^SS~H010001^^^GENHOSP^MR"
    )
    message = parse_message(raw, OPTIONS)
    assert isinstance(message, OrderMessage)
    assert message.patient.id == "H010001"


def test_rde_maps_a_new_azathioprine_order() -> None:
    message = parse_message(sample("01_seed_order_azathioprine.hl7"), OPTIONS)
    assert isinstance(message, OrderMessage)
    (order,) = message.orders
    assert order.control is OrderControl.NEW
    assert (order.order_id, order.ingredient, order.dose) == ("RX1", "azathioprine", "150 mg")
    assert order.start == datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
    assert order.stop is None


def test_discontinue_stops_at_orc9() -> None:
    message = parse_message(sample("03_seed_discontinue_azathioprine.hl7"), OPTIONS)
    assert isinstance(message, OrderMessage)
    (order,) = message.orders
    assert order.control is OrderControl.DISCONTINUE
    assert order.stop == datetime(2026, 10, 20, 14, 0, tzinfo=UTC)


def test_v23_orm_with_drug_name_and_orc7_timing() -> None:
    message = parse_message(sample("06_v23_orm_feed.hl7", 0), OPTIONS)
    assert isinstance(message, OrderMessage)
    (order,) = message.orders
    assert (order.ingredient, order.drug_text, order.dose) == ("azathioprine", "IMURAN 50MG TAB", "100 mg")
    assert order.start == datetime(2006, 9, 15, 8, 0, tzinfo=UTC)


def test_other_types_are_stored_not_evaluated() -> None:
    raw = b"MSH|^~\\&|ADT|GENHOSP|HL7ALERTS|GENHOSP|20261020||ADT^A08|ADT1|P|2.5\rPID|1||H1^^^GENHOSP^MR\r"
    assert isinstance(parse_message(raw, OPTIONS), OtherMessage)


@pytest.mark.parametrize(
    ("raw", "code", "segment", "field"),
    [
        pytest.param(b"PID|1||H1^^^G^MR\r", AckCode.AE, "MSH", 0, id="no-msh"),
        pytest.param(b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|C1|P|2.1\rPID|1\r", AckCode.AR, "MSH", 12, id="version-2.1"),
        pytest.param(b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|C1|X|2.5\rPID|1\r", AckCode.AR, "MSH", 11, id="processing-id"),
        pytest.param(b"MSH|^~\\&|L|F|R|G|2026|||C1|P|2.5\r", AckCode.AR, "MSH", 9, id="no-type"),
        pytest.param(b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|C1|P|2.5\rOBX|1\r", AckCode.AE, "PID", 0, id="no-pid"),
        pytest.param(
            b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|C1|P|2.5\rPID|1||123^^^SSA^SS\r", AckCode.AE, "PID", 3, id="no-mr"
        ),
    ],
)
def test_unreadable_messages_raise_with_their_ack_code(raw: bytes, code: AckCode, segment: str, field: int) -> None:
    with pytest.raises(MessageError) as info:
        parse_message(raw, OPTIONS)
    assert (info.value.ack_code, info.value.segment, info.value.field) == (code, segment, field)


def test_versions_2_2_to_2_8_and_minor_releases_are_accepted() -> None:
    for version in ("2.2", "2.3.1", "2.5.1", "2.8.2"):
        raw = f"MSH|^~\\&|L|F|R|G|2026||ADT^A01|C1|P|{version}\r".encode()
        assert isinstance(parse_message(raw, OPTIONS), OtherMessage)


def test_offset_in_timestamp_is_kept() -> None:
    raw = sample("02_seed_liver_panel_above_3xuln.hl7").replace(b"|||20261020080000\r", b"|||20261020080000+0200\r")
    message = parse_message(raw, OPTIONS)
    assert isinstance(message, ResultMessage)
    assert message.observations[0].observed_at.utcoffset() == timedelta(hours=2)
    assert message.observations[0].observed_at == datetime(2026, 10, 20, 8, tzinfo=timezone(timedelta(hours=2)))


def test_decode_bom_declared_charset_and_fallback() -> None:
    assert decode(b"\xef\xbb\xbfMSH|^~\\&|\xc3\xa9") == "MSH|^~\\&|é"
    latin = b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5|||||8859/1\rPID|1||X||M\xfcller\r"
    assert "Müller" in decode(latin)
    assert "Müller" in decode(b"MSH|^~\\&|A\rPID|1||X||M\xfcller\r")  # not UTF-8: cp1252 fallback


def test_escape_sequences_are_resolved() -> None:
    raw = (
        b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|C1|P|2.5\rPID|1||H1^^^G^MR\r"
        b"OBR|1|||P\rOBX|1|ST|X^Note\\T\\more^L||a\\F\\b\\S\\c\\E\\d||||||F|||20261020\r"
    )
    message = parse_message(raw, OPTIONS)
    assert isinstance(message, ResultMessage)
    assert message.observations[0].value_text == "a|b^c\\d"
    assert message.observations[0].text == "Note&more"


def test_split_file_handles_line_endings_and_batches() -> None:
    batch = (
        b"FHS|^~\\&|L\nBHS|^~\\&|L\nMSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\r\nPID|1\r\n"
        b"MSH|^~\\&|A|B|C|D|1||ADT^A01|2|P|2.5\nPID|2\nBTS|2\nFTS|1\n"
    )
    assert split_file(batch) == [
        b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rPID|1\r",
        b"MSH|^~\\&|A|B|C|D|1||ADT^A01|2|P|2.5\rPID|2\r",
    ]


A40 = (
    "MSH|^~\\&|ADT|GENHOSP|HL7ALERTS|GENHOSP|20261002080000||ADT^A40^ADT_A39|A1|P|2.5.1\r"
    "EVN|A40|20261002080000\r"
    "PID|1||H0990001^^^GENHOSP^MR||TESTPATIENT^ECHO\r"
)


@pytest.mark.parametrize(("mrg", "prior"), [
    ("MRG|H0990009^^^GENHOSP^MR\r", ("H0990009", "MR", "GENHOSP")),
    ("MRG|H0990009^^^GENHOSP\r", ("H0990009", "MR", "GENHOSP")),  # MRG-1 often has no type: the configured one
    ("MRG|777^^^GENHOSP^PI~H0990009^^^GENHOSP^MR\r", ("H0990009", "MR", "GENHOSP")),
], ids=["typed", "untyped", "repeating"])
def test_a40_maps_prior_to_surviving(mrg: str, prior: tuple[str, str, str]) -> None:
    message = parse_message((A40 + mrg).encode(), OPTIONS)
    assert isinstance(message, MergeMessage)
    assert (message.patient.id, message.prior.id, message.prior.id_type, message.prior.authority) == (
        "H0990001", *prior)


@pytest.mark.parametrize("mrg", ["", "MRG|777^^^GENHOSP^PI\r"], ids=["no-mrg", "no-mr-in-mrg"])
def test_a40_without_a_usable_prior_is_ae(mrg: str) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message((A40 + mrg).encode(), OPTIONS)
    assert caught.value.ack_code is AckCode.AE
    assert caught.value.segment == "MRG"


def test_cwe_result_reads_the_text_component() -> None:
    raw = (
        b"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|20261001080000||ORU^R01|G1|P|2.5.1\r"
        b"PID|1||H0990001^^^GENHOSP^MR\r"
        b"OBR|1|O1|S1|TPMT^TPMT^L|||20261001080000\r"
        b"OBX|1|CWE|TPMT^TPMT phenotype^L||IM^Intermediate metabolizer^L||||||F\r"
    )
    options = ParseOptions(terminology=Terminology(local_lab_codes={"TPMT": Analyte.TPMT}), timezone=UTC)
    message = parse_message(raw, options)
    assert isinstance(message, ResultMessage)
    (obs,) = message.observations
    assert (obs.analyte, obs.value_text, obs.value) == ("TPMT", "Intermediate metabolizer", None)


def _oru(obx: str, *, obr25: str = "", sex: str = "F") -> bytes:
    """One ORU^R01 with one OBR (OBR-25 ``obr25``) and one OBX line."""
    obr = "OBR|1|O1|S1|24325-3^Hepatic function panel^LN|||20261020080000" + "|" * 18 + obr25
    return (
        "MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|20261020093000||ORU^R01|L1|P|2.5.1\r"
        f"PID|1||H1^^^GENHOSP^MR||TESTPATIENT^ECHO||19700101|{sex}\r{obr}\r{obx}\r"
    ).encode()


def _one(raw: bytes) -> Observation:
    message = parse_message(raw, OPTIONS)
    assert isinstance(message, ResultMessage)
    (obs,) = message.observations
    return obs


def test_obr25_lands_where_the_table_says() -> None:
    obr = _oru("OBX|1|NM|1742-6^ALT^LN||190|U/L|7-56", obr25="P").split(b"\r")[2].decode()
    assert obr.split("|")[25] == "P"


@pytest.mark.parametrize(("obx11", "obr25", "expected"), [
    ("", "", ResultStatus.FINAL), ("", "F", ResultStatus.FINAL), ("", "P", ResultStatus.PRELIMINARY),
    ("", "C", ResultStatus.CORRECTED), ("", "X", ResultStatus.CANCELLED), ("", "I", ResultStatus.PENDING),
    ("", "A", ResultStatus.PRELIMINARY), ("", "S", ResultStatus.PENDING), ("", "R", ResultStatus.RESULTS_ENTERED),
    ("", "Y", ResultStatus.FINAL), ("", "p", ResultStatus.PRELIMINARY),
    ("F", "P", ResultStatus.FINAL), ("P", "F", ResultStatus.PRELIMINARY), ("C", "", ResultStatus.CORRECTED),
], ids=str)
def test_empty_obx11_takes_obr25(obx11: str, obr25: str, expected: ResultStatus) -> None:
    """Decision 15: an empty OBX-11 takes OBR-25; both empty read as final."""
    obs = _one(_oru(f"OBX|1|NM|1742-6^ALT^LN||190|U/L|7-56||||{obx11}", obr25=obr25))
    assert obs.status is expected


@pytest.mark.parametrize(("value_type", "value", "expected"), [
    ("ST", "190", (190.0, "")), ("TX", "<5", (5.0, "<")), ("ST", ">=1000", (1000.0, ">=")),
    ("ST", "haemolysed", (None, "")), ("TX", "190 U/L", (None, "")),
], ids=str)
def test_st_and_tx_numbers_read_as_nm(value_type: str, value: str, expected: tuple[float | None, str]) -> None:
    obs = _one(_oru(f"OBX|1|{value_type}|1742-6^ALT^LN||{value}|U/L|7-56||||F"))
    assert (obs.value, obs.comparator) == expected
    assert obs.value_text == value


@pytest.mark.parametrize(("sex", "low", "high"), [("M", 10, 50), ("F", 7, 35), ("", 10, 35), ("U", 10, 35)], ids=str)
def test_sex_specific_obx7_read_for_pid8(sex: str, low: float, high: float) -> None:
    obs = _one(_oru("OBX|1|NM|1742-6^ALT^LN||40|U/L|M:10-50 F:7-35||||F", sex=sex))
    assert (obs.ref_low, obs.ref_high, obs.ref_text) == (low, high, "M:10-50 F:7-35")


@pytest.mark.parametrize("obx3", ["1742-6^ALT^LOINC", "ALTX^Alanine aminotransferase^L^1742-6^ALT^LOINC"], ids=str)
def test_loinc_written_out_in_identifier_or_alternate(obx3: str) -> None:
    assert _one(_oru(f"OBX|1|NM|{obx3}||40|U/L|7-56||||F")).analyte == "ALT"
