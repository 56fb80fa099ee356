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

    @property
    def label(self) -> str:
        """The analyte as clinicians write it ("total bilirubin"): for text;
        the value stays the payload's and the store's identifier."""
        return _LABELS.get(self, self.value)


_LABELS = {
    Analyte.BILI_TOTAL: "total bilirubin",
    Analyte.BILI_DIRECT: "direct bilirubin",
}


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
# against a range given in its own units. The spellings are the ones senders
# use (CLINICAL.md decision 15); case, spaces and a temperature suffix
# (`U/L@37C`) do not matter.
_ENZYME = {
    "u/l": 1.0, "iu/l": 1.0, "units/l": 1.0, "unit/l": 1.0, "iu": 1.0,
    "ukat/l": 60.0, "µkat/l": 60.0,
}
_BILI = {"mg/dl": 1.0, "umol/l": 1 / 17.1, "µmol/l": 1 / 17.1}
_ALBUMIN = {"g/dl": 1.0, "g/l": 0.1}
_THOUSANDS_PER_UL = ("10*3/ul", "10^3/ul", "10e3/ul", "k/ul", "thou/ul", "10*3/mm3", "10^3/mm3")
_GIGA_PER_L = ("10*9/l", "10^9/l", "10e9/l", "g/l", "giga/l")
_COUNT = {
    **dict.fromkeys(_THOUSANDS_PER_UL + _GIGA_PER_L, 1.0),
    **{"x" + unit: 1.0 for unit in _THOUSANDS_PER_UL + _GIGA_PER_L if unit[0].isdigit()},
    "/ul": 0.001,
    "cells/ul": 0.001,
    "/mm3": 0.001,
    "cells/mm3": 0.001,
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

# No unit a lab writes is longer; anything longer converts to nothing.
MAX_UNIT_CHARS = 32
_TEMPERATURE = re.compile(r"@\d+(?:\.\d+)?°?c")


def _unit_key(unit: str) -> str:
    key = unit.strip().lower().replace(" ", "").replace("μ", "µ").replace("×", "x")
    return _TEMPERATURE.sub("", key)


def conversion_factor(analyte: Analyte, unit: str) -> float | None:
    """What a value of ``analyte`` in ``unit`` is multiplied by to be in the
    analyte's canonical unit, or None when the unit is not one we know."""
    if len(unit) > MAX_UNIT_CHARS:
        return None
    return _CONVERSIONS.get(analyte, {}).get(_unit_key(unit))


def to_canonical(analyte: Analyte, value: float, unit: str) -> float | None:
    """Convert ``value`` in ``unit`` to the analyte's canonical unit, or None."""
    factor = conversion_factor(analyte, unit)
    return None if factor is None else value * factor


# ---------------------------------------------------------------------------
# Values and reference ranges as senders write them (CLINICAL.md decision 15)
#
# Every reader here is linear in its input and bounds what it tries: OBX-5 of
# 12,000 spaces then "x" once made a backtracking regex hold the event loop
# for seconds. "A value longer than any number is not a number."

MAX_VALUE_CHARS = 32
"""OBX-5 longer than this (comparator and padding included) is not read as a
number: no lab value needs more."""
MAX_RANGE_CHARS = 80
"""OBX-7 longer than this is not read as a range (sex-specific ranges with
labels fit easily)."""

# Each alternative is a fixed shape with no nested repetition: a full match of
# a short string is linear, and the inputs are bounded before they get here.
_NUMBER = re.compile(r"(?:\d+(?:\.\d+)?|\.\d+)")
_SIGNED = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)")
_VALUE_COMPARATORS = ("<=", ">=", "<", ">", "=")
_TEXT_NUMBER_TYPES = frozenset({"NM", "ST", "TX", ""})


def _number(text: str) -> float | None:
    """``text`` (already stripped) as a decimal number, or None."""
    return float(text) if _SIGNED.fullmatch(text) else None


def parse_value(value_type: str, text: str, component_separator: str = "^") -> tuple[float | None, str]:
    """OBX-5 to (number, comparator). ``<5`` and ``>1000`` keep the comparator
    and use the bound; SN (``>^1000``, ``<^5``, ``^42``) likewise. NM, and ST
    or TX that is wholly a number with an optional comparator (``<``, ``>``,
    ``<=``, ``>=``), are read as a number. Anything else, or anything longer
    than `MAX_VALUE_CHARS`, gives (None, "")."""
    if len(text) > MAX_VALUE_CHARS:
        return None, ""
    if value_type == "SN":
        parts = text.split(component_separator)
        comparator = parts[0].strip()
        if len(parts) > 2 and parts[2].strip():
            return None, ""  # ratios and ranges (1:128, 2-5) are not one value
        if comparator not in ("", *_VALUE_COMPARATORS):
            return None, ""
        number = _number(parts[1].strip()) if len(parts) > 1 else None
        if number is None:
            return None, ""
        return number, "" if comparator == "=" else comparator
    if value_type not in _TEXT_NUMBER_TYPES:
        return None, ""
    rest = text.strip()
    comparator = next((c for c in _VALUE_COMPARATORS if rest.startswith(c)), "")
    number = _number(rest[len(comparator):].lstrip())
    if number is None:
        return None, ""
    return number, "" if comparator == "=" else comparator


def reported_decimals(text: str) -> int:
    """How many decimals a value was reported with (``"0.80"`` → 2): counts
    are compared at the precision they were reported (decision 17)."""
    _, dot, tail = text.strip().partition(".")
    if not dot:
        return 0
    digits = 0
    for char in tail:
        if not char.isdigit():
            break
        digits += 1
    return digits


@dataclass(frozen=True, slots=True, kw_only=True)
class Range:
    low: float | None
    high: float | None


NO_RANGE = Range(low=None, high=None)

# Tokens of a reference range: numbers, words (sex labels, "to", units),
# comparators, dashes and separators. One pass of `finditer`; every token is
# a fixed shape, so the scan is linear.
_RANGE_TOKENS = re.compile(r"\d+(?:\.\d+)?|\.\d+|[A-Za-z]+|<=|>=|[<>≤≥=:;,()/–—-]|\S")
_SEXES = {"m": "M", "male": "M", "males": "M", "men": "M", "f": "F", "female": "F", "females": "F",
          "women": "F"}
_DASHES = frozenset({"-", "–", "—", "to"})
_UPPER = frozenset({"<", "<=", "≤"})
_LOWER = frozenset({">", ">=", "≥"})


def _range_at(tokens: list[str], i: int) -> tuple[Range, int] | None:
    """The simple range starting at token ``i`` (``7-56``, ``7 to 56``,
    ``<40``, ``>3.5``) and the index after it, or None."""
    first = tokens[i] if i < len(tokens) else ""
    if first in _UPPER or first in _LOWER:
        if i + 1 < len(tokens) and _NUMBER.fullmatch(tokens[i + 1]):
            bound = float(tokens[i + 1])
            rng = Range(low=None, high=bound) if first in _UPPER else Range(low=bound, high=None)
            return rng, i + 2
        return None
    if (
        _NUMBER.fullmatch(first)
        and i + 2 < len(tokens)
        and tokens[i + 1].lower() in _DASHES
        and _NUMBER.fullmatch(tokens[i + 2])
    ):
        return Range(low=float(first), high=float(tokens[i + 2])), i + 3
    return None


def _sex_ranges(tokens: list[str]) -> dict[str, Range]:
    """``M:10-50 F:7-35``, ``M 10-50; F 7-35``, ``Male: 10-50 Female: 7-35``:
    each sex label, an optional colon, a simple range; separators between."""
    found: dict[str, Range] = {}
    i = 0
    while i < len(tokens):
        sex = _SEXES.get(tokens[i].lower())
        if sex is None:
            if tokens[i] in (";", ",", "/") or (found and tokens[i].isalpha()):
                i += 1  # a separator, or a unit word after a range
                continue
            break
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        hit = _range_at(tokens, i)
        if hit is None:
            break
        found.setdefault(sex, hit[0])
        i = hit[1]
    return found


def parse_range(text: str, sex: str = "") -> Range:
    """OBX-7 in the forms CLINICAL.md lists: ``7-56``, ``7 - 56``, ``<40``,
    ``0-40 U/L``, ``>3.5``, and sex-specific ranges (``M:10-50 F:7-35``,
    ``M 10-50; F 7-35``, ``Male: 10-50 Female: 7-35``) read for ``sex``
    (PID-8: ``M`` or ``F``; a range that gives only the other sex's limits
    is no range for this patient). With another or no sex, each limit is the
    one that flags sooner: the lower upper limit and the higher lower limit.
    Anything else, or anything longer than `MAX_RANGE_CHARS`, is no range."""
    text = text.strip()
    if not text or len(text) > MAX_RANGE_CHARS:
        return NO_RANGE  # checked before the cache: only short text is ever kept
    return _parse_range(text, sex)


@lru_cache(maxsize=1024)  # a feed sends the same few ranges over and over; Range is immutable
def _parse_range(text: str, sex: str) -> Range:
    tokens = _RANGE_TOKENS.findall(text)
    if tokens[0].lower() in _SEXES:
        by_sex = _sex_ranges(tokens)
        if not by_sex:
            return NO_RANGE
        if sex in by_sex:
            return by_sex[sex]
        if sex in ("M", "F"):
            return NO_RANGE  # the other sex's limits are not this patient's: the default applies
        highs = [r.high for r in by_sex.values() if r.high is not None]
        lows = [r.low for r in by_sex.values() if r.low is not None]
        return Range(low=max(lows) if lows else None, high=min(highs) if highs else None)
    hit = _range_at(tokens, 0)
    return NO_RANGE if hit is None else hit[0]


class Ingredient(enum.StrEnum):
    AZATHIOPRINE = "azathioprine"
    MERCAPTOPURINE = "mercaptopurine"
    THIOGUANINE = "thioguanine"
    ALLOPURINOL = "allopurinol"
    FEBUXOSTAT = "febuxostat"


XANTHINE_OXIDASE_SUBSTRATES = frozenset({Ingredient.AZATHIOPRINE.value, Ingredient.MERCAPTOPURINE.value})
"""The thiopurines xanthine oxidase breaks down (not thioguanine): allopurinol
and febuxostat interact with these only."""

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

MAX_DRUG_TEXT_CHARS = 250
"""How much of a drug's code and text is searched for a drug name: a CWE
text is at most 199 characters (HL7 v2.5), and every sender puts the name
first. Text beyond it is not searched."""

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
        for candidate in (text[:MAX_DRUG_TEXT_CHARS], code[:MAX_DRUG_TEXT_CHARS]):
            for pattern, ingredient in _DRUG_NAMES:
                if candidate and pattern.search(candidate):
                    return ingredient
        return None

    def is_thiopurine(self, ingredient: str | None) -> bool:
        return ingredient is not None and ingredient in self.thiopurines
