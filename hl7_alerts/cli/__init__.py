"""The ``hl7-alerts`` command line: one module per command group, each only
parsing arguments, calling into the package and printing. No business logic
lives here."""

from __future__ import annotations

import click

from hl7_alerts.cli import (
    alerts,
    backtest,
    check,
    codes,
    config,
    orders,
    rejected,
    replay,
    schedule,
    send,
    serve,
    store,
    survey,
    web,
)
from hl7_alerts.cli.common import Main


@click.group(cls=Main)
@click.version_option(package_name="hl7-alerts")
def main() -> None:
    """Pages the on-call clinician when an azathioprine patient's labs call for action."""


main.add_command(serve.serve)
main.add_command(config.config)
main.add_command(send.send)
main.add_command(check.check)
main.add_command(orders.orders)
main.add_command(schedule.schedule)
main.add_command(alerts.alerts)
main.add_command(store.store)
main.add_command(backtest.backtest)
main.add_command(replay.replay)
main.add_command(survey.survey)
main.add_command(web.web)
main.add_command(codes.codes)
main.add_command(rejected.rejected)
