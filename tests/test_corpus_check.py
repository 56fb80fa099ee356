"""The corpus checker, on synthetic edge cases: every file gets a well-formed
answer whose MSA-2 echoes MSH-10 whenever the MSH is readable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hl7_alerts.tools.corpus_check import check, check_answer, corpus_files, main
from tests.support.broker import Broker
from tests.support.daemon import make_config, running

ORU = b"MSH|^~\\&|LAB|GENHOSP|HL7ALERTS|ICU|20261020093000||ORU^R01|{id}|P|2.5.1\rPID|1||H5^^^GENHOSP^MR\r"

EDGE_CASES = {
    "lf.hl7": ORU.replace(b"{id}", b"EDGE-LF").replace(b"\r", b"\n"),
    "crlf.hl7": ORU.replace(b"{id}", b"EDGE-CRLF").replace(b"\r", b"\r\n"),
    "bom.hl7": b"\xef\xbb\xbf" + ORU.replace(b"{id}", b"EDGE-BOM"),
    "latin1.hl7": ORU.replace(b"{id}", b"EDGE-L1").replace(b"|2.5.1", b"|2.5.1||||||8859/1") + b"NTE|1||M\xfcller\r",
    "repeated-delimiters.hl7": ORU.replace(b"{id}", b"EDGE-DELIM").replace(b"^~\\&", b"^&&^"),
    "three-encoding-chars.hl7": ORU.replace(b"{id}", b"EDGE-ENC3").replace(b"^~\\&", b"~\\&"),
    "bad-version.hl7": ORU.replace(b"{id}", b"EDGE-VER").replace(b"|2.5.1", b"|2."),
    "no-msh.hl7": b"PID|1||H5^^^GENHOSP^MR\r",
    "batch.hl7": b"BHS|^~\\&|LAB\r" + ORU.replace(b"{id}", b"EDGE-BATCH") + b"BTS|1\r",
    "binary.bin": bytes(range(256)) * 4,
    "stray-vt.hl7": ORU.replace(b"{id}", b"EDGE-VT") + b"\x0b\r\n",
    "two-frames.hl7": ORU.replace(b"{id}", b"EDGE-FS1") + b"\x1c" + ORU.replace(b"{id}", b"EDGE-FS2"),
    "empty.hl7": b"",
}


async def test_every_edge_case_is_answered_and_echoed(tmp_path: Path, broker: Broker, prefix: str) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in EDGE_CASES.items():
        (corpus / name).write_bytes(data)
    (corpus / "SOURCES.md").write_text("not a message")
    config = make_config(tmp_path, broker.port, prefix)
    async with running(config) as daemon:
        results = await asyncio.to_thread(check, corpus_files(corpus), "127.0.0.1", daemon.port)
        code = await asyncio.to_thread(main, [str(corpus), "--port", str(daemon.port)])
    by_name = {r.path.name: r for r in results}
    assert set(by_name) == set(EDGE_CASES)
    assert [name for name, r in by_name.items() if not r.ok] == []
    assert {name: r.code for name, r in by_name.items()} == {
        "lf.hl7": "AA", "crlf.hl7": "AA", "bom.hl7": "AA", "latin1.hl7": "AA",
        "repeated-delimiters.hl7": "AE", "three-encoding-chars.hl7": "AE", "bad-version.hl7": "AR",
        # A batch in one frame is processed message by message (decision 13); it was refused whole before.
        "no-msh.hl7": "AE", "batch.hl7": "AA", "binary.bin": "AE", "stray-vt.hl7": "AA",
        "two-frames.hl7": "AA", "empty.hl7": "AE",
    }
    assert code == 0


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        pytest.param(b"MSH|^~\\&|A|B|C|D|1||ACK|9|P|2.5\rMSA|AA|OTHER\r", "does not echo", id="wrong-echo"),
        pytest.param(b"MSH|^~\\&|A|B|C|D|1||ACK|9|P|2.5\r", "no MSA", id="no-msa"),
        pytest.param(b"MSH|^~\\&|A|B|C|D|1||ACK|9|P|2.5\rMSA|OK|M1\r", "not an ACK code", id="bad-code"),
        pytest.param(b"garbage", "unreadable ACK", id="garbage"),
    ],
)
def test_bad_answers_are_caught(answer: bytes, problem: str) -> None:
    message = ORU.replace(b"{id}", b"M1")
    assert problem in check_answer(Path("x.hl7"), message, answer).problem
