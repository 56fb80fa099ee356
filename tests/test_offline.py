"""`hl7-alerts check` and `hl7-alerts orders import/list` as a user runs them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.daemon import CLI
from tests.support.samples import SAMPLES
from tests.support.waiting import WAIT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT * 3, check=False)


def test_check_prints_alert_events_as_json_lines_without_a_broker() -> None:
    result = run("check", *(str(SAMPLES / n) for n in ("01_seed_order_azathioprine.hl7",
                                                      "02_seed_liver_panel_above_3xuln.hl7",
                                                      "03_seed_discontinue_azathioprine.hl7",
                                                      "04_seed_low_alp_two_weeks_later.hl7")))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["rule"], e["event"]) for e in lines] == [
        ("aza.pgx.missing", "firing"), ("aza.hepatotoxicity.stop", "firing"),
        ("aza.post_stop.low_alp", "firing"), ("aza.hepatotoxicity.stop", "resolved"),
    ]
    assert all(e["schema"] == "hl7-alerts/alert@1" for e in lines)


def test_check_reports_rejected_messages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.hl7"
    bad.write_bytes(b"MSH|^~\\&|L|F|R|G|2026||ORU^R01|BAD9|P|2.5\nPID|1||1^^^SSA^SS\n")
    result = run("check", str(bad))
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert (line["control_id"], line["ack"]) == ("BAD9", "AE")
    assert line["error"].startswith("PID-3 has no patient identifier of type MR")


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text("store:\n  path: data/store.sqlite3\nterminology:\n  drug_codes:\n    'NDC:0054-4084-25': azathioprine\n")
    return config


CSV = """patient_id,authority,order_id,drug,drug_code,drug_system,dose,start,stop
H0550001,GENHOSP,CSV1,IMURAN 50MG TAB,,,100 mg,2026-09-01,
H0550001,GENHOSP,CSV2,Allopurinol 100 mg,,,100 mg,2026-09-05T08:00,2026-10-01
H0550002,GENHOSP,CSV3,Aza generic,0054-4084-25,NDC,50 mg,20260901090000,
"""


def test_orders_import_then_list_and_import_twice_is_harmless(tmp_path: Path) -> None:
    config = _config(tmp_path)
    orders = tmp_path / "orders.csv"
    orders.write_text(CSV)
    first = run("orders", "import", "--config", str(config), str(orders))
    assert first.returncode == 0, first.stderr
    # Two new thiopurine orders without PGx on file, and allopurinol with the first.
    assert first.stdout.strip() == "imported 3, unchanged 0, alert events 3"
    again = run("orders", "import", "--config", str(config), str(orders))
    assert again.stdout.strip() == "imported 0, unchanged 3, alert events 0"
    listed = run("orders", "list", "--config", str(config), "--patient", "H0550001")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert rows[0] == ["authority", "order_id", "drug", "dose", "start", "stop", "status", "holds"]
    assert [(r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows[1:]] == [
        ("CSV1", "azathioprine", "100 mg", "2026-09-01T00:00:00+00:00", "", "active"),
        ("CSV2", "allopurinol", "100 mg", "2026-09-05T08:00:00+00:00", "2026-10-01T00:00:00+00:00", "stopped"),
    ]
    ndc = run("orders", "list", "--config", str(config), "--patient", "H0550002")
    assert ndc.stdout.splitlines()[1].split("\t")[2] == "azathioprine"
    nobody = run("orders", "list", "--config", str(config), "--patient", "H0559999")
    assert nobody.returncode == 1
    assert "no orders on file" in nobody.stderr


def test_orders_import_names_row_and_column(tmp_path: Path) -> None:
    config = _config(tmp_path)
    orders = tmp_path / "orders.csv"
    orders.write_text("patient_id,order_id,drug,start,stop\n"
                      "H0550001,CSV1,IMURAN,2026-09-01,\n"
                      "H0550001,,IMURAN,yesterday,\n"
                      "H0550001,CSV4,aspirin,2026-09-01,2026-08-01\n")
    result = run("orders", "import", "--config", str(config), str(orders))
    assert result.returncode == 1
    assert f"{orders}:3: order_id: required" in result.stderr
    assert f"{orders}:3: start: 'yesterday' is not a date" in result.stderr
    assert f"{orders}:4: stop: before start" in result.stderr
    assert f"{orders}:4: drug: 'aspirin' is not a drug this site maps" in result.stderr
    assert not (tmp_path / "data" / "store.sqlite3").exists()  # all or nothing
    orders.write_text("patient,order_id,drug,start\n")
    missing = run("orders", "import", "--config", str(config), str(orders))
    assert f"{orders}:1: missing column(s) patient_id" in missing.stderr
