"""What the commands share: the --config options and loading the config."""

from __future__ import annotations

from pathlib import Path

import click

from hl7_alerts.config import Config, ConfigError, load_config


def config_or_default(path: Path | None) -> Config:
    """The config at ``path``, or the embedded defaults when none is given;
    a bad file is one error naming file, line and key."""
    if path is None:
        return Config()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


# Commands on the store: the config names it.
config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="config.yaml",
    show_default=True,
    help="config.yaml naming the store",
)


offline_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="config.yaml for terminology, thresholds and store (default: the embedded defaults)",
)
