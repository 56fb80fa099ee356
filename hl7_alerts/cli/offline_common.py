"""What the offline replays share on the command line: progress on stderr,
the skipped list, and JSON files written owner-only."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from hl7_alerts.files import write_private
from hl7_alerts.replay import Progress, Skipped


def progress_printer(command: str, enabled: bool) -> Callable[[Progress], None] | None:
    """Progress lines on stderr (every couple of seconds) for long runs."""
    if not enabled:
        return None

    def show(p: Progress) -> None:
        click.echo(
            f"{command}: file {p.files_done}/{p.files}, {p.messages:,} messages, {p.rate:,.0f}/s",
            err=True,
        )

    return show


def echo_skipped(skipped: Sequence[Skipped]) -> None:
    """One line per skipped file or message on stdout: what and why."""
    for s in skipped:
        click.echo(f"skipped\t{s.file}\t{s.control_id or ''}\t{s.code}\t{s.reason}")


def write_json(path: Path, document: Any) -> None:
    """A JSON output: it holds patient identifiers, so it is owner-only."""
    write_private(path, json.dumps(document, ensure_ascii=False, indent=1) + "\n")


files_argument = click.argument(
    "files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path)
)
