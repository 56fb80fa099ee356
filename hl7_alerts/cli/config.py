"""``hl7-alerts config check``: validate a config file and summarise it."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click

from hl7_alerts.config import Config, ConfigError, load_config
from hl7_alerts.config.exposure import exposures


@click.group()
def config() -> None:
    """Work with config.yaml."""


def _store_name(cfg: Config) -> str:
    """Where the store is, for people: a PostgreSQL URL without its password."""
    if cfg.store.dsn is None:
        return f"SQLite {cfg.store.path}"
    url = urlsplit(cfg.store.dsn)
    if url.password is not None:
        url = url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@", 1))
    return f"PostgreSQL {urlunsplit(url)}"


def _patient_lines(cfg: Config) -> list[str]:
    """What patient.* means for the feed, in words (CLINICAL.md decision 12)."""
    p = cfg.patient
    types = p.id_types
    authority = f" from authority {p.authority}" if p.authority else " (any authority, kept in the key)"
    lines = [f"keyed by the PID-3 and MRG-1 identifier of type {' or else '.join(types)}{authority}"]
    if len(types) > 1:
        lines.append(
            f"a message is keyed by the first of {', '.join(types)} it carries: one patient sent "
            "with different types becomes separate patients"
        )
    if p.untyped_ids == "accept":
        lines.append(
            f"untyped identifiers (empty PID-3.5) are accepted as {types[0]} when no typed one is there"
        )
    else:
        lines.append("untyped identifiers (empty PID-3.5) are refused: such a message gets AE")
    lines.append("identifiers of any other type never match; a message with no usable identifier gets AE")
    return lines


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def config_check(file: Path) -> None:
    """Validate FILE: print "ok" and a summary, or the errors (file:line: key) and exit 1.

    A valid file that leaves something open on the network (MLLP, MQTT or
    PostgreSQL without TLS, metrics beyond loopback, unsigned pager acks)
    also gets one "warning:" line each on stderr; it is still valid (exit 0)."""
    try:
        cfg = load_config(file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    metrics = f"{cfg.metrics.host}:{cfg.metrics.port}" if cfg.metrics.enabled else "off"
    for warning in cfg.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"ok: {file}")
    click.echo(f"  mllp      {cfg.mllp.host}:{cfg.mllp.port}")
    click.echo(f"  store     {_store_name(cfg)}")
    click.echo(f"  mqtt      {cfg.mqtt.host}:{cfg.mqtt.port} prefix {cfg.mqtt.topic_prefix}")
    click.echo(f"  metrics   {metrics}")
    for line in _patient_lines(cfg):
        click.echo(f"  patients  {line}")
    click.echo(f"  rules     hepatotoxicity at {cfg.rules.hepatotoxicity_x_uln:g}x ULN, "
               f"{cfg.rules.history_days} days of history")
    click.echo(f"  retention {cfg.retention.days} days")
    for exposure in exposures(cfg):
        click.echo(f"warning: {exposure}", err=True)
