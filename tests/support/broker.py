"""A real Mosquitto the test controls: start, stop (or SIGSTOP it), restart.

The broker keeps one port for its whole life, chosen before the first start:
a test that stops and restarts it needs the daemon (which has the port in its
config) to find it again, and Mosquitto takes its port from its config file
and does not report an ephemeral one. That is what ``free_port`` is for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.ports import free_port, port_open
from tests.support.waiting import WAIT, eventually_sync


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        pytest.fail("mosquitto is not installed: run .ci/run, or `apt-get install mosquitto`", pytrace=False)
    return found


@dataclass
class Broker:
    """A Mosquitto process the test controls: start, stop, restart, same port."""

    directory: Path
    port: int = field(default_factory=free_port)  # fixed: a restart comes back on it (see above)
    process: subprocess.Popen[bytes] | None = None
    extra_conf: str = ""  # appended to mosquitto.conf (listeners, TLS, limits, password and ACL files)
    anonymous: bool = True  # False: every client needs an account (password_file in extra_conf)

    @property
    def log(self) -> Path:
        return self.directory / "mosquitto.log"

    def start(self) -> None:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        # Started as root, Mosquitto drops to its own user: let it write here.
        os.chmod(self.directory, 0o777)
        os.chmod(data, 0o777)
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous {'true' if self.anonymous else 'false'}\n"
            f"persistence true\npersistence_location {data}/\nautosave_interval 1\n"
            f"max_inflight_messages 20\nmax_queued_messages 100000\n" + self.extra_conf
        )
        with self.log.open("ab") as log:
            process = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=log, stderr=log)
        self.process = process
        eventually_sync(
            lambda: port_open(self.port) or process.poll() is not None, what=f"mosquitto on port {self.port}"
        )
        if process.poll() is not None:
            self.process = None
            raise RuntimeError(f"mosquitto exited {process.returncode} at start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=WAIT)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
