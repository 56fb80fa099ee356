"""The trend behind an alert page: its points are the store's values, as the
rules judge them (×ULN in the result's own ULN), for a patient whose story
is known: the seed (ALT above 3×ULN on azathioprine, the drug stopped, ALP
39 U/L two weeks later); orders as bands (active, held, stopped); alert
markers; counts when the patient has them. And the drawing holds every
series and band by id."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hl7_alerts.model import HoldPeriod, Observation, OrderState, OrderStatus, ResultStatus
from hl7_alerts.rules.common import RuleSettings
from hl7_alerts.web.charts import render_svg
from hl7_alerts.web.trend import build_trend, order_bands
from tests.support.samples import STOP
from tests.support.webkit import client, seed, sign_in, web_config

T0 = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)


def test_the_seed_patients_trend_is_the_stores_values(tmp_path: Path) -> None:
    config = web_config(tmp_path)
    seed(config)
    with client(config) as c:
        sign_in(c, config)
        critical = c.get("/api/alerts", params={"rule": STOP, "closed": "1"}).json()["alerts"][0]
        body = c.get(f"/api/alerts/{critical['alert_id']}").json()
        page = c.get(f"/alerts/{critical['alert_id']}").text
    with sqlite3.connect(config.store.path) as db:
        stored = db.execute(
            "SELECT analyte, value, ref_high, observed_at FROM observations WHERE patient = 'GENHOSP|MR|H010001' "
            "AND analyte IN ('ALT', 'AST', 'ALP', 'GGT', 'bilirubin_total') ORDER BY analyte, observed_ts"
        ).fetchall()
    plotted = sorted(
        (s["analyte"], p["value"], p["y"], p["at"]) for s in body["trend"]["liver_x_uln"] for p in s["points"]
    )
    assert plotted == sorted((a, v, round(v / high, 2), at) for a, v, high, at in stored)
    assert len(plotted) == 10  # two panels of five
    by = {(a, at[:10]): y for a, _, y, at in plotted}
    assert by[("ALT", "2026-10-20")] == 3.39 >= 3  # the rise above 3 × ULN the alert fired on
    assert by[("ALP", "2026-11-03")] == round(39 / 141, 2)  # ALP 39 U/L after the stop: below the range
    assert body["trend"]["orders"] == [
        {"order_id": "RX1", "drug": "azathioprine", "status": "active",
         "start": "2026-09-01T09:00:00+00:00", "end": "2026-10-20T14:00:00+00:00"},
        {"order_id": "RX1", "drug": "azathioprine", "status": "stopped",
         "start": "2026-10-20T14:00:00+00:00", "end": body["trend"]["end"]},
    ]
    markers = {(m["rule"], m["at"], m["current"]) for m in body["trend"]["alerts"]}
    assert (STOP, "2026-10-20T08:00:00+00:00", True) in markers
    assert ("aza.post_stop.low_alp", "2026-11-03T08:00:00+00:00", False) in markers
    ids = set(re.findall(r'<g id="([a-z]+-[^"]+)"', page))
    assert {f"series-{a}" for a in ("ALT", "AST", "ALP", "GGT", "bilirubin_total")} <= ids
    assert {"band-RX1-active-0", "band-RX1-stopped-0", "uln-1x", "uln-2x", "uln-3x", f"alert-{critical['alert_id']}"} <= ids
    # The table under the chart says the same numbers in words.
    assert "<td>190 U/L</td><td>3.39</td>" in page.replace("\n", "")


def obs(analyte: str, value: float, days: float, *, unit: str = "U/L", high: float | None = None,
        status: ResultStatus = ResultStatus.FINAL) -> Observation:
    return Observation(
        analyte=analyte, code="x", code_system="LN", text="", value_type="NM", value_text=f"{value:g}", value=value,
        comparator="", unit=unit, ref_low=None, ref_high=high, ref_text="", flag="", status=status,
        observed_at=T0 + timedelta(days=days), specimen_id=f"S{days}",
    )


def test_values_are_read_as_the_rules_read_them() -> None:
    trend = build_trend(
        [
            obs("ALT", 112, 1, high=40),  # the lab's own ULN: 2.8 ×
            obs("ALT", 3.3, 2, unit="ukat/L"),  # no range: canonical unit (× 60) against the default 56
            obs("ALT", 500, 3, high=56, status=ResultStatus.CANCELLED),  # cancelled: not a value any more
            obs("platelets", 90, 1, unit="10*9/L"),
            obs("neutrophils", 1500, 1, unit="/uL"),  # converted as the marrow rule converts it
            obs("ALT", 100, 400, high=56),  # outside the window
        ],
        [], [], settings=RuleSettings(), start=T0, end=T0 + timedelta(days=180), alert_id="x",
    )
    (alt,) = trend.liver
    assert [p.y for p in alt.points] == [2.8, round(3.3 * 60 / 56, 2)]
    assert {s.analyte: [p.y for p in s.points] for s in trend.counts} == {"platelets": [90], "neutrophils": [1.5]}


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        pytest.param(
            OrderState(order_id="A", ingredient="azathioprine", drug_text="", dose="", start=T0, stop=None),
            [(OrderStatus.ACTIVE, 0, 100)], id="active-throughout",
        ),
        pytest.param(
            OrderState(order_id="A", ingredient="azathioprine", drug_text="", dose="", start=T0,
                       stop=T0 + timedelta(days=60),
                       holds=(HoldPeriod(start=T0 + timedelta(days=10), end=T0 + timedelta(days=20)),)),
            [(OrderStatus.ACTIVE, 0, 10), (OrderStatus.HELD, 10, 20), (OrderStatus.ACTIVE, 20, 60),
             (OrderStatus.STOPPED, 60, 100)], id="held-then-stopped",
        ),
        pytest.param(
            OrderState(order_id="A", ingredient="azathioprine", drug_text="", dose="", start=T0 - timedelta(days=50),
                       stop=None, holds=(HoldPeriod(start=T0 + timedelta(days=90), end=None),)),
            [(OrderStatus.ACTIVE, 0, 90), (OrderStatus.HELD, 90, 100)], id="started-before-held-to-the-end",
        ),
    ],
)
def test_orders_become_bands(order: OrderState, expected: list[tuple[OrderStatus, int, int]]) -> None:
    bands = order_bands(order, T0, T0 + timedelta(days=100))
    assert [(b.status, (b.start - T0).days, (b.end - T0).days) for b in bands] == expected


def test_the_chart_draws_every_series_band_and_marker_by_id() -> None:
    orders = [
        OrderState(order_id="RX1", ingredient="azathioprine", drug_text="", dose="", start=T0,
                   stop=T0 + timedelta(days=60),
                   holds=(HoldPeriod(start=T0 + timedelta(days=10), end=T0 + timedelta(days=20)),)),
        OrderState(order_id="RX2", ingredient="allopurinol", drug_text="", dose="", start=T0, stop=None),
        OrderState(order_id="RX3", ingredient="prednisolone", drug_text="", dose="", start=T0, stop=None),
    ]
    trend = build_trend(
        [obs("ALT", 190, 5, high=56), obs("bilirubin_total", 2.5, 5, unit="mg/dL", high=1.2),
         obs("platelets", 120, 5, unit="10*9/L")],
        orders, [], settings=RuleSettings(), start=T0, end=T0 + timedelta(days=100), alert_id="x",
    )
    svg = render_svg(trend)
    ids = set(re.findall(r'id="([^"]+)"', svg))
    assert {"series-ALT", "series-bilirubin_total", "series-platelets", "band-RX1-active-0", "band-RX1-held-0",
            "band-RX1-active-1", "band-RX1-stopped-0", "band-RX2-active-0"} <= ids
    assert not any("RX3" in i for i in ids)  # only thiopurines and xanthine oxidase inhibitors
    assert svg.startswith("<svg")
    assert 'width="100%"' in svg
    assert "viewBox" in svg
    assert "style=" not in svg
    assert "<style" not in svg
    assert "<script" not in svg


def test_the_daemon_never_loads_the_web_stack() -> None:
    """serve (the whole command line, the daemon) imports none of the web
    view's libraries: only ``hl7-alerts web`` and a drawn chart do."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "import sys, hl7_alerts.cli, hl7_alerts.daemon, hl7_alerts.cli.web; "
        "print(sorted(m for m in ('matplotlib', 'starlette', 'uvicorn', 'jinja2', 'argon2', 'multipart') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
