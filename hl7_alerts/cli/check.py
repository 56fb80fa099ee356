"""``hl7-alerts check``: files through the daemon's pipeline into a throwaway store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import click

from hl7_alerts import logs, offline
from hl7_alerts.cli.common import config_or_default, offline_config_option
from hl7_alerts.strictjson import dumps


@click.command()
@offline_config_option
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def check(config_path: Path | None, files: tuple[Path, ...]) -> None:
    """Evaluate HL7 files offline and print the alert events as JSON lines.

    Runs the daemon's own pipeline against a throwaway store (deleted after);
    no broker, nothing published. Messages that would be rejected print a
    line with "ack" and "error".
    """
    config = config_or_default(config_path)
    logs.configure("warning", "console")
    events = asyncio.run(offline.check(files, config, now=datetime.now(UTC)))
    for event in events:
        click.echo(dumps(event))
