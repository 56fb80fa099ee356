"""Builders for synthetic HL7 v2.5.1 messages (invented TESTPATIENT ids)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hl7_alerts.config import Config
from hl7_alerts.offline import check

MRN = "H0990001^^^GENHOSP^MR"


def pid(mrn: str = MRN) -> str:
    return f"PID|1||{mrn}||TESTPATIENT^ECHO||19700101|F"


def order_msg(control: str, ctl: str, order_id: str, drug: str, when: str, *, mrn: str = MRN,
              tx: str | None = None) -> str:
    """RDE^O11: ORC-1 ``ctl`` for ``order_id``; ``drug`` is RXE-2 (code^text^system)."""
    return "\r".join([
        f"MSH|^~\\&|PHARM|GENHOSP|HL7ALERTS|GENHOSP|{tx or when}||RDE^O11^RDE_O11|{control}|P|2.5.1",
        pid(mrn),
        f"ORC|{ctl}|{order_id}|||||||{tx or when}",
        f"TQ1|1||||||{when}",
        f"RXE|^^^{when}|{drug}|150||mg|TAB",
    ]) + "\r"


def dispense_msg(control: str, order_id: str, drug: str, when: str, *, mrn: str = MRN, ctl: str = "RE") -> str:
    """RDS^O13: a pharmacy dispense of ``drug`` (RXD-2, code^text^system)
    at ``when`` (RXD-3) for placer order ``order_id`` (ORC-2)."""
    return "\r".join([
        f"MSH|^~\\&|PHARM|GENHOSP|HL7ALERTS|GENHOSP|{when}||RDS^O13^RDS_O13|{control}|P|2.5.1",
        pid(mrn),
        f"ORC|{ctl}|{order_id}|F{order_id}||CM",
        f"RXD|1|{drug}|{when}|28|TAB^Tablet",
    ]) + "\r"


def merge_msg(control: str, when: str, *, prior: str, surviving: str = MRN) -> str:
    """ADT^A40: MRG-1 ``prior`` merged into PID-3 ``surviving``."""
    return "\r".join([
        f"MSH|^~\\&|ADT|GENHOSP|HL7ALERTS|GENHOSP|{when}||ADT^A40^ADT_A39|{control}|P|2.5.1",
        f"EVN|A40|{when}",
        pid(surviving),
        f"MRG|{prior}",
    ]) + "\r"


# A sender's stray NUL bytes: in the sending facility, the control id and
# two results. PostgreSQL's text cannot hold them (SQLite's can).
WITH_NUL = (
    b"MSH|^~\\&|LAB|GEN\x00HOSP|HL7ALERTS|GENHOSP|20261020093000||ORU^R01|N\x0001|P|2.5.1\r"
    b"PID|1||H010001^^^GENHOSP^MR||TESTPATIENT^ALPHA\r"
    b"OBR|1|O1|SPCN|24325-3^Hepatic function panel^LN|||20261020080000\r"
    b"OBX|1|NM|1742-6^ALT^LN||190|U/L|7-56|H|||F\r"
    b"OBX|2|ST|NOTE^note^L||hae\x00molysed||||||F\r"
)


# An ORU whose only patient identifier is a social security number, no MRN:
# rejected AE (the metrics and retention tests count and prune it).
BAD_NO_MRN = (
    b"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|20261020093000||ORU^R01|BAD001|P|2.5.1\r"
    b"PID|1||900123456^^^SSA^SS||TESTPATIENT^DELTA\r"
    b"OBR|1|O1|S1|24325-3^Hepatic function panel^LN|||20261020080000\r"
    b"OBX|1|NM|1742-6^ALT^LN||190|U/L|7-56|H|||F\r"
)


AZA = "1256^Azathioprine 50 MG Oral Tablet^RXNORM"
ALLOPURINOL = "519^Allopurinol 100 MG Oral Tablet^RXNORM"


def result(code: str, value: str, unit: str = "U/L", ref: str = "", *, status: str = "F",
           value_type: str = "NM", name: str = "") -> str:
    return f"{value_type}|{code}^{name or code}^LN||{value}|{unit}|{ref}||||{status}"


def oru(control: str, when: str, *results: str, mrn: str = MRN, specimen: str = "SPC1") -> str:
    """ORU^R01, one OBR, the results observed at ``when``."""
    lines = [
        f"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|GENHOSP|{when}||ORU^R01^ORU_R01|{control}|P|2.5.1",
        pid(mrn),
        f"OBR|1|O{specimen}|{specimen}|24325-3^Hepatic function panel^LN|||{when}",
    ]
    lines += [f"OBX|{i}|{r}|||{when}" for i, r in enumerate(results, start=1)]
    return "\r".join(lines) + "\r"


ALT = "1742-6"
AST = "1920-8"
ALP = "6768-6"
BILI = "1975-2"


def alt(value: str, **kw: Any) -> str:
    return result(ALT, value, "U/L", "7-56", name="ALT", **kw)


def run_check(tmp_path: Path, *messages: str, config: Config | None = None) -> list[dict[str, Any]]:
    """Every alert event the messages cause, through the daemon's pipeline."""
    path = tmp_path / "scenario.hl7"
    path.write_bytes("".join(messages).encode())
    return asyncio.run(check([path], config or Config(), now=datetime(2026, 11, 25, tzinfo=UTC)))


def events(out: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["rule"], e["event"], e["severity"]) for e in out if "rule" in e]
