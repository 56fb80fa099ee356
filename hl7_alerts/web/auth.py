"""Who is asking: local passwords, sessions, single sign-on through a proxy.

- **Passwords** are argon2id hashes (argon2-cffi's defaults, its parameters
  kept in each hash, so they can be raised later); a name without a user is
  checked against a dummy hash, so a wrong name costs what a wrong password
  does and timing does not tell which names exist.
- **Sessions** live in the store: the cookie holds a random token, the store
  only its SHA-256, so reading the database does not give a way in. A
  session ends after ``web.session_idle`` unused or ``web.session_max``
  after sign-in, on sign-out, and when its user is removed or gets a new
  password. Each has its own CSRF token for the forms.
- **Proxy SSO**: ``web.trusted_proxy.header`` names the user only on a
  request whose peer is in ``web.trusted_proxy.addresses``; from anywhere
  else the header is ignored (and logged, without its value).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from functools import lru_cache

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from hl7_alerts.config.sections import TrustedProxyConfig
from hl7_alerts.store.base import WebSession

log = structlog.get_logger("hl7_alerts.web")

COOKIE = "hl7alerts_session"
MAX_NAME = 200  # user names from a form or a proxy header: bounded
MIN_PASSWORD = 10


class PasswordRejected(ValueError):
    """A new password that is not acceptable; the message says why."""


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher().hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise PasswordRejected(f"must be at least {MIN_PASSWORD} characters")
    return _hasher().hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (None: no such user, still
    checked against a dummy hash so it takes as long)."""
    try:
        return _hasher().verify(stored or _dummy_hash(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Compare secrets in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())


def new_session(username: str, via: str, now: float) -> tuple[str, WebSession]:
    """A fresh session: the token for the cookie, and what the store keeps."""
    token = new_token()
    return token, WebSession(
        token_hash=token_hash(token),
        username=username,
        via=via,
        csrf=new_token(),
        created_ts=now,
        seen_ts=now,
    )


def expired(session: WebSession, now: float, *, idle: float, lifetime: float) -> bool:
    return now - session.seen_ts > idle or now - session.created_ts > lifetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Viewer:
    """The signed-in person a request is from, and where it came from."""

    username: str
    via: str  # "password" or "proxy"
    peer: str
    session: WebSession


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def trusted_peer(host: str, proxy: TrustedProxyConfig) -> bool:
    address = _address(host)
    return address is not None and any(address in net for net in proxy.networks())


def proxy_user(headers: dict[str, str], host: str, proxy: TrustedProxyConfig) -> str | None:
    """The user the trusted proxy names, or None. The header from a peer
    outside ``web.trusted_proxy.addresses`` is ignored and logged."""
    if proxy.header is None:
        return None
    value = headers.get(proxy.header.lower())
    if value is None:
        return None
    if not trusted_peer(host, proxy):
        log.warning("web_proxy_header_ignored", peer=host, header=proxy.header)
        return None
    name = value.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        log.warning("web_proxy_header_unusable", peer=host, header=proxy.header)
        return None
    return name


def peer_of(host: str, headers: dict[str, str], proxy: TrustedProxyConfig) -> str:
    """Where a request came from, for the access audit: behind a trusted
    proxy, the client it names in X-Forwarded-For too."""
    forwarded = headers.get("x-forwarded-for")
    if forwarded and trusted_peer(host, proxy):
        client = forwarded.split(",")[-1].strip()[:64]
        return f"{client} via {host}"
    return host
