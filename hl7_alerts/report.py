"""The backtest's report: charts as inline SVG, one self-contained HTML page,
and a CSV of the alerts.

Owns turning a `backtest.BacktestRun` (and, with ``--compare``, a second
one) into files a committee member opens from a share with no network:
``index.html`` carries its charts inline (matplotlib's SVG, no script, no
external font or style) and ``alerts.csv`` every alert event. Both hold
patient identifiers, so both are written owner-only (`files.py`). Every
chart element a reader (or a test) may look for has an SVG id (a
matplotlib ``gid``): ``bar--rule-month--<rule>--<month>``,
``bar--severity-month--<severity>--<month>``, ``line--pages-per-week``,
``line--reminders-per-week``, ``bar--compare--base|other--<rule>``.
matplotlib and Jinja2 are imported only here, and only when a report is
written, so the daemon never loads them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hl7_alerts.backtest import SEVERITIES, BacktestRun, compare, csv_rows, evidence_text
from hl7_alerts.files import make_private_dir, write_private

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SEVERITY_COLOURS = {"critical": "#b2182b", "high": "#ef8a62", "warning": "#e6c229", "info": "#67a9cf"}
# Fixed salt: the same data gives the same SVG ids and bytes (reports diff cleanly).
_STYLE: dict[Any, Any] = {"svg.fonttype": "none", "svg.hashsalt": "hl7-alerts", "font.size": 9.0}


def svg_of(figure: Figure) -> str:
    """A matplotlib figure as an ``<svg>`` element to inline in HTML (no XML
    declaration or DOCTYPE; text stays text)."""
    import matplotlib as mpl  # noqa: PLC0415 (heavy: only when a report is drawn)

    out = io.StringIO()
    with mpl.rc_context(_STYLE):
        # No metadata block: no date (the same run gives the same bytes), no links.
        figure.savefig(out, format="svg", bbox_inches="tight",
                       metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = out.getvalue()
    return text[text.index("<svg"):]


def _figure(width: float = 9.0, height: float = 3.6) -> Figure:
    import matplotlib as mpl  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415 (no pyplot: no global state, no GUI backend)

    with mpl.rc_context(_STYLE):
        return Figure(figsize=(width, height), layout="constrained")


def _stacked(
    figure: Figure, months: Sequence[str], series: Mapping[str, Sequence[int]], *, kind: str, title: str,
    colours: Mapping[str, str] | None = None,
) -> None:
    ax = figure.add_subplot()
    bottom = [0] * len(months)
    palette = _palette(len(series))
    for index, (name, counts) in enumerate(series.items()):
        bars = ax.bar(months, counts, bottom=bottom, label=name,
                      color=(colours or {}).get(name, palette[index]))
        for patch, month in zip(bars.patches, months, strict=True):
            patch.set_gid(f"bar--{kind}--{name}--{month}")
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_title(title)
    ax.set_ylabel("alert events")
    _thin_labels(ax, months, 24)
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _palette(n: int) -> list[Any]:
    """As many distinct colours as there are rules (tab10 repeats after ten)."""
    from matplotlib import colormaps  # noqa: PLC0415

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _thin_labels(ax: Any, labels: Sequence[str], most: int) -> None:
    """At most ``most`` category labels on the x axis (a long archive has
    hundreds of weeks): every k-th one, turned to fit."""
    step = max(1, -(-len(labels) // most))
    ax.set_xticks(range(0, len(labels), step), labels[::step], rotation=60, ha="right", fontsize=7)


def charts(run: BacktestRun, other: BacktestRun | None = None) -> dict[str, str]:
    """Every chart of the report as inline SVG, by name."""
    summary = run.summary
    months = [m["month"] for m in summary["per_month"]]
    cells = summary["by_rule_severity_month"]
    rules = sorted(summary["by_rule"])
    by_rule = {r: [sum(c["events"] for c in cells if c["rule"] == r and c["month"] == m) for m in months]
               for r in rules}
    by_severity = {
        s: [sum(c["events"] for c in cells if c["severity"] == s and c["month"] == m) for m in months]
        for s in SEVERITIES
    }
    out: dict[str, str] = {}
    figure = _figure()
    _stacked(figure, months, by_rule, kind="rule-month", title="Alert events per rule per month")
    out["rules_by_month"] = svg_of(figure)
    figure = _figure()
    _stacked(figure, months, by_severity, kind="severity-month", title="Alert events per severity per month",
             colours=SEVERITY_COLOURS)
    out["severity_by_month"] = svg_of(figure)
    weeks = summary["pages_per_week"]
    figure = _figure(height=3.0)
    ax = figure.add_subplot()
    labels = [w["week"] for w in weeks]
    dots = len(labels) <= 60  # markers only where they stay readable
    (pages,) = ax.plot(labels, [w["pages"] for w in weeks], marker="o" if dots else None,
                       label="pages (with reminders)")
    pages.set_gid("line--pages-per-week")
    (reminders,) = ax.plot(labels, [w["reminders"] for w in weeks], marker="." if dots else None,
                           label="of which reminders")
    reminders.set_gid("line--reminders-per-week")
    ax.set_title("Pages per week")
    _thin_labels(ax, labels, 30)
    ax.legend(fontsize=7, frameon=False)
    out["pages_per_week"] = svg_of(figure)
    if other is not None:
        diff = compare(run.summary, other.summary)["by_rule"]
        names = list(diff)
        figure = _figure(height=max(2.5, 0.35 * len(names) + 1))
        ax = figure.add_subplot()
        ys = list(range(len(names)))
        for offset, which, label in ((-0.2, 0, run.config_name), (0.2, 1, other.config_name)):
            bars = ax.barh([y + offset for y in ys], [diff[n]["events"][which] for n in names], height=0.4,
                           label=label)
            for patch, name in zip(bars.patches, names, strict=True):
                patch.set_gid(f"bar--compare--{'base' if which == 0 else 'other'}--{name}")
        ax.set_yticks(ys, names)
        ax.invert_yaxis()
        ax.set_xlabel("alert events")
        ax.set_title("Alert events per rule: both configurations")
        ax.legend(fontsize=7, frameon=False)
        out["compare"] = svg_of(figure)
    return out


def render_html(run: BacktestRun, other: BacktestRun | None = None) -> str:
    """The whole report page, self-contained."""
    import jinja2  # noqa: PLC0415 (only when a report is written)

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hl7_alerts", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["evidence"] = evidence_text
    context: dict[str, Any] = {
        "run": run,
        "summary": run.summary,
        "other": other,
        "charts": charts(run, other),
        "comparison": compare(run.summary, other.summary) if other is not None else None,
        "severities": SEVERITIES,
        "skipped": [s.as_dict() for s in run.result.skipped],
    }
    return env.get_template("backtest.html").render(context)


def write_report(folder: Path, run: BacktestRun, other: BacktestRun | None = None) -> list[Path]:
    """``index.html`` and ``alerts.csv`` in ``folder`` (created owner-only);
    return the files written."""
    make_private_dir(folder)
    page = folder / "index.html"
    write_private(page, render_html(run, other))
    table = io.StringIO()
    writer = csv.writer(table)
    for row in csv_rows(run.events):
        writer.writerow(row)
    alerts = folder / "alerts.csv"
    write_private(alerts, table.getvalue())
    return [page, alerts]
