"""The fuzz soak: a million mutated frames against a real `hl7-alerts serve`.

The fuzz test (`tests/test_fuzz.py`) sends 100,000 frames; this sends
``--frames`` (default 1,000,000) through the same mutator
(`tests.support.fuzzing`) to one daemon process, in rounds of ``--round``
frames (so the client's memory stays flat) over ``--connections``
connections. After every round: every frame the framer sees has had exactly
one well-formed answer, in order, and the daemon is alive; at the end a
valid message is answered AA, SIGTERM gives a clean exit and the daemon's
log holds no traceback. The store is on tmpfs when there is one: the soak is
about the listener, not the disk. Prints one summary line and exits 1 if
anything failed.

    .venv/bin/python -m bench.fuzz_soak --frames 1000000   # about 25 minutes on the 2-core sandbox
    .venv/bin/python -m bench.fuzz_soak --frames 100000    # a short one
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.run import mosquitto
from hl7_alerts.framer import frame
from hl7_alerts.segments import split_file
from tests.support.daemon import serve, write_config
from tests.support.fuzzing import expected_answers, lane, mutate, personalise, seeds
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.samples import SAMPLES


def streams_for(
    rng: random.Random, pool: list[bytes], first: int, count: int, connections: int
) -> list[bytes]:
    """Frames ``first`` … ``first + count - 1``, dealt out among the connections."""
    streams = [bytearray() for _ in range(connections)]
    for n in range(first, first + count):
        seed = personalise(rng.choice(pool), n)
        streams[n % connections] += frame(mutate(rng, seed, pool))
    return [bytes(s) for s in streams]


async def soak(args: argparse.Namespace, work: Path, store_dir: Path) -> dict[str, object]:
    rng = random.Random(args.seed)
    pool = seeds()
    with mosquitto(work / "mosquitto") as broker_port:
        config = write_config(
            work / "config.yaml", broker_port, "soak", store={"path": str(store_dir / "store.sqlite3")},
            logging={"level": "error"}, metrics={"enabled": False},
        )
        log_path = work / "daemon.log"
        sent = answered = 0
        started = time.monotonic()
        async with serve(config, log=log_path) as daemon:
            while sent < args.frames:
                count = min(args.round, args.frames - sent)
                streams = streams_for(rng, pool, sent, count, args.connections)
                expected = [expected_answers(s) for s in streams]
                async with asyncio.timeout(args.round_timeout):
                    got = await asyncio.gather(
                        *(lane(daemon.port, s, e) for s, e in zip(streams, expected, strict=True))
                    )
                if got != expected:
                    raise AssertionError(f"frames {sent}-{sent + count}: answered {got}, expected {expected}")
                if not daemon.alive():
                    raise AssertionError(f"the daemon died in frames {sent}-{sent + count}: {daemon.tail()}")
                sent += count
                answered += sum(got)
                elapsed = time.monotonic() - started
                print(f"  {sent:>9,} frames sent, {answered:,} answered, {elapsed:6.0f} s", flush=True)
            client = await AsyncMllpClient.connect(daemon.port)
            valid = split_file((SAMPLES / "05_no_thiopurine_high_enzymes.hl7").read_bytes())[0]
            ack = ack_fields(await client.send(valid.replace(b"|LAB0003|", b"|AFTERSOAK|")))
            await client.close()
            if (ack["code"], ack["control_id"]) != ("AA", "AFTERSOAK"):
                raise AssertionError(f"a valid message after the soak: {ack}")
            code = await asyncio.to_thread(daemon.stop)
            if code != 0:
                raise AssertionError(f"SIGTERM after the soak: exit {code}")
        if "Traceback" in log_path.read_text(errors="replace"):
            raise AssertionError(f"a traceback in the daemon's log: {log_path}")
        return {"frames": sent, "answered": answered, "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.fuzz_soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--round", type=int, default=100_000, help="frames per round (default 100,000)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--round-timeout", type=float, default=1800.0, help="seconds a round may take")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.round < 1 or args.connections < 1:
        parser.error("--frames, --round and --connections are at least 1")
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hl7-soak-")))
        (work / "mosquitto").mkdir()
        shm = Path("/dev/shm")
        store_dir = Path(tempfile.mkdtemp(dir=shm, prefix="hl7-soak-")) if shm.is_dir() else work
        stack.callback(shutil.rmtree, store_dir, ignore_errors=True)
        try:
            result = asyncio.run(soak(args, work, store_dir))
        except AssertionError as exc:
            print(f"fuzz soak FAILED: {exc}", flush=True)
            sys.exit(1)
    print(
        f"fuzz soak: {result['frames']:,} mutated frames (seed {args.seed}) over "
        f"{args.connections} connections, "
        f"{result['answered']:,} answered, 0 crashes, in {result['seconds']} s"
    )


if __name__ == "__main__":
    main()
