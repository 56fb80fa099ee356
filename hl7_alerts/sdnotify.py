"""systemd's notify protocol: READY, WATCHDOG, RELOADING, STOPPING.

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named
by ``$NOTIFY_SOCKET`` (``@name`` is Linux's abstract namespace). That is the
whole client, so it is written here rather than taken from a library. Without
``$NOTIFY_SOCKET`` (not under systemd, or in tests) every call is a no-op.
A failed send is logged and never raised: the daemon keeps serving.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("hl7_alerts.sdnotify")


class Notifier:
    """Sends notify datagrams to the socket systemd gave this process."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """``$NOTIFY_SOCKET``, and ``$WATCHDOG_USEC`` when meant for this process."""
        usec: int | None = None
        pid = environ.get("WATCHDOG_PID")
        if pid is None or pid == str(os.getpid()):
            try:
                usec = int(environ["WATCHDOG_USEC"])
            except (KeyError, ValueError):
                usec = None
        return cls(environ.get("NOTIFY_SOCKET") or None, watchdog_usec=usec if usec and usec > 0 else None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the timeout systemd set."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, *lines: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload tell this reload from a later one.
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")
