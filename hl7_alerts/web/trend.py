"""The numbers behind an alert page's trend chart, with nothing drawn yet.

A patient's liver enzymes and total bilirubin as ×ULN, read the way the
rules read them (`rules.common.evidence`: the result's own ULN from OBX-7,
else the configured default range in the canonical unit, rounded to two
decimals as the page shows them, CLINICAL.md decision 17); the counts the
marrow rule watches in 10⁹/L (`terminology.to_canonical`, as the rule
converts them); each thiopurine and allopurinol/febuxostat order as bands
(active, held, stopped); and the patient's alerts as markers. Pure: values
in, values out; `charts.py` draws it and the JSON API returns it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from hl7_alerts.model import Observation, OrderState, OrderStatus
from hl7_alerts.rules.common import RuleSettings, evidence
from hl7_alerts.store.base import PatientAlert
from hl7_alerts.terminology import Analyte, Ingredient, to_canonical

# What the chart shows, in this order, with the names clinicians write.
LIVER_SERIES: tuple[tuple[Analyte, str], ...] = (
    (Analyte.ALT, "ALT"),
    (Analyte.AST, "AST"),
    (Analyte.ALP, "ALP"),
    (Analyte.GGT, "GGT"),
    (Analyte.BILI_TOTAL, "total bilirubin"),
)
COUNT_SERIES: tuple[tuple[Analyte, str], ...] = (
    (Analyte.PLATELETS, "platelets"),
    (Analyte.NEUTROPHILS, "neutrophils"),
)
ULN_LINES = (1.0, 2.0, 3.0)
INTERACTING = frozenset({Ingredient.ALLOPURINOL.value, Ingredient.FEBUXOSTAT.value})


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One result on the chart: the value as reported and what is plotted
    (``y``: ×ULN for liver series, 10⁹/L for counts; None when it cannot be
    placed: no number, no usable limit or unit)."""

    at: datetime
    value: float | None
    value_text: str
    unit: str
    y: float | None
    status: str
    flag: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    analyte: str
    label: str
    points: tuple[Point, ...]

    @property
    def plotted(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if p.y is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Band:
    """A stretch of one order in one status, clipped to the window."""

    order_id: str
    drug: str
    status: OrderStatus
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Marker:
    """Where one of the patient's alerts fired."""

    alert_id: str
    rule: str
    severity: str
    at: datetime
    current: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Trend:
    start: datetime
    end: datetime
    liver: tuple[Series, ...]
    counts: tuple[Series, ...]
    bands: tuple[Band, ...]
    markers: tuple[Marker, ...]


def build_trend(
    observations: Iterable[Observation],
    orders: Iterable[OrderState],
    alerts: Iterable[PatientAlert],
    *,
    settings: RuleSettings,
    start: datetime,
    end: datetime,
    alert_id: str,
) -> Trend:
    """The chart's content for the window [start, end]."""
    usable = [
        o
        for o in observations
        if start <= o.observed_at <= end and o.status.evaluated and o.analyte is not None
    ]
    liver = tuple(
        Series(analyte=a.value, label=label, points=tuple(_liver_point(o, settings) for o in _of(usable, a)))
        for a, label in LIVER_SERIES
    )
    counts = tuple(
        Series(analyte=a.value, label=label, points=tuple(_count_point(o, a) for o in _of(usable, a)))
        for a, label in COUNT_SERIES
    )
    watched = settings.thiopurines | INTERACTING
    bands = tuple(
        band
        for order in orders
        if order.ingredient in watched and order.start is not None
        for band in order_bands(order, start, end)
    )
    markers = tuple(
        Marker(
            alert_id=a.alert_id,
            rule=a.rule,
            severity=a.severity,
            at=a.opened_at,
            current=a.alert_id == alert_id,
        )
        for a in alerts
        if start <= a.opened_at <= end
    )
    return Trend(
        start=start,
        end=end,
        liver=tuple(s for s in liver if s.points),
        counts=tuple(s for s in counts if s.points),
        bands=bands,
        markers=markers,
    )


def _of(observations: Sequence[Observation], analyte: Analyte) -> list[Observation]:
    return sorted((o for o in observations if o.analyte == analyte.value), key=lambda o: o.observed_at)


def _liver_point(obs: Observation, settings: RuleSettings) -> Point:
    # The rules' own arithmetic and rounding: the chart shows what they judged.
    return _point(obs, evidence(obs, settings).x_uln)


def _count_point(obs: Observation, analyte: Analyte) -> Point:
    value = None if obs.value is None else to_canonical(analyte, obs.value, obs.unit)
    return _point(obs, value)


def _point(obs: Observation, y: float | None) -> Point:
    return Point(
        at=obs.observed_at,
        value=obs.value,
        value_text=obs.value_text,
        unit=obs.unit,
        y=y,
        status=str(obs.status),
        flag=obs.flag,
    )


def order_bands(order: OrderState, start: datetime, end: datetime) -> list[Band]:
    """The order's stretches in the window: active, held (each hold), and
    stopped (from its stop to the window's end)."""
    assert order.start is not None
    drug = order.ingredient or order.drug_text
    edges = sorted(
        {
            order.start,
            *(t for h in order.holds for t in (h.start, h.end) if t is not None),
            *([order.stop] if order.stop is not None else []),
        }
    )
    bands: list[Band] = []
    for lo, hi in zip(edges, [*edges[1:], end], strict=True):
        lo_c, hi_c = max(lo, start), min(hi, end)
        if lo_c >= hi_c:
            continue
        status = order.status_at(lo)
        if status is OrderStatus.PENDING:
            continue
        if bands and bands[-1].status is status and bands[-1].end == lo_c:
            bands[-1] = Band(
                order_id=order.order_id, drug=drug, status=status, start=bands[-1].start, end=hi_c
            )
            continue
        bands.append(Band(order_id=order.order_id, drug=drug, status=status, start=lo_c, end=hi_c))
    return bands
