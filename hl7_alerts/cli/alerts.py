"""``hl7-alerts alerts list|show|ack|schema``: alerts in the store, and acking them."""

from __future__ import annotations

import asyncio
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import click

from hl7_alerts.alerts import AckOutcome, AckRequest
from hl7_alerts.cli.common import config_option, config_or_default
from hl7_alerts.daemon import system_clock
from hl7_alerts.lifecycle import acknowledge_alert
from hl7_alerts.store import AlertRecord, StoreError, open_store
from hl7_alerts.store.web import web
from hl7_alerts.strictjson import dumps


def _summary(record: AlertRecord) -> dict[str, Any]:
    a, t = record.alert, record.tracking
    return {
        "alert_id": a.alert_id,
        "state": str(a.state),
        "severity": str(a.severity),
        "rule": a.rule,
        "version": a.version,
        "patient": a.patient.id,
        "opened_at": a.opened_at.isoformat(),
        "acknowledged_by": t.acknowledged_by,
        "acknowledged_at": t.acknowledged_at.isoformat() if t.acknowledged_at else None,
        "reminders_sent": t.reminders_sent,
        # None: never paged anyone (raised by a quiet replay, nothing live since).
        "paged_at": t.notified_at.isoformat() if t.notified_at else None,
        "title": record.payload.get("title", ""),
    }


@click.group()
def alerts() -> None:
    """Look at alerts in the store and acknowledge them."""


@alerts.command("list")
@config_option
@click.option("--all", "include_closed", is_flag=True, help="include resolved and withdrawn alerts")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_alerts(config_path: Path, include_closed: bool, limit: int, as_json: bool) -> None:
    """Alerts, newest first: id, state, severity, rule, version, acknowledgement
    (``quiet``: recorded by a quiet replay and never paged), title."""
    config = config_or_default(config_path)

    async def run() -> list[AlertRecord]:
        store = await open_store(config.store_settings(), read_only=True)
        try:
            return await store.list_alerts(include_closed=include_closed, limit=limit)
        finally:
            await store.close()

    for record in asyncio.run(run()):
        row = _summary(record)
        if as_json:
            click.echo(dumps(row))
        else:
            acked = f"ack:{row['acknowledged_by']}" if row["acknowledged_by"] else "unacked"
            if not row["acknowledged_by"] and row["paged_at"] is None:
                acked = "quiet"  # recorded by a quiet replay, never paged
            click.echo(
                f"{row['alert_id']}\t{row['state']}\t{row['severity']}\t{row['rule']}\tv{row['version']}"
                f"\t{acked}\t{row['title']}"
            )


@alerts.command("show")
@config_option
@click.argument("alert_id")
def show_alert(config_path: Path, alert_id: str) -> None:
    """One alert as JSON: its state, last payload, audit trail, and who
    looked at it in the web view (``access``)."""
    config = config_or_default(config_path)

    async def run() -> Any:
        store = await open_store(config.store_settings(), read_only=True)
        try:
            detail = await store.alert_detail(alert_id)
            # Who looked at it in the web view (the access audit).
            return detail, await store.read(lambda tx: web(tx).access_trail(alert_id))
        finally:
            await store.close()

    found, access = asyncio.run(run())
    if found is None:
        raise click.ClickException(f"no alert {alert_id}")
    record, trail = found
    out = {
        **_summary(record),
        "payload": record.payload,
        "audit": [
            {"at": r.at, "kind": r.kind, "version": r.version, "event": r.event, "detail": r.detail}
            for r in trail
        ],
        "access": [
            {"at": r.at, "user": r.username, "via": r.via, "from": r.peer, "action": r.action,
             "detail": r.detail}
            for r in access
        ],
    }
    click.echo(dumps(out, indent=2))


@alerts.command("ack")
@config_option
@click.argument("alert_id")
@click.option("--by", "by", required=True, help="who acknowledges (name or pager id)")
def ack_alert(config_path: Path, alert_id: str, by: str) -> None:
    """Acknowledge an alert, as a pager would on <prefix>/acks.

    The `acknowledged` event goes out through the outbox: a running daemon
    publishes it within 5 seconds, a stopped one when it starts. Exits 1 if
    the alert is unknown or the store is not there.
    """
    config = config_or_default(config_path)
    now = system_clock()
    request = AckRequest(alert_id=alert_id, by=by.strip(), at=now)
    if not request.by:
        raise click.BadParameter("must not be empty", param_hint="--by")
    settings = config.pipeline_settings()

    async def run() -> AckOutcome:
        store = await open_store(config.store_settings(), create=False)
        try:
            return await store.transact(lambda tx: acknowledge_alert(tx, request, settings=settings, at=now))
        finally:
            await store.close()

    try:
        outcome = asyncio.run(run())
    except StoreError as exc:
        raise click.ClickException(f"store unavailable: {exc}") from None
    click.echo(f"{alert_id}\t{outcome}")
    if outcome is AckOutcome.UNKNOWN_ALERT:
        sys.exit(1)


@alerts.command("schema")
def alert_schema() -> None:
    """Print the JSON Schema of the alert payload (hl7-alerts/alert@1)."""
    click.echo((resources.files("hl7_alerts") / "schema" / "alert.schema.json").read_text(encoding="utf-8"))
