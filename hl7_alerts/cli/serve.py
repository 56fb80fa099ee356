"""``hl7-alerts serve``: run the daemon, with signals handled here at the top."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from pathlib import Path

import click
import structlog

from hl7_alerts import logs
from hl7_alerts.config import Config, ConfigError, load_config
from hl7_alerts.config.exposure import exposures
from hl7_alerts.daemon import Daemon
from hl7_alerts.sdnotify import Notifier
from hl7_alerts.store import StoreError


@click.command()
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
    log = structlog.get_logger("hl7_alerts.cli")
    for warning in config.warnings:
        log.warning("config_warning", warning=warning)
    for exposure in exposures(config):
        # What `config check` warns about, in the journal too: the daemon runs.
        log.warning("config_exposure", key=exposure.key, warning=exposure.warning)
    try:
        asyncio.run(_serve(config, config_path))
    except ConfigError as exc:
        # A file the config names went away or changed since it was checked
        # (the pager-ack key file): one line, as at load.
        raise click.ClickException(str(exc)) from None
    except StoreError as exc:
        # Unreachable database, unwritable folder, a schema too new: said in
        # one line (systemd restarts us; the journal shows why), no traceback.
        log.error("store_unavailable", error=str(exc))
        raise click.ClickException(f"store unavailable: {exc}") from None
    except OSError as exc:
        log = structlog.get_logger("hl7_alerts.cli")
        if exc.errno in _LISTEN_ERRORS:
            # The MLLP port taken (another hl7-alerts, another listener), an
            # address this host does not have, a port below 1024: one line.
            where, reason = f"{config.mllp.host}:{config.mllp.port}", os.strerror(exc.errno or 0)
            log.error("mllp_listen_failed", address=where, error=reason)
            raise click.ClickException(
                f"cannot listen for MLLP on {where} (mllp.host, mllp.port): {reason}"
            ) from None
        log.error("start_failed", error=str(exc))
        raise click.ClickException(f"cannot start: {exc}") from None


_LISTEN_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


async def _serve(config: Config, config_path: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    daemon = Daemon(config, notifier=Notifier.from_environment())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP re-reads the same file; a bad one is logged and the running config kept.
    loop.add_signal_handler(signal.SIGHUP, daemon.reload_from, lambda: load_config(config_path))
    await daemon.run(stop)
