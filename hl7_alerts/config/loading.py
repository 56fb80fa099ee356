"""Reading config.yaml: YAML to `Config`, with errors a person can act on.

Validation is pydantic's; what this module adds is the error: every problem
names the key (``mllp.port``) and the file and line it is on. Relative paths
are taken from the config file's folder; TLS files and the pager-ack key
file are loaded once, so a wrong path, a key that does not match its
certificate or a key too short to sign with is a config error. Keys that
were renamed are still read, with a warning naming the new key
(`Config.warnings`); an error about such a section names its keys as the
file spells them.
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


# Renamed keys, per section: old name -> new name. mllp.tls spelled its
# files cert / key / client_ca until mllp.tls, mqtt.tls and web.tls shared
# one set of names (cert_file, key_file, ca_file).
RENAMED: dict[tuple[str, ...], dict[str, str]] = {
    ("mllp", "tls"): {"cert": "cert_file", "key": "key_file", "client_ca": "ca_file"},
}


def _renamed(
    data: dict[str, Any], lines: dict[tuple[str, ...], int], source: str
) -> tuple[list[str], dict[str, str]]:
    """Rename old keys in ``data`` in place (their lines follow them). Returns
    the deprecation warnings and, for the sections that used old names, how
    to say each new dotted key in the file's own words."""
    warnings: list[str] = []
    spoken: dict[str, str] = {}
    for path, names in RENAMED.items():
        node: Any = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not names.keys() & node.keys():
            continue
        where = ".".join(path)
        for old, new in names.items():
            spoken[f"{where}.{new}"] = f"{where}.{old}"
            if old not in node:
                continue
            line = lines.get((*path, old), 1)
            if new in node:
                raise ConfigError(
                    f"{source}:{line}: {where}.{old}: also set as {where}.{new} (its new name); keep that one"
                )
            node[new] = node.pop(old)
            lines[(*path, new)] = line
            warnings.append(f"{source}:{line}: {where}.{old} is deprecated: use {where}.{new}")
    return warnings, spoken


def _in_their_words(text: str, spoken: dict[str, str]) -> str:
    for new in sorted(spoken, key=len, reverse=True):
        text = text.replace(new, spoken[new])
    return text


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
    warnings, spoken = _renamed(data, lines, source)
    try:
        config = _validated(data, source, base_dir, lines)
    except ConfigError as exc:
        raise ConfigError(_in_their_words(str(exc), spoken)) from None
    config._warnings = tuple(warnings)
    return config


def _validated(
    data: dict[str, Any], source: str, base_dir: Path | None, lines: dict[tuple[str, ...], int]
) -> Config:
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
    """Resolve each listener's TLS files (``mllp.tls``, ``web.tls``) against
    the config's folder and load them once, so a wrong path or a key that
    does not match is a config error."""
    for section in ("mllp", "web"):
        owner = getattr(config, section)
        tls = owner.tls
        if tls.cert_file is None or tls.key_file is None:
            continue
        resolved = {
            name: (base_dir / path if base_dir is not None and not path.is_absolute() else path)
            for name in ("cert_file", "key_file", "ca_file")
            if (path := getattr(tls, name)) is not None
        }
        for name, path in resolved.items():
            if not path.is_file():
                line = _nearest_line((section, "tls", name), lines)
                raise ConfigError(f"{source}:{line}: {section}.tls.{name}: no such file: {path}")
        # The listener's own loader, so what passes here is what serve loads.
        try:
            server_context(resolved["cert_file"], resolved["key_file"], resolved.get("ca_file"))
        except (ssl.SSLError, OSError) as exc:
            line = _nearest_line((section, "tls", "cert_file"), lines)
            w = f"{section}.tls"
            raise ConfigError(
                f"{source}:{line}: {w}: cannot load {w}.cert_file / {w}.key_file / {w}.ca_file: {exc}"
            ) from None
        config = config.model_copy(
            update={section: owner.model_copy(update={"tls": tls.model_copy(update=resolved)})}
        )
    return config


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
