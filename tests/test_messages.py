"""Parsing and mapping, with python-hl7 as the oracle for field values."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hl7_alerts import batches, frames, messages, segments, terminology, timeutil
from hl7_alerts.batches import read_batch
from hl7_alerts.config import parse_config
from hl7_alerts.messages import ParseOptions, parse_message, salvage_header
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
from tests.support.hl7kit import AZA, alt, events, order_msg, oru, run_check
from tests.support.hostile import WORST, digits_value, spaces_then_number, spaces_value
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


# -- patient identifiers (CLINICAL.md decisions 7 and 12) ---------------------

ORU_HEAD = "MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|20261020||ORU^R01|C1|P|2.3\r"
OBX_TAIL = "OBR|1|O1|S1|24325-3^LFT^LN|||20261020\rOBX|1|NM|1742-6^ALT^LN||40|U/L|7-56||||F\r"


def _options(*types: str, untyped: bool = True, authority: str | None = None) -> ParseOptions:
    return ParseOptions(
        terminology=Terminology(),
        timezone=UTC,
        patient_id_types=types or ("MR",),
        accept_untyped_ids=untyped,
        patient_authority=authority,
    )


@pytest.mark.parametrize(("pid3", "options", "key"), [
    pytest.param("555^^^GENHOSP~H1^^^GENHOSP^MR", _options(), ("H1", "MR", "GENHOSP"), id="typed-wins-over-untyped"),
    pytest.param("H1^^^GENHOSP^MR~555^^^GENHOSP", _options(), ("H1", "MR", "GENHOSP"), id="typed-first"),
    pytest.param("555^^^GENHOSP", _options(), ("555", "MR", "GENHOSP"), id="untyped-keyed-as-configured"),
    pytest.param("555", _options(), ("555", "MR", ""), id="untyped-bare-id"),
    pytest.param("777^^^SSA^SS~555^^^GENHOSP", _options(), ("555", "MR", "GENHOSP"), id="other-type-skipped"),
    pytest.param("^^^GENHOSP~555^^^GENHOSP", _options(), ("555", "MR", "GENHOSP"), id="empty-id-skipped"),
    pytest.param("P7^^^GENHOSP^PI~H1^^^GENHOSP^MR", _options("MR", "PI"), ("H1", "MR", "GENHOSP"), id="preferred-of-list"),
    pytest.param("P7^^^GENHOSP^PI~H1^^^GENHOSP^MR", _options("PI", "MR"), ("P7", "PI", "GENHOSP"), id="order-is-preference"),
    pytest.param("P7^^^GENHOSP^PI", _options("MR", "PI"), ("P7", "PI", "GENHOSP"), id="second-choice"),
    pytest.param("P7^^^GENHOSP^PI~555", _options("MR", "PI"), ("P7", "PI", "GENHOSP"), id="typed-second-beats-untyped"),
    pytest.param("555^^^GENHOSP", _options("MR", "PI"), ("555", "MR", "GENHOSP"), id="untyped-as-first-of-list"),
    pytest.param("h1^^^genhosp^mr", _options(), ("h1", "MR", "genhosp"), id="type-case-insensitive"),
    pytest.param("1^^^OTHER~2^^^GENHOSP", _options(authority="GENHOSP"), ("2", "MR", "GENHOSP"), id="authority-filters-untyped"),
])
def test_pid3_identifier_choice(pid3: str, options: ParseOptions, key: tuple[str, str, str]) -> None:
    message = parse_message(f"{ORU_HEAD}PID|1||{pid3}\r{OBX_TAIL}".encode(), options)
    assert isinstance(message, ResultMessage)
    assert (message.patient.id, message.patient.id_type, message.patient.authority) == key


@pytest.mark.parametrize(("pid3", "options"), [
    pytest.param("555^^^GENHOSP", _options(untyped=False), id="untyped-rejected-by-config"),
    pytest.param("777^^^SSA^SS", _options(), id="other-type-never"),
    pytest.param("P7^^^GENHOSP^PI", _options(), id="pi-never-unless-listed"),
    pytest.param("777^^^SSA^SS~P7^^^GENHOSP^PI", _options(untyped=False), id="only-other-types"),
    pytest.param("^^^GENHOSP^MR", _options(), id="typed-but-empty"),
    pytest.param("555^^^OTHER", _options(authority="GENHOSP"), id="untyped-of-another-authority"),
])
def test_pid3_without_a_usable_identifier_is_ae(pid3: str, options: ParseOptions) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(f"{ORU_HEAD}PID|1||{pid3}\r{OBX_TAIL}".encode(), options)
    assert caught.value.ack_code is AckCode.AE
    assert (caught.value.segment, caught.value.field) == ("PID", 3)
    assert not any(ident in caught.value.reason for ident in ("555", "777"))  # no identifier values


def test_untyped_accepted_names_it_in_the_nak_text() -> None:
    with pytest.raises(MessageError) as accepting:
        parse_message(f"{ORU_HEAD}PID|1||777^^^SSA^SS\r{OBX_TAIL}".encode(), _options("MR", "PI"))
    assert accepting.value.reason == "PID-3 has no patient identifier of type MR or PI (or untyped)"
    with pytest.raises(MessageError) as rejecting:
        parse_message(f"{ORU_HEAD}PID|1||777^^^SSA^SS\r{OBX_TAIL}".encode(), _options(untyped=False))
    assert rejecting.value.reason == "PID-3 has no patient identifier of type MR"


@pytest.mark.parametrize(("mrg", "options", "prior"), [
    pytest.param("555^^^GENHOSP~H0990009^^^GENHOSP^MR", _options(), ("H0990009", "MR", "GENHOSP"), id="typed-wins"),
    pytest.param("P7^^^GENHOSP^PI~555^^^GENHOSP", _options(), ("555", "MR", "GENHOSP"), id="untyped-accepted"),
    pytest.param("P7^^^GENHOSP^PI~555", _options("PI", "MR"), ("P7", "PI", "GENHOSP"), id="list-preference"),
])
def test_mrg1_follows_the_pid3_rule(mrg: str, options: ParseOptions, prior: tuple[str, str, str]) -> None:
    message = parse_message((A40 + f"MRG|{mrg}\r").encode(), options)
    assert isinstance(message, MergeMessage)
    assert (message.prior.id, message.prior.id_type, message.prior.authority) == prior


@pytest.mark.parametrize("mrg", ["555^^^GENHOSP", "777^^^SSA^SS~555"], ids=["untyped", "other-and-untyped"])
def test_mrg1_untyped_rejected_by_config_is_ae(mrg: str) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message((A40 + f"MRG|{mrg}\r").encode(), _options(untyped=False))
    assert caught.value.ack_code is AckCode.AE
    assert (caught.value.segment, caught.value.field) == ("MRG", 1)


def test_an_untyped_identifier_is_the_same_patient_as_the_typed_one(tmp_path: Path) -> None:
    """Through the pipeline: an order sent with an untyped PID-3 and a panel
    with the typed one are one patient; with untyped_ids: reject the order
    is refused AE and nothing fires."""
    untyped = order_msg("O1", "NW", "RX1", AZA, "202609010900", mrn="H0990001^^^GENHOSP")
    panel = oru("L1", "202610200800", alt("190"))
    accepted = run_check(tmp_path, untyped, panel)
    assert events(accepted) == [("aza.pgx.missing", "firing", "info"), ("aza.hepatotoxicity.stop", "firing", "critical")]
    assert {e["patient"]["id_type"] for e in accepted} == {"MR"}
    refused = run_check(tmp_path, untyped, panel, config=parse_config("patient:\n  untyped_ids: reject\n"))
    assert refused == [{"file": str(tmp_path / "scenario.hl7"), "control_id": "O1", "ack": "AE",
                        "error": "PID-3 has no patient identifier of type MR"}]


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


# -- issue 18 item 1: reading is linear, whatever the sender writes

_READERS = (terminology, timeutil, segments, messages, batches)
# Every regex the reader modules hold, with the longest text it may be run
# over. None: run over the whole message, which only a pattern with no
# repetition may be (each position is tried once; no backtracking).
_REGEX_BOUNDS: dict[str, int | None] = {
    "terminology._TEMPERATURE": terminology.MAX_UNIT_CHARS,
    "terminology._NUMBER": terminology.MAX_RANGE_CHARS,  # tokens of a bounded range
    "terminology._SIGNED": terminology.MAX_VALUE_CHARS,
    "terminology._RANGE_TOKENS": terminology.MAX_RANGE_CHARS,
    "terminology._DRUG_NAMES": terminology.MAX_DRUG_TEXT_CHARS,
    "timeutil._DTM": timeutil.MAX_DTM_CHARS,
    "timeutil._ISO_UTC": None,  # our own ISO text, never the message's
    "segments._SEGMENT_SPLIT": None,
    "segments._HEX": segments._MAX_ESCAPE_CHARS,
    "messages._MESSAGE_CODE": None,  # three characters, then the end
    "messages._VERSION": messages._MAX_VERSION_CHARS,
    "batches._MORE": None,
    "batches._LINES": None,
}


class _Recording:
    """A compiled pattern that notes the longest text it was run over."""

    def __init__(self, pattern: re.Pattern[str], seen: dict[str, int], name: str) -> None:
        self._pattern, self._seen, self._name = pattern, seen, name

    def _note(self, text: str | bytes) -> None:
        self._seen[self._name] = max(self._seen.get(self._name, 0), len(text))

    def __getattr__(self, method: str) -> Any:
        call = getattr(self._pattern, method)

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self._note(args[1] if method in ("sub", "subn") else args[0])
            return call(*args, **kwargs)

        return recorded


def _record_regexes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Swap every module-level regex of the reader modules for a recording
    one; the answer fills in as they are used."""
    seen: dict[str, int] = {}
    found = set()
    for module in _READERS:
        short = module.__name__.rsplit(".", 1)[1]
        for attr, value in vars(module).items():
            name = f"{short}.{attr}"
            if isinstance(value, re.Pattern):
                found.add(name)
                monkeypatch.setattr(module, attr, _Recording(value, seen, name))
            elif isinstance(value, tuple) and value and isinstance(value[0], tuple) \
                    and isinstance(value[0][0], re.Pattern):
                found.add(name)
                monkeypatch.setattr(module, attr, tuple((_Recording(p, seen, name), *rest) for p, *rest in value))
    assert found == set(_REGEX_BOUNDS), "a regex of the reader needs its bound in _REGEX_BOUNDS"
    return seen


@pytest.mark.parametrize("name", sorted(WORST))
def test_no_regex_reads_more_than_its_bound(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Structural linearity: the quadratic regex of issue 18 ran over 12,000
    spaces. No regex of the reader now sees more of a message than its
    bound, for any of the worst inputs at 100,000, however it is read
    (batch split, parse, the NAK's salvaged header)."""
    monkeypatch.setattr(terminology, "_parse_range", terminology._parse_range.__wrapped__)  # no cache hits
    monkeypatch.setattr(timeutil, "_parse_dtm", timeutil._parse_dtm.__wrapped__)
    seen = _record_regexes(monkeypatch)
    data = WORST[name].build(100_000)
    read_batch(data)
    result = frames._read(data, OPTIONS)
    assert (result.rejection.ack_code if result.rejection else "AA") == WORST[name].ack
    over = {k: v for k, v in seen.items() if (bound := _REGEX_BOUNDS[k]) is not None and v > bound}
    assert not over


def _calls(read: Callable[[], object]) -> int:
    """Python and C function calls made by ``read()``."""
    count = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal count
        count += event in ("call", "c_call")

    sys.setprofile(profile)
    try:
        read()
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize("name", sorted(WORST))
def test_reading_twice_the_input_makes_at_most_twice_the_calls(name: str) -> None:
    """Structural linearity without a clock: reading a worst input of 2N
    costs at most twice the function calls of N, and the header salvaged
    for a NAK costs the same at any N (it reads the first segment only)."""
    build = WORST[name].build
    frames._read(build(1000), OPTIONS)  # warm the caches: what follows is the reading itself
    small, large = (_calls(lambda n=n: frames._read(build(n), OPTIONS)) for n in (5_000, 10_000))
    assert large <= 2 * small + 20
    salvage = [_calls(lambda n=n: salvage_header(build(n), UTC)) for n in (5_000, 10_000)]
    assert salvage[0] == salvage[1]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=0, max_value=100_000))
def test_obx5_of_n_spaces_then_x_reads_as_text_for_any_n(n: int) -> None:
    """The probe of issue 18 through the whole reader, as a property: OBX-5
    of N spaces then ``x`` is that text and no number; N spaces then 190 is
    190 while it fits in a value's 32 characters, and text after that; N
    digits are a number only up to 32 of them."""
    (obs,) = _observations(spaces_value(n))
    assert (obs.value, obs.value_text) == (None, " " * n + "x")
    (obs,) = _observations(spaces_then_number(n))
    assert obs.value == (190.0 if n + 3 <= terminology.MAX_VALUE_CHARS else None)
    (obs,) = _observations(digits_value(n))
    assert obs.value == (float("9" * n) if 0 < n <= terminology.MAX_VALUE_CHARS else None)


def _observations(data: bytes) -> tuple[Observation, ...]:
    message = parse_message(data, OPTIONS)
    assert isinstance(message, ResultMessage)
    return message.observations


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(WORST)), n=st.integers(min_value=0, max_value=100_000))
def test_every_worst_input_gets_its_answer_at_any_length(name: str, n: int) -> None:
    """Each worst input is read to the answer it is owed (AA, or the AE/AR
    of its refusal), whatever its length, with a header for the NAK."""
    result = frames._read(WORST[name].build(n, control=f"P{n}"), OPTIONS)
    assert (result.rejection.ack_code if result.rejection else "AA") == WORST[name].ack
    assert result.header is not None
    assert result.header.control_id == f"P{n}"
