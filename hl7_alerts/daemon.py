"""Composition root: build the stages, run them, stop them in order.

Start: store (migrations) → MLLP listener → publisher. Stop: stop accepting →
let in-flight messages commit and get their ACKs (bounded by
``mllp.shutdown_grace_seconds``) → stop the publisher → close the store.
Everything runs under one `asyncio.TaskGroup`; signals are handled by the
caller (`cli.serve`), never below it. No business logic here: frames and
pagers' acks are answered by `frames.FrameHandler`, which this module wires
to the listener and the publisher.

Operations live here too: systemd notifications (READY once the store is open
and has committed a write, and the listener bound, WATCHDOG from a task on
this loop so a stalled loop stops pinging, RELOADING/READY around `reload`,
STOPPING), the metrics and /healthz server, and the daily retention task.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from hl7_alerts.acksig import read_keys
from hl7_alerts.config import Config, ConfigError
from hl7_alerts.frames import FrameHandler, FrameSettings
from hl7_alerts.metrics import Health, Metrics, OpsServer, check_health
from hl7_alerts.mllp import MllpServer, ServerLimits
from hl7_alerts.publisher import Publisher
from hl7_alerts.reader_process import ReadProcess
from hl7_alerts.scheduler import Scheduler
from hl7_alerts.sdnotify import Notifier
from hl7_alerts.store import Pruned, Store, StoreError, open_store
from hl7_alerts.tls import server_context

log = structlog.get_logger("hl7_alerts.daemon")

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


# Keys a reload cannot apply: the listener (its socket, limits, TLS context and
# allowlist), store, broker session, metrics socket, logging and the reminder
# scheduler's policy are set up once. Per section, None means every key.
RESTART_ONLY: dict[str, tuple[str, ...] | None] = {
    "mllp": (
        "host",
        "port",
        "max_message_bytes",
        "first_byte_timeout_seconds",
        "idle_timeout_seconds",
        "read_timeout_seconds",
        "max_connections",
        "max_connections_per_peer",
        "allow",
        "tls",
    ),
    "alerts": ("reminder_after", "reminder_max", "reminder_severities"),
    "store": None,
    "mqtt": None,
    "metrics": None,
    "logging": None,
}

RETENTION_TASK = "retention"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    """What a reload did: keys now in force, and keys that need a restart."""

    applied: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    error: str | None = None


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _changed_keys(old: Config, new: Config) -> list[str]:
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _frame_settings(config: Config) -> FrameSettings:
    return FrameSettings(
        options=config.parse_options(),
        pipeline=config.pipeline_settings(),
        rejected_max_rows=config.retention.rejected_max_rows,
    )


def _ack_keys(config: Config) -> tuple[bytes, ...]:
    """The pager-ack keys (``mqtt.acks.hmac_key_file``); none: acks unsigned.
    Loading the config read the file already; this reads what serve runs with."""
    path = config.mqtt.acks.hmac_key_file
    if path is None:
        return ()
    try:
        return read_keys(path)
    except ValueError as exc:
        raise ConfigError(f"mqtt.acks.hmac_key_file: {exc}") from None


def _tls(config: Config) -> ssl.SSLContext | None:
    tls = config.mllp.tls
    if tls.cert_file is None or tls.key_file is None:
        return None
    return server_context(tls.cert_file, tls.key_file, tls.ca_file)


async def _writable_store(config: Config, at: datetime) -> Store:
    """The store, opened and proven to take a write: one row committed
    through the writer, as a message's would be. A store that opens but
    cannot be written (a read-only file or folder, a read-only database or
    standby) is a start-up error naming it, never a daemon that reports
    ready and answers AR to everything."""
    settings = config.store_settings()
    store = await open_store(settings)
    try:
        await store.probe_write(at)
    except StoreError as exc:
        await store.close()
        where = "store.dsn" if settings.dsn is not None else f"{settings.path} (store.path)"
        raise StoreError(f"{where} cannot be written: {exc}") from None
    return store


class Daemon:
    """One hl7-alerts process: listener, store, publisher."""

    def __init__(
        self, config: Config, *, clock: Clock = system_clock, notifier: Notifier | None = None
    ) -> None:
        self.config = config
        self._clock = clock
        self._current = _frame_settings(config)
        self.store: Store | None = None
        self.frames: FrameHandler | None = None
        self.reader: ReadProcess | None = None
        self.server: MllpServer | None = None
        self.publisher: Publisher | None = None
        self.scheduler: Scheduler | None = None
        self.ready = asyncio.Event()
        self.metrics = Metrics()
        # Silent unless given one: the environment is read at the top (cli.serve).
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.ops: OpsServer | None = None
        self._stopping = False

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def metrics_port(self) -> int | None:
        """The bound metrics/healthz port; None when disabled or not bound."""
        return self.ops.port if self.ops is not None else None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order."""
        cfg = self.config
        ack_keys = _ack_keys(cfg)
        store = await _writable_store(cfg, self._clock())
        store.commit_observer = self.metrics.observe_commit
        self.store = store
        reader = ReadProcess()
        reader.start()
        self.reader = reader
        frames = FrameHandler(
            store,
            lambda: self._current,
            self.metrics,
            self._clock,
            max_message_bytes=cfg.mllp.max_message_bytes,
            ack_keys=ack_keys,
            reader=reader,
        )
        self.frames = frames
        try:
            self.server = MllpServer(
                frames.handle_frame,
                frames.handle_oversize,
                host=cfg.mllp.host,
                port=cfg.mllp.port,
                limits=ServerLimits(
                    max_frame_bytes=cfg.mllp.max_message_bytes,
                    first_byte_timeout=cfg.mllp.first_byte_timeout_seconds,
                    idle_timeout=cfg.mllp.idle_timeout_seconds,
                    read_timeout=cfg.mllp.read_timeout_seconds,
                    max_connections=cfg.mllp.max_connections,
                    max_connections_per_peer=cfg.mllp.max_connections_per_peer,
                    allow=cfg.mllp.networks(),
                    tls_handshake_timeout=cfg.mllp.tls.handshake_timeout_seconds,
                ),
                tls=_tls(cfg),
                on_closed=self.metrics.mllp_closed,
            )
            self.publisher = Publisher(
                store,
                cfg.mqtt_settings(),
                clock=self._clock,
                on_ack=frames.handle_ack,
            )
            self.scheduler = Scheduler(
                store, policy=cfg.alerts.reminder_policy(), settings=self._current.pipeline, clock=self._clock
            )
            await self.server.start()
            await self._start_ops()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.publisher.run(), name="publisher")
                background = [tg.create_task(self._retention(stop), name="retention")]
                interval = self.notifier.watchdog_interval
                if interval is not None:
                    background.append(tg.create_task(self._watchdog(interval), name="watchdog"))
                tg.create_task(self.scheduler.run(), name="scheduler")
                self.ready.set()
                log.info("daemon_ready", mllp_port=self.port, metrics_port=self.metrics_port)
                self.notifier.ready()
                await stop.wait()
                log.info("daemon_stopping")
                self._stopping = True
                self.notifier.stopping()
                await self.server.stop(self.config.mllp.shutdown_grace_seconds)
                self.scheduler.stop()
                self.publisher.stop()
                for task in background:
                    task.cancel()
        finally:
            if self.ops is not None:
                await self.ops.stop()
            await reader.stop()
            await store.close()
            log.info("daemon_stopped")

    # -- operations -----------------------------------------------------------

    async def _start_ops(self) -> None:
        server, publisher, store = self.server, self.publisher, self.store
        assert server is not None
        assert publisher is not None
        assert store is not None
        self.metrics.watch(
            mqtt_connected=lambda: publisher.connected,
            open_connections=lambda: server.connection_count,
            commit_failing=lambda: store.commit_failure is not None,
        )
        cfg = self.config.metrics
        if not cfg.enabled:
            return
        ops = OpsServer(host=cfg.host, port=cfg.port, metrics=self._scrape, health=self.health)
        try:
            await ops.start()
        except OSError as exc:
            # Paging is the job; metrics are not worth refusing to start for.
            # A scrape that fails tells the monitoring as much.
            log.error("metrics_unavailable", host=cfg.host, port=cfg.port, error=str(exc))
            return
        self.ops = ops

    async def _scrape(self) -> bytes:
        store = self.store
        if store is not None and not self._stopping:
            try:
                async with asyncio.timeout(self.config.health.store_probe_timeout_seconds):
                    backlog = await store.outbox_backlog()
            except (TimeoutError, StoreError) as exc:
                log.warning("metrics_outbox_unreadable", error=str(exc) or "timed out")
            else:
                self.metrics.set_outbox(backlog, self._clock())
        return self.metrics.exposition()

    async def health(self) -> Health:
        """Ready means: running, the store takes a write now, the outbox is moving."""
        connected = self.publisher is not None and self.publisher.connected
        if not self.ready.is_set() or self._stopping or self.store is None:
            state = "stopping" if self._stopping else "starting"
            return Health(ready=False, reasons=(f"daemon is {state}",), mqtt_connected=connected)
        return await check_health(
            self.store,
            self.metrics,
            now=self._clock(),
            max_outbox_age=self.config.health.max_outbox_age_seconds,
            probe_timeout=self.config.health.store_probe_timeout_seconds,
            mqtt_connected=connected,
        )

    async def _watchdog(self, interval: float) -> None:
        # A timer, not a condition wait: if this loop stalls the pings stop and
        # systemd (WatchdogSec=) restarts the process, which is the point.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def reload(self, new: Config) -> ReloadResult:
        """Apply a new config to the messages that arrive from now on.

        Connections stay open. Parse options and pipeline settings are swapped
        together as one `FrameSettings` value, which the frame handler reads
        once per frame, so no message sees half of each. Keys in
        `RESTART_ONLY` keep their running values and are reported.
        """
        old = self.config
        needs_restart: list[str] = []
        kept: dict[str, Any] = {}
        for section, keys in RESTART_ONLY.items():
            old_section, new_section = getattr(old, section), getattr(new, section)
            names = keys if keys is not None else tuple(type(old_section).model_fields)
            differ = [n for n in names if getattr(old_section, n) != getattr(new_section, n)]
            if differ:
                needs_restart += [f"{section}.{n}" for n in differ]
                kept[section] = new_section.model_copy(update={n: getattr(old_section, n) for n in differ})
        effective = new.model_copy(update=kept)
        current = _frame_settings(effective)
        applied = _changed_keys(old, effective)
        self.config, self._current = effective, current
        if self.scheduler is not None:
            self.scheduler.update_settings(current.pipeline)
        self.metrics.record_reload(True)
        log.info("config_reloaded", applied=applied, needs_restart=needs_restart)
        if needs_restart:
            log.warning("config_reload_needs_restart", keys=needs_restart)
        return ReloadResult(applied=tuple(applied), needs_restart=tuple(needs_restart))

    def reload_from(self, load: Callable[[], Config]) -> ReloadResult:
        """SIGHUP: load a config and `reload` it; a bad one is logged and the
        running config kept. Brackets the work with RELOADING=1 / READY=1."""
        # Before READY=1 there is nothing to bracket: systemd is still waiting
        # for start-up, and a READY=1 here would announce it too early.
        started = self.ready.is_set() and not self._stopping
        if started:
            self.notifier.reloading()
        try:
            new = load()
            return self.reload(new)
        except ConfigError as exc:
            self.metrics.record_reload(False)
            log.error("config_reload_rejected", error=str(exc))
            return ReloadResult(error=str(exc))
        except Exception as exc:
            # Not a config problem (say, a file that is not UTF-8): still keep
            # the running config rather than let a signal handler fail.
            self.metrics.record_reload(False)
            log.exception("config_reload_failed")
            return ReloadResult(error=f"{type(exc).__name__}: {exc}")
        finally:
            if started:
                self.notifier.ready()

    async def prune_once(self) -> Pruned:
        """One retention run: drop what is older than ``retention.days``."""
        store = self.store
        assert store is not None
        now, retention = self._clock(), self.config.retention
        pruned = await store.prune(
            now - timedelta(days=retention.days),
            rejected_before=now - timedelta(days=retention.rejected_days),
        )
        await store.mark_run(RETENTION_TASK, now)
        self.metrics.record_prune(pruned)
        log.info(
            "retention_pruned", days=retention.days, rejected_days=retention.rejected_days, **asdict(pruned)
        )
        return pruned

    async def _retention(self, stop: asyncio.Event) -> None:
        """Prune every ``retention.interval_hours``, counted from the last run
        the store remembers, so frequent restarts do not postpone it."""
        store = self.store
        assert store is not None
        try:
            last = await store.last_run(RETENTION_TASK)
            if last is None:
                # A new store: start the count now rather than prune mid-start-up.
                last = self._clock()
                await store.mark_run(RETENTION_TASK, last)
        except StoreError as exc:
            # Never take the daemon down over housekeeping: count from now.
            log.error("retention_schedule_unreadable", error=str(exc))
            last = self._clock()
        while True:
            due = last + timedelta(hours=self.config.retention.interval_hours)
            delay = max(0.0, (due - self._clock()).total_seconds())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
                    return
            try:
                await self.prune_once()
            except Exception:
                log.exception("retention_failed")
            last = self._clock()
