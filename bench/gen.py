"""Synthetic HL7 v2.5.1 traffic for the benchmark.

A pool of patients (1,000 by default); every tenth has an azathioprine order
(sent first, as the warm-up), and the timed stream is liver panels (ORU^R01)
for patients drawn at random from the whole pool, some of them abnormal
(ALT or AST at or above 3 × ULN). Every message has its own MSH-10. Field text
carries escape sequences and PID-3 repeats, so the daemon's reader does the
same work it does on a real feed. Deterministic for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
ORDER_TIME = BASE_TIME - timedelta(days=30)

# (LOINC, name as sent — with an escape sequence now and then —, unit, range, normal low/high)
_PANEL = (
    ("1742-6", "ALT\\T\\SGPT", "U/L", "7-56", (10, 50)),
    ("1920-8", "AST\\T\\SGOT", "U/L", "10-40", (12, 38)),
    ("6768-6", "ALP", "U/L", "42-141", (50, 130)),
    ("2324-2", "GGT", "U/L", "9-48", (10, 45)),
    ("1975-2", "Bilirubin total", "mg/dL", "0.1-1.2", (0.2, 1.1)),
)


def _dtm(value: datetime) -> str:
    return value.strftime("%Y%m%d%H%M%S")


@dataclass(frozen=True, slots=True)
class Profile:
    patients: int = 1000
    thiopurine_every: int = 10  # every 10th patient: 10 % have an azathioprine order
    abnormal_fraction: float = 0.05  # results with ALT/AST >= 3 x ULN


class Generator:
    """Messages for one run; ``run_id`` keeps MSH-10 unique across runs."""

    def __init__(self, *, seed: int = 1, run_id: str = "B", profile: Profile | None = None) -> None:
        self.profile = profile or Profile()
        self.seed = seed
        self.run_id = run_id

    def patient_id(self, n: int) -> str:
        return f"BP{n:06d}"

    def has_thiopurine(self, n: int) -> bool:
        return n % self.profile.thiopurine_every == 0

    def orders(self) -> list[bytes]:
        """One new azathioprine order (RDE^O11) per thiopurine patient."""
        out = []
        for n in range(self.profile.patients):
            if not self.has_thiopurine(n):
                continue
            start = _dtm(ORDER_TIME)
            segments = [
                f"MSH|^~\\&|PHARM|GENHOSP|HL7ALERTS|GENHOSP|{start}||RDE^O11^RDE_O11|"
                f"{self.run_id}RX{n:06d}|P|2.5.1|||AL|NE",
                f"PID|1||{self.patient_id(n)}^^^GENHOSP^MR~9{n:08d}^^^SSA^SS||BENCH^PATIENT{n}||19700101|F",
                f"ORC|NW|RX{n:06d}|||||||{start}",
                f"TQ1|1||||||{start}",
                "RXE|^^^" + start + "|1256^Azathioprine 50 MG Oral Tablet^RXNORM|150||mg|TAB",
            ]
            out.append(("\r".join(segments) + "\r").encode())
        return out

    def results(self, start: int, count: int) -> Iterator[bytes]:
        """Result messages ``start`` … ``start + count - 1`` of the stream
        (each index always gives the same message for a given seed)."""
        for i in range(start, start + count):
            yield self.result(i)

    def result(self, i: int) -> bytes:
        rng = random.Random(self.seed * 1_000_003 + i)
        p = self.profile
        n = rng.randrange(p.patients)
        observed = BASE_TIME + timedelta(minutes=i)
        when = _dtm(observed)
        abnormal = rng.random() < p.abnormal_fraction
        segments = [
            f"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|{when}||ORU^R01^ORU_R01|{self.run_id}{i:09d}|P|2.5.1",
            f"PID|1||{self.patient_id(n)}^^^GENHOSP^MR~9{n:08d}^^^SSA^SS||BENCH^PATIENT{n}||19700101|F",
            f"OBR|1|ORD{i}|SPC{i}|24325-3^Hepatic function panel^LN|||{when}",
        ]
        for k, (code, name, unit, ref, (lo, hi)) in enumerate(_PANEL, start=1):
            value: float = round(rng.uniform(lo, hi), 1)
            flag = "N"
            if abnormal and k <= 2:
                value = round(float(ref.split("-")[1]) * rng.uniform(3.0, 6.0))
                flag = "H"
            segments.append(f"OBX|{k}|NM|{code}^{name}^LN||{value:g}|{unit}|{ref}|{flag}|||F|||{when}")
        return ("\r".join(segments) + "\r").encode()
