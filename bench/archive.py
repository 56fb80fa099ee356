"""A year of a hospital's lab and pharmacy feed as archive files, and the
rate `hl7-alerts backtest` runs it at.

    .venv/bin/python -m bench.archive --messages 100000          # generate, then time the backtest
    .venv/bin/python -m bench.archive --messages 1000000 --keep /tmp/archive   # keep the files

The archive: one file per day (CR segment ends, as an interface engine's
archive writes them), spread over 365 days. A pool of patients (1,000 beds'
worth: 20,000 over the year), one in fifty with an azathioprine order
(RDE^O11, starts spread over the year, a fifth of them stopped later);
every other message is an ORU^R01 liver panel (ALT, AST, ALP, GGT, total
bilirubin) or a blood count, a tenth of them for a patient on azathioprine
(tested far more often than the rest), 5 % of them abnormal. The same seed
gives the same archive. The timed run is the real command line in its own
process (`hl7-alerts backtest --json`), so the figure includes start-up,
reading, the pipeline, the timers on the message clock and writing the JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.gen import _PANEL

YEAR_START = datetime(2025, 1, 1, tzinfo=UTC)
_COUNT = (
    ("6690-2", "WBC", "10*3/uL", "4.0-11.0", (4.5, 10.0), 2.0),
    ("751-8", "Neutrophils", "10*3/uL", "1.5-8.0", (2.0, 7.0), 0.8),
    ("777-3", "Platelets", "10*3/uL", "150-400", (160, 380), 40),
)


def _dtm(value: datetime) -> str:
    return value.strftime("%Y%m%d%H%M%S")


def _pid(n: int) -> str:
    return f"PID|1||AR{n:06d}^^^GENHOSP^MR~9{n:08d}^^^SSA^SS||ARCHIVE^PATIENT{n}||19700101|F"


def order(n: int, control: str, when: datetime, ctl: str = "NW") -> bytes:
    t = _dtm(when)
    return ("\r".join([
        f"MSH|^~\\&|PHARM|GENHOSP|HL7ALERTS|GENHOSP|{t}||RDE^O11^RDE_O11|{control}|P|2.5.1",
        _pid(n),
        f"ORC|{ctl}|AZ{n:06d}|||||||{t}",
        f"TQ1|1||||||{t}",
        f"RXE|^^^{t}|1256^Azathioprine 50 MG Oral Tablet^RXNORM|150||mg|TAB",
    ]) + "\r").encode()


def result(n: int, control: str, when: datetime, rng: random.Random, abnormal: bool) -> bytes:
    t = _dtm(when)
    lines = [
        f"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|{t}||ORU^R01^ORU_R01|{control}|P|2.5.1",
        _pid(n),
    ]
    if rng.random() < 0.7:
        lines.append(f"OBR|1|O{control}|S{control}|24325-3^Hepatic function panel^LN|||{t}")
        for k, (code, name, unit, ref, (lo, hi)) in enumerate(_PANEL, start=1):
            value: float = round(rng.uniform(lo, hi), 1)
            flag = "N"
            if abnormal and k <= 2:
                value, flag = round(float(ref.split("-")[1]) * rng.uniform(3.0, 6.0)), "H"
            lines.append(f"OBX|{k}|NM|{code}^{name}^LN||{value:g}|{unit}|{ref}|{flag}|||F|||{t}")
    else:
        lines.append(f"OBR|1|O{control}|S{control}|58410-2^CBC panel^LN|||{t}")
        for k, (code, name, unit, ref, (lo, hi), low) in enumerate(_COUNT, start=1):
            value = low if abnormal and k == 3 else round(rng.uniform(lo, hi), 1)
            flag = "L" if abnormal and k == 3 else "N"
            lines.append(f"OBX|{k}|NM|{code}^{name}^LN||{value:g}|{unit}|{ref}|{flag}|||F|||{t}")
    return ("\r".join(lines) + "\r").encode()


def generate(folder: Path, messages: int, *, patients: int = 20_000, seed: int = 7) -> int:
    """Write the archive (one file per day); return how many messages."""
    rng = random.Random(seed)
    per_day: dict[int, list[tuple[datetime, bytes]]] = {}
    on_aza = list(range(0, patients, 50))
    orders = 0
    for n in on_aza:
        start = YEAR_START + timedelta(minutes=rng.randrange(365 * 24 * 60))
        per_day.setdefault((start - YEAR_START).days, []).append((start, order(n, f"RX{n:06d}", start)))
        orders += 1
        if rng.random() < 0.2:
            stop = start + timedelta(days=rng.randrange(20, 200))
            if stop < YEAR_START + timedelta(days=365):
                per_day.setdefault((stop - YEAR_START).days, []).append(
                    (stop, order(n, f"DC{n:06d}", stop, "DC")))
                orders += 1
    step = timedelta(days=365) / max(1, messages - orders)
    for i in range(messages - orders):
        when = YEAR_START + step * i
        # Patients on azathioprine are tested far more often than the rest.
        n = rng.choice(on_aza) if rng.random() < 0.1 else rng.randrange(patients)
        raw = result(n, f"L{i:09d}", when, rng, rng.random() < 0.05)
        per_day.setdefault((when - YEAR_START).days, []).append((when, raw))
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for day, items in sorted(per_day.items()):
        items.sort(key=lambda item: item[0])
        (folder / f"{day:03d}.hl7").write_bytes(b"".join(raw for _, raw in items))
        total += len(items)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="write the archive here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hl7-archive-") as tmp:
        folder = args.keep or Path(tmp) / "archive"
        started = time.perf_counter()
        total = generate(folder, args.messages)
        print(f"generated {total:,} messages in {len(list(folder.glob('*.hl7')))} files "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        out = Path(tmp) / "backtest.json"
        files = sorted(str(p) for p in folder.glob("*.hl7"))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hl7_alerts", "backtest", "--json", str(out), *files],
                       check=True, stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime
        summary = json.loads(out.read_text())["summary"]
        print(json.dumps({
            "messages": summary["messages"], "seconds": round(elapsed, 1),
            "messages_per_second": round(summary["messages"] / elapsed),
            "pipeline_messages_per_second": summary["messages_per_second"],
            "cpu_seconds": round(cpu, 1), "cpu_us_per_message": round(cpu / summary["messages"] * 1e6),
            "alert_events": summary["events"], "alerts": summary["alerts"],
            "patients_on_thiopurine": summary["patients_on_thiopurine"], "skipped": summary["skipped"],
        }, indent=1))


if __name__ == "__main__":
    main()
