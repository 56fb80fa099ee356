"""The daemon as the tests run it: in the test's own event loop (``running``,
with an injected clock or notifier), from a config built here
(``make_config``), on port 0 for MLLP and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hl7_alerts.config import Config, parse_config
from hl7_alerts.daemon import Daemon
from tests.support.waiting import WAIT

CLI = [sys.executable, "-m", "hl7_alerts"]  # the `hl7-alerts` command, as a process of its own


def config_data(store_dir: Path, broker_port: int, prefix: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config as data: MLLP and metrics on port 0, the store in
    ``store_dir``, the broker at ``broker_port`` under topic prefix and client
    id ``prefix``, JSON logs; each of ``sections`` merged over its section."""
    data: dict[str, Any] = {
        "mllp": {"host": "127.0.0.1", "port": 0},
        "store": {"path": str(store_dir / "store.sqlite3")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": prefix, "client_id": prefix,
                 "reconnect_max_seconds": 0.5},
        "logging": {"format": "json"},
        "metrics": {"port": 0},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return data


def make_config(tmp_path: Path, broker_port: int, prefix: str, **sections: dict[str, Any]) -> Config:
    """``config_data`` parsed, for a daemon in this process."""
    return parse_config(json.dumps(config_data(tmp_path, broker_port, prefix, **sections)))


@dataclass
class RunningDaemon:
    daemon: Daemon
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        return self.daemon.port

    async def shutdown(self) -> None:
        self.stop.set()
        async with asyncio.timeout(WAIT):
            await self.task


@contextlib.asynccontextmanager
async def running(config: Config, **kwargs: Any) -> AsyncIterator[RunningDaemon]:
    """The daemon in this event loop, ready; stopped on the way out."""
    daemon = Daemon(config, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    ready = asyncio.create_task(daemon.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises the start-up error
    if ready not in done:
        raise TimeoutError("daemon did not become ready")
    run = RunningDaemon(daemon, stop, task)
    try:
        yield run
    finally:
        if not task.done():
            await run.shutdown()


