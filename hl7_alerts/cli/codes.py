"""``hl7-alerts codes``: the OBX-3 codes in the store and what they map to."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from hl7_alerts import logs
from hl7_alerts.cli.common import config_option, config_or_default
from hl7_alerts.codes import HEADER, code_table
from hl7_alerts.store import CodeCount, open_store


@click.command()
@config_option
@click.option("--unmapped", "only_unmapped", is_flag=True, help="only codes that map to no analyte")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def codes(config_path: Path, only_unmapped: bool, as_json: bool) -> None:
    """Lab codes (OBX-3) of the stored results: code, system, text, results,
    and the analyte this config maps them to, or "unmapped" (tab-separated,
    unmapped first). An unmapped code is never read by a rule: map it in
    terminology.lab_codes. Reads the store, never writes it."""
    config = config_or_default(config_path)
    logs.configure("warning", "console")

    async def run() -> list[CodeCount]:
        store = await open_store(config.store_settings(), read_only=True)
        try:
            return await store.code_counts()
        finally:
            await store.close()

    rows = code_table(asyncio.run(run()), config.terminology_tables())
    if only_unmapped:
        rows = [r for r in rows if r.analyte is None]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_dict(), ensure_ascii=False))
        return
    click.echo("\t".join(HEADER))
    for row in rows:
        click.echo("\t".join((row.code, row.system, row.text, str(row.results), row.mapping)))
