"""``hl7-alerts schedule list``: the liver-test schedule (aza.monitoring.overdue)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import click

from hl7_alerts import logs, offline
from hl7_alerts.cli.common import config_option, config_or_default
from hl7_alerts.store import ScheduleRow, open_store


@click.group()
def schedule() -> None:
    """The liver-test schedule of thiopurine orders (aza.monitoring.overdue)."""


@schedule.command("list")
@config_option
@click.option("--all", "include_stopped", is_flag=True, help="include schedules of stopped orders")
def schedule_list(config_path: Path, include_stopped: bool) -> None:
    """Who is due when: patient, order, state, last panel, next due, alert time,
    overdue now, alert sent (tab-separated, earliest first)."""
    config = config_or_default(config_path)
    logs.configure("warning", "console")

    async def run() -> list[ScheduleRow]:
        store = await open_store(config.store_settings(), read_only=True)
        try:
            return await store.list_schedules(include_stopped=include_stopped)
        finally:
            await store.close()

    for row in offline.schedule_rows(asyncio.run(run()), datetime.now(UTC)):
        click.echo("\t".join(row))
