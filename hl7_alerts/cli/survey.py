"""``hl7-alerts survey``: what the daemon will understand of an archive."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hl7_alerts import logs
from hl7_alerts.cli.common import config_or_default, offline_config_option
from hl7_alerts.cli.offline_common import files_argument, write_json
from hl7_alerts.survey import VALIDATE_PER_TYPE, survey_files, text_report


@click.command()
@offline_config_option
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the survey as JSON")
@click.option("--validate", "validate_per_type", type=click.IntRange(min=0), default=VALIDATE_PER_TYPE,
              show_default=True, help="messages of each type hl7apy validates (0: none)")
@files_argument
def survey(*, config_path: Path | None, json_out: Path | None, validate_per_type: int,
           files: tuple[Path, ...]) -> None:
    """Survey an archive of the site's feed: what the daemon will understand.

    Versions, types, senders, charsets, patient identifiers, OBX-3 codes
    (with config.yaml lines for unmapped ones that read like an analyte),
    units, unreadable ranges, drugs, ORC-1/OBX-11 values and hl7apy's
    structural problems. No store, no broker. Exits 1 when a file or message
    was skipped (each is named).
    """
    config = config_or_default(config_path)
    logs.configure("error", "console")
    result = survey_files(files, config.parse_options(), validate_per_type=validate_per_type)
    doc = result.document()
    for line in text_report(doc):
        click.echo(line)
    if json_out is not None:
        write_json(json_out, doc)
    if result.skipped:
        sys.exit(1)
