"""``hl7-alerts backtest``: an archive through the pipeline into a throwaway
store, and what it would have paged about."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from hl7_alerts import logs
from hl7_alerts.backtest import BacktestRun, compare, json_document, run_backtest
from hl7_alerts.cli.common import config_or_default, offline_config_option
from hl7_alerts.cli.offline_common import echo_skipped, files_argument, progress_printer, write_json


def _print_summary(run: BacktestRun) -> None:
    s = run.summary
    click.echo(f"config\t{s['config']}")
    click.echo(
        f"messages\t{s['messages']}\tprocessed\t{s['processed']}\tskipped\t{s['skipped']}"
        f"\t{s['messages_per_second']}/s"
    )
    click.echo(f"span\t{s['first_message_at']}\t{s['last_message_at']}")
    click.echo(f"patients on a thiopurine\t{s['patients_on_thiopurine']}")
    click.echo(f"alerts\t{s['alerts']}\tevents\t{s['events']}")
    for rule, row in s["by_rule"].items():
        click.echo(f"rule\t{rule}\talerts\t{row['alerts']}\tevents\t{row['events']}")
    for severity, row in s["by_severity"].items():
        click.echo(f"severity\t{severity}\talerts\t{row['alerts']}\tevents\t{row['events']}")
    for m in s["per_month"]:
        rate = m["alerts_per_100_patients"]
        click.echo(
            f"month\t{m['month']}\tpatients\t{m['patients_on_thiopurine']}\talerts\t{m['alerts']}"
            f"\tper 100 patients\t{'-' if rate is None else rate}"
        )
    for w in s["pages_per_week"]:
        click.echo(f"week\t{w['week']}\tpages\t{w['pages']}\treminders\t{w['reminders']}")


@click.command()
@offline_config_option
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="write index.html (charts inline, no network needed) and alerts.csv here")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="write the summary, every alert event and what was skipped as JSON")
@click.option("--compare", "other_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="also run this config on the same archive and show the difference per rule")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="progress lines on stderr every few seconds")
@files_argument
def backtest(
    *, config_path: Path | None, report_dir: Path | None, json_out: Path | None, other_path: Path | None,
    progress: bool, files: tuple[Path, ...],
) -> None:
    """Replay an archive through the pipeline; report what would have been paged.

    Runs the daemon's own pipeline, with reminders and overdue monitoring on
    the message clock (MSH-7), into a throwaway store; nothing is published
    and the site's store is never opened. Exits 1 when a file or message was
    skipped (each is named).
    """
    config = config_or_default(config_path)
    logs.configure("error", "console")
    name = str(config_path) if config_path else "embedded defaults"
    show = progress_printer("backtest", progress)
    run = asyncio.run(run_backtest(files, config, config_name=name, progress=show))
    other = None
    if other_path is not None:
        other_config = config_or_default(other_path)
        other = asyncio.run(run_backtest(files, other_config, config_name=str(other_path), progress=show))
    _print_summary(run)
    if other is not None:
        diff = compare(run.summary, other.summary)
        click.echo(f"compare\t{diff['base']}\t{diff['other']}")
        for rule, row in diff["by_rule"].items():
            a, b, d = row["alerts"]
            click.echo(f"compare\t{rule}\talerts\t{a}\t{b}\t{d:+d}\tevents\t" + "\t".join(
                (str(row["events"][0]), str(row["events"][1]), f"{row['events'][2]:+d}")))
    echo_skipped(run.result.skipped)
    if json_out is not None:
        write_json(json_out, json_document(run, other))
    if report_dir is not None:
        from hl7_alerts.report import write_report  # noqa: PLC0415 (matplotlib, Jinja2: only when asked)

        for path in write_report(report_dir, run, other):
            click.echo(f"wrote\t{path}", err=True)
    if run.result.skipped or (other is not None and other.result.skipped):
        sys.exit(1)
