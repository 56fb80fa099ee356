"""The alert page's trend chart, drawn on the server as SVG with matplotlib.

The page carries the ``<svg>`` inline: it needs no script and no network
(hospital networks often have none), prints, and scales to the width of a
phone in portrait (``viewBox``, no fixed size). Every series, band, ULN line
and alert marker has an id (matplotlib's ``gid``) that tests find in the
DOM: ``series-ALT``, ``band-RX1-active-0``, ``uln-3x``, ``alert-<id>``.

Matplotlib writes its colours as ``style`` attributes; the page's Content
Security Policy allows no inline style, so they are rewritten as the SVG
presentation attributes they stand for (same rendering, nothing inline
for CSP to refuse). Matplotlib is imported only here, when a chart is
drawn: the daemon never loads it. Drawing holds matplotlib's global state,
so one chart is drawn at a time.
"""

from __future__ import annotations

import io
import re
import threading
from datetime import timedelta
from typing import Any

from hl7_alerts.model import OrderStatus
from hl7_alerts.web.trend import ULN_LINES, Trend

_LOCK = threading.Lock()

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
COLOURS = {
    "ALT": "#D55E00",
    "AST": "#0072B2",
    "ALP": "#009E73",
    "GGT": "#CC79A7",
    "bilirubin_total": "#E69F00",
    "platelets": "#0072B2",
    "neutrophils": "#D55E00",
}
BAND_COLOURS = {OrderStatus.ACTIVE: "#009E73", OrderStatus.HELD: "#E69F00", OrderStatus.STOPPED: "#999999"}
SEVERITY_COLOURS = {"critical": "#B2182B", "high": "#D55E00", "warning": "#E69F00", "info": "#0072B2"}
MARKERS = {"ALT": "o", "AST": "s", "ALP": "^", "GGT": "D", "bilirubin_total": "v"}

# Properties matplotlib puts in style="" that SVG also has as attributes.
_PRESENTATION = frozenset(
    {
        "fill",
        "fill-opacity",
        "stroke",
        "stroke-width",
        "stroke-opacity",
        "stroke-linecap",
        "stroke-linejoin",
        "stroke-dasharray",
        "stroke-dashoffset",
        "stroke-miterlimit",
        "opacity",
        "clip-path",
        "font-family",
        "font-size",
        "font-weight",
        "font-style",
        "text-anchor",
    }
)
_STYLE = re.compile(r'\sstyle="([^"]*)"')
_SIZE = re.compile(r'<svg([^>]*?)\swidth="[^"]*"\sheight="[^"]*"')


def render_svg(trend: Trend, *, title: str = "") -> str:
    """The chart as an inline ``<svg>`` element (no XML prolog)."""
    with _LOCK:
        return _clean(_draw(trend, title))


def _draw(trend: Trend, title: str) -> str:
    import matplotlib  # noqa: PLC0415 (heavy: only the web view draws)

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # noqa: PLC0415

    mdates = _dates()

    lanes = sorted({(b.order_id, b.drug) for b in trend.bands}, key=lambda k: (k[1], k[0]))
    rows = [3.2, 0.35 + 0.3 * max(len(lanes), 1)] + ([1.6] if trend.counts else [])
    with matplotlib.rc_context(
        {
            "svg.hashsalt": "hl7-alerts",
            "svg.fonttype": "path",
            "font.size": 8.5,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    ):
        height = sum(rows) + 0.9
        # Fixed margins (a layout engine costs more than the drawing): room
        # for the order lanes' names on the left and the ULN labels on the right.
        fig = Figure(figsize=(6.4, height))
        fig.subplots_adjust(left=0.2, right=0.88, top=1 - 0.35 / height, bottom=0.45 / height, hspace=0.35)
        axes = fig.subplots(len(rows), 1, sharex=True, gridspec_kw={"height_ratios": rows})
        liver, orders = axes[0], axes[1]
        _liver(liver, trend, title)
        _orders(orders, trend, lanes)
        if trend.counts:
            _counts(axes[2], trend)
        pad = timedelta(days=2)
        liver.set_xlim(trend.start - pad, trend.end + pad)
        locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
        axes[-1].xaxis.set_major_locator(locator)
        axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    return out.getvalue()


def _liver(ax: Any, trend: Trend, title: str) -> None:
    top = 3.5
    for level in ULN_LINES:
        line = ax.axhline(
            level,
            color="#444444" if level > 1 else "#888888",
            linewidth=0.8,
            linestyle=(0, (4, 3)) if level > 1 else "-",
        )
        line.set_gid(f"uln-{level:g}x")
        ax.annotate(
            f"{level:g}× ULN",
            xy=(1.0, level),
            xycoords=("axes fraction", "data"),
            xytext=(2, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color="#444444",
        )
    for series in trend.liver:
        points = series.plotted
        if not points:
            continue
        top = max(top, *(p.y for p in points if p.y is not None))
        (line,) = ax.plot(
            [p.at for p in points],
            [p.y for p in points],
            marker=MARKERS.get(series.analyte, "o"),
            markersize=4,
            linewidth=1.6,
            color=COLOURS.get(series.analyte, "#333333"),
            label=series.label,
        )
        line.set_gid(f"series-{series.analyte}")
    _alert_markers(ax, trend)
    ax.set_ylim(0, top * 1.08)
    ax.set_ylabel("× ULN")
    if title:
        ax.set_title(title, loc="left", fontsize=9)
    if any(s.plotted for s in trend.liver):
        ax.legend(loc="upper left", ncols=3, fontsize=7, frameon=False)
    else:
        ax.text(
            0.5, 0.5, "no liver results in this window", transform=ax.transAxes, ha="center", color="#666666"
        )


def _alert_markers(ax: Any, trend: Trend, suffix: str = "") -> None:
    for marker in trend.markers:
        colour = SEVERITY_COLOURS.get(marker.severity, "#333333")
        line = ax.axvline(
            marker.at,
            color=colour,
            linewidth=2.2 if marker.current else 1.0,
            linestyle="-" if marker.current else (0, (1, 2)),
            alpha=0.9,
        )
        line.set_gid(f"alert-{marker.alert_id}{suffix}")


def _orders(ax: Any, trend: Trend, lanes: list[tuple[str, str]]) -> None:
    mdates = _dates()
    counters: dict[tuple[str, str], int] = {}
    for index, (order_id, drug) in enumerate(lanes):
        for band in (b for b in trend.bands if b.order_id == order_id and b.drug == drug):
            start = mdates.date2num(band.start)
            width = mdates.date2num(band.end) - start
            key = (order_id, str(band.status))
            n = counters.get(key, 0)
            counters[key] = n + 1
            bars = ax.broken_barh(
                [(start, width)],
                (index + 0.15, 0.7),
                facecolors=BAND_COLOURS[band.status],
                alpha=0.85 if band.status is not OrderStatus.STOPPED else 0.45,
                hatch="//" if band.status is OrderStatus.HELD else None,
                edgecolor="white",
            )
            bars.set_gid(f"band-{_safe(order_id)}-{band.status}-{n}")
    ax.set_yticks([i + 0.5 for i in range(len(lanes))], [f"{drug} {oid}" for oid, drug in lanes], fontsize=7)
    ax.set_ylim(0, max(len(lanes), 1))
    ax.tick_params(axis="y", length=0)
    if not lanes:
        ax.text(
            0.5,
            0.5,
            "no thiopurine or allopurinol/febuxostat order on file",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#666666",
            fontsize=7,
        )
        ax.set_yticks([])
    ax.set_title(
        "orders: active (green), held (hatched), stopped (grey)", loc="left", fontsize=7, color="#444444"
    )


def _counts(ax: Any, trend: Trend) -> None:
    axes = {"platelets": ax, "neutrophils": ax.twinx()}
    for series in trend.counts:
        target = axes[series.analyte]
        points = series.plotted
        (line,) = target.plot(
            [p.at for p in points],
            [p.y for p in points],
            marker="o",
            markersize=3.5,
            linewidth=1.4,
            color=COLOURS[series.analyte],
            label=series.label,
        )
        line.set_gid(f"series-{series.analyte}")
        target.set_ylabel(f"{series.label} ×10⁹/L", color=COLOURS[series.analyte], fontsize=7.5)
        target.set_ylim(bottom=0)
    _alert_markers(ax, trend, "-counts")


def _dates() -> Any:
    """matplotlib.dates, whose functions carry no type hints."""
    from matplotlib import dates  # noqa: PLC0415

    return dates


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _clean(svg: str) -> str:
    """Inline-ready: no prolog or metadata, presentation attributes for
    style="", and the size left to the page (viewBox scaling)."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s*<style type="text/css">[^<]*</style>', "", svg)
    svg = _STYLE.sub(_attributes, svg)
    return _SIZE.sub(
        r'<svg\1 width="100%" role="img" stroke-linejoin="round" stroke-linecap="butt" class="trend"',
        svg,
        count=1,
    )


def _attributes(match: re.Match[str]) -> str:
    out = []
    for part in match[1].split(";"):
        name, _, value = part.partition(":")
        name, value = name.strip(), value.strip()
        if name in _PRESENTATION and value and '"' not in value:
            out.append(f' {name}="{value}"')
    return "".join(out)
