"""`hl7-alerts survey` over files written here that carry what real feeds
send: local codes for analytes we watch, odd units, drug names and codes, an
unreadable range, a message the daemon refuses, a file that is not there."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

from hl7_alerts.survey import suggest
from hl7_alerts.terminology import Analyte
from tests.support.daemon import CLI
from tests.support.hl7kit import BAD_NO_MRN
from tests.support.waiting import WAIT

LOCAL_PANEL = "\r".join([
    "MSH|^~\\&|LIS|NORTHLAB|HL7ALERTS|GENHOSP|20260301080000||ORU^R01|S1|P|2.3||||||8859/1",
    "PID|1||777001^^^NORTH^MR~123-45-6789^^^SSA^SS||TESTPATIENT^SURVEY",
    "OBR|1|O1|S1|LFT^LIVER PANEL^L|||20260301070000",
    "OBX|1|NM|SGPT^SGPT (ALT)^L||190|U/L|7-56|H|||F",
    "OBX|2|NM|ALKP^ALK PHOS^99LAB||300|U/L|42-141|H|||F",
    "OBX|3|NM|TBIL^T BILI^L||2.9|mg/dL|0.1-1.2|H|||F",
    "OBX|4|NM|PLT^PLT COUNT^L||90|x10E3/uL|150-400|L|||F",
    "OBX|5|NM|NA^SODIUM^L||140|mmol/L|135-145|N|||F",
    "OBX|6|NM|1742-6^ALT^LN||190|mmol/L|see lab notes|H|||F",
]) + "\r"
# Untyped PID-3 (v2.3 feeds often leave PID-3.5 empty) and pharmacy segments.
PHARMACY = "\r".join([
    "MSH|^~\\&|RX|NORTH|HL7ALERTS|GENHOSP|20260301090000||RDE^O11|R1|P|2.5",
    "PID|1||777001^^^NORTH^MR",
    "ORC|NW|A1|||||||20260301090000",
    "RXE|^^^20260301090000|AZA50^AZATHIOPRINE 50MG TAB^LOCAL|100||mg",
    "ORC|NW|A2|||||||20260301090000",
    "RXE|^^^20260301090000|X77^CHEMO MIX^LOCAL|1||mg",
    "ORC|NW|A3|||||||20260301090000",
    "RXE|^^^20260301090000|73689^Febuxostat 40 MG^RXNORM|40||mg",
]) + "\r"


def survey(tmp_path: Path, *files: Path, config: Path | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "survey.json"
    args = ["survey", "--json", str(out), *(("--config", str(config)) if config else ()), *map(str, files)]
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT * 4, check=False)
    return done, json.loads(out.read_text())


def archive(tmp_path: Path) -> list[Path]:
    lab, rx = tmp_path / "lab.hl7", tmp_path / "rx.hl7"
    lab.write_bytes((LOCAL_PANEL + LOCAL_PANEL.replace("|S1|P|", "|S2|P|")).replace("\r", "\r\n").encode()
                    + BAD_NO_MRN)
    rx.write_bytes(PHARMACY.encode())
    return [lab, rx, tmp_path / "missing.hl7"]


def test_survey_reports_what_the_daemon_will_understand(tmp_path: Path) -> None:
    done, doc = survey(tmp_path, *archive(tmp_path))
    assert done.returncode == 1, done.stderr  # a refused message and a missing file
    assert stat.S_IMODE(os.stat(tmp_path / "survey.json").st_mode) == 0o600
    assert (doc["files"], doc["messages"]) == (3, 4)
    assert doc["versions"] == {"2.3": 2, "2.5.1": 1, "2.5": 1}
    assert doc["message_types"] == {"ORU^R01": 3, "RDE^O11": 1}
    assert doc["senders"]["LIS^NORTHLAB"] == 2
    assert doc["charsets"]["8859/1"] == 2
    ids = {(i["id_type"], i["authority"]): i["count"] for i in doc["patient_identifiers"]}
    assert ids[("MR", "NORTH")] == 3
    assert ids[("SS", "SSA")] == 3
    assert doc["keyed"]["keyed_to_a_patient"] == 3
    assert doc["keyed"]["messages_with_pid"] == 4

    # The suggested mappings, keyed by OBX-3.1 as terminology.lab_codes is.
    suggested = {s["code"]: s["analyte"] for s in doc["suggested_lab_codes"]}
    assert suggested == {"SGPT": "ALT", "ALKP": "ALP", "TBIL": "bilirubin_total", "PLT": "platelets"}
    assert '"SGPT": ALT' in doc["suggested_config"]
    codes = {c["code"]: c["analyte"] for c in doc["observation_codes"]}
    assert codes["NA"] == "unmapped"
    assert codes["1742-6"] == "ALT"
    units = {(u["analyte"], u["unit"]): u["converts"] for u in doc["units"]}
    assert units[("ALT", "mmol/L")] is False
    assert units[("ALT", "U/L")] is True
    assert doc["unreadable_ranges"][0]["example"] == "see lab notes"
    drugs = {d["code"]: d["resolves_to"] for d in doc["drugs"]}
    assert drugs == {"AZA50": "azathioprine", "X77": None, "73689": "febuxostat"}
    assert doc["order_controls"] == {"NW": 3}
    assert doc["result_statuses"]["F"] == 13
    # hl7apy's validation is reported per message type, never enforced.
    assert doc["structure"]["RDE^O11"]["validated"] == 1
    assert any("RXR" in p for p in doc["structure"]["RDE^O11"]["problems"])

    skipped = {(Path(s["file"]).name, s["control_id"], s["code"]) for s in doc["skipped"]}
    assert skipped == {("lab.hl7", "BAD001", "AE"), ("missing.hl7", None, "unreadable")}
    assert "## suggested config.yaml" in done.stdout
    assert '"PLT": platelets' in done.stdout


def test_the_suggested_lines_map_the_codes_once_in_config(tmp_path: Path) -> None:
    files = archive(tmp_path)[:2]
    _, first = survey(tmp_path, *files)
    config = tmp_path / "config.yaml"
    config.write_text(first["suggested_config"])
    done, doc = survey(tmp_path, *files, config=config)
    assert done.returncode == 1  # the refused message is still refused
    assert doc["suggested_lab_codes"] == []
    codes = {c["code"]: c["analyte"] for c in doc["observation_codes"]}
    assert (codes["SGPT"], codes["ALKP"], codes["TBIL"], codes["PLT"]) == ("ALT", "ALP", "bilirubin_total", "platelets")


def test_suggestions_read_the_names_labs_use() -> None:
    cases = {
        ("SGPT", ""): Analyte.ALT, ("X1", "ALAT"): Analyte.ALT, ("X2", "GPT"): Analyte.ALT,
        ("X3", "ALK PHOS"): Analyte.ALP, ("X4", "T BILI"): Analyte.BILI_TOTAL, ("X5", "D. BILI"): Analyte.BILI_DIRECT,
        ("X6", "PLT"): Analyte.PLATELETS, ("X7", "Gamma GT"): Analyte.GGT, ("X8", "ASAT"): Analyte.AST,
        ("X9", "ALBUMIN"): Analyte.ALBUMIN, ("X10", "INR"): Analyte.INR, ("X11", "ABS NEUT"): Analyte.NEUTROPHILS,
        ("X12", "SODIUM"): None, ("X13", "PLATELET AGGREGATION"): Analyte.PLATELETS, ("GLU", "GLUCOSE"): None,
    }
    for (code, text), analyte in cases.items():
        assert suggest(code, text) == analyte, (code, text)
