"""HL7 DTM values to timezone-aware datetimes, and back to ISO text.

Every datetime inside hl7-alerts is aware, so that results, orders and alerts
compare without surprises. A DTM with an offset (``20261020080000+0200``) keeps
it; one without takes the site's configured zone (``hl7.timezone``). Pure: no
wall clock here, callers pass ``now`` in.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache

_DTM = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<frac>\d{1,4}))?(?P<tz>[+-]\d{4})?$"
)


_PLAUSIBLE_YEARS = (1900, 2199)

MAX_DTM_CHARS = 24
"""The longest DTM (``YYYYMMDDHHMMSS.SSSS+ZZZZ``): longer text is not a time,
and is neither matched nor cached (a sender's 1 MB OBX-14 must not sit in
the cache)."""


def parse_dtm(text: str, tz: tzinfo) -> datetime | None:
    """Parse an HL7 DTM/TS (``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``).

    Returns None for empty or malformed text, and for a year outside
    1900–2199: a bad timestamp is not a reason to lose the rest of a message.
    The TS type's second component (precision) is ignored by taking only the
    first component.
    """
    text = text.strip()
    if not text or len(text) > MAX_DTM_CHARS:
        return None
    return _parse_dtm(text, tz)


# A message repeats its timestamps (every OBX-14 of a panel, OBR-7, MSH-7):
# the values are immutable, so a small cache saves the regex and the datetime.
@lru_cache(maxsize=512)
def _parse_dtm(text: str, tz: tzinfo) -> datetime | None:
    match = _DTM.match(text)
    if match is None:
        return None
    g = match.groupdict()
    if not _PLAUSIBLE_YEARS[0] <= int(g["y"]) <= _PLAUSIBLE_YEARS[1]:
        # Year 0001 or 9999 is a sender's placeholder, not a time; taken at its
        # word it overflows the date arithmetic of the rules' time windows.
        return None
    try:
        zone: tzinfo = tz
        if g["tz"]:
            sign = 1 if g["tz"][0] == "+" else -1
            hours, minutes = int(g["tz"][1:3]), int(g["tz"][3:5])
            zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
        micro = int((g["frac"] or "0").ljust(6, "0")[:6])
        return datetime(
            int(g["y"]),
            int(g["mo"] or 1),
            int(g["d"] or 1),
            int(g["h"] or 0),
            int(g["mi"] or 0),
            int(g["s"] or 0),
            micro,
            tzinfo=zone,
        )
    except ValueError:
        return None


def to_iso(value: datetime | None) -> str | None:
    """ISO 8601 text for payloads and storage; None stays None."""
    return None if value is None else value.isoformat()


def from_iso(text: str | None) -> datetime | None:
    """Inverse of `to_iso` for values the store wrote."""
    return None if not text else datetime.fromisoformat(text)


def format_dtm(value: datetime) -> str:
    """An HL7 DTM with offset, for the ACK's MSH-7."""
    return value.strftime("%Y%m%d%H%M%S%z")


_ISO_UTC = re.compile(r"\+00:00$")


def utc_stamp(value: datetime) -> str:
    """``2026-11-24T20:00:00Z`` for ``published_at`` and audit rows."""
    return _ISO_UTC.sub("Z", value.astimezone(UTC).isoformat(timespec="seconds"))


UTC_ZONE = UTC
