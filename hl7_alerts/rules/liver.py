"""Liver rules: hepatotoxicity on a thiopurine, and what follows stopping it.

Source: shared/seed (discontinue azathioprine if enzymes rise above 3×ULN; low
ALP after stopping is a favourable sign), the DILI consensus criteria, Hy's
law, and CLINICAL.md's catalog. Each rule is evaluated per panel at the
panel's observation time, against the orders active then, and returns its
finding when its condition holds; `engine` decides which of the liver
findings of one panel are sent (CLINICAL.md decision 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from hl7_alerts.model import Observation, OrderState, PatientContext, Severity
from hl7_alerts.rules.common import (
    Evidence,
    Finding,
    Panel,
    RuleSettings,
    active_thiopurine,
    evidence,
    fmt,
    is_rechallenge,
    liver_alert_during,
    previous,
    r_ratio,
    reference,
    thiopurine_orders,
    x_uln,
)
from hl7_alerts.rules.ids import (
    CHOLESTASIS,
    HEPATOTOXICITY_STOP,
    HYS_LAW,
    LIVER_MILD,
    LIVER_RULES,
    POST_STOP_LOW_ALP,
    POST_STOP_NORMALIZED,
    RECHALLENGE_RECURRENCE,
    SYNTHETIC_FUNCTION,
)
from hl7_alerts.terminology import LIVER_ENZYMES, Analyte

__all__ = [
    "CHOLESTASIS",
    "HEPATOTOXICITY_STOP",
    "HYS_LAW",
    "LIVER_MILD",
    "POST_STOP_LOW_ALP",
    "POST_STOP_NORMALIZED",
    "RECHALLENGE_RECURRENCE",
    "SYNTHETIC_FUNCTION",
]

_STOP_ACTIONS = (
    "Discontinue azathioprine now",
    "Repeat ALT, AST, ALP, GGT, total and direct bilirubin",
    "Check albumin and PT/INR",
    "Assess for jaundice, right upper quadrant pain, fatigue, nausea",
    "Exclude viral hepatitis, alcohol and other hepatotoxic drugs",
)
_STOP_REFERENCES = (
    "Discontinue azathioprine immediately if liver enzymes rise above 3x ULN (shared/seed)",
    "International DILI Expert Working Group, Aithal et al. 2011",
)
_HYS_ACTIONS = (
    *_STOP_ACTIONS,
    "Urgent hepatology review",
    "Check INR now (Hy's law: risk of severe drug-induced liver injury)",
)
_HYS_REFERENCES = (*_STOP_REFERENCES, "FDA Guidance for Industry: Drug-Induced Liver Injury, 2009 (Hy's law)")
_CHOLESTASIS_ACTIONS = (
    "Azathioprine injury is often cholestatic: hold azathioprine and review",
    "Check GGT to confirm hepatic origin of the ALP",
    "Repeat ALT, AST, ALP, GGT, total and direct bilirubin",
)
_MILD_ACTIONS = (
    "Don't ignore mild persistent elevations of liver enzymes",
    "Recheck liver enzymes in 1 week",
    "Exclude other causes (viral hepatitis, alcohol use, other medications)",
)
_RECHALLENGE_ACTIONS = (
    "Hepatotoxicity can recur rapidly on rechallenge",
    "Permanent discontinuation of azathioprine may be necessary",
    "Repeat ALT, AST, ALP, GGT, total and direct bilirubin",
)
_RECHALLENGE_REFERENCES = (
    "Azathioprine-Induced Rapid Hepatotoxicity. J Pharm Technol 2014 (shared/seed)",
    "If liver enzymes rise again upon reintroduction, permanent discontinuation may be necessary "
    "(shared/seed)",
)
_SYNTHETIC_ACTIONS = (
    "Synthetic liver dysfunction: urgent clinical review",
    "Repeat albumin, PT/INR and bilirubin",
    "Assess for jaundice, encephalopathy and bleeding",
)
# The seed's own answer to its question (a low ALP after stopping azathioprine
# for raised enzymes): every recommendation it lists, in its order.
LOW_ALP_ACTIONS = (
    "Low ALP after stopping azathioprine is likely a favorable sign of resolving drug-induced "
    "cholestatic liver injury",
    "Low ALP alone without other abnormalities generally needs no intervention if the patient is "
    "asymptomatic",
    "Resume monitoring liver enzymes (ALT, AST, ALP, GGT, total and direct bilirubin) weekly for the "
    "next 2-4 weeks",
    "Confirm that albumin and prothrombin time are normal",
    "Assess for symptoms of liver dysfunction (jaundice, right upper quadrant pain, fatigue, nausea)",
    "If other liver enzymes have normalized and the patient is asymptomatic, consider cautious "
    "reintroduction at about 1/3 to 1/4 of the previous dose",
    "After reintroduction, monitor liver enzymes weekly in the first month, then twice monthly in "
    "months 2-3, then monthly if stable",
    "Consider TPMT and NUDT15 testing if not previously done",
    "If reintroduction is high-risk, consider alternative immunosuppressive therapy",
    "For IBD, low-dose azathioprine with allopurinol may be better tolerated, but the azathioprine "
    "dose must then be reduced to about 1/3 to 1/4 of the usual dose",
    "Continue liver enzyme monitoring until complete normalization or stabilization",
    "Discontinue azathioprine immediately if liver enzymes rise again above 3x ULN",
    "Don't ignore mild persistent elevations if they recur after reintroduction",
    "Don't attribute all liver enzyme abnormalities to azathioprine without excluding other causes "
    "(viral hepatitis, alcohol use, other medications)",
    "Don't increase the azathioprine dose too rapidly after reintroduction",
    "Hepatotoxicity can recur rapidly upon rechallenge",
)
_NORMALIZED_ACTIONS = (
    "Liver enzymes have normalized after stopping azathioprine",
    "If reintroducing: start at 1/3 to 1/4 of the previous dose",
    "Check LFTs weekly in month 1, twice monthly in months 2-3, monthly after",
    "Consider TPMT and NUDT15 testing if not previously done",
)
_SEED_REFERENCE = (
    "Management of low ALP after stopping azathioprine for elevated liver enzymes (shared/seed)",
)

_SHOWN = (Analyte.ALT, Analyte.AST, Analyte.ALP, Analyte.GGT, Analyte.BILI_TOTAL)

Hit = tuple[Analyte, Observation, float]


def _hits(
    panel: Panel, analytes: Sequence[Analyte], settings: RuleSettings, sex: str, at_least: float
) -> list[Hit]:
    """(analyte, result, ×ULN) for each of ``analytes`` at or above ``at_least`` × ULN."""
    found = []
    for analyte in analytes:
        obs = panel.get(analyte)
        if obs is None:
            continue
        ratio = x_uln(obs, settings, sex)
        if ratio is not None and ratio >= at_least:
            found.append((analyte, obs, ratio))
    return found


def _above_uln(panel: Panel, settings: RuleSettings, sex: str) -> list[Hit]:
    """Enzymes strictly above ULN."""
    return [h for h in _hits(panel, LIVER_ENZYMES, settings, sex, 1.0) if h[2] > 1.0]


def _describe(hits: Sequence[Hit]) -> str:
    return "; ".join(f"{a.value} {fmt(o.value or 0)} {o.unit} ({fmt(r)} × ULN)" for a, o, r in hits)


def _shown(
    panel: Panel, settings: RuleSettings, sex: str, extra: Sequence[Observation] = ()
) -> tuple[Evidence, ...]:
    observations = [o for a in _SHOWN if (o := panel.get(a)) is not None]
    observations += [o for o in extra if o not in observations]
    return tuple(evidence(o, settings, sex) for o in observations)


def _drug(order: OrderState) -> str:
    return order.ingredient or "thiopurine"


def hepatotoxicity_stop(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    """Active thiopurine and ALT or AST ≥ 3×ULN → critical."""
    order = active_thiopurine(ctx, panel.observed_at, settings)
    if order is None:
        return None
    sex = ctx.demographics.sex
    hits = _hits(panel, (Analyte.ALT, Analyte.AST), settings, sex, settings.hepatotoxicity_x_uln)
    if not hits:
        return None
    worst = max(hits, key=lambda hit: hit[2])
    drug = _drug(order)
    return Finding(
        rule=HEPATOTOXICITY_STOP,
        severity=Severity.CRITICAL,
        title=f"{drug.capitalize()} hepatotoxicity: {worst[0].value} {fmt(worst[2])} × ULN",
        summary=f"{_describe(hits)} on active {drug}: stop {drug} and repeat liver panel",
        evidence=_shown(panel, settings, sex),
        order=order,
        recommendations=_STOP_ACTIONS,
        references=_STOP_REFERENCES,
        occurred_at=panel.observed_at,
        pattern=r_ratio(panel, settings, sex),
        rests_on=tuple(h[0].value for h in hits),
    )


def _nearby(
    ctx: PatientContext, panel: Panel, analytes: Sequence[Analyte], settings: RuleSettings, at_least: float
) -> Hit | None:
    """The worst of ``analytes`` at or above ``at_least`` × ULN, from this panel
    or from a result within the Hy's law window of it."""
    sex = ctx.demographics.sex
    window = timedelta(hours=settings.hys_law_window_hours)
    candidates = [panel.get(a) for a in analytes]
    candidates += [
        o
        for o in ctx.history
        if o.analyte in analytes and o.status.evaluated and abs(o.observed_at - panel.observed_at) <= window
    ]
    best: Hit | None = None
    for obs in candidates:
        if obs is None or obs.analyte is None:
            continue
        ratio = x_uln(obs, settings, sex)
        if ratio is not None and ratio >= at_least and (best is None or ratio > best[2]):
            best = (Analyte(obs.analyte), obs, ratio)
    return best


def hys_law(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    """Active thiopurine, ALT or AST ≥ 3×ULN and total bilirubin ≥ 2×ULN, on the
    same specimen or within the configured window (48 h) → critical."""
    order = active_thiopurine(ctx, panel.observed_at, settings)
    if order is None:
        return None
    if not any(panel.get(a) is not None for a in (Analyte.ALT, Analyte.AST, Analyte.BILI_TOTAL)):
        return None
    enzyme = _nearby(ctx, panel, (Analyte.ALT, Analyte.AST), settings, settings.hepatotoxicity_x_uln)
    bili = _nearby(ctx, panel, (Analyte.BILI_TOTAL,), settings, settings.hys_law_bilirubin_x_uln)
    if enzyme is None or bili is None:
        return None
    sex = ctx.demographics.sex
    drug = _drug(order)
    return Finding(
        rule=HYS_LAW,
        severity=Severity.CRITICAL,
        title=f"Hy's law on {drug}: {enzyme[0].value} {fmt(enzyme[2])} × ULN, bilirubin {fmt(bili[2])} × ULN",
        summary=f"{_describe([enzyme, bili])} on active {drug}: stop {drug}, urgent hepatology review, INR",
        evidence=_shown(panel, settings, sex, extra=(enzyme[1], bili[1])),
        order=order,
        recommendations=_HYS_ACTIONS,
        references=_HYS_REFERENCES,
        occurred_at=panel.observed_at,
        pattern=r_ratio(panel, settings, sex),
        rests_on=(enzyme[0].value, Analyte.BILI_TOTAL.value),
    )


def cholestasis(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    """Active thiopurine and ALP ≥ 2×ULN → high."""
    order = active_thiopurine(ctx, panel.observed_at, settings)
    if order is None:
        return None
    sex = ctx.demographics.sex
    hits = _hits(panel, (Analyte.ALP,), settings, sex, settings.cholestasis_alp_x_uln)
    if not hits:
        return None
    drug = _drug(order)
    return Finding(
        rule=CHOLESTASIS,
        severity=Severity.HIGH,
        title=f"Cholestasis on {drug}: ALP {fmt(hits[0][2])} × ULN",
        summary=f"{_describe(hits)} on active {drug}: hold and review; GGT to confirm hepatic origin",
        evidence=_shown(panel, settings, sex),
        order=order,
        recommendations=_CHOLESTASIS_ACTIONS,
        references=("International DILI Expert Working Group, Aithal et al. 2011 (ALP ≥ 2×ULN)",),
        occurred_at=panel.observed_at,
        pattern=r_ratio(panel, settings, sex),
        rests_on=(Analyte.ALP.value,),
    )


def liver_mild(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    """Active thiopurine and an enzyme above ULN → warning; high when the same
    analyte was also above ULN on its previous result (two consecutive panels)."""
    order = active_thiopurine(ctx, panel.observed_at, settings)
    if order is None:
        return None
    sex = ctx.demographics.sex
    hits = _above_uln(panel, settings, sex)
    if not hits:
        return None
    persistent = []
    for analyte, _, _ in hits:
        prior = previous(ctx, analyte, panel.observed_at)
        ratio = None if prior is None else x_uln(prior, settings, sex)
        if prior is not None and ratio is not None and ratio > 1.0:
            persistent.append((analyte, prior))
    drug = _drug(order)
    severity = Severity.HIGH if persistent else Severity.WARNING
    what = "Persistent mild" if persistent else "Mild"
    return Finding(
        rule=LIVER_MILD,
        severity=severity,
        title=f"{what} liver enzyme elevation on {drug}: {', '.join(h[0].value for h in hits)}",
        summary=f"{_describe(hits)} on active {drug}: recheck in 1 week, exclude other causes",
        evidence=_shown(panel, settings, sex, extra=[p for _, p in persistent]),
        order=order,
        recommendations=_MILD_ACTIONS,
        references=("Don't ignore mild persistent elevations of liver enzymes (shared/seed)",),
        occurred_at=panel.observed_at,
        pattern=r_ratio(panel, settings, sex),
        rests_on=tuple(h[0].value for h in hits),
    )


def rechallenge_recurrence(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    """On a rechallenge order (decision 10), an enzyme above ULN → critical at
    ≥ 3×ULN, else high."""
    order = active_thiopurine(ctx, panel.observed_at, settings)
    if order is None or not is_rechallenge(ctx, order, settings):
        return None
    sex = ctx.demographics.sex
    hits = _above_uln(panel, settings, sex)
    if not hits:
        return None
    worst = max(hits, key=lambda h: h[2])
    critical = worst[2] >= settings.hepatotoxicity_x_uln
    drug = _drug(order)
    return Finding(
        rule=RECHALLENGE_RECURRENCE,
        severity=Severity.CRITICAL if critical else Severity.HIGH,
        title=f"Liver injury recurs on {drug} rechallenge: {worst[0].value} {fmt(worst[2])} × ULN",
        summary=f"{_describe(hits)} after reintroducing {drug}: permanent discontinuation may be necessary",
        evidence=_shown(panel, settings, sex),
        order=order,
        recommendations=(_STOP_ACTIONS[0], *_RECHALLENGE_ACTIONS) if critical else _RECHALLENGE_ACTIONS,
        references=_RECHALLENGE_REFERENCES,
        occurred_at=panel.observed_at,
        pattern=r_ratio(panel, settings, sex),
        rests_on=tuple(h[0].value for h in hits),
    )


def synthetic_function(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    """Active thiopurine (decision 6), a liver alert open (or total bilirubin
    above ULN), and albumin below LLN or INR above the configured limit → high."""
    order = active_thiopurine(ctx, panel.observed_at, settings)
    if order is None:
        return None
    sex = ctx.demographics.sex
    bili = panel.get(Analyte.BILI_TOTAL)
    bili_x = None if bili is None else x_uln(bili, settings, sex)
    liver_open = any(a.open and a.rule in LIVER_RULES for a in ctx.alerts)
    if not liver_open and not (bili_x is not None and bili_x > 1.0):
        return None
    abnormal: list[Observation] = []
    albumin = panel.get(Analyte.ALBUMIN)
    if albumin is not None:
        value, low, _ = reference(albumin, settings, sex)
        if value is not None and low is not None and value < low:
            abnormal.append(albumin)
    inr = panel.get(Analyte.INR)
    if inr is not None and inr.value is not None and inr.value > settings.synthetic_inr_above:
        abnormal.append(inr)
    if not abnormal:
        return None
    drug = _drug(order)
    described = ", ".join(f"{o.text or o.analyte} {fmt(o.value or 0)} {o.unit}".strip() for o in abnormal)
    shown = [o for a in (*_SHOWN, Analyte.ALBUMIN, Analyte.INR) if (o := panel.get(a)) is not None]
    return Finding(
        rule=SYNTHETIC_FUNCTION,
        severity=Severity.HIGH,
        title=f"Synthetic liver dysfunction on {drug}: {described}",
        summary=f"{described} with liver injury on {drug}: urgent review",
        evidence=tuple(evidence(o, settings, sex) for o in shown),
        order=order,
        recommendations=_SYNTHETIC_ACTIONS,
        references=("CLINICAL.md: albumin < LLN or INR > 1.5 with liver injury",),
        occurred_at=panel.observed_at,
        rests_on=tuple(o.analyte for o in abnormal if o.analyte is not None),
    )


def _post_stop_order(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> OrderState | None:
    """The last thiopurine order, stopped within ``post_stop_days`` before the
    panel after a liver alert on it, with no thiopurine active now."""
    at = panel.observed_at
    if active_thiopurine(ctx, at, settings) is not None:
        return None
    stopped = [o for o in thiopurine_orders(ctx, settings) if o.stop is not None and o.stop <= at]
    if not stopped:
        return None
    last = max(stopped, key=lambda o: o.stop or at)
    assert last.stop is not None
    if at - last.stop > timedelta(days=settings.post_stop_days) or liver_alert_during(ctx, last) is None:
        return None
    return last


def post_stop_low_alp(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    """ALP below LLN after stopping a thiopurine for a liver alert → info."""
    alp = panel.get(Analyte.ALP)
    if alp is None:
        return None
    order = _post_stop_order(ctx, panel, settings)
    if order is None:
        return None
    sex = ctx.demographics.sex
    value, low, _ = reference(alp, settings, sex)
    if value is None or low is None or value >= low:
        return None
    drug = _drug(order)
    assert order.stop is not None
    days = (panel.observed_at - order.stop).days
    return Finding(
        rule=POST_STOP_LOW_ALP,
        severity=Severity.INFO,
        title=f"Low ALP {fmt(alp.value or 0)} {alp.unit} {days} days after stopping {drug}",
        summary=f"ALP {fmt(alp.value or 0)} {alp.unit} (LLN {fmt(low)}) after stopping {drug} for liver "
        "injury: likely resolving; monitor LFTs weekly",
        evidence=_shown(
            panel,
            settings,
            sex,
            extra=[o for a in (Analyte.ALBUMIN, Analyte.INR, Analyte.PT) if (o := panel.get(a)) is not None],
        ),
        order=order,
        recommendations=LOW_ALP_ACTIONS,
        references=_SEED_REFERENCE,
        occurred_at=panel.observed_at,
        rests_on=(Analyte.ALP.value,),
    )


def post_stop_normalized(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    """ALT, AST, ALP and total bilirubin all within range after stopping a
    thiopurine for a liver alert → info."""
    needed = (Analyte.ALT, Analyte.AST, Analyte.ALP, Analyte.BILI_TOTAL)
    if any(panel.get(a) is None for a in needed):
        return None
    order = _post_stop_order(ctx, panel, settings)
    if order is None:
        return None
    sex = ctx.demographics.sex
    for analyte in needed:
        obs = panel.get(analyte)
        assert obs is not None
        value, low, high = reference(obs, settings, sex)
        if value is None or high is None or value > high or (low is not None and value < low):
            return None
    drug = _drug(order)
    return Finding(
        rule=POST_STOP_NORMALIZED,
        severity=Severity.INFO,
        title=f"Liver enzymes normalized after stopping {drug}",
        summary=f"ALT, AST, ALP and bilirubin within range after stopping {drug}: reintroduction may be "
        "considered at a reduced dose",
        evidence=_shown(panel, settings, sex),
        order=order,
        recommendations=_NORMALIZED_ACTIONS,
        references=_SEED_REFERENCE,
        occurred_at=panel.observed_at,
        rests_on=tuple(a.value for a in needed),
    )
