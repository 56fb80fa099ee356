"""Unmapped lab codes are visible live: a result whose OBX-3 code maps to no
analyte is stored but never read by a rule, so a site that has not mapped
its local codes would go live and never get an alert. The daemon counts
such results per code (a bounded metric), logs each code once, and
`hl7-alerts codes` lists the codes in the store with what they map to."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import structlog.testing
from prometheus_client.parser import text_string_to_metric_families

from hl7_alerts.metrics import MAX_UNMAPPED_CODES, Metrics
from tests.support.backends import Backend
from tests.support.broker import Broker
from tests.support.daemon import CLI, make_config, running
from tests.support.hl7kit import alt, oru
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.waiting import WAIT

WHEN = "20261020080000"
LOCAL_ALT = "NM|XALT^ALT SGPT^L||190|U/L|7-56|H|||F"  # a lab's own code for ALT, not mapped
NOTE = "TX|NOTE^Comment^L||see report||||||F"
BOTH = "NM|XAST^AST^L^1920-8^AST^LN||80|U/L|10-40|H|||F"  # local code, LOINC in the alternate


def unmapped_counts(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {
        (s.labels["code"], s.labels["system"]): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
        if s.name == "hl7_alerts_unmapped_results_total"
    }


def codes_command(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "codes", "--config", str(config), *args], capture_output=True, text=True,
                          timeout=WAIT, check=False, env={**os.environ})


def write_config(tmp_path: Path, backend: Backend, lab_codes: dict[str, str] | None = None) -> Path:
    store = backend.store_section()
    lines = [f"store:\n  {key}: {value}" for key, value in store.items()]
    if lab_codes is not None:
        lines.append("terminology:\n  lab_codes:\n" + "".join(f"    {k}: {v}\n" for k, v in lab_codes.items()))
    path = tmp_path / f"codes-{len(lab_codes or {})}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_unmapped_codes_are_counted_logged_once_and_listed(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    config = make_config(tmp_path, broker.port, prefix, store=backend.store_section())
    first = oru("U1", WHEN, alt("60"), LOCAL_ALT, NOTE, BOTH).encode()
    with structlog.testing.capture_logs() as logs:
        async with running(config) as daemon:
            client = await AsyncMllpClient.connect(daemon.port)
            acks = [ack_fields(await client.send(m))["code"] for m in (
                first,
                first,  # a resend: the same results, not counted again
                oru("U2", WHEN, LOCAL_ALT, specimen="SPC2").encode(),
            )]
            await client.close()
            counts = unmapped_counts(daemon.daemon.metrics)
    assert acks == ["AA", "AA", "AA"]  # stored and answered: the sender sees nothing wrong
    assert counts == {("XALT", "L"): 2.0, ("NOTE", "L"): 1.0}
    said = [(e["code"], e["system"], e["log_level"]) for e in logs if e["event"] == "lab_code_unmapped"]
    assert said == [("XALT", "L", "info"), ("NOTE", "L", "info")]  # once per code, however often it comes
    assert not any("ALT SGPT" in repr(e) for e in logs)  # the code's text stays out of the log

    listed = await asyncio.to_thread(codes_command, write_config(tmp_path, backend))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "code\tsystem\ttext\tresults\tanalyte",
        "XALT\tL\tALT SGPT\t2\tunmapped",
        "NOTE\tL\tComment\t1\tunmapped",
        "1742-6\tLN\tALT\t1\tALT",
        "XAST\tL\tAST\t1\tAST",  # mapped through OBX-3's alternate code (LOINC)
    ]
    only = await asyncio.to_thread(codes_command, write_config(tmp_path, backend), "--unmapped", "--json")
    assert [json.loads(line)["code"] for line in only.stdout.splitlines()] == ["XALT", "NOTE"]

    # The site maps its code: the table says so, and that what was stored before stays unmapped.
    mapped = await asyncio.to_thread(codes_command, write_config(tmp_path, backend, {"XALT": "ALT"}))
    assert "XALT\tL\tALT SGPT\t2\tALT (mapped now; 2 stored before unmapped)" in mapped.stdout.splitlines()


async def test_a_mapped_local_code_is_not_counted(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = make_config(tmp_path, broker.port, prefix, terminology={"lab_codes": {"XALT": "ALT"}})
    async with running(config) as daemon:
        client = await AsyncMllpClient.connect(daemon.port)
        await client.send(oru("M1", WHEN, LOCAL_ALT).encode())
        await client.close()
        assert unmapped_counts(daemon.daemon.metrics) == {}


def test_the_label_set_is_capped_and_odd_codes_are_not_labels() -> None:
    metrics = Metrics()
    codes = [(f"C{i}", "L") for i in range(MAX_UNMAPPED_CODES + 50)]
    first_seen = metrics.unmapped_results(codes)
    assert first_seen == codes[:MAX_UNMAPPED_CODES]
    assert metrics.unmapped_results(codes[:3]) == []  # seen before: counted, not new
    strange = metrics.unmapped_results([("", ""), ("x" * 300, "LN"), ("DROP TABLE;", "L")])
    assert strange == []  # the cap is reached: these count as other
    counts = unmapped_counts(metrics)
    assert len(counts) == MAX_UNMAPPED_CODES + 1
    assert counts[("other", "other")] == 50 + 3
    assert counts[("C0", "L")] == 2.0

    fresh = Metrics()
    assert fresh.unmapped_results([("", ""), ("x" * 300, "LN"), ("DROP TABLE;", "L"), ("1742-6", "LN")]) == [
        ("(none)", "(none)"), ("invalid", "LN"), ("invalid", "L"), ("1742-6", "LN"),
    ]
