"""The ``hl7-alerts`` command line. Parses arguments and calls into the
package; holds no business logic of its own."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import structlog

from hl7_alerts import logs, offline
from hl7_alerts.alerts import AckOutcome, AckRequest
from hl7_alerts.config import Config, ConfigError, load_config
from hl7_alerts.daemon import Daemon, system_clock
from hl7_alerts.lifecycle import acknowledge_alert
from hl7_alerts.messages import salvage_header
from hl7_alerts.mllp import MllpClient
from hl7_alerts.model import OrderState, PatientKey
from hl7_alerts.sdnotify import Notifier
from hl7_alerts.segments import MessageError, read_segments, split_file
from hl7_alerts.store import AlertRecord, ScheduleRow, StoreError, open_store
from hl7_alerts.timeutil import UTC_ZONE


@click.group()
@click.version_option(package_name="hl7-alerts")
def main() -> None:
    """Pages the on-call clinician when an azathioprine patient's labs call for action."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="config.yaml",
    show_default=True,
    help="config.yaml to run with",
)
def serve(config_path: Path) -> None:
    """Run the daemon: MLLP in, alerts out to MQTT."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    logs.configure(config.logging.level, config.logging.format)
    try:
        asyncio.run(_serve(config, config_path))
    except StoreError as exc:
        # Unreachable database, unwritable folder, a schema too new: said in
        # one line (systemd restarts us; the journal shows why), no traceback.
        structlog.get_logger("hl7_alerts.cli").error("store_unavailable", error=str(exc))
        raise click.ClickException(f"store unavailable: {exc}") from None


async def _serve(config: Config, config_path: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    daemon = Daemon(config, notifier=Notifier.from_environment())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP re-reads the same file; a bad one is logged and the running config kept.
    loop.add_signal_handler(signal.SIGHUP, daemon.reload_from, lambda: load_config(config_path))
    await daemon.run(stop)


@main.group()
def config() -> None:
    """Work with config.yaml."""


def _store_name(cfg: Config) -> str:
    """Where the store is, for people: a PostgreSQL URL without its password."""
    if cfg.store.dsn is None:
        return f"SQLite {cfg.store.path}"
    url = urlsplit(cfg.store.dsn)
    if url.password is not None:
        url = url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@", 1))
    return f"PostgreSQL {urlunsplit(url)}"


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def config_check(file: Path) -> None:
    """Validate FILE: print "ok" and a summary, or the errors (file:line: key) and exit 1."""
    try:
        cfg = load_config(file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    metrics = f"{cfg.metrics.host}:{cfg.metrics.port}" if cfg.metrics.enabled else "off"
    click.echo(f"ok: {file}")
    click.echo(f"  mllp      {cfg.mllp.host}:{cfg.mllp.port}")
    click.echo(f"  store     {_store_name(cfg)}")
    click.echo(f"  mqtt      {cfg.mqtt.host}:{cfg.mqtt.port} prefix {cfg.mqtt.topic_prefix}")
    click.echo(f"  metrics   {metrics}")
    click.echo(f"  rules     hepatotoxicity at {cfg.rules.hepatotoxicity_x_uln:g}x ULN, "
               f"{cfg.rules.history_days} days of history")
    click.echo(f"  retention {cfg.retention.days} days")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=2575, show_default=True, type=int)
@click.option("--timeout", default=30.0, show_default=True, type=float, help="seconds to wait for each ACK")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def send(host: str, port: int, timeout: float, files: tuple[Path, ...]) -> None:
    """Send HL7 files over MLLP; print MSH-10, ACK code and MSA-3 per message.

    A file may hold one message or many (CR, LF or CRLF segment ends, batch
    envelopes allowed). Exits 1 if any message is not answered AA or CA.
    """
    failures = 0
    try:
        with MllpClient(host, port, timeout=timeout) as client:
            for path in files:
                for message in split_file(path.read_bytes()):
                    header = salvage_header(message, UTC_ZONE)
                    control_id = header.control_id if header else "(no MSH)"
                    code, text = _ack_fields(client.send(message))
                    click.echo(f"{control_id}\t{code}\t{text}")
                    if code not in ("AA", "CA"):
                        failures += 1
    except OSError as exc:
        raise click.ClickException(f"cannot talk to {host}:{port}: {exc}") from None
    if failures:
        sys.exit(1)


def _ack_fields(ack: bytes) -> tuple[str, str]:
    try:
        _, segments = read_segments(ack.decode("utf-8", errors="replace"))
    except MessageError:
        return "??", "unreadable answer"
    msa = next((s for s in segments if s.name == "MSA"), None)
    if msa is None:
        return "??", "answer has no MSA segment"
    return msa.get(1), msa.get(3)


def _config_or_default(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


# Commands on the store: the config names it.
_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="config.yaml",
    show_default=True,
    help="config.yaml naming the store",
)

_offline_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="config.yaml for terminology, thresholds and store (default: the embedded defaults)",
)


@main.command()
@_offline_config_option
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def check(config_path: Path | None, files: tuple[Path, ...]) -> None:
    """Evaluate HL7 files offline and print the alert events as JSON lines.

    Runs the daemon's own pipeline against a throwaway store (deleted after);
    no broker, nothing published. Messages that would be rejected print a
    line with "ack" and "error".
    """
    config = _config_or_default(config_path)
    logs.configure("warning", "console")
    events = asyncio.run(offline.check(files, config, now=datetime.now(UTC)))
    for event in events:
        click.echo(json.dumps(event, ensure_ascii=False, separators=(",", ":")))


@main.group()
def orders() -> None:
    """Medication orders for sites without a pharmacy feed."""


@orders.command("import")
@_config_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def orders_import(config_path: Path, file: Path) -> None:
    """Import orders from a CSV file (columns in the README). Importing the
    same file twice changes nothing; a bad row stops the import with an error
    naming the row and column."""
    config = _config_or_default(config_path)
    logs.configure("warning", "console")
    data = file.read_text(encoding="utf-8-sig")
    try:
        offline.read_orders_csv(data, config, str(file))  # validate before opening the store
    except offline.OrdersCsvError as exc:
        raise click.ClickException(str(exc)) from None
    result = asyncio.run(_import(config, data, str(file)))
    click.echo(
        f"imported {result.imported}, unchanged {result.unchanged}, alert events {result.alert_events}"
    )


async def _import(config: Config, data: str, source: str) -> offline.ImportResult:
    store = await open_store(config.store_settings())
    try:
        return await offline.import_orders(store, data, config, source=source, now=datetime.now(UTC))
    finally:
        await store.close()


@orders.command("list")
@_config_option
@click.option("--patient", "patient_id", required=True, help="PID-3 identifier")
@click.option("--id-type", default=None, help="identifier type (default: patient.id_type)")
@click.option("--authority", default=None, help="assigning authority (default: any)")
def orders_list(config_path: Path, patient_id: str, id_type: str | None, authority: str | None) -> None:
    """List a patient's orders with their status now (tab-separated)."""
    config = _config_or_default(config_path)
    logs.configure("warning", "console")
    found = asyncio.run(_list(config, patient_id, id_type or config.patient.id_type, authority))
    if not found:
        raise click.ClickException("no orders on file for that patient")
    for row in offline.order_rows(found, datetime.now(UTC)):
        click.echo("\t".join(row))


async def _list(
    config: Config, patient_id: str, id_type: str, authority: str | None
) -> list[tuple[PatientKey, OrderState]]:
    store = await open_store(config.store_settings())
    try:
        return await offline.list_orders(store, patient_id, id_type, authority)
    finally:
        await store.close()


# ---------------------------------------------------------------------------
# hl7-alerts schedule list


@main.group()
def schedule() -> None:
    """The liver-test schedule of thiopurine orders (aza.monitoring.overdue)."""


@schedule.command("list")
@_config_option
@click.option("--all", "include_stopped", is_flag=True, help="include schedules of stopped orders")
def schedule_list(config_path: Path, include_stopped: bool) -> None:
    """Who is due when: patient, order, state, last panel, next due, alert time,
    overdue now, alert sent (tab-separated, earliest first)."""
    config = _config_or_default(config_path)
    logs.configure("warning", "console")

    async def run() -> list[ScheduleRow]:
        store = await open_store(config.store_settings())
        try:
            return await store.list_schedules(include_stopped=include_stopped)
        finally:
            await store.close()

    for row in offline.schedule_rows(asyncio.run(run()), datetime.now(UTC)):
        click.echo("\t".join(row))


# ---------------------------------------------------------------------------
# hl7-alerts alerts list|show|ack|schema

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
        "title": record.payload.get("title", ""),
    }


@main.group()
def alerts() -> None:
    """Look at alerts in the store and acknowledge them."""


@alerts.command("list")
@_config_option
@click.option("--all", "include_closed", is_flag=True, help="include resolved and withdrawn alerts")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_alerts(config_path: Path, include_closed: bool, limit: int, as_json: bool) -> None:
    """Alerts, newest first: id, state, severity, rule, version, acknowledgement, title."""
    config = _config_or_default(config_path)

    async def run() -> list[AlertRecord]:
        store = await open_store(config.store_settings())
        try:
            return await store.list_alerts(include_closed=include_closed, limit=limit)
        finally:
            await store.close()

    for record in asyncio.run(run()):
        row = _summary(record)
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            acked = f"ack:{row['acknowledged_by']}" if row["acknowledged_by"] else "unacked"
            click.echo(
                f"{row['alert_id']}\t{row['state']}\t{row['severity']}\t{row['rule']}\tv{row['version']}"
                f"\t{acked}\t{row['title']}"
            )


@alerts.command("show")
@_config_option
@click.argument("alert_id")
def show_alert(config_path: Path, alert_id: str) -> None:
    """One alert as JSON: its state, last payload and audit trail."""
    config = _config_or_default(config_path)

    async def run() -> Any:
        store = await open_store(config.store_settings())
        try:
            return await store.alert_detail(alert_id)
        finally:
            await store.close()

    found = asyncio.run(run())
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
    }
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


@alerts.command("ack")
@_config_option
@click.argument("alert_id")
@click.option("--by", "by", required=True, help="who acknowledges (name or pager id)")
def ack_alert(config_path: Path, alert_id: str, by: str) -> None:
    """Acknowledge an alert, as a pager would on <prefix>/acks.

    The `acknowledged` event goes out through the outbox: a running daemon
    publishes it within mqtt.outbox_recheck, a stopped one when it starts.
    Exits 1 if the alert is unknown.
    """
    config = _config_or_default(config_path)
    now = system_clock()
    request = AckRequest(alert_id=alert_id, by=by.strip(), at=now)
    if not request.by:
        raise click.BadParameter("must not be empty", param_hint="--by")
    settings = config.pipeline_settings()

    async def run() -> AckOutcome:
        store = await open_store(config.store_settings())
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


# ---------------------------------------------------------------------------
# hl7-alerts store migrate


@main.group()
def store() -> None:
    """Work with the store itself."""


@store.command("migrate")
@click.option(
    "--from", "source", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="the SQLite store to copy (store.path)",
)
@click.option("--to", "dsn", required=True, help="the PostgreSQL store to copy into (store.dsn)")
def store_migrate(source: Path, dsn: str) -> None:
    """Copy a SQLite store into PostgreSQL: history, orders, schedules,
    alerts, the outbox and the audit trail, ids kept, in one transaction.

    Both are migrated to this version's schema first. Running it again
    copies what changed since; a PostgreSQL store that daemons have already
    written to is refused. Prints the rows per table; exits 1 on errors.
    """
    from hl7_alerts.store.transfer import migrate_sqlite_to_postgres  # noqa: PLC0415 (psycopg only when asked for)

    logs.configure("warning", "console")
    try:
        result = migrate_sqlite_to_postgres(source, dsn)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    for name, table in result.tables.items():
        removed = f", {table.removed} removed" if table.removed else ""
        click.echo(f"  {name:<18} {table.rows:>9} rows ({table.written} new or changed{removed})")
    click.echo(
        f"copied {result.rows} rows in {len(result.tables)} tables from {result.source} to the PostgreSQL "
        f"{result.target}: {result.written} new or changed, {result.removed} removed"
    )
