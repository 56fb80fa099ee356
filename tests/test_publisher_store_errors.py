"""A failure under the publisher never ends it: the outbox rows stay and go
out once the store answers again, and the daemon's other tasks run on."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hl7_alerts.publisher import Publisher
from hl7_alerts.settings import MqttSettings
from hl7_alerts.store import OutboxItem, OutboxRow, SqliteStore, StoreError, Transaction
from tests.support.broker import Broker
from tests.support.clock import FakeClock
from tests.support.mqtt import recording

NOW = datetime(2026, 11, 25, tzinfo=UTC)


class FailingReads:
    """A real SqliteStore whose outbox reads raise ``error`` ``failures`` times first."""

    def __init__(self, store: SqliteStore, failures: int, error: Exception) -> None:
        self.store = store
        self.failures = failures
        self.error = error

    async def pending_outbox(self, limit: int, **kwargs: Any) -> list[OutboxRow]:
        if self.failures:
            self.failures -= 1
            raise self.error
        return await self.store.pending_outbox(limit, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.mark.parametrize(
    ("error", "failures"),
    [
        pytest.param(StoreError("database is locked"), 2, id="store-error"),
        pytest.param(RuntimeError("a defect of ours"), 1, id="unexpected-error"),
    ],
)
async def test_publisher_survives_an_error_and_delivers_after(
    tmp_path: Path, broker: Broker, prefix: str, error: Exception, failures: int
) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    body = '{"schema":"hl7-alerts/alert@1"}'  # on a non-alert topic: this is about the outbox, not the contract

    def enqueue(tx: Transaction) -> None:
        tx.enqueue(OutboxItem(alert_id="a1", version=1, event="firing", topic=f"{prefix}/outbox-test",
                              payload=body, patient="p"), NOW)

    await store.transact(enqueue)
    flaky = FailingReads(store, failures, error)
    settings = MqttSettings(port=broker.port, topic_prefix=prefix, client_id=prefix, reconnect_min=0.05,
                            reconnect_max=0.1)
    publisher = Publisher(flaky, settings, clock=FakeClock(NOW))  # type: ignore[arg-type]
    async with recording(broker, prefix) as mqtt:
        task = asyncio.create_task(publisher.run())
        await mqtt.wait_for(lambda msgs: any(t.endswith("/outbox-test") for t, _ in msgs))
        assert not task.done()  # still running after the errors
        publisher.stop()
        await asyncio.wait_for(task, 10)
    await store.close()
    assert flaky.failures == 0
    assert [b["schema"] for t, b in mqtt.messages if t.endswith("/outbox-test")] == ["hl7-alerts/alert@1"]
