"""Codes, units, ranges, values and drugs (issue 4 point 1) as tables."""

from __future__ import annotations

import pytest

from hl7_alerts.terminology import (
    LOINC,
    Analyte,
    Ingredient,
    Terminology,
    parse_range,
    parse_value,
    to_canonical,
)

A = Analyte
SITE = Terminology(
    local_lab_codes={"TPMT": A.TPMT, "NUDT15": A.NUDT15, "ALTX": A.ALT},
    drug_codes={"NDC:0054-4084-25": Ingredient.AZATHIOPRINE, "PH123": Ingredient.ALLOPURINOL},
)


@pytest.mark.parametrize(("codes", "expected"), [
    ((("1742-6", "LN"),), A.ALT), ((("1743-4", "LN"),), A.ALT), ((("76625-3", "LN"),), A.ALT),
    ((("1920-8", "LN"),), A.AST), ((("30239-8", "LN"),), A.AST), ((("6768-6", "LN"),), A.ALP),
    ((("2324-2", "LN"),), A.GGT), ((("1975-2", "LN"),), A.BILI_TOTAL), ((("42719-5", "LN"),), A.BILI_TOTAL),
    ((("14631-6", "LN"),), A.BILI_TOTAL), ((("1968-7", "LN"),), A.BILI_DIRECT), ((("14629-0", "LN"),), A.BILI_DIRECT),
    ((("1751-7", "LN"),), A.ALBUMIN), ((("61151-7", "LN"),), A.ALBUMIN), ((("61152-5", "LN"),), A.ALBUMIN),
    ((("5902-2", "LN"),), A.PT), ((("6301-6", "LN"),), A.INR), ((("34714-6", "LN"),), A.INR),
    ((("6690-2", "LN"),), A.WBC), ((("26464-8", "LN"),), A.WBC), ((("751-8", "LN"),), A.NEUTROPHILS),
    ((("26499-4", "LN"),), A.NEUTROPHILS), ((("777-3", "LN"),), A.PLATELETS), ((("26515-7", "LN"),), A.PLATELETS),
    ((("TPMT", "L"),), A.TPMT), ((("NUDT15", "99LAB"),), A.NUDT15), ((("altx", "L"),), A.ALT),
    ((("LFT1", "L"), ("1742-6", "LN")), A.ALT),  # alternate identifier (OBX-3.4)
    ((("1742-6", "L"),), None),  # a LOINC-looking local code is not LOINC
    ((("9999-9", "LN"),), None),
], ids=str)
def test_codes_to_analytes(codes: tuple[tuple[str, str], ...], expected: Analyte | None) -> None:
    assert SITE.analyte(codes) == expected


def test_every_clinical_loinc_is_mapped() -> None:
    assert len(LOINC) == 24


@pytest.mark.parametrize(("analyte", "value", "unit", "expected"), [
    (A.ALT, 100, "U/L", 100), (A.ALT, 100, "IU/L", 100), (A.ALT, 1, "ukat/L", 60), (A.AST, 1, "µkat/L", 60),
    (A.BILI_TOTAL, 34.2, "umol/L", 2.0), (A.BILI_TOTAL, 2, "mg/dL", 2), (A.ALBUMIN, 35, "g/L", 3.5),
    (A.ALBUMIN, 3.5, "g/dL", 3.5), (A.WBC, 4, "10*9/L", 4), (A.WBC, 4, "10*3/uL", 4), (A.WBC, 4, "K/uL", 4),
    (A.PLATELETS, 150000, "/uL", 150), (A.ALT, 1, "furlongs", None),
], ids=str)
def test_units(analyte: Analyte, value: float, unit: str, expected: float | None) -> None:
    got = to_canonical(analyte, value, unit)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(("text", "low", "high"), [
    ("7-56", 7, 56), ("7 - 56", 7, 56), ("<40", None, 40), ("0-40 U/L", 0, 40), (">3.5", 3.5, None),
    ("3.5-5.0", 3.5, 5.0), ("", None, None), ("see note", None, None),
], ids=str)
def test_ranges(text: str, low: float | None, high: float | None) -> None:
    rng = parse_range(text)
    assert (rng.low, rng.high) == (low, high)


@pytest.mark.parametrize(("value_type", "text", "expected"), [
    ("NM", "190", (190.0, "")), ("NM", "<5", (5.0, "<")), ("NM", ">1000", (1000.0, ">")),
    ("SN", ">^1000", (1000.0, ">")), ("SN", "<^5", (5.0, "<")), ("SN", "^42", (42.0, "")),
    ("SN", "1^:^128", (None, "")), ("ST", "haemolysed", (None, "")),
], ids=str)
def test_values(value_type: str, text: str, expected: tuple[float | None, str]) -> None:
    assert parse_value(value_type, text) == expected


@pytest.mark.parametrize(("code", "system", "text", "expected"), [
    ("1256", "RXNORM", "", Ingredient.AZATHIOPRINE), ("103", "RXN", "", Ingredient.MERCAPTOPURINE),
    ("10485", "RXNORM", "", Ingredient.THIOGUANINE), ("519", "RXNORM", "", Ingredient.ALLOPURINOL),
    ("73689", "RXNORM", "", Ingredient.FEBUXOSTAT), ("", "", "IMURAN 50MG TAB", Ingredient.AZATHIOPRINE),
    ("", "", "azasan 75 mg tablet", Ingredient.AZATHIOPRINE), ("", "", "Azathioprine 50 MG", Ingredient.AZATHIOPRINE),
    ("0054-4084-25", "NDC", "", Ingredient.AZATHIOPRINE), ("PH123", "LOCAL", "", Ingredient.ALLOPURINOL),
    ("", "", "Zyloprim 100", Ingredient.ALLOPURINOL), ("", "", "aspirin", None),
], ids=str)
def test_drugs(code: str, system: str, text: str, expected: Ingredient | None) -> None:
    assert SITE.ingredient(code, system, text) == expected
