"""Signed pager acknowledgements: who may stop an alert's reminders.

Anyone who can publish on ``<prefix>/acks`` can acknowledge a critical alert,
which stops its reminders. With ``mqtt.acks.hmac_key_file`` set, an ack must
carry ``sig``: HMAC-SHA256, keyed with a secret the site shares with its
pager back end, over the ack's own fields as sent, in this canonical form::

    alert_id + "\\n" + by + "\\n" + at        (UTF-8, no trailing newline)

``sig`` is the MAC in hexadecimal (64 characters; either case). The strings
are the JSON values exactly as published (after JSON unescaping; ``by`` is
not trimmed, ``at`` not normalised), so a pager signs what it sends and
nothing is re-serialised. ``alert_id`` is 32 hex digits and ``at`` an ISO
8601 timestamp, neither of which can hold a newline, so the three fields
split back one way only. The README's pager guide has a worked example.

The key file holds one key per line (blank lines and ``#`` comments
ignored); each is used as its UTF-8 bytes and must be at least 32 bytes
long. Several lines let a site rotate keys: an ack signed with any of them
verifies. Verification sits at the MQTT boundary (`frames.handle_ack`):
acks written through the store (``hl7-alerts alerts ack``, the web view)
are authenticated by who may run them. Pure, apart from `read_keys`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from collections.abc import Sequence
from pathlib import Path

MIN_KEY_BYTES = 32
SIGNATURE_FIELD = "sig"


class Verdict(enum.StrEnum):
    """What an ack's signature came to (also the metric's ``outcome``)."""

    SIGNED = "signed"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    UNREADABLE = "invalid"  # not a JSON object with string fields: `alerts.parse_ack` says why


def canonical(alert_id: str, by: str, at: str) -> bytes:
    """The bytes an ack's signature covers."""
    return f"{alert_id}\n{by}\n{at}".encode()


def sign(key: bytes, alert_id: str, by: str, at: str) -> str:
    """The ``sig`` a pager sends: lowercase hex HMAC-SHA256 of `canonical`."""
    return hmac.new(key, canonical(alert_id, by, at), hashlib.sha256).hexdigest()


def verify(data: bytes, keys: Sequence[bytes]) -> Verdict:
    """Check the ``sig`` of an ack as published (raw bytes) against ``keys``.

    Compares in constant time with each key; an ack that is not a JSON
    object with string ``alert_id``, ``by`` and ``at`` is `Verdict.UNREADABLE`
    (the ack reader then names what is wrong)."""
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return Verdict.UNREADABLE
    if not isinstance(body, dict):
        return Verdict.UNREADABLE
    fields = [body.get(name) for name in ("alert_id", "by", "at")]
    if not all(isinstance(f, str) for f in fields):
        return Verdict.UNREADABLE
    given = body.get(SIGNATURE_FIELD)
    if given is None:
        return Verdict.UNSIGNED
    if not isinstance(given, str) or len(given) != 64:
        return Verdict.BAD_SIGNATURE
    try:
        mac = bytes.fromhex(given)
    except ValueError:
        return Verdict.BAD_SIGNATURE
    message = canonical(*fields)  # type: ignore[arg-type]  # all str, checked above
    # Every key is tried, so the time taken does not say which one matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(hmac.new(key, message, hashlib.sha256).digest(), mac)
    return Verdict.SIGNED if matched else Verdict.BAD_SIGNATURE


def parse_keys(text: str) -> tuple[bytes, ...]:
    """The keys in a key file's text; ValueError says what is wrong (never a key)."""
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key = stripped.encode()
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(
                f"line {number}: a key must be at least {MIN_KEY_BYTES} bytes "
                "(make one with: openssl rand -hex 32)"
            )
        keys.append(key)
    if not keys:
        raise ValueError("holds no key (one per line; make one with: openssl rand -hex 32)")
    return tuple(keys)


def read_keys(path: Path) -> tuple[bytes, ...]:
    """The keys in the file at ``path``; ValueError says what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    try:
        return parse_keys(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
