"""`hl7-alerts backtest`: what a configuration would have paged about, over
an archive of the site's feed, before anyone is paged.

Owns the run and its figures: the archive goes through `replay.run_archive`
(the daemon's pipeline and timers on the message clock) into a throwaway
store (`store.ScratchSqliteStore`, deleted afterwards); nothing is
published, the site's store is never opened. Every alert event is read back
from that store's outbox, exactly the payload MQTT would have carried, with
``published_at`` set to the message-clock time it would have gone out. From
those: events per rule, severity and month; distinct patients with a
thiopurine order; alerts (new episodes) per 100 patients on a thiopurine per
month; pages per week; and, for ``--compare``, the difference per rule
between two configurations. Charts and HTML are `report.py`'s. Months and
weeks are counted in ``hl7.timezone``.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hl7_alerts.alerts import AlertEvent
from hl7_alerts.config import Config
from hl7_alerts.model import OrderState, PatientKey
from hl7_alerts.replay import Progress, ReplayResult, run_archive
from hl7_alerts.store import PAGING_EVENTS, ScratchSqliteStore, Store, Transaction
from hl7_alerts.timeutil import from_iso, utc_stamp

# Severities most urgent first, as tables and charts list them.
SEVERITIES = ("critical", "high", "warning", "info")


@dataclass(slots=True, kw_only=True)
class BacktestRun:
    """One configuration over one archive."""

    config_name: str
    result: ReplayResult
    events: list[dict[str, Any]] = field(default_factory=list)  # MQTT payloads, in publish order
    thiopurine_orders: dict[PatientKey, tuple[OrderState, ...]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


async def _read_events(store: Store) -> list[dict[str, Any]]:
    """Every outbox row, oldest first, as the payload the publisher would send."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        rows = await store.pending_outbox(1000, after_id=after)
        if not rows:
            return events
        for row in rows:
            body = json.loads(row.payload)
            queued = from_iso(row.created_at)
            body["published_at"] = utc_stamp(queued) if queued else None
            events.append(body)
        after = rows[-1].id


async def run_backtest(
    paths: Sequence[Path],
    config: Config,
    *,
    config_name: str = "",
    progress: Callable[[Progress], None] | None = None,
) -> BacktestRun:
    """Run ``paths`` with ``config`` into a throwaway store; gather every event."""
    thiopurines = config.pipeline_settings().rules.thiopurines
    with tempfile.TemporaryDirectory(prefix="hl7-alerts-backtest-") as folder:  # 0700: the store is PHI
        store = await ScratchSqliteStore.open(Path(folder) / "backtest.sqlite3")
        try:
            result = await run_archive(
                store,
                paths,
                options=config.parse_options(),
                settings=config.pipeline_settings(),
                policy=config.alerts.reminder_policy(),
                max_message_bytes=config.mllp.max_message_bytes,
                progress=progress,
            )
            events = await _read_events(store)
            patients = sorted(result.thiopurine_patients, key=lambda p: p.key)

            def orders(tx: Transaction) -> dict[PatientKey, tuple[OrderState, ...]]:
                out = {}
                for p in patients:
                    found = tuple(o for o in tx.patient_orders(p) if o.ingredient in thiopurines)
                    if found:
                        out[p] = found
                return out

            on_file = await store.read(orders)
        finally:
            await store.close()
    run = BacktestRun(config_name=config_name, result=result, events=events, thiopurine_orders=on_file)
    run.summary = summarize(run, ZoneInfo(config.hl7.timezone))
    return run


# ---------------------------------------------------------------------------
# Figures


def _published(event: Mapping[str, Any], tz: tzinfo) -> datetime | None:
    at = from_iso(str(event.get("published_at") or event.get("occurred_at") or ""))
    return at.astimezone(tz) if at is not None else None


def month_of(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}"


def week_of(at: datetime) -> str:
    year, week, _ = at.isocalendar()
    return f"{year:04d}-W{week:02d}"


def months_between(first: datetime, last: datetime) -> list[str]:
    out, year, month = [], first.year, first.month
    while (year, month) <= (last.year, last.month):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def _month_span(month: str, tz: tzinfo) -> tuple[datetime, datetime]:
    year, number = int(month[:4]), int(month[5:])
    start = datetime(year, number, 1, tzinfo=tz)
    end = datetime(year + 1, 1, 1, tzinfo=tz) if number == 12 else datetime(year, number + 1, 1, tzinfo=tz)
    return start, end


def _on_thiopurine(orders: Iterable[OrderState], start: datetime, end: datetime) -> bool:
    """Some order of the patient ran for part of [start, end): started before
    the end, not stopped before the start (held counts: still on therapy)."""
    return any(
        o.start is not None and o.start < end and (o.stop is None or o.stop >= start) for o in orders
    )


def summarize(run: BacktestRun, tz: tzinfo) -> dict[str, Any]:
    """The figures of one run (JSON-ready)."""
    result, events = run.result, run.events
    cells: Counter[tuple[str, str, str]] = Counter()  # (rule, severity, month) -> events
    alerts: Counter[tuple[str, str, str]] = Counter()  # ... -> firing events (new alerts)
    by_event: Counter[tuple[str, str]] = Counter()
    pages: Counter[str] = Counter()
    reminders: Counter[str] = Counter()
    for e in events:
        at = _published(e, tz)
        month = month_of(at) if at else "unknown"
        key = (str(e.get("rule")), str(e.get("severity")), month)
        cells[key] += 1
        by_event[(str(e.get("rule")), str(e.get("event")))] += 1
        if e.get("event") == AlertEvent.FIRING:
            alerts[key] += 1
        if e.get("event") in PAGING_EVENTS and at is not None:
            (reminders if e.get("event") == AlertEvent.REMINDER else pages)[week_of(at)] += 1
    months: list[str] = []
    if result.first_at is not None and result.last_at is not None:
        months = months_between(result.first_at.astimezone(tz), result.last_at.astimezone(tz))
    months += sorted({m for (_, _, m) in cells if m not in months})
    per_month = []
    for month in months:
        start, end = _month_span(month, tz) if month != "unknown" else (None, None)
        patients = (
            sum(_on_thiopurine(o, start, end) for o in run.thiopurine_orders.values())
            if start is not None and end is not None else 0
        )
        new = sum(n for (_, _, m), n in alerts.items() if m == month)
        per_month.append({
            "month": month,
            "patients_on_thiopurine": patients,
            "alerts": new,
            "events": sum(n for (_, _, m), n in cells.items() if m == month),
            "alerts_per_100_patients": round(100 * new / patients, 1) if patients else None,
        })
    weeks = _weeks(result, tz, set(pages) | set(reminders))
    rules = sorted({r for (r, _, _) in cells})
    return {
        "config": run.config_name,
        "messages": result.messages,
        "processed": result.processed,
        "duplicates": result.duplicates,
        "skipped": len(result.skipped),
        "first_message_at": result.first_at.isoformat() if result.first_at else None,
        "last_message_at": result.last_at.isoformat() if result.last_at else None,
        "seconds": round(result.seconds, 2),
        "messages_per_second": round(result.rate, 1),
        "events": len(events),
        "alerts": sum(alerts.values()),
        "timer_events": result.timer_events,
        "patients_on_thiopurine": len(run.thiopurine_orders),
        "by_rule": {
            r: {
                "events": sum(n for (rule, _, _), n in cells.items() if rule == r),
                "alerts": sum(n for (rule, _, _), n in alerts.items() if rule == r),
                "by_event": {ev: n for (rule, ev), n in sorted(by_event.items()) if rule == r},
            }
            for r in rules
        },
        "by_severity": {
            s: {
                "events": sum(n for (_, sev, _), n in cells.items() if sev == s),
                "alerts": sum(n for (_, sev, _), n in alerts.items() if sev == s),
            }
            for s in SEVERITIES
        },
        "by_rule_severity_month": [
            {"rule": r, "severity": s, "month": m, "events": n, "alerts": alerts[(r, s, m)]}
            for (r, s, m), n in sorted(cells.items())
        ],
        "per_month": per_month,
        "pages_per_week": [
            {"week": w, "pages": pages[w] + reminders[w], "first_pages": pages[w], "reminders": reminders[w]}
            for w in weeks
        ],
    }


def _weeks(result: ReplayResult, tz: tzinfo, seen: set[str]) -> list[str]:
    """Every ISO week of the archive's span (weeks without a page count too)."""
    weeks = set(seen)
    if result.first_at is not None and result.last_at is not None:
        at, last = result.first_at.astimezone(tz), result.last_at.astimezone(tz)
        at -= timedelta(days=at.weekday())
        while at <= last:
            weeks.add(week_of(at))
            at += timedelta(days=7)
    return sorted(weeks)


def compare(base: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """Per rule (and in total): alerts and events under each configuration
    and the difference (other − base)."""
    rules = sorted(set(base["by_rule"]) | set(other["by_rule"]))
    zero = {"alerts": 0, "events": 0}
    per_rule = {}
    for r in rules:
        a, b = base["by_rule"].get(r, zero), other["by_rule"].get(r, zero)
        per_rule[r] = {
            "alerts": [a["alerts"], b["alerts"], b["alerts"] - a["alerts"]],
            "events": [a["events"], b["events"], b["events"] - a["events"]],
        }
    pages_a = sum(w["pages"] for w in base["pages_per_week"])
    pages_b = sum(w["pages"] for w in other["pages_per_week"])
    return {
        "base": base["config"],
        "other": other["config"],
        "by_rule": per_rule,
        "total": {
            "alerts": [base["alerts"], other["alerts"], other["alerts"] - base["alerts"]],
            "events": [base["events"], other["events"], other["events"] - base["events"]],
            "pages": [pages_a, pages_b, pages_b - pages_a],
        },
    }


def json_document(run: BacktestRun, other: BacktestRun | None = None) -> dict[str, Any]:
    """``--json OUT``: summary, one entry per alert event (the MQTT payload),
    what was skipped, and the comparison when there is one."""
    doc: dict[str, Any] = {
        "summary": run.summary,
        "alerts": run.events,
        "skipped": [s.as_dict() for s in run.result.skipped],
    }
    if other is not None:
        doc["compare"] = compare(run.summary, other.summary)
        doc["other"] = {
            "summary": other.summary,
            "skipped": [s.as_dict() for s in other.result.skipped],
        }
    return doc


def evidence_text(event: Mapping[str, Any]) -> str:
    """The results an alert rests on, one line: ``ALT 190 U/L (3.39×ULN, F, 2026-10-20T08:00:00)``."""
    parts = []
    for o in event.get("observations") or []:
        value = f"{o.get('comparator') or ''}{o.get('value')}"
        extra = [f"{o['x_uln']}×ULN"] if o.get("x_uln") is not None else []
        extra += [str(o.get("status", "")), str(o.get("observed_at", ""))]
        parts.append(f"{o.get('analyte')} {value} {o.get('unit', '')}".strip() + f" ({', '.join(extra)})")
    return "; ".join(parts)


CSV_COLUMNS = (
    "published_at", "occurred_at", "alert_id", "version", "event", "rule", "severity",
    "patient_id", "id_type", "authority", "title", "summary", "evidence",
)


def csv_rows(events: Iterable[Mapping[str, Any]]) -> Iterable[list[str]]:
    yield list(CSV_COLUMNS)
    for e in events:
        patient = e.get("patient") or {}
        yield [
            str(e.get("published_at") or ""), str(e.get("occurred_at") or ""), str(e.get("alert_id")),
            str(e.get("version")), str(e.get("event")), str(e.get("rule")), str(e.get("severity")),
            str(patient.get("id", "")), str(patient.get("id_type", "")), str(patient.get("authority", "")),
            str(e.get("title", "")), str(e.get("summary", "")), evidence_text(e),
        ]
