"""Codes, units, reference ranges and drug names, from CLINICAL.md's tables.

Maps OBX-3 codes (LOINC, or a site's local codes from config) to analytes,
converts values to each analyte's canonical unit, reads reference ranges and
comparator values, and resolves drug codes and names to an ingredient. The
rule it keeps: nothing here guesses. An unknown code maps to no analyte, an
unknown unit converts to nothing, and the caller keeps the raw text.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache


class Analyte(enum.StrEnum):
    ALT = "ALT"
    AST = "AST"
    ALP = "ALP"
    GGT = "GGT"
    BILI_TOTAL = "bilirubin_total"
    BILI_DIRECT = "bilirubin_direct"
    ALBUMIN = "albumin"
    PT = "PT"
    INR = "INR"
    WBC = "WBC"
    NEUTROPHILS = "neutrophils"
    PLATELETS = "platelets"
    TPMT = "TPMT"
    NUDT15 = "NUDT15"


LIVER_ENZYMES = (Analyte.ALT, Analyte.AST, Analyte.ALP, Analyte.GGT)

LOINC: Mapping[str, Analyte] = {
    "1742-6": Analyte.ALT,
    "1743-4": Analyte.ALT,
    "76625-3": Analyte.ALT,
    "1920-8": Analyte.AST,
    "30239-8": Analyte.AST,
    "6768-6": Analyte.ALP,
    "2324-2": Analyte.GGT,
    "1975-2": Analyte.BILI_TOTAL,
    "42719-5": Analyte.BILI_TOTAL,
    "14631-6": Analyte.BILI_TOTAL,
    "1968-7": Analyte.BILI_DIRECT,
    "14629-0": Analyte.BILI_DIRECT,
    "1751-7": Analyte.ALBUMIN,
    "61151-7": Analyte.ALBUMIN,
    "61152-5": Analyte.ALBUMIN,
    "5902-2": Analyte.PT,
    "6301-6": Analyte.INR,
    "34714-6": Analyte.INR,
    "6690-2": Analyte.WBC,
    "26464-8": Analyte.WBC,
    "751-8": Analyte.NEUTROPHILS,
    "26499-4": Analyte.NEUTROPHILS,
    "777-3": Analyte.PLATELETS,
    "26515-7": Analyte.PLATELETS,
}

CANONICAL_UNIT: Mapping[Analyte, str] = {
    Analyte.ALT: "U/L",
    Analyte.AST: "U/L",
    Analyte.ALP: "U/L",
    Analyte.GGT: "U/L",
    Analyte.BILI_TOTAL: "mg/dL",
    Analyte.BILI_DIRECT: "mg/dL",
    Analyte.ALBUMIN: "g/dL",
    Analyte.PT: "s",
    Analyte.INR: "ratio",
    Analyte.WBC: "10*9/L",
    Analyte.NEUTROPHILS: "10*9/L",
    Analyte.PLATELETS: "10*9/L",
}

# Factor from a unit (normalised by `_unit_key`) to the canonical unit, per
# dimension. Units not listed do not convert: the value is then compared only
# against a range given in its own units.
_ENZYME = {"u/l": 1.0, "iu/l": 1.0, "ukat/l": 60.0, "µkat/l": 60.0}
_BILI = {"mg/dl": 1.0, "umol/l": 1 / 17.1, "µmol/l": 1 / 17.1}
_ALBUMIN = {"g/dl": 1.0, "g/l": 0.1}
_COUNT = {
    "10*9/l": 1.0,
    "10^9/l": 1.0,
    "x10*9/l": 1.0,
    "x10^9/l": 1.0,
    "10*3/ul": 1.0,
    "10^3/ul": 1.0,
    "x10*3/ul": 1.0,
    "x10^3/ul": 1.0,
    "k/ul": 1.0,
    "thou/ul": 1.0,
    "/ul": 0.001,
    "cells/ul": 0.001,
}
_CONVERSIONS: Mapping[Analyte, Mapping[str, float]] = {
    Analyte.ALT: _ENZYME,
    Analyte.AST: _ENZYME,
    Analyte.ALP: _ENZYME,
    Analyte.GGT: _ENZYME,
    Analyte.BILI_TOTAL: _BILI,
    Analyte.BILI_DIRECT: _BILI,
    Analyte.ALBUMIN: _ALBUMIN,
    Analyte.PT: {"s": 1.0, "sec": 1.0, "seconds": 1.0},
    Analyte.INR: {"ratio": 1.0, "{inr}": 1.0, "inr": 1.0, "": 1.0, "{ratio}": 1.0},
    Analyte.WBC: _COUNT,
    Analyte.NEUTROPHILS: _COUNT,
    Analyte.PLATELETS: _COUNT,
}


def _unit_key(unit: str) -> str:
    return unit.strip().lower().replace(" ", "").replace("μ", "µ")


def to_canonical(analyte: Analyte, value: float, unit: str) -> float | None:
    """Convert ``value`` in ``unit`` to the analyte's canonical unit, or None."""
    factor = _CONVERSIONS.get(analyte, {}).get(_unit_key(unit))
    return None if factor is None else value * factor


@dataclass(frozen=True, slots=True, kw_only=True)
class Range:
    low: float | None
    high: float | None


_NUMBER = r"[-+]?\d+(?:\.\d+)?|[-+]?\.\d+"
_RANGE_BOTH = re.compile(rf"^\s*({_NUMBER})\s*(?:-|–|to)\s*({_NUMBER})")
_RANGE_UPPER = re.compile(rf"^\s*(?:<=?|≤)\s*({_NUMBER})")
_RANGE_LOWER = re.compile(rf"^\s*(?:>=?|≥)\s*({_NUMBER})")


@lru_cache(maxsize=1024)  # a feed sends the same few ranges over and over; Range is immutable
def parse_range(text: str) -> Range:
    """OBX-7 in the forms CLINICAL.md lists: ``7-56``, ``7 - 56``, ``<40``,
    ``0-40 U/L``, ``>3.5``. Anything else is no range."""
    if m := _RANGE_BOTH.match(text):
        return Range(low=float(m.group(1)), high=float(m.group(2)))
    if m := _RANGE_UPPER.match(text):
        return Range(low=None, high=float(m.group(1)))
    if m := _RANGE_LOWER.match(text):
        return Range(low=float(m.group(1)), high=None)
    return Range(low=None, high=None)


_VALUE = re.compile(rf"^\s*(<=|>=|<|>|=)?\s*({_NUMBER})\s*$")


def parse_value(value_type: str, text: str, component_separator: str = "^") -> tuple[float | None, str]:
    """OBX-5 to (number, comparator). ``<5`` and ``>1000`` keep the comparator
    and use the bound; SN (``>^1000``, ``<^5``, ``^42``) likewise. Text that is
    not a number gives (None, "")."""
    if value_type == "SN":
        parts = text.split(component_separator)
        comparator = parts[0].strip()
        number = parts[1] if len(parts) > 1 else ""
        if len(parts) > 2 and parts[2].strip():
            return None, ""  # ratios and ranges (1:128, 2-5) are not one value
        match = _VALUE.match(number)
        if match is None or match.group(1):
            return None, ""
        return float(match.group(2)), "" if comparator == "=" else comparator
    match = _VALUE.match(text)
    if match is None:
        return None, ""
    comparator = match.group(1) or ""
    return float(match.group(2)), "" if comparator == "=" else comparator


class Ingredient(enum.StrEnum):
    AZATHIOPRINE = "azathioprine"
    MERCAPTOPURINE = "mercaptopurine"
    THIOGUANINE = "thioguanine"
    ALLOPURINOL = "allopurinol"
    FEBUXOSTAT = "febuxostat"


RXNORM: Mapping[str, Ingredient] = {
    "1256": Ingredient.AZATHIOPRINE,
    "103": Ingredient.MERCAPTOPURINE,
    "10485": Ingredient.THIOGUANINE,
    "519": Ingredient.ALLOPURINOL,
    "73689": Ingredient.FEBUXOSTAT,
}

_DRUG_NAMES: tuple[tuple[re.Pattern[str], Ingredient], ...] = (
    (re.compile(r"\b(?:AZATHIOPRINE|IMURAN|AZASAN)", re.I), Ingredient.AZATHIOPRINE),
    (re.compile(r"\b(?:MERCAPTOPURINE|PURINETHOL|PURIXAN|6-?MP)\b", re.I), Ingredient.MERCAPTOPURINE),
    (re.compile(r"\b(?:THIOGUANINE|TIOGUANINE|TABLOID|6-?TG)\b", re.I), Ingredient.THIOGUANINE),
    (re.compile(r"\b(?:ALLOPURINOL|ZYLOPRIM|ALOPRIM)", re.I), Ingredient.ALLOPURINOL),
    (re.compile(r"\b(?:FEBUXOSTAT|ULORIC|ADENURIC)", re.I), Ingredient.FEBUXOSTAT),
)

_RXNORM_SYSTEMS = frozenset({"RXNORM", "RXN", "RXNCUI", "RXCUI"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Terminology:
    """Site-specific code maps (from config) layered over the standard tables."""

    local_lab_codes: Mapping[str, Analyte] = field(default_factory=dict)
    drug_codes: Mapping[str, Ingredient] = field(default_factory=dict)
    thiopurines: frozenset[Ingredient] = frozenset({Ingredient.AZATHIOPRINE})

    def analyte(self, codes: tuple[tuple[str, str], ...]) -> Analyte | None:
        """First analyte among OBX-3's (code, system) pairs: identifier then
        alternate identifier. LOINC codes need system LN (or none given);
        other systems go through the site's local map."""
        for code, system in codes:
            if not code:
                continue
            system_u = system.upper()
            if system_u in ("LN", "LOINC", "") and code in LOINC:
                return LOINC[code]
            if system_u not in ("LN", "LOINC") and code in self.local_lab_codes:
                return self.local_lab_codes[code]
            if code.upper() in self.local_lab_codes:
                return self.local_lab_codes[code.upper()]
        return None

    def ingredient(self, code: str, system: str, text: str) -> Ingredient | None:
        """RxNorm code, then a site code (NDC or local, keyed as in config),
        then the drug name in the code's text or the code itself."""
        system_u = system.upper()
        if code:
            if system_u in _RXNORM_SYSTEMS and code in RXNORM:
                return RXNORM[code]
            for key in (f"{system_u}:{code}", code):
                if key in self.drug_codes:
                    return self.drug_codes[key]
        for candidate in (text, code):
            for pattern, ingredient in _DRUG_NAMES:
                if candidate and pattern.search(candidate):
                    return ingredient
        return None

    def is_thiopurine(self, ingredient: str | None) -> bool:
        return ingredient is not None and ingredient in self.thiopurines
