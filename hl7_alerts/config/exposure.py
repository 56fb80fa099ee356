"""What a config leaves open on the network, said before the daemon runs.

Each `Exposure` is a setting that works but leaves patient data or control
of the alerts to whoever is on the network: MLLP beyond loopback with
neither TLS nor an allowlist, a broker or PostgreSQL over the network
without TLS, metrics beyond loopback, pager acks that anyone on the broker
could forge. ``hl7-alerts config check`` prints them as warnings (the file
is still valid: a site may have reasons, such as an IPsec tunnel, a
loopback proxy or a broker ACL), and ``serve`` logs each at start
(``config_exposure``), so the journal says it too. Reads no file but the
ack key file's mode.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from hl7_alerts.config.model import Config

# libpq's sslmode values that make the connection TLS or fail.
_TLS_SSLMODES = frozenset({"require", "verify-ca", "verify-full"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Exposure:
    """One warning: the key that causes it, and what it leaves open."""

    key: str
    warning: str

    def __str__(self) -> str:
        return f"{self.key}: {self.warning}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only. An empty host, ``0.0.0.0`` and
    ``::`` listen everywhere; a name other than localhost is taken to be
    on the network (what it resolves to can change)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposures(config: Config, environ: Mapping[str, str] | None = None) -> list[Exposure]:
    """Every exposure of ``config``, in the order of the file's sections.
    ``environ`` (default: this process's) supplies ``PGSSLMODE`` when the DSN
    does not say."""
    env = os.environ if environ is None else environ
    return [*_mllp(config), *_store(config, env), *_mqtt(config), *_metrics(config), *_web(config)]


def _mllp(config: Config) -> list[Exposure]:
    mllp = config.mllp
    if is_loopback(mllp.host):
        return []
    everyone = [str(n) for n in mllp.networks() if n.prefixlen == 0]
    if everyone:
        return [Exposure(
            key="mllp.allow",
            warning=f"admits every address ({', '.join(everyone)}): it is no allowlist; name the "
            "interface engines' networks",
        )] + ([] if mllp.tls.cert_file is not None else [_mllp_open(config)])
    if mllp.tls.cert_file is None and not mllp.allow:
        return [_mllp_open(config)]
    return []


def _mllp_open(config: Config) -> Exposure:
    host = config.mllp.host or "every interface"
    return Exposure(
        key="mllp.host",
        warning=f"MLLP listens on {host} (beyond loopback) with neither TLS (mllp.tls) nor an "
        "allowlist (mllp.allow): any host that reaches the port can send results, and they "
        "cross the network in the clear",
    )


def _store(config: Config, env: Mapping[str, str]) -> list[Exposure]:
    dsn = config.store.dsn
    if dsn is None:
        return []
    url = urlsplit(dsn)
    query = parse_qs(url.query)
    hosts = [h for h in (query.get("host", [""])[-1] or (url.hostname or "")).split(",") if h]
    remote = [h for h in hosts if not h.startswith("/") and not is_loopback(h)]
    if not remote:
        return []  # a Unix socket or loopback: never on the wire
    sslmode = (query.get("sslmode", [""])[-1] or env.get("PGSSLMODE", "")).lower()
    if sslmode in _TLS_SSLMODES:
        return []
    said = f"sslmode={sslmode}" if sslmode else "no sslmode (libpq's default, prefer, falls back to plain)"
    return [Exposure(
        key="store.dsn",
        warning=f"PostgreSQL on {', '.join(remote)} over the network with {said}: patient data "
        "and the password may cross the network in the clear; add sslmode=verify-full",
    )]


def _mqtt(config: Config) -> list[Exposure]:
    mqtt = config.mqtt
    found = []
    if mqtt.tls is None and not is_loopback(mqtt.host):
        password = " and mqtt.password is sent in the clear" if mqtt.password else ""
        found.append(Exposure(
            key="mqtt.host",
            warning=f"the broker at {mqtt.host} is reached without TLS (mqtt.tls): alerts (with "
            f"patient identifiers) and pager acks cross the network in the clear{password}",
        ))
    key_file = mqtt.acks.hmac_key_file
    if key_file is None:
        found.append(Exposure(
            key="mqtt.acks.hmac_key_file",
            warning=f"not set: pager acks are not signed, so make sure the broker restricts who may "
            f"publish on {mqtt.topic_prefix}/acks (docs/mosquitto-acl.conf), or anyone on the "
            "broker can acknowledge an alert and stop its reminders",
        ))
    else:
        try:
            mode = stat.S_IMODE(key_file.stat().st_mode)
        except OSError:
            mode = 0  # loading the config has already said it cannot be read
        if mode & 0o007:
            found.append(Exposure(
                key="mqtt.acks.hmac_key_file",
                warning=f"{key_file} is readable by every local user (mode {mode:04o}): "
                "chmod 0640 and chown root:hl7-alerts",
            ))
    return found


def _metrics(config: Config) -> list[Exposure]:
    metrics = config.metrics
    if not metrics.enabled or is_loopback(metrics.host):
        return []
    return [Exposure(
        key="metrics.host",
        warning=f"/metrics and /healthz are served on {metrics.host} (beyond loopback), without "
        "authentication: keep the port to the monitoring network (firewall) or bind 127.0.0.1",
    )]


def _web(config: Config) -> list[Exposure]:
    web = config.web
    if is_loopback(web.host) or web.tls.cert_file is not None:
        return []
    return [Exposure(
        key="web.host",
        warning=f"the web view listens on {web.host} (beyond loopback) without TLS (web.tls): "
        "patient data and session cookies cross the network in the clear; serve it behind a "
        "TLS reverse proxy on loopback, or set web.tls",
    )]
