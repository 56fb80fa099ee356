"""``hl7-alerts store migrate``: a SQLite store into PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import click

from hl7_alerts import logs
from hl7_alerts.store import StoreError


@click.group()
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
