"""``hl7-alerts web``: run the web view; ``web user add|list|remove``: its local users."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click
import structlog

from hl7_alerts import logs
from hl7_alerts.cli.common import config_option, config_or_default
from hl7_alerts.config import Config
from hl7_alerts.store import StoreError, Transaction, open_store
from hl7_alerts.store.web import web as web_queries

T = TypeVar("T")


@click.group(invoke_without_command=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="config.yaml",
    show_default=True,
    help="config.yaml to run with (web.*, the store)",
)
@click.pass_context
def web(ctx: click.Context, config_path: Path) -> None:
    """Run the web view (web.host:web.port) beside the daemon, on the same store."""
    if ctx.invoked_subcommand is not None:
        return
    config = config_or_default(config_path)
    logs.configure(config.logging.level, config.logging.format)
    for warning in config.warnings:
        structlog.get_logger("hl7_alerts.cli").warning("config_warning", warning=warning)
    from hl7_alerts.web.server import serve_web  # noqa: PLC0415 (the web stack only for this command)

    try:
        serve_web(config)
    except (StoreError, OSError) as exc:
        structlog.get_logger("hl7_alerts.cli").error("web_unavailable", error=str(exc))
        raise click.ClickException(f"web view cannot start: {exc}") from None


@web.group()
def user() -> None:
    """Local users of the web view (single sign-on users need none)."""


def _run(config: Config, unit: Callable[[Transaction], T]) -> T:
    logs.configure("warning", "console")  # stdout is the command's answer

    async def go() -> T:
        store = await open_store(config.store_settings())
        try:
            return await store.transact(unit)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StoreError as exc:
        raise click.ClickException(f"store unavailable: {exc}") from None


@user.command("add")
@config_option
@click.argument("name")
def user_add(config_path: Path, name: str) -> None:
    """Add NAME, or give NAME a new password (ending their sessions).

    The password is read from standard input (its first line), never from
    the command line, where other users of the machine could see it.
    """
    from hl7_alerts.web.auth import MAX_NAME, PasswordRejected, hash_password  # noqa: PLC0415

    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise click.BadParameter(f"must be 1 to {MAX_NAME} printable characters", param_hint="NAME")
    if sys.stdin.isatty():
        click.echo("password (then Enter): ", nl=False, err=True)
    password = sys.stdin.readline().rstrip("\r\n")
    try:
        hashed = hash_password(password)
    except PasswordRejected as exc:
        raise click.ClickException(f"password {exc}") from None
    config = config_or_default(config_path)
    now = datetime.now(UTC)
    created = _run(config, lambda tx: web_queries(tx).put_user(name, hashed, now))
    click.echo(f"{name}\t{'added' if created else 'password changed'}")


@user.command("list")
@config_option
def user_list(config_path: Path) -> None:
    """Local users: name and when they were added."""
    for name, created in _run(config_or_default(config_path), lambda tx: web_queries(tx).users()):
        click.echo(f"{name}\t{created}")


@user.command("remove")
@config_option
@click.argument("name")
def user_remove(config_path: Path, name: str) -> None:
    """Remove NAME and end their sessions; exits 1 when there is no such user."""
    if not _run(config_or_default(config_path), lambda tx: web_queries(tx).remove_user(name)):
        click.echo(f"no user {name}", err=True)
        sys.exit(1)
    click.echo(f"{name}\tremoved")
