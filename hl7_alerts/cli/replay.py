"""``hl7-alerts replay``: an archive through the pipeline into the site's
own store, quietly (go-live) or publishing as the daemon would."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

import click

from hl7_alerts import logs
from hl7_alerts.cli.common import config_option, config_or_default
from hl7_alerts.cli.offline_common import echo_skipped, files_argument, progress_printer, write_json
from hl7_alerts.replay import ReplayResult, run_archive
from hl7_alerts.store import StoreError, open_store

QUIET_REASON = "quiet replay (hl7-alerts replay --quiet)"


@click.command()
@config_option
@click.option("--quiet", is_flag=True,
              help="record alert events (alerts list, audit) but never publish or remind about them")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="write the counts and what was skipped as JSON")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="progress lines on stderr every few seconds")
@files_argument
def replay(
    *, config_path: Path, quiet: bool, json_out: Path | None, progress: bool, files: tuple[Path, ...]
) -> None:
    """Replay an archive into the site's store, on the message clock.

    Each message is processed as the daemon would (dedup, orders, results,
    rules, schedules), received at its MSH-7; reminders and overdue
    monitoring run on that clock. With --quiet, alert events are stored and
    audited with the reason but never published nor reminded about: for
    loading history before go-live, with the daemon stopped. Without it, they
    wait in the outbox for the daemon to publish. Exits 1 when a file or
    message was skipped (each is named).
    """
    config = config_or_default(config_path)
    logs.configure("error", "console")
    settings = config.pipeline_settings()
    if quiet:
        settings = dataclasses.replace(settings, quiet=QUIET_REASON)

    async def run() -> ReplayResult:
        store = await open_store(config.store_settings())
        try:
            return await run_archive(
                store, files, options=config.parse_options(), settings=settings,
                policy=config.alerts.reminder_policy(), max_message_bytes=config.mllp.max_message_bytes,
                progress=progress_printer("replay", progress),
            )
        finally:
            await store.close()

    try:
        result = asyncio.run(run())
    except StoreError as exc:
        raise click.ClickException(f"store unavailable: {exc}") from None
    fate = "recorded, not published" if quiet else "queued for the daemon to publish"
    click.echo(
        f"messages\t{result.messages}\tprocessed\t{result.processed}\tduplicates\t{result.duplicates}"
        f"\tskipped\t{len(result.skipped)}"
    )
    click.echo(f"alert events\t{result.alert_events}\t({fate}; {result.timer_events} from timers)")
    echo_skipped(result.skipped)
    if json_out is not None:
        write_json(json_out, {
            "summary": {
                "messages": result.messages, "processed": result.processed, "duplicates": result.duplicates,
                "alert_events": result.alert_events, "timer_events": result.timer_events, "quiet": quiet,
                "first_message_at": result.first_at.isoformat() if result.first_at else None,
                "last_message_at": result.last_at.isoformat() if result.last_at else None,
                "seconds": round(result.seconds, 2),
            },
            "skipped": [s.as_dict() for s in result.skipped],
        })
    if result.skipped:
        sys.exit(1)
