"""The load client, run as its own process so it never shares a core's
event loop with the server it measures.

N connections, each sending its next message only after the ACK of the
previous one (how interface engines send). With several ``--port`` values
(daemons sharing one database) the connections are dealt out among the ports
in turn (8 over two ports: 4 + 4) and take their messages from one shared
stream, so the report is of the whole: msg/s of all ports together, latency
percentiles over every ACK (``per_port`` counts what each port answered).
Two modes:

- saturation (no ``--rate``): every connection sends as fast as ACKs come;
- paced (``--rate R``): message k is *scheduled* at ``t0 + k / R``; a free
  connection sends it at that time (or at once, if it is already late), and
  latency is measured from the scheduled time, so a slow ACK that delays the
  messages behind it is counted against every one of them (no coordinated
  omission).

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.gen import Generator

VT, FS = b"\x0b", b"\x1c"


class _Connection(asyncio.Protocol):
    """One MLLP connection with at most one message in flight."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("server closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(FS)
        if end == -1:
            return
        start = self.buf.find(VT)
        payload = self.buf[start + 1 : end]
        self.buf = self.buf[end + 2 :]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(payload)

    async def request(self, message: bytes) -> bytes:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(VT + message + FS + b"\r")
        return await self.waiter


def ack_code(ack: bytes) -> str:
    at = ack.find(b"\rMSA")
    if at == -1:
        return "??"
    return ack[at + 5 : at + 7].decode("ascii", "replace")


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_ns:
        return float("nan")
    rank = max(1, min(len(sorted_ns), round(q / 100 * len(sorted_ns) + 0.5)))
    return sorted_ns[rank - 1] / 1e6


async def drive(
    port: int | Sequence[int],
    messages: Sequence[bytes],
    *,
    connections: int,
    rate: float | None,
    host: str = "127.0.0.1",
    window: float | None = None,
) -> dict[str, Any]:
    """Send ``messages`` over ``connections`` (dealt out among ``port``s in
    turn) and measure every ACK; with ``window`` (seconds), the latency per
    window of wall-clock time too (`windows`)."""
    ports = [port] if isinstance(port, int) else list(port)
    if not ports or connections < len(ports):
        raise ValueError(f"{connections} connections cannot cover {len(ports)} ports")
    loop = asyncio.get_running_loop()
    conns: list[tuple[int, _Connection]] = []
    for i in range(connections):
        _, proto = await loop.create_connection(_Connection, host, ports[i % len(ports)])
        conns.append((ports[i % len(ports)], proto))
    latencies: list[int] = []
    service: list[int] = []
    stamped: list[tuple[int, int]] = []  # (scheduled or sent, latency) for `windows`
    codes: Counter[str] = Counter()
    per_port: Counter[int] = Counter()
    next_index = 0
    t0 = time.perf_counter_ns() + 20_000_000  # 20 ms for every worker to be waiting
    interval_ns = int(1e9 / rate) if rate else 0

    async def worker(port: int, conn: _Connection) -> None:
        nonlocal next_index
        while next_index < len(messages):
            k = next_index
            next_index += 1
            scheduled = t0 + k * interval_ns
            if rate:
                delay = scheduled - time.perf_counter_ns()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
            sent = time.perf_counter_ns()
            ack = await conn.request(messages[k])
            done = time.perf_counter_ns()
            codes[ack_code(ack)] += 1
            per_port[port] += 1
            service.append(done - sent)
            latencies.append(done - (scheduled if rate else sent))
            stamped.append((scheduled if rate else sent, latencies[-1]))

    start = time.perf_counter_ns()
    wall_offset = time.time_ns() - start  # perf_counter to wall clock, for `windows`
    await asyncio.gather(*(worker(p, c) for p, c in conns))
    elapsed = (time.perf_counter_ns() - max(start, t0 if rate else start)) / 1e9
    for _, c in conns:
        assert c.transport is not None
        c.transport.close()
    await asyncio.gather(*(c.closed for _, c in conns))
    latencies.sort()
    service.sort()
    return {
        "messages": len(messages),
        "connections": connections,
        "offered_rate": rate,
        "seconds": round(elapsed, 3),
        "messages_per_second": round(len(messages) / elapsed, 1) if elapsed > 0 else None,
        "ack_codes": dict(codes),
        "per_port": {str(p): per_port[p] for p in ports},
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 3),
            "p99": round(percentile(latencies, 99), 3),
            "p999": round(percentile(latencies, 99.9), 3),
            "max": round(latencies[-1] / 1e6, 3) if latencies else None,
        },
        "service_ms": {
            "p50": round(percentile(service, 50), 3),
            "p99": round(percentile(service, 99), 3),
        },
        **({"windows": windows(stamped, wall_offset, window)} if window else {}),
    }


def windows(stamped: Sequence[tuple[int, int]], wall_offset: int, seconds: float) -> list[dict[str, Any]]:
    """Latency percentiles per ``seconds`` of wall-clock time, by when each
    message was scheduled (or sent): ``start`` is the window's Unix time."""
    size = int(seconds * 1e9)
    groups: dict[int, list[int]] = {}
    for at, latency in stamped:
        groups.setdefault((at + wall_offset) // size, []).append(latency)
    out = []
    for key in sorted(groups):
        group = sorted(groups[key])
        out.append({
            "start": key * size / 1e9,
            "count": len(group),
            "p50": round(percentile(group, 50), 3),
            "p99": round(percentile(group, 99), 3),
            "max": round(group[-1] / 1e6, 3),
        })
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.load")
    parser.add_argument(
        "--port", type=int, action="append", required=True, help="repeat to split the connections"
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--start", type=int, default=0, help="index of the first result message")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=None, help="messages/s offered (default: saturate)")
    parser.add_argument("--orders", action="store_true", help="send the warm-up orders instead of results")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--run-id", default="B")
    parser.add_argument("--window", type=float, default=None, help="also report latency per N seconds")
    args = parser.parse_args(argv)
    gen = Generator(seed=args.seed, run_id=args.run_id)
    messages = gen.orders() if args.orders else list(gen.results(args.start, args.count))
    result = asyncio.run(
        drive(args.port, messages, connections=args.connections, rate=args.rate, window=args.window)
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
