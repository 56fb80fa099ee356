"""Strict JSON: the one encoding of everything the daemon publishes or prints.

RFC 8259 has no NaN or Infinity, and most pager back ends (JavaScript's
``JSON.parse``, Go's ``encoding/json``, Jackson by default) reject a payload
that carries them, so one unreadable number would cost the whole alert. Every
payload is encoded here with ``allow_nan=False``; the values that go into it
are made finite before (`finite`): a number no float can hold is not a number.
Reading stored payloads (`loads`) turns the non-standard constants a store
written by an older version may hold into null, so such a row can still be
sent. Pure: json and math only.
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(value: Any, *, indent: int | None = None) -> str:
    """``value`` as strict JSON text (UTF-8 characters kept, compact unless
    ``indent``). A non-finite number raises ValueError: it is a defect of the
    caller, who should have passed it through `finite`."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=separators, indent=indent)


def finite(value: float | None) -> float | None:
    """``value`` when it is a finite number, else None."""
    if value is None or not math.isfinite(value):
        return None
    return value


def _not_a_number(_: str) -> None:
    return None


def loads(text: str | bytes) -> Any:
    """JSON text to Python values, reading ``NaN``, ``Infinity`` and
    ``-Infinity`` (never in strict JSON, but in payloads stored before this
    module existed) as None, and numbers too large for a float likewise."""
    return json.loads(text, parse_constant=_not_a_number, parse_float=_float)


def _float(text: str) -> float | None:
    return finite(float(text))
