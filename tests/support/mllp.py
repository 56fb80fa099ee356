"""The sending side of MLLP as an interface engine speaks it: real bytes over
a real socket from the test's event loop, and the fields of the ACK read back."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from hl7_alerts.framer import NEED_DATA, Frame, Framer, frame
from tests.support.waiting import WAIT


class AsyncMllpClient:
    """Real MLLP over a real socket, from the test's event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = Framer()

    @classmethod
    async def connect(
        cls, port: int, *, tls: ssl.SSLContext | None = None, source: str | None = None
    ) -> AsyncMllpClient:
        """Connect to 127.0.0.1:``port``; from the loopback address ``source``
        (``127.0.0.2``: another peer, as the listener counts peers) if given."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=tls,
            server_hostname="127.0.0.1" if tls else None,
            local_addr=(source, 0) if source else None,
        )
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self, timeout: float = WAIT) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                event = self.framer.next_event()
                if isinstance(event, Frame):
                    return event.data
                if event is NEED_DATA:
                    data = await self.reader.read(65536)
                    if not data:
                        raise ConnectionError("closed before an answer")
                    self.framer.feed(data)

    async def send(self, message: bytes, timeout: float = WAIT) -> bytes:
        await self.send_raw(frame(message))
        return await self.receive(timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def ack_fields(ack: bytes) -> dict[str, str]:
    """MSA-1, MSA-2, MSA-3 and the whole ERR segment (if any) of an ACK."""
    segments = ack.decode("utf-8", errors="replace").strip("\r").split("\r")
    fs = segments[0][3]
    out = {"MSH": segments[0]}
    for seg in segments:
        fields = seg.split(fs)
        if fields[0] == "MSA":
            out["code"] = fields[1]
            out["control_id"] = fields[2] if len(fields) > 2 else ""
            out["text"] = fields[3] if len(fields) > 3 else ""
        if fields[0] == "ERR":
            out["ERR"] = seg
    return out


async def send_all(port: int, messages: list[bytes]) -> list[dict[str, str]]:
    """Send each message in turn over one connection; the fields of each ACK."""
    client = await AsyncMllpClient.connect(port)
    try:
        return [ack_fields(await client.send(m)) for m in messages]
    finally:
        await client.close()
