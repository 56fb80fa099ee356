"""``hl7-alerts orders import|list``: orders for sites without a pharmacy feed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import click

from hl7_alerts import logs, offline
from hl7_alerts.cli.common import config_option, config_or_default
from hl7_alerts.config import Config
from hl7_alerts.model import OrderState, PatientKey
from hl7_alerts.store import open_store


@click.group()
def orders() -> None:
    """Medication orders for sites without a pharmacy feed."""


@orders.command("import")
@config_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def orders_import(config_path: Path, file: Path) -> None:
    """Import orders from a CSV file (columns in the README). Importing the
    same file twice changes nothing; a bad row stops the import with an error
    naming the row and column."""
    config = config_or_default(config_path)
    logs.configure("warning", "console")
    try:
        data = offline.decode_csv(file.read_bytes(), str(file))
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
@config_option
@click.option("--patient", "patient_id", required=True, help="PID-3 identifier")
@click.option("--id-type", default=None, help="identifier type (default: patient.id_type)")
@click.option("--authority", default=None, help="assigning authority (default: any)")
def orders_list(config_path: Path, patient_id: str, id_type: str | None, authority: str | None) -> None:
    """List a patient's orders with their status now (tab-separated)."""
    config = config_or_default(config_path)
    logs.configure("warning", "console")
    found = asyncio.run(_list(config, patient_id, id_type or config.patient.id_types[0], authority))
    if not found:
        raise click.ClickException("no orders on file for that patient")
    for row in offline.order_rows(found, datetime.now(UTC)):
        click.echo("\t".join(row))


async def _list(
    config: Config, patient_id: str, id_type: str, authority: str | None
) -> list[tuple[PatientKey, OrderState]]:
    store = await open_store(config.store_settings(), read_only=True)
    try:
        return await offline.list_orders(store, patient_id, id_type, authority)
    finally:
        await store.close()
