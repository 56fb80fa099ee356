"""The sections of config.yaml, one pydantic model each, with their defaults.

Each model forbids unknown keys (a typo never silently falls back to a
default) and validates its own values; what spans sections is `Config`'s
(`model.py`). Defaults are the embedded ones `config.yaml` shows.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from hl7_alerts.alerts import ReminderPolicy
from hl7_alerts.model import Severity
from hl7_alerts.rules.monitoring import MonitoringSettings
from hl7_alerts.terminology import Analyte, Ingredient


class Section(BaseModel):
    """A config section: unknown keys are errors, values never change after load.
    YAML's ``.inf`` and ``.nan`` are not numbers here either: a threshold or a
    range must be one a payload can carry (`strictjson`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Port = Annotated[int, Field(ge=0, le=65535)]


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network (use CIDR like 10.1.0.0/16)") from None
    return value


NetworkText = Annotated[str, AfterValidator(_network)]


class ListenerTlsConfig(Section):
    """A listener's TLS (``mllp.tls``, ``web.tls``): ``cert_file`` and
    ``key_file`` (PEM) turn it on; ``ca_file`` also requires every client to
    present a certificate signed by it (mutual TLS). The key names are the
    ones ``mqtt.tls`` uses for the broker connection: one set everywhere."""

    # The section's dotted name, for messages.
    where: ClassVar[str] = "tls"

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _pairs(self) -> ListenerTlsConfig:
        w = self.where
        if (self.cert_file is None) != (self.key_file is None):
            missing = f"{w}.key_file" if self.key_file is None else f"{w}.cert_file"
            raise ValueError(f"{missing} is required: {w}.cert_file and {w}.key_file go together")
        if self.ca_file is not None and self.cert_file is None:
            raise ValueError(f"{w}.ca_file needs {w}.cert_file and {w}.key_file (TLS) to be set")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None and self.key_file is not None


class TlsConfig(ListenerTlsConfig):
    """MLLP over TLS (``mllp.tls``)."""

    where: ClassVar[str] = "mllp.tls"

    handshake_timeout_seconds: float = Field(default=10.0, gt=0)


class MllpConfig(Section):
    host: str = "127.0.0.1"
    port: Port = 2575
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    # A new connection that sends nothing for this long is closed: an interface
    # engine sends at once, and a silent one holds a slot for nothing.
    first_byte_timeout_seconds: float = Field(default=10.0, gt=0)
    idle_timeout_seconds: float = Field(default=300.0, gt=0)
    read_timeout_seconds: float = Field(default=60.0, gt=0)
    max_connections: int = Field(default=64, ge=1)
    # One peer address's share of max_connections: a flood from one host
    # cannot take the slots the interface engine needs.
    max_connections_per_peer: int = Field(default=16, ge=1)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    allow: tuple[NetworkText, ...] = ()
    tls: TlsConfig = TlsConfig()

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.allow)


class StoreConfig(Section):
    """SQLite at ``path`` (one daemon), unless ``dsn`` names a PostgreSQL
    database (several daemons may share it)."""

    path: Path = Path("data/hl7-alerts.sqlite3")
    dsn: str | None = None
    # PostgreSQL: a daemon's claim on outbox rows lasts this long unrenewed;
    # when it dies, another daemon publishes its rows once the lease runs out.
    lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    # PostgreSQL: connections writing for this daemon, each with its own
    # grouped commits (a writer mostly waits for the server). SQLite: one.
    writers: int = Field(default=2, ge=1, le=16)

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "must be a PostgreSQL URL (postgresql://user@host:5432/dbname); "
                "leave it out to use SQLite at store.path"
            )
        return value


class MqttTlsConfig(Section):
    """TLS to the broker: a CA to verify it, and a client certificate if it asks."""

    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True


class MqttAcksConfig(Section):
    """Pagers' acknowledgements on ``<prefix>/acks``: with a key file, each
    must be signed (`acksig`); unsigned and badly signed ones are refused."""

    hmac_key_file: Path | None = None


class MqttConfig(Section):
    host: str = "127.0.0.1"
    port: Port = 1883
    topic_prefix: str = "hl7alerts"
    client_id: str = "hl7-alerts"
    username: str | None = None
    password: str | None = None
    keepalive_seconds: int = Field(default=30, ge=5)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    # MQTT v5 session: the broker keeps our session (the acks subscription and
    # what is queued on it) this long across reconnects and restarts.
    session_expiry_seconds: int = Field(default=3600, ge=0, le=0xFFFFFFFF)
    # With store.dsn (several daemons): pager acks on an MQTT v5 shared
    # subscription, each ack to one daemon. Brokers keep routing a share of
    # them to a crashed daemon's session until it restarts; false has every
    # daemon read every ack instead (still recorded once).
    shared_acks: bool = True
    # Message expiry on alert publishes: a pager offline longer never sees it.
    message_expiry_seconds: int | None = Field(default=86400, ge=1, le=0xFFFFFFFF)
    # Publishes awaiting PUBACK at once; the broker's Receive Maximum caps it further.
    max_inflight: int = Field(default=20, ge=1, le=65535)
    publish_timeout_seconds: float = Field(default=10.0, gt=0)
    tls: MqttTlsConfig | None = None
    acks: MqttAcksConfig = MqttAcksConfig()

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "#+") or value.startswith("/") or value.endswith("/"):
            raise ValueError("must be a non-empty MQTT topic without wildcards or leading/trailing '/'")
        return value


class Hl7Config(Section):
    timezone: str = "UTC"
    fallback_charset: str = "cp1252"
    versions: tuple[str, ...] = ("2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8")
    processing_ids: tuple[str, ...] = ("P", "T", "D")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/London)") from None
        return value

    @field_validator("fallback_charset")
    @classmethod
    def _charset(cls, value: str) -> str:
        try:
            b"x".decode(value)
        except LookupError:
            raise ValueError(f"unknown charset {value!r}") from None
        return value


class PatientConfig(Section):
    """Which PID-3 (and MRG-1) repetition keys a patient (CLINICAL.md
    decisions 7 and 12)."""

    # One type, or several in order of preference (`[MR, PI]`).
    id_type: str | tuple[str, ...] = "MR"
    authority: str | None = None
    # accept: a repetition with an empty PID-3.5 counts as the (first)
    # configured type when no typed one is there; reject: it never matches.
    untyped_ids: Literal["accept", "reject"] = "accept"

    @field_validator("id_type")
    @classmethod
    def _types(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        types = (value,) if isinstance(value, str) else value
        if not types or any(not t.strip() for t in types):
            raise ValueError("must be an identifier type (MR) or a non-empty list of them ([MR, PI])")
        if len({t.strip().upper() for t in types}) != len(types):
            raise ValueError("lists an identifier type twice")
        return value

    @property
    def id_types(self) -> tuple[str, ...]:
        """The configured types, upper case, most preferred first."""
        types = (self.id_type,) if isinstance(self.id_type, str) else self.id_type
        return tuple(t.strip().upper() for t in types)


class OrdersConfig(Section):
    """Orders from a pharmacy feed: an order opened by dispenses with no
    order on file (RDS^O13, decision 14) lapses this many days after its
    last dispense."""

    dispense_lapse_days: int = Field(default=90, ge=1)


class TerminologyConfig(Section):
    thiopurines: tuple[Ingredient, ...] = (Ingredient.AZATHIOPRINE,)
    lab_codes: dict[str, Analyte] = Field(
        default_factory=lambda: {"TPMT": Analyte.TPMT, "NUDT15": Analyte.NUDT15}
    )
    drug_codes: dict[str, Ingredient] = Field(default_factory=dict)


class RangeConfig(Section):
    low: float | None = None
    high: float | None = None
    female: tuple[float | None, float | None] | None = None
    male: tuple[float | None, float | None] | None = None


_MONITORING = MonitoringSettings()


class MonitoringConfig(Section):
    """`aza.monitoring.overdue`: the liver-test schedule after a thiopurine
    starts (durations: s, m, h, d or seconds)."""

    # Defaults are the pure settings' own, so the two cannot drift apart.
    enabled: bool = _MONITORING.enabled
    weekly_until: timedelta = _MONITORING.weekly_until
    weekly_interval: timedelta = _MONITORING.weekly_interval
    weekly_grace: timedelta = _MONITORING.weekly_grace
    twice_monthly_until: timedelta = _MONITORING.twice_monthly_until
    twice_monthly_interval: timedelta = _MONITORING.twice_monthly_interval
    twice_monthly_grace: timedelta = _MONITORING.twice_monthly_grace
    monthly_interval: timedelta = _MONITORING.monthly_interval
    monthly_grace: timedelta = _MONITORING.monthly_grace
    liver_analytes: tuple[Analyte, ...] = tuple(Analyte(a) for a in sorted(_MONITORING.liver_analytes))

    @field_validator(
        "weekly_until", "weekly_interval", "weekly_grace", "twice_monthly_until", "twice_monthly_interval",
        "twice_monthly_grace", "monthly_interval", "monthly_grace", mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        return parse_duration(value)

    @model_validator(mode="after")
    def _phases(self) -> MonitoringConfig:
        if self.twice_monthly_until < self.weekly_until:
            raise ValueError("twice_monthly_until must not be before weekly_until")
        if not self.liver_analytes:
            raise ValueError("liver_analytes must name at least one analyte")
        return self

    def settings(self) -> MonitoringSettings:
        return MonitoringSettings(
            enabled=self.enabled,
            weekly_until=self.weekly_until,
            weekly_interval=self.weekly_interval,
            weekly_grace=self.weekly_grace,
            twice_monthly_until=self.twice_monthly_until,
            twice_monthly_interval=self.twice_monthly_interval,
            twice_monthly_grace=self.twice_monthly_grace,
            monthly_interval=self.monthly_interval,
            monthly_grace=self.monthly_grace,
            liver_analytes=frozenset(str(a) for a in self.liver_analytes),
        )


class RulesConfig(Section):
    hepatotoxicity_x_uln: float = Field(default=3.0, gt=1)
    hys_law_bilirubin_x_uln: float = Field(default=2.0, gt=1)
    hys_law_window_hours: float = Field(default=48.0, ge=0)
    cholestasis_alp_x_uln: float = Field(default=2.0, gt=1)
    bilirubin_x_uln: float = Field(default=2.0, gt=1)
    rechallenge_days: int = Field(default=30, ge=0)
    dose_change_hours: float = Field(default=24.0, ge=0)
    post_stop_days: int = Field(default=90, ge=0)
    exposure_days: int = Field(default=30, ge=0)
    follow_up_days: int = Field(default=90, ge=0)
    late_order_days: int = Field(default=30, ge=0)
    long_running_days: int = Field(default=30, ge=0)
    synthetic_inr_above: float = Field(default=1.5, gt=0)
    wbc_below: float = Field(default=3.5, gt=0)
    neutrophils_below: float = Field(default=1.6, gt=0)
    platelets_below: float = Field(default=140.0, gt=0)
    neutrophils_critical_below: float = Field(default=1.0, gt=0)
    platelets_critical_below: float = Field(default=50.0, gt=0)
    tpmt_activity_poor_below: float | None = Field(default=None, gt=0)
    tpmt_activity_intermediate_below: float | None = Field(default=None, gt=0)
    interacting_drugs: dict[Ingredient, Severity] = Field(
        default_factory=lambda: {
            Ingredient.ALLOPURINOL: Severity.HIGH,
            Ingredient.FEBUXOSTAT: Severity.CRITICAL,
        }
    )
    ranges: dict[Analyte, RangeConfig] = Field(default_factory=dict)
    history_days: int = Field(default=400, ge=1)
    monitoring: MonitoringConfig = MonitoringConfig()


class PhiConfig(Section):
    include_name: bool = False
    include_birth_date: bool = False


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> timedelta:
    """``15m``, ``90s``, ``1h``, ``2d`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a duration like 15m, 90s, 1h or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration (use 15m, 90s, 1h, 2d or seconds)")
        seconds = float(match[1]) * _UNIT_SECONDS[match[2] or "s"]
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return timedelta(seconds=seconds)


class AlertsConfig(Section):
    phi: PhiConfig = PhiConfig()
    # Unacknowledged alerts of these severities are re-sent as `reminder`.
    reminder_after: timedelta = timedelta(minutes=15)
    reminder_max: int = Field(default=3, ge=0)
    reminder_severities: tuple[Severity, ...] = (Severity.CRITICAL, Severity.HIGH)

    @field_validator("reminder_after", mode="before")
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        return parse_duration(value)

    def reminder_policy(self) -> ReminderPolicy:
        return ReminderPolicy(
            after_seconds=self.reminder_after.total_seconds(),
            max_reminders=self.reminder_max,
            severities=frozenset(self.reminder_severities),
        )


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class MetricsConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9464


class HealthConfig(Section):
    max_outbox_age_seconds: float = Field(default=300.0, gt=0)
    store_probe_timeout_seconds: float = Field(default=5.0, gt=0)


class RetentionConfig(Section):
    days: int = Field(default=400, ge=1)
    interval_hours: float = Field(default=24.0, gt=0)
    # Rejected messages keep the raw frame a sender got AE/AR for: kept to
    # diagnose and resend, not as history, and a hostile sender can make as
    # many as it likes. Their own, shorter retention, and a cap on rows
    # (kept at every insert: the oldest goes first).
    rejected_days: int = Field(default=30, ge=1)
    rejected_max_rows: int = Field(default=100_000, ge=100)


class WebTlsConfig(ListenerTlsConfig):
    """HTTPS for the web view (``web.tls``): the same keys as ``mllp.tls``."""

    where: ClassVar[str] = "web.tls"


class TrustedProxyConfig(Section):
    """Single sign-on through a reverse proxy: the proxy authenticates the
    user and names them in ``header``; only a request from one of
    ``addresses`` (CIDRs) is believed."""

    header: str | None = None
    addresses: tuple[NetworkText, ...] = ()

    @model_validator(mode="after")
    def _both(self) -> TrustedProxyConfig:
        if self.header is not None and not self.addresses:
            raise ValueError("web.trusted_proxy.header needs web.trusted_proxy.addresses (the proxy's CIDRs)")
        if self.header is not None and not re.fullmatch(r"[A-Za-z0-9-]+", self.header):
            raise ValueError("web.trusted_proxy.header must be an HTTP header name like X-Remote-User")
        return self

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.addresses)


class WebConfig(Section):
    """``hl7-alerts web``: the clinicians' view, a process of its own."""

    host: str = "127.0.0.1"
    port: Port = 8080
    # The address users reach (https://ward.example/hl7-alerts/): alert
    # payloads link to it, and its path is where the routes live.
    base_url: str | None = None
    tls: WebTlsConfig = WebTlsConfig()
    trusted_proxy: TrustedProxyConfig = TrustedProxyConfig()
    session_idle: timedelta = timedelta(minutes=30)
    session_max: timedelta = timedelta(hours=12)
    login_attempts: int = Field(default=5, ge=1)
    login_window: timedelta = timedelta(minutes=15)
    trend_days: int = Field(default=180, ge=1, le=3650)
    refresh_seconds: int = Field(default=60, ge=10)

    @field_validator("session_idle", "session_max", "login_window", mode="before")
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        return parse_duration(value)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.netloc or url.query or url.fragment:
            raise ValueError("must be an http(s) URL without query or fragment, like https://ward.example/hl7-alerts")
        return value.rstrip("/")

    @property
    def path_prefix(self) -> str:
        """The path the routes live under ("" or "/hl7-alerts")."""
        if self.base_url is None:
            return ""
        return urlsplit(self.base_url).path.rstrip("/")
