"""The daemon as the tests run it, always on port 0 for MLLP and metrics:
in the test's own event loop (``running``, with an injected clock or
notifier), or as a real ``hl7-alerts serve`` process (``serve``) that learns
its ports from the daemon's own log line, so no test races another process
for a port it probed free.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from hl7_alerts.config import Config, load_config, parse_config
from hl7_alerts.daemon import Daemon
from tests.support.waiting import WAIT, eventually, eventually_sync

CLI = [sys.executable, "-m", "hl7_alerts"]  # the `hl7-alerts` command, as a process of its own

# The ``rules`` section for a test about delivery, not monitoring: no
# aza.monitoring.overdue alerts among the ones it counts.
NO_MONITORING: dict[str, Any] = {"monitoring": {"enabled": False}}


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


def write_config(path: Path, broker_port: int, prefix: str, **sections: dict[str, Any]) -> Path:
    """``config_data`` written to ``path`` (JSON is YAML), the store next to
    it, for ``serve``. Returns ``path``."""
    path.write_text(json.dumps(config_data(path.parent, broker_port, prefix, **sections)))
    return path


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


def log_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log entries in ``text`` (other lines, and a line still being
    written, are skipped)."""
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on, read from /proc (Linux)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


@dataclass
class ServeProcess:
    """One ``hl7-alerts serve`` process: its config, its log, the ports it bound.

    A context manager, sync (``with``) or async (``async with``): entering
    starts the process and returns once the daemon is ready, with ``port``
    and ``metrics_port`` read from its ``daemon_ready`` log line; leaving
    stops it (``stop``) and, if the block failed, adds the log's last lines
    to the error. ``spawn`` and ``until_ready`` do the two halves of entering
    for a test that starts several daemons together.

    The config must put MLLP on port 0, and metrics on port 0 or off: that
    is what makes starting it race-free. A config that logs at ``warning`` or
    above never writes ``daemon_ready``; the daemon then counts as ready
    once its MLLP port listens, read from /proc, and metrics must be off
    (the one listening port is then the MLLP port).
    """

    config: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)  # over os.environ
    name: str = "hl7-alerts serve"
    start_timeout: float = WAIT
    umask: int | None = None  # the child's (None: this process's)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    port: int = field(default=0, init=False)  # MLLP, once ready
    metrics_port: int | None = field(default=None, init=False)  # None: metrics off
    _log_from: int = field(default=0, init=False, repr=False)  # this run's log starts here (a log may be reused)
    _quiet: bool = field(default=False, init=False, repr=False)

    # -- starting ----------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process; ``until_ready`` (or entering) waits for it."""
        settings = load_config(self.config)
        if settings.mllp.port != 0:
            raise ValueError(f"{self.config}: mllp.port must be 0 (the port is read from the log)")
        if settings.metrics.enabled and settings.metrics.port != 0:
            raise ValueError(f"{self.config}: metrics.port must be 0, or metrics.enabled false")
        if settings.logging.format == "console":
            raise ValueError(f"{self.config}: logging.format console cannot be read back; use json")
        self._quiet = settings.logging.level in ("warning", "error")
        if self._quiet and settings.metrics.enabled:
            raise ValueError(f"{self.config}: logs above info and metrics on: which port is MLLP?")
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:  # the child keeps its own descriptor
            umask = self.umask
            self.process = subprocess.Popen(
                [*CLI, "serve", "--config", str(self.config)], stdout=out, stderr=out,
                env={**os.environ, **self.env},
                preexec_fn=None if umask is None else (lambda: os.umask(umask) and None),  # noqa: PLW1509
            )

    def _up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            return True
        if self._quiet:
            return bool(listening_ports(self.process.pid))
        return bool(self.events("daemon_ready"))

    def _take_ports(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.process.returncode} at start-up:\n{self.tail()}")
        if self._quiet:
            (self.port,) = listening_ports(self.process.pid)
            return
        ready = self.events("daemon_ready")[0]
        self.port, self.metrics_port = ready["mllp_port"], ready["metrics_port"]

    def _waiting_for(self) -> str:
        return f"{self.name} to be ready ({'its MLLP port' if self._quiet else 'daemon_ready'} in {self.log})"

    def ready_sync(self) -> None:
        """Block until the spawned daemon is ready; ``until_ready``'s twin."""
        eventually_sync(self._up, self.start_timeout, what=self._waiting_for(), detail=self.tail)
        self._take_ports()

    async def until_ready(self) -> None:
        """Wait until the spawned daemon is ready (or raise, with its log)."""
        await eventually(self._up, self.start_timeout, what=self._waiting_for(), detail=self.tail)
        self._take_ports()

    def __enter__(self) -> ServeProcess:
        self.spawn()
        try:
            self.ready_sync()
        except BaseException:
            self.kill()
            raise
        return self

    async def __aenter__(self) -> ServeProcess:
        self.spawn()
        try:
            await self.until_ready()
        except BaseException:
            self.kill()
            raise
        return self

    # -- stopping ----------------------------------------------------------------

    def stop(self, timeout: float = WAIT) -> int | None:
        """SIGTERM, up to ``timeout`` seconds for the daemon's own shutdown,
        then SIGKILL. The exit code (0: a clean stop); None if never started."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, now (a crash, or cleaning up after a failed test)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)

    def _leave(self, exc: BaseException | None) -> None:
        self.stop()
        if exc is not None:
            exc.add_note(f"{self.name}'s log ({self.log}), last lines:\n{self.tail()}")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._leave(exc)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self._leave, exc)

    # -- looking at it -----------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send_signal(self, sig: int) -> None:
        assert self.process is not None, "not started"
        self.process.send_signal(sig)

    def exit_code(self, timeout: float = WAIT) -> int:
        """Wait up to ``timeout`` seconds for the process to end by itself."""
        assert self.process is not None, "not started"
        return self.process.wait(timeout)

    def log_text(self) -> str:
        """What this process has logged so far."""
        with self.log.open("rb") as f:
            f.seek(self._log_from)
            return f.read().decode("utf-8", "replace")

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_text().splitlines()[-lines:])
        return "(no log)"

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """This process's JSON log entries so far (those named ``event``)."""
        return [e for e in log_lines(self.log_text()) if event is None or e.get("event") == event]

    async def wait_event(self, event: str, count: int = 1, timeout: float = WAIT) -> dict[str, Any]:
        """The ``count``-th log entry named ``event``, once it is written."""

        def nth() -> dict[str, Any] | None:
            found = self.events(event)
            return found[count - 1] if len(found) >= count else None

        return await eventually(nth, timeout, what=f"{event!r} #{count} in {self.name}'s log", detail=self.tail)


def serve(config: Path, *, log: Path | None = None, env: dict[str, str] | None = None,
          name: str = "hl7-alerts serve") -> ServeProcess:
    """``hl7-alerts serve --config config``, not started yet: ``with`` or
    ``async with`` it. Its output goes to ``log`` (default: daemon.log next to
    the config), appended."""
    return ServeProcess(config, log or config.parent / "daemon.log", env=env or {}, name=name)
