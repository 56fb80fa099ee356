"""SIGTERM to a real `hl7-alerts serve` process in the middle of a stream:
stop accepting, finish the in-flight message and its ACK, exit cleanly. The
store is the judge: every ACKed message is in it; a message that is not in it
was never ACKed (its sender still holds it and resends)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
from pathlib import Path

from hl7_alerts.framer import frame
from tests.support.broker import Broker
from tests.support.daemon import serve, write_config
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.waiting import WAIT

CONNECTIONS = 4
WINDOW = 4  # frames each connection keeps in flight


def message(control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020093000||ORU^R01|{control_id}|P|2.5.1\r"
        "PID|1||H77^^^GENHOSP^MR||TESTPATIENT^SIGMA\r"
        "OBR|1|O1|S1|24325-3^Hepatic function panel^LN|||20261020080000\r"
        "OBX|1|NM|1742-6^ALT^LN||30|U/L|7-56|N|||F\r"
    ).encode()


async def stream(port: int, lane: int, acked: dict[str, str], sent: set[str], stop: asyncio.Event) -> None:
    """Send numbered messages with WINDOW in flight until the server closes."""
    client = await AsyncMllpClient.connect(port)
    in_flight: list[str] = []
    n = 0
    try:
        while True:
            while len(in_flight) < WINDOW and not stop.is_set():
                control_id = f"L{lane}-{n:05d}"
                n += 1
                await client.send_raw(frame(message(control_id)))
                sent.add(control_id)
                in_flight.append(control_id)
            if not in_flight:
                return
            ack = ack_fields(await client.receive(timeout=WAIT))
            expected = in_flight.pop(0)
            assert ack["control_id"] == expected  # answers come in order, one per frame
            acked[expected] = ack["code"]
    except (ConnectionError, OSError):
        return  # the server closed: whatever is still in flight was not ACKed
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            await client.close()


async def test_sigterm_mid_stream_loses_nothing(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = write_config(tmp_path / "config.yaml", broker.port, prefix, mllp={"shutdown_grace_seconds": 5})
    log_path = tmp_path / "daemon.log"
    async with serve(config, log=log_path) as daemon:
        port = daemon.port
        acked: dict[str, str] = {}
        sent: set[str] = set()
        stop_sending = asyncio.Event()
        lanes = [asyncio.create_task(stream(port, lane, acked, sent, stop_sending)) for lane in range(CONNECTIONS)]
        async with asyncio.timeout(WAIT):
            while len(acked) < 60:
                await asyncio.wait(lanes, timeout=0.01)  # let the lanes run; they never end on their own
                assert not any(t.done() for t in lanes), [t.exception() for t in lanes if t.done()]
        daemon.send_signal(signal.SIGTERM)
        # A connection opened once the daemon has begun stopping is never
        # answered. Wait for that moment itself: on a loaded machine the
        # signal can take a while to be handled, and a connection made before
        # then is rightly served.
        await daemon.wait_event("daemon_stopping")
        late_answer = None
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            late = await AsyncMllpClient.connect(port)
            await late.send_raw(frame(message("LATE-1")))
            late_answer = await late.receive(timeout=WAIT)
        assert late_answer is None
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*lanes)
        assert await asyncio.to_thread(daemon.exit_code) == 0
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        stored = {row[0] for row in db.execute("SELECT control_id FROM messages")}
    assert len(sent) > len(acked)  # SIGTERM did land mid-stream: frames were in flight
    assert set(acked.values()) == {"AA"}
    assert set(acked) <= stored, sorted(set(acked) - stored)  # nothing ACKed that is not stored
    assert stored <= sent
    assert "LATE-1" not in stored
    events = [json.loads(line)["event"] for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert events.index("daemon_stopping") < events.index("daemon_stopped") == len(events) - 1
