"""What the commands share: the --config options, loading the config, and
turning the failures a person can fix into one line.

`Main` is the command group: a known failure (the store cannot be opened or
is not a store, a file cannot be read) ends any command with one line naming
the cause and exit status 1, never a traceback. A traceback is left for
what is a defect of ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hl7_alerts.config import Config, ConfigError, load_config
from hl7_alerts.store import StoreError


def failure_line(exc: OSError) -> str:
    """An OS error as a person reads it: the file and the reason."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


class Main(click.Group):
    """The ``hl7-alerts`` group: known failures become one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StoreError as exc:
            raise click.ClickException(f"store unavailable: {exc}") from None
        except OSError as exc:
            raise click.ClickException(failure_line(exc)) from None


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
