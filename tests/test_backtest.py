"""`hl7-alerts backtest` as a user runs it: a small archive whose counts are
derived by hand below, the message clock driving a reminder and an overdue
alert, --compare, --json, and the HTML report opened in headless Chromium."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

from PIL import Image  # matplotlib's own dependency
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from hl7_alerts.store import ScratchSqliteStore, SqliteStore
from tests.support.daemon import CLI
from tests.support.hl7kit import ALT, AZA, BAD_NO_MRN, order_msg, oru, result
from tests.support.waiting import WAIT

P1 = "H0770001^^^GENHOSP^MR"
P2 = "H0770002^^^GENHOSP^MR"

# The archive, and what the daemon does with it (defaults but for reminders:
# once, an hour after a critical or high alert paged):
#  1. 01-05 09:00 NW azathioprine for P1: aza.pgx.missing fires (info, no
#     reminder); P1's liver-test schedule is due 01-12 09:00.
#  2. 01-08 08:00 ALT 190 (ULN 56: 3.39×): aza.hepatotoxicity.stop fires
#     (critical). The panel moves the schedule: due 01-15 08:00, alert at
#     01-17 08:00 (weekly grace 2 days).
#     -> at 09:00, on the message clock, its one reminder.
#  3. 01-20 10:00 a panel for P2 (no thiopurine): nothing of its own, but the
#     clock passes 01-17 08:00 first: aza.monitoring.overdue fires then
#     (warning), occurred_at the due time 01-15 08:00.
#  4. 01-21 08:00 ALT 30 for P1: stop resolved, overdue resolved.
#  5. a message with no usable PID-3: AE, skipped; the run goes on.
ARCHIVE = [
    order_msg("BT1", "NW", "RX1", AZA, "20260105090000", mrn=P1),
    oru("BT2", "20260108080000", result(ALT, "190", ref="7-56"), mrn=P1, specimen="S1"),
    oru("BT3", "20260120100000", result(ALT, "25", ref="7-56"), mrn=P2, specimen="S2"),
    oru("BT4", "20260121080000", result(ALT, "30", ref="7-56"), mrn=P1, specimen="S3"),
]
CONFIG = "alerts:\n  reminder_after: 1h\n  reminder_max: 1\n"


def write_archive(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    first, second = folder / "2026-01-a.hl7", folder / "2026-01-b.hl7"
    # LF segment ends in one file, CR in the other: an archive as engines write them.
    first.write_bytes("".join(ARCHIVE[:2]).replace("\r", "\n").encode())
    second.write_bytes("".join(ARCHIVE[2:]).encode() + BAD_NO_MRN)
    return [first, second]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT * 6, check=False)


def backtest(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "out.json"
    files = write_archive(tmp_path / "archive")
    done = run("backtest", "--config", str(config), "--json", str(out), *extra, *map(str, files))
    return done, json.loads(out.read_text()) if out.exists() else {}


def test_backtest_counts_match_the_hand_derived_archive(tmp_path: Path) -> None:
    done, doc = backtest(tmp_path)
    assert done.returncode == 1, done.stderr  # one message was skipped
    events = [(e["rule"], e["event"], e["published_at"]) for e in doc["alerts"]]
    assert events == [
        ("aza.pgx.missing", "firing", "2026-01-05T09:00:00Z"),
        ("aza.hepatotoxicity.stop", "firing", "2026-01-08T08:00:00Z"),
        ("aza.hepatotoxicity.stop", "reminder", "2026-01-08T09:00:00Z"),
        ("aza.monitoring.overdue", "firing", "2026-01-17T08:00:00Z"),
        ("aza.hepatotoxicity.stop", "resolved", "2026-01-21T08:00:00Z"),
        ("aza.monitoring.overdue", "resolved", "2026-01-21T08:00:00Z"),
    ]
    overdue = doc["alerts"][3]
    assert overdue["occurred_at"] == "2026-01-15T08:00:00+00:00"  # its due time, as live
    assert overdue["patient"]["id"] == "H0770001"
    assert all(e["schema"] == "hl7-alerts/alert@1" for e in doc["alerts"])
    (skipped,) = doc["skipped"]
    assert (skipped["control_id"], skipped["code"]) == ("BAD001", "AE")
    assert skipped["file"].endswith("2026-01-b.hl7")
    assert skipped["reason"].startswith("PID-3 has no patient identifier")
    s = doc["summary"]
    assert (s["messages"], s["processed"], s["skipped"]) == (5, 4, 1)
    assert (s["alerts"], s["events"], s["patients_on_thiopurine"]) == (3, 6, 1)
    assert s["by_rule"]["aza.hepatotoxicity.stop"] == {
        "alerts": 1, "events": 3, "by_event": {"firing": 1, "reminder": 1, "resolved": 1}}
    assert s["by_severity"]["critical"] == {"alerts": 1, "events": 3}
    assert s["by_severity"]["warning"] == {"alerts": 1, "events": 2}
    assert s["per_month"] == [{"month": "2026-01", "patients_on_thiopurine": 1, "alerts": 3, "events": 6,
                               "alerts_per_100_patients": 300.0}]
    # Pages: firing, updated, escalated and reminders. W02: pgx.missing,
    # stop and its reminder; W03: the overdue alert; W04: only resolutions.
    assert [(w["week"], w["pages"], w["reminders"]) for w in s["pages_per_week"]] == [
        ("2026-W02", 3, 1), ("2026-W03", 1, 0), ("2026-W04", 0, 0)]
    assert "BAD001" in done.stdout  # named on stdout too
    assert stat.S_IMODE(os.stat(tmp_path / "out.json").st_mode) == 0o600


def test_compare_shows_the_difference_per_rule(tmp_path: Path) -> None:
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(CONFIG + "rules:\n  hepatotoxicity_x_uln: 4.0\n")
    done, doc = backtest(tmp_path, "--compare", str(stricter))
    assert done.returncode == 1, done.stderr
    diff = doc["compare"]["by_rule"]
    # At 4×ULN, ALT 3.39× no longer stops the drug: it is a mild elevation
    # (warning, no reminder), resolved by the normal panel.
    assert diff["aza.hepatotoxicity.stop"] == {"alerts": [1, 0, -1], "events": [3, 0, -3]}
    assert diff["aza.liver.mild"] == {"alerts": [0, 1, 1], "events": [0, 2, 2]}
    assert diff["aza.monitoring.overdue"] == {"alerts": [1, 1, 0], "events": [2, 2, 0]}
    assert doc["compare"]["total"]["pages"] == [4, 3, -1]
    assert "compare\taza.hepatotoxicity.stop\talerts\t1\t0\t-1" in done.stdout


def test_the_report_opens_offline_in_chromium_with_its_charts(tmp_path: Path) -> None:
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(CONFIG + "rules:\n  hepatotoxicity_x_uln: 4.0\n")
    report = tmp_path / "report"
    done, _ = backtest(tmp_path, "--report", str(report), "--compare", str(stricter))
    assert done.returncode == 1, done.stderr
    page, table = report / "index.html", report / "alerts.csv"
    for path in (page, table):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # patient identifiers
    assert stat.S_IMODE(os.stat(report).st_mode) == 0o700
    html = page.read_text()
    # Nothing is fetched: no link, script, image or style from anywhere.
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html) is None
    assert "<script" not in html
    assert "<link" not in html
    assert re.search(r"url\((?!#)", html) is None  # only the SVGs' own clip paths
    rows = table.read_text().splitlines()
    assert len(rows) == 7
    assert rows[0].startswith("published_at,occurred_at,alert_id")
    assert "ALT 190 U/L (3.39×ULN" in rows[2]

    shot = asyncio.run(asyncio.to_thread(_open_in_chromium, page))
    ids, png, figure_png = shot
    for gid in ("bar--rule-month--aza.hepatotoxicity.stop--2026-01", "bar--severity-month--critical--2026-01",
                "bar--severity-month--warning--2026-01", "line--pages-per-week", "line--reminders-per-week",
                "bar--compare--base--aza.hepatotoxicity.stop", "bar--compare--other--aza.liver.mild"):
        assert ids[gid], f"{gid} missing from the page"
    _assert_not_blank(png)
    _assert_not_blank(figure_png, colours=4)


def _open_in_chromium(page: Path) -> tuple[dict[str, bool], bytes, bytes]:

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(page.as_uri())
        ids = {}
        for gid in ("bar--rule-month--aza.hepatotoxicity.stop--2026-01", "bar--severity-month--critical--2026-01",
                    "bar--severity-month--warning--2026-01", "line--pages-per-week", "line--reminders-per-week",
                    "bar--compare--base--aza.hepatotoxicity.stop", "bar--compare--other--aza.liver.mild"):
            found = driver.find_elements(By.ID, gid)
            # A bar drawn: an SVG group holding a path with a size.
            ids[gid] = bool(found) and found[0].find_element(By.TAG_NAME, "path").size["height"] > 0
        figure = driver.find_element(By.ID, "chart-severity-by-month")
        return ids, driver.get_screenshot_as_png(), figure.screenshot_as_png
    finally:
        driver.quit()


def _assert_not_blank(png: bytes, colours: int = 8) -> None:

    image = Image.open(io.BytesIO(png)).convert("RGB")
    distinct = image.getcolors(maxcolors=1 << 20)
    assert distinct is not None
    assert len(distinct) >= colours, "the screenshot is blank"
    assert image.getbbox() is not None


def test_the_scratch_store_skips_fsync_and_the_daemons_does_not(tmp_path: Path) -> None:
    async def level(cls: type[SqliteStore], name: str) -> int:
        store = await cls.open(tmp_path / name)
        try:
            return int(await store.read(lambda tx: tx.execute("PRAGMA synchronous").fetchone()[0]))  # type: ignore[attr-defined]
        finally:
            await store.close()

    assert asyncio.run(level(SqliteStore, "daemon.sqlite3")) == 2  # FULL
    assert asyncio.run(level(ScratchSqliteStore, "scratch.sqlite3")) == 0  # OFF
