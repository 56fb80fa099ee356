"""The alert page in a real browser: Debian's headless Chromium, driven by
Selenium through Debian's chromedriver, against ``hl7-alerts web`` as a
process. Signing in, opening the seed patient's alert at a phone's width in
portrait and at a desktop's, screenshots saved, and the chart's series and
bands drawn (present in the DOM with a size on screen, and inside the
page's width: no sideways scrolling on the phone)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.support.samples import STOP
from tests.support.waiting import WAIT
from tests.support.webkit import PASSWORD, WebProcess, add_user, seed, store_config

SIZES = {"phone": (390, 844), "desktop": (1280, 900)}


def chromium() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("needs Debian's chromium and chromium-driver (.ci/run installs them)", pytrace=False)
    return browser, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    binary, driver = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()


def test_the_seed_patients_alert_page_in_chromium(tmp_path: Path, browser: webdriver.Chrome) -> None:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        # The default 180-day window: an alert older than that is shown with
        # the 180 days up to its evidence, so the seed story (2026) stays in view.
        f"store:\n  path: {tmp_path / 'store.sqlite3'}\nlogging:\n  format: json\nweb:\n  port: 0\n"
    )
    seed(store_config({"path": str(tmp_path / "store.sqlite3")}), users={})
    assert add_user(config_path).returncode == 0
    with WebProcess(config_path) as site:
        browser.set_window_size(*SIZES["desktop"])
        browser.get(f"{site.url}/")
        assert "/login" in browser.current_url  # no session: the sign-in page
        browser.find_element(By.NAME, "username").send_keys("dr.web")
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        WebDriverWait(browser, WAIT).until(expected_conditions.url_to_be(f"{site.url}/"))
        browser.get(f"{site.url}/?closed=1&rule={STOP}")
        browser.find_element(By.CSS_SELECTOR, "li.alert a").click()
        WebDriverWait(browser, WAIT).until(expected_conditions.url_contains("/alerts/"))
        assert "Azathioprine hepatotoxicity" in browser.find_element(By.TAG_NAME, "h1").text
        for name, (width, height) in SIZES.items():
            browser.set_window_size(width, height)
            browser.refresh()
            chart = browser.find_element(By.CSS_SELECTOR, "svg.trend")
            # As wide as the phone allows; on a desktop, its reading width (48rem).
            room = browser.execute_script("return document.documentElement.clientWidth")
            assert chart.size["width"] >= min(0.85 * room, 760), name
            page_width = browser.execute_script("return document.documentElement.scrollWidth")
            viewport = browser.execute_script("return window.innerWidth")
            assert page_width <= viewport, f"{name}: the page scrolls sideways ({page_width} > {viewport})"
            drawn = {}
            for element in chart.find_elements(By.CSS_SELECTOR, "g[id^='series-'], g[id^='band-'], g[id^='uln-']"):
                rect = element.rect
                drawn[element.get_attribute("id")] = rect["width"] > 0 and rect["height"] > 0
            expected = {f"series-{a}" for a in ("ALT", "AST", "ALP", "GGT", "bilirubin_total")} | {
                "band-RX1-active-0", "band-RX1-stopped-0", "uln-1x", "uln-2x", "uln-3x",
            }
            assert expected <= drawn.keys(), f"{name}: missing {expected - drawn.keys()}"
            assert all(drawn[i] for i in expected if i.startswith(("series-", "band-"))), f"{name}: {drawn}"
            shot = tmp_path / f"alert-page-{name}.png"
            browser.get_screenshot_as_file(str(shot))
            assert shot.stat().st_size > 10_000
            if keep := os.environ.get("HL7_ALERTS_SCREENSHOTS"):  # e.g. docs/, for the README
                browser.set_window_size(width, max(height, 1560))  # the whole chart, bands included
                browser.get_screenshot_as_file(str(Path(keep) / shot.name))
        # No console errors: a refused inline style or script would show here.
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
