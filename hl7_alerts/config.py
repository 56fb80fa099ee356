"""config.yaml: load, validate, and turn into the settings each stage takes.

Validation is pydantic's; what this module adds is the error a person can act
on: every problem names the key (``mllp.port``) and the file and line it is on.
Unknown keys are errors, so a typo never silently falls back to a default.
Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import ipaddress
import ssl
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

from hl7_alerts.alerts import PhiPolicy
from hl7_alerts.messages import ParseOptions
from hl7_alerts.mllp import tls_context
from hl7_alerts.pipeline import PipelineSettings
from hl7_alerts.rules.common import DEFAULT_RANGES, DefaultRange, RuleSettings
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
    path: Path = Path("data/hl7-alerts.sqlite3")


class MqttConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 1883
    topic_prefix: str = "hl7alerts"
    client_id: str = "hl7-alerts"
    username: str | None = None
    password: str | None = None
    keepalive_seconds: int = Field(default=30, ge=5)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)

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


class RulesConfig(_Section):
    hepatotoxicity_x_uln: float = Field(default=3.0, gt=1)
    ranges: dict[Analyte, RangeConfig] = Field(default_factory=dict)
    history_days: int = Field(default=400, ge=1)


class PhiConfig(_Section):
    include_name: bool = False
    include_birth_date: bool = False


class AlertsConfig(_Section):
    phi: PhiConfig = PhiConfig()


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


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
        return RuleSettings(
            thiopurines=frozenset(str(t) for t in self.terminology.thiopurines),
            hepatotoxicity_x_uln=self.rules.hepatotoxicity_x_uln,
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
    if base_dir is not None and not config.store.path.is_absolute():
        config = config.model_copy(
            update={"store": config.store.model_copy(update={"path": base_dir / config.store.path})}
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
