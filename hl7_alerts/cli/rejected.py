"""``hl7-alerts rejected list|show|resend``: messages answered AE/AR, kept raw."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import click

from hl7_alerts import logs
from hl7_alerts.cli.common import config_option, config_or_default
from hl7_alerts.config import Config
from hl7_alerts.daemon import system_clock
from hl7_alerts.resend import resend
from hl7_alerts.segments import decode
from hl7_alerts.store import RejectedMessage, Store, open_store

T = TypeVar("T")


def _on_store(config: Config, work: Callable[[Store], Awaitable[T]], *, read_only: bool) -> T:
    async def run() -> T:
        store = await open_store(config.store_settings(), read_only=read_only, create=False)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _resent(r: RejectedMessage) -> str:
    return f"{r.resend_ack} at {r.resent_at}" if r.resent_at else ""


def _sender(r: RejectedMessage) -> str:
    return f"{r.sending_application or ''}|{r.sending_facility or ''}"


@click.group()
def rejected() -> None:
    """Messages the daemon answered AE or AR, kept raw: look at them, and
    resend them through the pipeline once the cause is fixed."""


@rejected.command("list")
@config_option
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def rejected_list(config_path: Path, limit: int, as_json: bool) -> None:
    """Rejected messages, newest first: id, received, ACK code, MSH-10,
    sender (MSH-3|MSH-4), reason, and the last resend (tab-separated)."""
    config = config_or_default(config_path)
    logs.configure("warning", "console")
    found = _on_store(config, lambda store: store.list_rejected(limit=limit), read_only=True)
    if not as_json:
        click.echo("id\treceived_at\tack\tcontrol_id\tsender\treason\tresent")
    for r in found:
        if as_json:
            click.echo(json.dumps({k: v for k, v in asdict(r).items() if k != "raw"}, ensure_ascii=False))
            continue
        cells = (str(r.id), r.received_at, r.ack_code, r.control_id or "", _sender(r), r.reason, _resent(r))
        click.echo("\t".join(cells))


@rejected.command("show")
@config_option
@click.argument("rejected_id", type=int)
@click.option("--raw", "raw", is_flag=True, help="the message's bytes exactly as received, nothing else")
def rejected_show(config_path: Path, rejected_id: int, raw: bool) -> None:
    """One rejected message: why, and the message itself (one segment a line)."""
    config = config_or_default(config_path)
    logs.configure("warning", "console")
    found = _on_store(config, lambda store: store.rejected_message(rejected_id), read_only=True)
    if found is None or found.raw is None:
        raise click.ClickException(f"no rejected message {rejected_id}")
    if raw:
        sys.stdout.buffer.write(found.raw)
        return
    click.echo(f"id          {found.id}")
    click.echo(f"received_at {found.received_at}")
    click.echo(f"ack         {found.ack_code}")
    click.echo(f"reason      {found.reason}")
    click.echo(f"control_id  {found.control_id or ''}")
    click.echo(f"sender      {_sender(found)}")
    why = f" ({found.resend_text})" if found.resend_text else ""
    click.echo(f"resent      {_resent(found) or 'never'}{why}")
    click.echo("")
    text = decode(found.raw, config.hl7.fallback_charset)
    for segment in text.replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        if segment:
            click.echo(segment)


@rejected.command("resend")
@config_option
@click.argument("rejected_ids", nargs=-1, required=True, type=int)
def rejected_resend(config_path: Path, rejected_ids: tuple[int, ...]) -> None:
    """Run rejected messages through the pipeline again, as if the sender had
    resent them (after a config fix, say): prints id, MSH-10, the ACK code
    the sender would read and why. Alerts they raise go to the outbox (a
    running daemon publishes them). Exits 1 unless every one is accepted."""
    config = config_or_default(config_path)
    logs.configure("warning", "console")
    results = _on_store(
        config, lambda store: resend(store, rejected_ids, config, clock=system_clock), read_only=False
    )
    for r in results:
        click.echo(f"{r.rejected_id}\t{r.control_id or ''}\t{r.code or '-'}\t{r.text}")
    if not all(r.accepted for r in results):
        sys.exit(1)
