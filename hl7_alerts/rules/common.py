"""What every rule needs: findings, evidence, ULN arithmetic, panels, settings.

A rule reads ``value / ULN`` in the result's own units when OBX-7 gives a
range, and in the analyte's canonical unit against the configured default
range otherwise (CLINICAL.md, "ULN / LLN"). ×ULN is that ratio rounded to two
decimals, the figure the page shows, and thresholds compare that figure
(decision 17).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hl7_alerts.model import Observation, OrderState, PatientContext, Severity
from hl7_alerts.rules.ids import LIVER_RULES, RECHALLENGE_CAUSES
from hl7_alerts.terminology import Analyte, Ingredient, to_canonical


@dataclass(frozen=True, slots=True, kw_only=True)
class DefaultRange:
    """A default reference range in the analyte's canonical unit; optional
    sex-specific overrides keyed by PID-8 (``F``/``M``)."""

    low: float | None
    high: float | None
    by_sex: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def for_sex(self, sex: str) -> tuple[float | None, float | None]:
        return self.by_sex.get(sex, (self.low, self.high))


DEFAULT_RANGES: Mapping[Analyte, DefaultRange] = {
    Analyte.ALT: DefaultRange(low=7, high=56),
    Analyte.AST: DefaultRange(low=10, high=40),
    Analyte.ALP: DefaultRange(low=42, high=141),
    Analyte.GGT: DefaultRange(low=9, high=48),
    Analyte.BILI_TOTAL: DefaultRange(low=0.1, high=1.2),
    Analyte.BILI_DIRECT: DefaultRange(low=0.0, high=0.3),
    Analyte.ALBUMIN: DefaultRange(low=3.5, high=5.0),
    Analyte.PT: DefaultRange(low=11, high=13.5),
    Analyte.INR: DefaultRange(low=0.8, high=1.2),
    Analyte.WBC: DefaultRange(low=4.0, high=11.0),
    Analyte.NEUTROPHILS: DefaultRange(low=1.5, high=8.0),
    Analyte.PLATELETS: DefaultRange(low=150, high=400),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSettings:
    """Thresholds and tables from config.yaml (defaults are CLINICAL.md's)."""

    thiopurines: frozenset[str] = frozenset({Ingredient.AZATHIOPRINE.value})
    hepatotoxicity_x_uln: float = 3.0
    hys_law_bilirubin_x_uln: float = 2.0
    hys_law_window_hours: float = 48.0
    cholestasis_alp_x_uln: float = 2.0
    bilirubin_x_uln: float = 2.0
    """Total bilirubin at or above this × ULN: aza.hyperbilirubinemia, and
    aza.cholestasis becomes critical."""
    rechallenge_days: int = 30
    dose_change_hours: float = 24.0
    """A stop and a new order within this are a dose change, not a rechallenge."""
    post_stop_days: int = 90
    exposure_days: int = 30
    """Exposed at t: active, held, or stopped at most this long before t (decision 16)."""
    follow_up_days: int = 90
    """An open liver or marrow alert is followed this long after a stop."""
    late_order_days: int = 30
    """An order arriving after results it covers evaluates them, this far back
    from its arrival at most (decision 18)."""
    long_running_days: int = 30
    """An order that started this long before it first arrived raises no aza.pgx.missing."""
    synthetic_inr_above: float = 1.5
    wbc_below: float = 3.5
    neutrophils_below: float = 1.6
    platelets_below: float = 140.0
    neutrophils_critical_below: float = 1.0
    platelets_critical_below: float = 50.0
    tpmt_activity_poor_below: float | None = None
    tpmt_activity_intermediate_below: float | None = None
    xanthine_oxidase_inhibitors: Mapping[str, Severity] = field(
        default_factory=lambda: {
            Ingredient.ALLOPURINOL.value: Severity.HIGH,
            Ingredient.FEBUXOSTAT.value: Severity.CRITICAL,
        }
    )
    default_ranges: Mapping[Analyte, DefaultRange] = field(default_factory=lambda: dict(DEFAULT_RANGES))


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """One result a finding rests on, with the arithmetic that made it count."""

    observation: Observation
    ref_low: float | None
    ref_high: float | None
    x_uln: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pattern:
    r_ratio: float
    type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """A rule's verdict on one panel: what an alert is made from."""

    rule: str
    severity: Severity
    title: str
    summary: str
    evidence: tuple[Evidence, ...]
    order: OrderState | None
    recommendations: tuple[str, ...]
    references: tuple[str, ...]
    occurred_at: datetime
    pattern: Pattern | None = None
    rests_on: tuple[str, ...] = ()
    """Analytes whose values made the rule hold: a later panel carrying all of
    them that no longer meets the rule resolves the alert (CLINICAL.md decision 3)."""
    reason: str | None = None
    """Why an alert closed (resolved or withdrawn events only)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Panel:
    """Results from one specimen at one time: the unit a rule fires on."""

    specimen_id: str
    observed_at: datetime
    results: Mapping[str, Observation]

    def get(self, analyte: Analyte) -> Observation | None:
        return self.results.get(analyte.value)


def panel_key(obs: Observation) -> tuple[str, datetime]:
    return (obs.specimen_id, obs.observed_at)


def panels(observations: Iterable[Observation], history: Iterable[Observation] = ()) -> list[Panel]:
    """Group evaluable results by (specimen, observation time). Results of the
    same panel already in ``history`` (sent earlier, or the rest of a panel a
    correction touches) fill in what the new results do not carry."""
    groups: dict[tuple[str, datetime], dict[str, Observation]] = {}
    for obs in observations:
        if obs.analyte is None:
            continue
        # A cancelled or pending result still names its panel: the rest of it
        # is re-evaluated (a cancellation may withdraw an alert).
        group = groups.setdefault(panel_key(obs), {})
        if obs.status.evaluated:
            group[obs.analyte] = obs
    for obs in history:
        key = panel_key(obs)
        if key in groups and obs.analyte is not None and obs.status.evaluated:
            groups[key].setdefault(obs.analyte, obs)
    return [
        Panel(specimen_id=spec, observed_at=at, results=results)
        for (spec, at), results in sorted(groups.items(), key=lambda item: item[0][1])
        if results
    ]


def reference(
    obs: Observation, settings: RuleSettings, sex: str = ""
) -> tuple[float | None, float | None, float | None]:
    """(value, LLN, ULN) on a common scale: the result's own units when OBX-7
    gives a bound, else the canonical unit against the configured default.
    The value is None when it cannot be compared (unknown unit, no number)."""
    if obs.value is None:
        return None, None, None
    if obs.ref_high is not None or obs.ref_low is not None:
        return obs.value, obs.ref_low, obs.ref_high
    analyte = Analyte(obs.analyte) if obs.analyte else None
    if analyte is None or analyte not in settings.default_ranges:
        return None, None, None
    value = to_canonical(analyte, obs.value, obs.unit)
    if value is not None and not math.isfinite(value):
        return None, None, None  # overflowed in conversion: not a number any more
    low, high = settings.default_ranges[analyte].for_sex(sex)
    return value, low, high


def _ratio(obs: Observation, settings: RuleSettings, sex: str) -> float | None:
    """value / ULN, or None when there is no ratio to read: no number, no ULN,
    or a quotient no float can hold (a huge value over a tiny ULN), which is
    not a number either (payloads are strict JSON: `strictjson`)."""
    value, _, high = reference(obs, settings, sex)
    if value is None or high is None or high <= 0:
        return None
    ratio = value / high
    return ratio if math.isfinite(ratio) else None


def x_uln(obs: Observation, settings: RuleSettings, sex: str = "") -> float | None:
    """value ÷ ULN rounded to two decimals: what the page shows, and what
    thresholds compare (decision 17: 3.3 µkat/L against 1.1 is 3.00×)."""
    ratio = _ratio(obs, settings, sex)
    return None if ratio is None else round(ratio, 2)


def fmt_x(ratio: float) -> str:
    """A ×ULN figure as the page shows it: two decimals, one trailing zero
    dropped (3.39, 2.96, 3.0, 5.0), so a title never rounds across a threshold."""
    text = f"{ratio:.2f}"
    return text[:-1] if text.endswith("0") else text


def evidence(obs: Observation, settings: RuleSettings, sex: str = "") -> Evidence:
    _, low, high = reference(obs, settings, sex)
    return Evidence(observation=obs, ref_low=low, ref_high=high, x_uln=x_uln(obs, settings, sex))


def r_ratio(panel: Panel, settings: RuleSettings, sex: str = "") -> Pattern | None:
    """R = (ALT/ULN) / (ALP/ULN): hepatocellular ≥ 5, mixed 2–5, cholestatic
    ≤ 2; only when ALT or ALP is above ULN (a pattern of normal enzymes is
    no pattern, decision 19)."""
    alt, alp = panel.get(Analyte.ALT), panel.get(Analyte.ALP)
    if alt is None or alp is None:
        return None
    alt_x, alp_x = x_uln(alt, settings, sex), x_uln(alp, settings, sex)
    if alt_x is None or not alp_x or (alt_x <= 1.0 and alp_x <= 1.0):
        return None
    # R from the exact ratios, then judged as shown (two decimals, decision 17).
    exact_alt, exact_alp = _ratio(alt, settings, sex), _ratio(alp, settings, sex)
    assert exact_alt is not None
    assert exact_alp
    r = round(exact_alt / exact_alp, 2)
    if not math.isfinite(r):
        return None
    kind = "hepatocellular" if r >= 5 else "cholestatic" if r <= 2 else "mixed"
    return Pattern(r_ratio=r, type=kind)


def previous(ctx: PatientContext, analyte: Analyte, before: datetime) -> Observation | None:
    """The patient's latest evaluable result of ``analyte`` observed before ``before``."""
    found = None
    for obs in ctx.history:
        usable = obs.analyte == analyte and obs.status.evaluated and obs.observed_at < before
        if usable and (found is None or obs.observed_at >= found.observed_at):
            found = obs
    return found


def thiopurine_orders(ctx: PatientContext, settings: RuleSettings) -> list[OrderState]:
    return [o for o in ctx.orders if o.ingredient in settings.thiopurines and o.start is not None]


def liver_alert_during(
    ctx: PatientContext, order: OrderState, rules: frozenset[str] = LIVER_RULES
) -> datetime | None:
    """The latest alert of ``rules`` (liver alerts by default) raised on
    ``order`` (observed between its start and its stop), or None."""
    times = [
        a.opened_at
        for a in ctx.alerts
        if a.rule in rules
        and order.start is not None
        and order.start <= a.opened_at
        and (order.stop is None or a.opened_at <= order.stop)
    ]
    return max(times) if times else None


def is_rechallenge(ctx: PatientContext, order: OrderState, settings: RuleSettings) -> bool:
    """CLINICAL.md decision 10: an earlier thiopurine order of the patient was
    stopped within ``rechallenge_days`` after a hepatotoxicity.stop, hys_law or
    cholestasis alert on it (not liver.mild), and this order started at least
    ``dose_change_hours`` after that stop (sooner is a dose change)."""
    if order.start is None:
        return False
    window = timedelta(days=settings.rechallenge_days)
    gap = timedelta(hours=settings.dose_change_hours)
    for earlier in thiopurine_orders(ctx, settings):
        if earlier.order_id == order.order_id or earlier.stop is None or earlier.stop + gap > order.start:
            continue
        alerted = liver_alert_during(ctx, earlier, RECHALLENGE_CAUSES)
        if alerted is not None and earlier.stop - alerted <= window:
            return True
    return False


def active_thiopurine(ctx: PatientContext, at: datetime, settings: RuleSettings) -> OrderState | None:
    """The thiopurine order active at ``at`` (the most recently started, if several)."""
    active = [o for o in ctx.orders if o.ingredient in settings.thiopurines and o.active_at(at)]
    return max(active, key=lambda o: o.start or at) if active else None


def fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def join(values: Sequence[str]) -> str:
    return ", ".join(values)
