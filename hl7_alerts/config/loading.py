"""Reading config.yaml: YAML to `Config`, with errors a person can act on.

Validation is pydantic's; what this module adds is the error: every problem
names the key (``mllp.port``) and the file and line it is on. Relative paths
are taken from the config file's folder; TLS files and the pager-ack key
file are loaded once, so a wrong path, a key that does not match its
certificate or a key too short to sign with is a config error.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hl7_alerts.acksig import read_keys
from hl7_alerts.config.model import Config
from hl7_alerts.tls import server_context


class ConfigError(Exception):
    """A config file that cannot be used; the message names file, line and key."""


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
    return _check_ack_keys(_check_tls(config, source, base_dir, lines), source, base_dir, lines)


def _check_ack_keys(
    config: Config, source: str, base_dir: Path | None, lines: dict[tuple[str, ...], int]
) -> Config:
    """Resolve ``mqtt.acks.hmac_key_file`` against the config's folder and
    read it once, so a missing file or a short key is a config error (never
    quoting a key)."""
    path = config.mqtt.acks.hmac_key_file
    if path is None:
        return config
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    try:
        read_keys(path)
    except ValueError as exc:
        line = _nearest_line(("mqtt", "acks", "hmac_key_file"), lines)
        raise ConfigError(f"{source}:{line}: mqtt.acks.hmac_key_file: {exc}") from None
    acks = config.mqtt.acks.model_copy(update={"hmac_key_file": path})
    return config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"acks": acks})})


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
    # The listener's own loader, so what passes here is what serve loads.
    try:
        server_context(resolved["cert"], resolved["key"], resolved.get("client_ca"))
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
