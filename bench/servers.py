"""The reference servers, each run as its own process:

- ``hl7``: a minimal python-hl7 server (``hl7.mllp.start_hl7_server``; each
  message parsed with ``hl7.parse`` and answered with ``create_ack``);
- ``bare``: an asyncio protocol that finds frame ends and answers a fixed ACK
  without reading the message at all: the transport ceiling;
- ``mllp``: the daemon's own listener (`hl7_alerts.mllp.MllpServer`, its
  framer, limits and timeouts) with a handler that answers the same fixed
  ACK at once: what the listener costs per frame, beside ``bare``.

``python -m bench.servers hl7|bare|mllp --port N`` prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

ACK = b"\x0bMSH|^~\\&|HL7ALERTS|GENHOSP|LAB|GENHOSP|20260101000000||ACK|1|P|2.5.1\rMSA|AA|1\r\x1c\r"


class BareProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        frames = buf.count(b"\x1c\r")
        if frames:
            buf = buf[buf.rfind(b"\x1c\r") + 2 :]
            assert self.transport is not None
            self.transport.write(ACK * frames)
        self.buf = buf


async def serve_bare(port: int, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BareProtocol, "127.0.0.1", port)
    print("ready", flush=True)
    await stop.wait()
    server.close()


async def serve_mllp(port: int, stop: asyncio.Event) -> None:
    from hl7_alerts.mllp import MllpServer, ServerLimits  # noqa: PLC0415 (only this server needs it)

    body = ACK[1:-2]  # the listener frames it

    async def answer(data: bytes, peer: str) -> bytes:
        return body

    async def oversize(head: bytes, size: int, peer: str) -> bytes | None:
        return None

    # Every connection of the sweep comes from one address (see bench.run).
    limits = ServerLimits(max_connections=1024, max_connections_per_peer=1024)
    server = MllpServer(answer, oversize, host="127.0.0.1", port=port, limits=limits)
    await server.start()
    print("ready", flush=True)
    await stop.wait()
    await server.stop()


async def serve_python_hl7(port: int, stop: asyncio.Event) -> None:
    import hl7.mllp  # noqa: PLC0415 (only this server needs it)

    async def handle(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()  # hl7.parse of the block
                writer.writemessage(message.create_ack())
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await hl7.mllp.start_hl7_server(handle, host="127.0.0.1", port=port)
    print("ready", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.servers")
    parser.add_argument("kind", choices=("hl7", "bare", "mllp"))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.kind == "bare":
            await serve_bare(args.port, stop)
        elif args.kind == "mllp":
            await serve_mllp(args.port, stop)
        else:
            await serve_python_hl7(args.port, stop)

    asyncio.run(run())
    sys.exit(0)


if __name__ == "__main__":
    main()
