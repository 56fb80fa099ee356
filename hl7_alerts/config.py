"""config.yaml: load, validate, and turn into the settings each stage takes.

Validation is pydantic's; what this module adds is the error a person can act
on: every problem names the key (``mllp.port``) and the file and line it is on.
Unknown keys are errors, so a typo never silently falls back to a default.
Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hl7_alerts.alerts import PhiPolicy, ReminderPolicy
from hl7_alerts.messages import ParseOptions
from hl7_alerts.model import Severity
from hl7_alerts.rules.common import DEFAULT_RANGES, DefaultRange, RuleSettings
from hl7_alerts.rules.monitoring import MonitoringSettings
from hl7_alerts.settings import MqttSettings, MqttTlsSettings, PipelineSettings, StoreSettings
from hl7_alerts.terminology import Analyte, Ingredient, Terminology


class ConfigError(Exception):
    """A config file that cannot be used; the message names file, line and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=0, le=65535)]


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network (use CIDR like 10.1.0.0/16)") from None
    return value


NetworkText = Annotated[str, AfterValidator(_network)]


class TlsConfig(_Section):
    """MLLP over TLS: ``cert`` and ``key`` (PEM) turn it on; ``client_ca``
    also requires every client to present a certificate signed by it."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    handshake_timeout_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            missing = "mllp.tls.key" if self.key is None else "mllp.tls.cert"
            raise ValueError(f"{missing} is required: mllp.tls.cert and mllp.tls.key go together")
        if self.client_ca is not None and self.cert is None:
            raise ValueError("mllp.tls.client_ca needs mllp.tls.cert and mllp.tls.key (TLS) to be set")
        return self


class MllpConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 2575
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    idle_timeout_seconds: float = Field(default=300.0, gt=0)
    read_timeout_seconds: float = Field(default=60.0, gt=0)
    max_connections: int = Field(default=64, ge=1)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    allow: tuple[NetworkText, ...] = ()
    tls: TlsConfig = TlsConfig()

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.allow)


class StoreConfig(_Section):
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


class MqttTlsConfig(_Section):
    """TLS to the broker: a CA to verify it, and a client certificate if it asks."""

    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True


class MqttConfig(_Section):
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

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "#+") or value.startswith("/") or value.endswith("/"):
            raise ValueError("must be a non-empty MQTT topic without wildcards or leading/trailing '/'")
        return value


class Hl7Config(_Section):
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


class PatientConfig(_Section):
    id_type: str = "MR"
    authority: str | None = None


class TerminologyConfig(_Section):
    thiopurines: tuple[Ingredient, ...] = (Ingredient.AZATHIOPRINE,)
    lab_codes: dict[str, Analyte] = Field(
        default_factory=lambda: {"TPMT": Analyte.TPMT, "NUDT15": Analyte.NUDT15}
    )
    drug_codes: dict[str, Ingredient] = Field(default_factory=dict)


class RangeConfig(_Section):
    low: float | None = None
    high: float | None = None
    female: tuple[float | None, float | None] | None = None
    male: tuple[float | None, float | None] | None = None


_MONITORING = MonitoringSettings()


class MonitoringConfig(_Section):
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


class RulesConfig(_Section):
    hepatotoxicity_x_uln: float = Field(default=3.0, gt=1)
    hys_law_bilirubin_x_uln: float = Field(default=2.0, gt=1)
    hys_law_window_hours: float = Field(default=48.0, ge=0)
    cholestasis_alp_x_uln: float = Field(default=2.0, gt=1)
    rechallenge_days: int = Field(default=30, ge=0)
    post_stop_days: int = Field(default=90, ge=0)
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


class PhiConfig(_Section):
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


class AlertsConfig(_Section):
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


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9464


class HealthConfig(_Section):
    max_outbox_age_seconds: float = Field(default=300.0, gt=0)
    store_probe_timeout_seconds: float = Field(default=5.0, gt=0)


class RetentionConfig(_Section):
    days: int = Field(default=400, ge=1)
    interval_hours: float = Field(default=24.0, gt=0)


class Config(_Section):
    mllp: MllpConfig = MllpConfig()
    store: StoreConfig = StoreConfig()
    mqtt: MqttConfig = MqttConfig()
    hl7: Hl7Config = Hl7Config()
    patient: PatientConfig = PatientConfig()
    terminology: TerminologyConfig = TerminologyConfig()
    rules: RulesConfig = RulesConfig()
    alerts: AlertsConfig = AlertsConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    health: HealthConfig = HealthConfig()
    retention: RetentionConfig = RetentionConfig()

    def cross_check(self) -> list[tuple[tuple[str, ...], tuple[str, ...], str]]:
        """Problems between sections, as (key, the other key involved, message)."""
        problems: list[tuple[tuple[str, ...], tuple[str, ...], str]] = []
        if self.retention.days < self.rules.history_days:
            problems.append(
                (
                    ("retention", "days"),
                    ("rules", "history_days"),
                    f"must be at least rules.history_days ({self.rules.history_days}): "
                    "the rules read that much history",
                )
            )
        if self.store.dsn is not None and self.store.lease_seconds <= self.mqtt.publish_timeout_seconds:
            problems.append(
                (
                    ("store", "lease_seconds"),
                    ("mqtt", "publish_timeout_seconds"),
                    f"must be longer than mqtt.publish_timeout_seconds "
                    f"({self.mqtt.publish_timeout_seconds}): a claim must outlive the wait for a PUBACK",
                )
            )
        return problems

    # -- what each stage takes ------------------------------------------------

    def terminology_tables(self) -> Terminology:
        return Terminology(
            local_lab_codes={k.upper(): v for k, v in self.terminology.lab_codes.items()},
            drug_codes=dict(self.terminology.drug_codes),
            thiopurines=frozenset(self.terminology.thiopurines),
        )

    def parse_options(self) -> ParseOptions:
        return ParseOptions(
            terminology=self.terminology_tables(),
            timezone=ZoneInfo(self.hl7.timezone),
            fallback_charset=self.hl7.fallback_charset,
            patient_id_type=self.patient.id_type,
            patient_authority=self.patient.authority,
            accepted_versions=self.hl7.versions,
            accepted_processing_ids=tuple(p.upper() for p in self.hl7.processing_ids),
        )

    def rule_settings(self) -> RuleSettings:
        ranges = dict(DEFAULT_RANGES)
        for analyte, rc in self.rules.ranges.items():
            by_sex = {k: v for k, v in (("F", rc.female), ("M", rc.male)) if v is not None}
            ranges[analyte] = DefaultRange(low=rc.low, high=rc.high, by_sex=by_sex)
        r = self.rules
        return RuleSettings(
            thiopurines=frozenset(str(t) for t in self.terminology.thiopurines),
            hepatotoxicity_x_uln=r.hepatotoxicity_x_uln,
            hys_law_bilirubin_x_uln=r.hys_law_bilirubin_x_uln,
            hys_law_window_hours=r.hys_law_window_hours,
            cholestasis_alp_x_uln=r.cholestasis_alp_x_uln,
            rechallenge_days=r.rechallenge_days,
            post_stop_days=r.post_stop_days,
            synthetic_inr_above=r.synthetic_inr_above,
            wbc_below=r.wbc_below,
            neutrophils_below=r.neutrophils_below,
            platelets_below=r.platelets_below,
            neutrophils_critical_below=r.neutrophils_critical_below,
            platelets_critical_below=r.platelets_critical_below,
            tpmt_activity_poor_below=r.tpmt_activity_poor_below,
            tpmt_activity_intermediate_below=r.tpmt_activity_intermediate_below,
            xanthine_oxidase_inhibitors={str(k): v for k, v in r.interacting_drugs.items()},
            default_ranges=ranges,
        )

    def pipeline_settings(self) -> PipelineSettings:
        return PipelineSettings(
            rules=self.rule_settings(),
            topic_prefix=self.mqtt.topic_prefix,
            phi=PhiPolicy(
                include_name=self.alerts.phi.include_name,
                include_birth_date=self.alerts.phi.include_birth_date,
            ),
            history_days=self.rules.history_days,
            monitoring=self.rules.monitoring.settings(),
        )

    def mqtt_settings(self) -> MqttSettings:
        m = self.mqtt
        return MqttSettings(
            host=m.host,
            port=m.port,
            topic_prefix=m.topic_prefix,
            client_id=m.client_id,
            username=m.username,
            password=m.password,
            keepalive=m.keepalive_seconds,
            reconnect_max=m.reconnect_max_seconds,
            publish_timeout=m.publish_timeout_seconds,
            session_expiry=m.session_expiry_seconds,
            message_expiry=m.message_expiry_seconds,
            max_inflight=m.max_inflight,
            several_daemons=self.store.dsn is not None,
            shared_acks=m.shared_acks,
            tls=None if m.tls is None else MqttTlsSettings(
                ca_file=m.tls.ca_file,
                cert_file=m.tls.cert_file,
                key_file=m.tls.key_file,
                check_hostname=m.tls.check_hostname,
            ),
        )

    def store_settings(self) -> StoreSettings:
        return StoreSettings(
            path=self.store.path,
            dsn=self.store.dsn,
            # The MQTT client id is unique per daemon (the broker insists): it
            # names this daemon's outbox claims too.
            owner=self.mqtt.client_id,
            lease_seconds=self.store.lease_seconds,
            writers=self.store.writers,
        )


def _key_lines(node: yaml.Node, path: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*path, str(key_node.value))
            lines[key] = key_node.start_mark.line + 1
            _key_lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*path, str(index))
            lines[key] = item.start_mark.line + 1
            _key_lines(item, key, lines)


def parse_config(text: str, source: str = "config.yaml", base_dir: Path | None = None) -> Config:
    """Validate YAML text; `ConfigError` names ``source:line: key: problem``."""
    try:
        data: Any = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping of sections (mllp:, store:, ...)")
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _key_lines(node, (), lines)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            line = _nearest_line(loc, lines)
            key = ".".join(loc) or "(top level)"
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{source}:{line}: {key}: {message}")
        raise ConfigError("\n".join(problems)) from None
    cross = config.cross_check()
    if cross:
        # The line of the key itself when the file sets it, else of the other one.
        raise ConfigError(
            "\n".join(
                f"{source}:{lines.get(loc) or _nearest_line(other, lines)}: {'.'.join(loc)}: {msg}"
                for loc, other, msg in cross
            )
        )
    if base_dir is not None and not config.store.path.is_absolute():
        config = config.model_copy(
            update={"store": config.store.model_copy(update={"path": base_dir / config.store.path})}
        )
    if base_dir is not None and config.mqtt.tls is not None:
        tls = config.mqtt.tls
        paths = {
            name: base_dir / value
            for name in ("ca_file", "cert_file", "key_file")
            if (value := getattr(tls, name)) is not None and not value.is_absolute()
        }
        config = config.model_copy(
            update={"mqtt": config.mqtt.model_copy(update={"tls": tls.model_copy(update=paths)})}
        )
    return _check_tls(config, source, base_dir, lines)


def _check_tls(
    config: Config, source: str, base_dir: Path | None, lines: dict[tuple[str, ...], int]
) -> Config:
    """Resolve the TLS files against the config's folder and load them once,
    so a wrong path or a key that does not match is a config error."""
    tls = config.mllp.tls
    if tls.cert is None or tls.key is None:
        return config
    resolved = {
        name: (base_dir / path if base_dir is not None and not path.is_absolute() else path)
        for name, path in (("cert", tls.cert), ("key", tls.key), ("client_ca", tls.client_ca))
        if path is not None
    }
    for name, path in resolved.items():
        if not path.is_file():
            line = _nearest_line(("mllp", "tls", name), lines)
            raise ConfigError(f"{source}:{line}: mllp.tls.{name}: no such file: {path}")
    # The listener's own loader, so what passes here is what serve loads; imported
    # only when TLS is configured, so validating a config loads no server code.
    from hl7_alerts.mllp import tls_context  # noqa: PLC0415

    try:
        tls_context(resolved["cert"], resolved["key"], resolved.get("client_ca"))
    except (ssl.SSLError, OSError) as exc:
        line = _nearest_line(("mllp", "tls", "cert"), lines)
        raise ConfigError(
            f"{source}:{line}: mllp.tls: cannot load mllp.tls.cert / mllp.tls.key / mllp.tls.client_ca: {exc}"
        ) from None
    return config.model_copy(
        update={"mllp": config.mllp.model_copy(update={"tls": tls.model_copy(update=resolved)})}
    )


def _nearest_line(loc: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def load_config(path: Path | str) -> Config:
    """Read and validate a config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    return parse_config(text, source=str(path), base_dir=path.resolve().parent)
