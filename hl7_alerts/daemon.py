"""Composition root: build the stages, run them, stop them in order.

Start: store (migrations) → MLLP listener → publisher. Stop: stop accepting →
let in-flight messages commit and get their ACKs (bounded by
``mllp.shutdown_grace_seconds``) → stop the publisher → close the store.
Everything runs under one `asyncio.TaskGroup`; signals are handled by the
caller (`cli.serve`), never below it. No business logic here: a frame goes to
`messages.parse_message`, then `pipeline.process` inside `store.transact`,
and the outcome becomes an ACK.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from structlog.contextvars import bound_contextvars

from hl7_alerts.ack import AckError, build_ack
from hl7_alerts.config import Config
from hl7_alerts.messages import ErrorCode, MessageError, parse_message, salvage_header
from hl7_alerts.mllp import MllpServer, ServerLimits
from hl7_alerts.model import AckCode, Header
from hl7_alerts.pipeline import process
from hl7_alerts.publisher import MqttSettings, Publisher
from hl7_alerts.store import SqliteStore, Store, StoreError

log = structlog.get_logger("hl7_alerts.daemon")

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class Daemon:
    """One hl7-alerts process: listener, store, publisher."""

    def __init__(self, config: Config, *, clock: Clock = system_clock) -> None:
        self.config = config
        self._clock = clock
        self._options = config.parse_options()
        self._settings = config.pipeline_settings()
        self._ack_ids = itertools.count(1)
        self._ack_prefix = f"{os.getpid():x}{int(clock().timestamp()):x}"
        self.store: Store | None = None
        self.server: MllpServer | None = None
        self.publisher: Publisher | None = None
        self.ready = asyncio.Event()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order."""
        cfg = self.config
        store = await SqliteStore.open(cfg.store.path)
        self.store = store
        try:
            self.server = MllpServer(
                self.handle_frame,
                self.handle_oversize,
                host=cfg.mllp.host,
                port=cfg.mllp.port,
                limits=ServerLimits(
                    max_frame_bytes=cfg.mllp.max_message_bytes,
                    idle_timeout=cfg.mllp.idle_timeout_seconds,
                    max_connections=cfg.mllp.max_connections,
                ),
            )
            self.publisher = Publisher(
                store,
                MqttSettings(
                    host=cfg.mqtt.host,
                    port=cfg.mqtt.port,
                    topic_prefix=cfg.mqtt.topic_prefix,
                    client_id=cfg.mqtt.client_id,
                    username=cfg.mqtt.username,
                    password=cfg.mqtt.password,
                    keepalive=cfg.mqtt.keepalive_seconds,
                    reconnect_max=cfg.mqtt.reconnect_max_seconds,
                ),
                clock=self._clock,
            )
            await self.server.start()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.publisher.run(), name="publisher")
                self.ready.set()
                log.info("daemon_ready", mllp_port=self.port)
                await stop.wait()
                log.info("daemon_stopping")
                await self.server.stop(cfg.mllp.shutdown_grace_seconds)
                self.publisher.stop()
        finally:
            await store.close()
            log.info("daemon_stopped")

    def _ack_id(self) -> str:
        return f"{self._ack_prefix}{next(self._ack_ids):x}"

    def _answer(
        self, header: Header | None, code: AckCode, *, text: str = "", error: AckError | None = None
    ) -> bytes:
        return build_ack(header, code, text=text, error=error, now=self._clock(), control_id=self._ack_id())

    async def handle_frame(self, data: bytes, peer: str) -> bytes:
        """One MLLP frame in, its ACK out; the ACK is sent only after commit."""
        received_at = self._clock()
        store = self.store
        assert store is not None
        with bound_contextvars(peer=peer):
            try:
                message = parse_message(data, self._options)
            except MessageError as exc:
                return await self._reject(data, exc, received_at)
            except Exception:
                log.exception("parse_crashed")
                error = MessageError(
                    "receiver could not read this message",
                    ack_code=AckCode.AE,
                    error_code=ErrorCode.INTERNAL_ERROR,
                )
                return await self._reject(data, error, received_at)
            header = message.header
            with bound_contextvars(control_id=header.control_id, msg_type=header.type_code):
                settings = self._settings
                try:
                    outcome = await store.transact(
                        lambda tx: process(tx, message, data, received_at=received_at, settings=settings)
                    )
                except StoreError as exc:
                    log.error("store_unavailable", error=str(exc))
                    return self._answer(
                        header,
                        AckCode.AR,
                        text="store unavailable, resend later",
                        error=AckError(reason=str(exc)[:200], error_code=ErrorCode.INTERNAL_ERROR),
                    )
                except Exception as exc:
                    # A defect of ours on this message: never AA (it is not
                    # stored), and AR so the sender keeps it and resends.
                    log.exception("pipeline_failed")
                    return self._answer(
                        header,
                        AckCode.AR,
                        text="internal error, resend later",
                        error=AckError(reason=type(exc).__name__, error_code=ErrorCode.INTERNAL_ERROR),
                    )
                # Debug, not info: one JSON line per message was a tenth of the
                # daemon's CPU at load (bench/). Rejections and warnings stay.
                log.debug(
                    "message_processed",
                    ack=str(outcome.ack_code),
                    duplicate=outcome.duplicate,
                    alert_changes=len(outcome.changes),
                )
                return self._answer(header, outcome.ack_code, text=outcome.ack_text)

    async def _reject(self, data: bytes, exc: MessageError, received_at: datetime) -> bytes:
        """Keep the raw bytes of a message we will not process, then NAK it."""
        header = salvage_header(data, self._options.timezone, self._options.fallback_charset)
        store = self.store
        assert store is not None
        with bound_contextvars(control_id=header.control_id if header else None):
            log.warning(
                "message_rejected",
                ack=str(exc.ack_code),
                reason=exc.reason,
                segment=exc.segment,
                field=exc.field,
            )
            try:
                await store.transact(
                    lambda tx: tx.insert_rejected(
                        header, data, received_at=received_at, ack_code=exc.ack_code, reason=exc.reason
                    )
                )
            except StoreError as store_exc:
                log.error("store_unavailable", error=str(store_exc))
                return self._answer(
                    header,
                    AckCode.AR,
                    text="store unavailable, resend later",
                    error=AckError(reason=str(store_exc)[:200], error_code=ErrorCode.INTERNAL_ERROR),
                )
            return self._answer(header, exc.ack_code, text=exc.reason, error=AckError.from_exception(exc))

    async def handle_oversize(self, head: bytes, size: int, peer: str) -> bytes | None:
        """AR for a frame over ``mllp.max_message_bytes`` when its MSH is readable."""
        header = salvage_header(head, self._options.timezone, self._options.fallback_charset)
        limit = self.config.mllp.max_message_bytes
        reason = f"message of {size} bytes exceeds the limit of {limit} bytes"
        with bound_contextvars(peer=peer, control_id=header.control_id if header else None):
            log.warning("message_oversize", bytes=size, limit=limit)
        if header is None:
            return None
        return self._answer(
            header,
            AckCode.AR,
            text=reason,
            error=AckError(reason=reason, error_code=ErrorCode.INTERNAL_ERROR, segment="MSH"),
        )
