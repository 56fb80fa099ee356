"""Liver rules: hepatotoxicity on a thiopurine, and what follows stopping it.

Sources: the seed guidance (discontinue azathioprine if enzymes rise above
3×ULN; a low ALP after stopping is a favourable sign when it comes alone),
the DILI consensus criteria (Aithal 2011), Hy's law (FDA 2009), and
CLINICAL.md's catalog. Each rule is evaluated per panel at the panel's
observation time. The injury rules take the patient's `Exposure` from the
engine (decision 16: active, held, recently stopped, or followed) and say
where the drug stands; the post-stop rules ask for a stopped drug. `engine`
decides which findings of one panel are sent (decision 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from hl7_alerts.model import Observation, OrderState, OrderStatus, PatientContext, Severity
from hl7_alerts.rules import advice
from hl7_alerts.rules.advice import LOW_ALP_ACTIONS
from hl7_alerts.rules.common import (
    Evidence,
    Finding,
    Panel,
    RuleSettings,
    active_thiopurine,
    evidence,
    fmt,
    fmt_x,
    is_rechallenge,
    liver_alert_during,
    previous,
    r_ratio,
    reference,
    thiopurine_orders,
    x_uln,
)
from hl7_alerts.rules.exposure import Exposure
from hl7_alerts.rules.ids import (
    CHOLESTASIS,
    HEPATOTOXICITY_STOP,
    HYPERBILIRUBINEMIA,
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
    "HYPERBILIRUBINEMIA",
    "HYS_LAW",
    "LIVER_MILD",
    "LOW_ALP_ACTIONS",
    "POST_STOP_LOW_ALP",
    "POST_STOP_NORMALIZED",
    "RECHALLENGE_RECURRENCE",
    "SYNTHETIC_FUNCTION",
]

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


def _value(obs: Observation) -> str:
    """The value as the laboratory reported it (``39 U/L``, ``<5 U/L``,
    ``INR 1.0``: a ratio has no unit worth printing)."""
    text = obs.value_text.strip()
    if not text or obs.value is None or "^" in text:
        text = f"{obs.comparator}{fmt(obs.value or 0)}"
    unit = "" if obs.analyte == Analyte.INR else obs.unit.strip()
    return f"{text} {unit}".strip()


def _describe(hits: Sequence[Hit]) -> str:
    return "; ".join(f"{a.label} {_value(o)} ({fmt_x(r)} × ULN)" for a, o, r in hits)


def _shown(
    panel: Panel, settings: RuleSettings, sex: str, extra: Sequence[Observation] = ()
) -> tuple[Evidence, ...]:
    observations = [o for a in _SHOWN if (o := panel.get(a)) is not None]
    observations += [o for o in extra if o not in observations]
    return tuple(evidence(o, settings, sex) for o in observations)


def _on_panel(panel: Panel, *analytes: Analyte) -> str:
    """``albumin 4.1 g/dL, INR 1.0``: the values the panel already carries."""
    return ", ".join(f"{a.label} {_value(o)}" for a in analytes if (o := panel.get(a)) is not None)


def synthetic_check(panel: Panel) -> str:
    """Ask for albumin and PT/INR, or say what the panel already shows of
    them (decision 19: never ask again for values on the page)."""
    clotting = Analyte.INR if panel.get(Analyte.INR) is not None else Analyte.PT
    shown = _on_panel(panel, Analyte.ALBUMIN, clotting)
    if not shown:
        return "Check albumin and PT/INR"
    missing = [
        what for what, a in (("albumin", Analyte.ALBUMIN), ("PT/INR", clotting)) if panel.get(a) is None
    ]
    return f"On this panel: {shown}" + (f"; check {' and '.join(missing)}" if missing else "")


def _stop_actions(exp: Exposure, panel: Panel) -> tuple[str, ...]:
    return (
        exp.stop_advice(),
        advice.REPEAT_PANEL,
        synthetic_check(panel),
        advice.SYMPTOMS,
        advice.OTHER_CAUSES,
    )


def _stop_references(drug: str) -> tuple[str, ...]:
    return (
        f"Discontinue {drug} immediately if liver enzymes rise above 3x ULN: {advice.SEED}",
        advice.AITHAL_2011,
    )


def _title(exp: Exposure, text: str) -> str:
    """A title says when the drug is no longer being given."""
    if exp.active:
        return text
    return f"{text} ({'held' if exp.status is OrderStatus.HELD else 'stopped'})"


def hepatotoxicity_stop(
    ctx: PatientContext, panel: Panel, settings: RuleSettings, exp: Exposure
) -> Finding | None:
    """Exposed and ALT or AST ≥ 3×ULN → critical."""
    sex = ctx.demographics.sex
    hits = _hits(panel, (Analyte.ALT, Analyte.AST), settings, sex, settings.hepatotoxicity_x_uln)
    if not hits:
        return None
    worst = max(hits, key=lambda hit: hit[2])
    drug = exp.drug
    act = f"stop {drug} and repeat the liver panel" if exp.active else "urgent review; repeat the liver panel"
    return Finding(
        rule=HEPATOTOXICITY_STOP,
        severity=Severity.CRITICAL,
        title=_title(exp, f"{drug.capitalize()} hepatotoxicity: {worst[0].label} {fmt_x(worst[2])} × ULN"),
        summary=f"{_describe(hits)} {exp.state}: {act}",
        evidence=_shown(panel, settings, sex),
        order=exp.order,
        recommendations=_stop_actions(exp, panel),
        references=_stop_references(drug),
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


def hys_law(ctx: PatientContext, panel: Panel, settings: RuleSettings, exp: Exposure) -> Finding | None:
    """Exposed, ALT or AST ≥ 3×ULN and total bilirubin ≥ 2×ULN, on the same
    specimen or within the configured window (48 h) → critical."""
    if not any(panel.get(a) is not None for a in (Analyte.ALT, Analyte.AST, Analyte.BILI_TOTAL)):
        return None
    enzyme = _nearby(ctx, panel, (Analyte.ALT, Analyte.AST), settings, settings.hepatotoxicity_x_uln)
    bili = _nearby(ctx, panel, (Analyte.BILI_TOTAL,), settings, settings.hys_law_bilirubin_x_uln)
    if enzyme is None or bili is None:
        return None
    sex = ctx.demographics.sex
    drug = exp.drug
    inr = panel.get(Analyte.INR)
    inr_line = (
        f"INR {_value(inr)} on this panel: Hy's law marks a risk of severe drug-induced liver injury"
        if inr is not None
        else "Check INR now (Hy's law: risk of severe drug-induced liver injury)"
    )
    act = f"stop {drug}" if exp.active else "urgent review"
    return Finding(
        rule=HYS_LAW,
        severity=Severity.CRITICAL,
        title=_title(
            exp,
            f"Hy's law on {drug}: {enzyme[0].label} {fmt_x(enzyme[2])} × ULN, "
            f"total bilirubin {fmt_x(bili[2])} × ULN",
        ),
        summary=f"{_describe([enzyme, bili])} {exp.state}: {act}, urgent hepatology review, INR",
        evidence=_shown(panel, settings, sex, extra=(enzyme[1], bili[1])),
        order=exp.order,
        recommendations=(
            exp.stop_advice(),
            "Urgent hepatology review",
            inr_line,
            advice.REPEAT_PANEL,
            advice.SYMPTOMS,
            advice.OTHER_CAUSES,
        ),
        references=(*_stop_references(drug), advice.FDA_2009),
        occurred_at=panel.observed_at,
        pattern=r_ratio(panel, settings, sex),
        rests_on=(enzyme[0].value, Analyte.BILI_TOTAL.value),
    )


def _ggt_line(panel: Panel, settings: RuleSettings, sex: str) -> str:
    ggt = panel.get(Analyte.GGT)
    ratio = None if ggt is None else x_uln(ggt, settings, sex)
    if ggt is None or ratio is None:
        return "Check GGT to confirm hepatic origin of the ALP"
    if ratio > 1.0:
        return f"GGT {_value(ggt)} ({fmt_x(ratio)} × ULN) on this panel supports a hepatic origin of the ALP"
    return f"GGT {_value(ggt)} is within range on this panel: consider a non-hepatic source of the ALP"


def cholestasis(ctx: PatientContext, panel: Panel, settings: RuleSettings, exp: Exposure) -> Finding | None:
    """Exposed and ALP ≥ 2×ULN → high; critical with total bilirubin ≥ 2×ULN
    on the panel or within the Hy's law window (jaundice)."""
    sex = ctx.demographics.sex
    hits = _hits(panel, (Analyte.ALP,), settings, sex, settings.cholestasis_alp_x_uln)
    if not hits:
        return None
    bili = _nearby(ctx, panel, (Analyte.BILI_TOTAL,), settings, settings.bilirubin_x_uln)
    drug = exp.drug
    first = f"{drug.capitalize()} injury is often cholestatic: " + (
        f"hold {drug} and review" if exp.active else exp.hold_advice()
    )
    actions = [first, _ggt_line(panel, settings, sex), advice.REPEAT_PANEL]
    if bili is not None:
        actions.insert(
            0,
            f"With jaundice: stop {drug} and arrange urgent review"
            if exp.active
            else f"With jaundice: urgent review ({exp.state})",
        )
    described = _describe([*hits, *([bili] if bili is not None else [])])
    jaundice = " with jaundice" if bili is not None else ""
    return Finding(
        rule=CHOLESTASIS,
        severity=Severity.CRITICAL if bili is not None else Severity.HIGH,
        title=_title(exp, f"Cholestasis{jaundice} on {drug}: ALP {fmt_x(hits[0][2])} × ULN"),
        summary=f"{described} {exp.state}: "
        + ("urgent review" if bili is not None else "hold and review; GGT to confirm hepatic origin"),
        evidence=_shown(panel, settings, sex, extra=() if bili is None else (bili[1],)),
        order=exp.order,
        recommendations=tuple(actions),
        references=(f"{advice.AITHAL_2011} (cholestatic injury: ALP ≥ 2×ULN)",),
        occurred_at=panel.observed_at,
        pattern=r_ratio(panel, settings, sex),
        rests_on=(Analyte.ALP.value, *((Analyte.BILI_TOTAL.value,) if bili is not None else ())),
    )


def hyperbilirubinemia(
    ctx: PatientContext, panel: Panel, settings: RuleSettings, exp: Exposure
) -> Finding | None:
    """Exposed and total bilirubin ≥ 2×ULN on this panel → high (the engine
    sends it only when neither hys_law nor cholestasis fires: decision 1)."""
    sex = ctx.demographics.sex
    hits = _hits(panel, (Analyte.BILI_TOTAL,), settings, sex, settings.bilirubin_x_uln)
    if not hits:
        return None
    drug = exp.drug
    direct = panel.get(Analyte.BILI_DIRECT)
    direct_line = (
        f"Direct bilirubin {_value(direct)} on this panel: "
        "a mostly unconjugated rise points away from the liver"
        if direct is not None
        else "Check direct (conjugated) bilirubin"
    )
    return Finding(
        rule=HYPERBILIRUBINEMIA,
        severity=Severity.HIGH,
        title=_title(exp, f"Raised total bilirubin on {drug}: {fmt_x(hits[0][2])} × ULN"),
        summary=f"{_describe(hits)} {exp.state}: "
        f"check direct bilirubin, haemolysis and Gilbert's; review {drug}",
        evidence=_shown(panel, settings, sex, extra=() if direct is None else (direct,)),
        order=exp.order,
        recommendations=(
            direct_line,
            "Check for haemolysis (full blood count, reticulocytes, LDH, haptoglobin) and Gilbert's syndrome",
            f"Review {drug}" if exp.active else exp.hold_advice(),
            advice.REPEAT_PANEL,
        ),
        references=(advice.AITHAL_2011, advice.FDA_2009),
        occurred_at=panel.observed_at,
        pattern=r_ratio(panel, settings, sex),
        rests_on=(Analyte.BILI_TOTAL.value,),
    )


def liver_mild(ctx: PatientContext, panel: Panel, settings: RuleSettings, exp: Exposure) -> Finding | None:
    """Exposed and an enzyme above ULN → warning; high when the same analyte
    was also above ULN on its previous result (two consecutive panels)."""
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
    drug = exp.drug
    severity = Severity.HIGH if persistent else Severity.WARNING
    what = "Persistent mild" if persistent else "Mild"
    return Finding(
        rule=LIVER_MILD,
        severity=severity,
        title=_title(exp, f"{what} liver enzyme elevation on {drug}: {', '.join(h[0].label for h in hits)}"),
        summary=f"{_describe(hits)} {exp.state}: recheck in 1 week, exclude other causes",
        evidence=_shown(panel, settings, sex, extra=[p for _, p in persistent]),
        order=exp.order,
        recommendations=advice.MILD_ACTIONS,
        references=(f"Don't ignore mild persistent elevations of liver enzymes: {advice.SEED}",),
        occurred_at=panel.observed_at,
        pattern=r_ratio(panel, settings, sex),
        rests_on=tuple(h[0].value for h in hits),
    )


def rechallenge_recurrence(
    ctx: PatientContext, panel: Panel, settings: RuleSettings, exp: Exposure
) -> Finding | None:
    """On an active rechallenge order (decision 10), an enzyme above ULN →
    critical at ≥ 3×ULN, else high. An open rechallenge alert is followed
    after a hold or stop like every liver alert (decision 16)."""
    followed = any(a.open and a.rule == RECHALLENGE_RECURRENCE for a in ctx.alerts)
    if not (exp.active or exp.judging or followed) or not is_rechallenge(ctx, exp.order, settings):
        return None
    sex = ctx.demographics.sex
    hits = _above_uln(panel, settings, sex)
    if not hits:
        return None
    worst = max(hits, key=lambda h: h[2])
    critical = worst[2] >= settings.hepatotoxicity_x_uln
    drug = exp.drug
    actions = (
        "Hepatotoxicity can recur rapidly on rechallenge",
        f"Permanent discontinuation of {drug} may be necessary",
        advice.REPEAT_PANEL,
    )
    return Finding(
        rule=RECHALLENGE_RECURRENCE,
        severity=Severity.CRITICAL if critical else Severity.HIGH,
        title=_title(
            exp, f"Liver injury recurs on {drug} rechallenge: {worst[0].label} {fmt_x(worst[2])} × ULN"
        ),
        summary=f"{_describe(hits)} after reintroducing {drug}: permanent discontinuation may be necessary",
        evidence=_shown(panel, settings, sex),
        order=exp.order,
        recommendations=(exp.stop_advice(), *actions) if critical else actions,
        references=(
            advice.RECHALLENGE_CASE,
            f"If liver enzymes rise again upon reintroduction, permanent discontinuation may be necessary: "
            f"{advice.SEED}",
        ),
        occurred_at=panel.observed_at,
        pattern=r_ratio(panel, settings, sex),
        rests_on=tuple(h[0].value for h in hits),
    )


def synthetic_function(
    ctx: PatientContext, panel: Panel, settings: RuleSettings, exp: Exposure
) -> Finding | None:
    """Exposed (decision 6), a liver alert open (or total bilirubin above
    ULN), and albumin below LLN or INR above the configured limit → high."""
    sex = ctx.demographics.sex
    bili = panel.get(Analyte.BILI_TOTAL)
    bili_x = None if bili is None else x_uln(bili, settings, sex)
    liver_open = any(a.open and a.rule in LIVER_RULES for a in ctx.alerts)
    if not liver_open and not (bili_x is not None and bili_x > 1.0):
        return None
    abnormal: list[tuple[Analyte, Observation]] = []
    albumin = panel.get(Analyte.ALBUMIN)
    if albumin is not None:
        value, low, _ = reference(albumin, settings, sex)
        if value is not None and low is not None and value < low:
            abnormal.append((Analyte.ALBUMIN, albumin))
    inr = panel.get(Analyte.INR)
    if inr is not None and inr.value is not None and inr.value > settings.synthetic_inr_above:
        abnormal.append((Analyte.INR, inr))
    if not abnormal:
        return None
    drug = exp.drug
    described = ", ".join(f"{a.label} {_value(o)}" for a, o in abnormal)
    shown = [o for a in (*_SHOWN, Analyte.ALBUMIN, Analyte.INR) if (o := panel.get(a)) is not None]
    return Finding(
        rule=SYNTHETIC_FUNCTION,
        severity=Severity.HIGH,
        title=_title(exp, f"Synthetic liver dysfunction on {drug}: {described}"),
        summary=f"{described} with liver injury {exp.state}: urgent review",
        evidence=tuple(evidence(o, settings, sex) for o in shown),
        order=exp.order,
        recommendations=advice.SYNTHETIC_ACTIONS,
        references=(f"{advice.AITHAL_2011} (severe injury: INR ≥ 1.5 with jaundice)", advice.FDA_2009),
        occurred_at=panel.observed_at,
        rests_on=tuple(a.value for a, _ in abnormal),
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


def _within_range(obs: Observation | None, settings: RuleSettings, sex: str) -> bool:
    """Missing, or not above its ULN (a value no range can score is not
    within range: no reassurance rests on it)."""
    if obs is None:
        return True
    ratio = x_uln(obs, settings, sex)
    return ratio is not None and ratio <= 1.0


def post_stop_low_alp(ctx: PatientContext, panel: Panel, settings: RuleSettings) -> Finding | None:
    """ALP below LLN after stopping a thiopurine for a liver alert, with ALT,
    AST and total bilirubin on the panel (when present) within range → info.
    The seed's reassurance is for a low ALP *alone* (the engine also drops it
    when any liver rule fires on the panel)."""
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
    if not all(
        _within_range(panel.get(a), settings, sex) for a in (Analyte.ALT, Analyte.AST, Analyte.BILI_TOTAL)
    ):
        return None
    drug = order.ingredient or "thiopurine"
    assert order.stop is not None
    days = (panel.observed_at - order.stop).days
    both = panel.get(Analyte.ALBUMIN) is not None and (
        panel.get(Analyte.INR) is not None or panel.get(Analyte.PT) is not None
    )
    return Finding(
        rule=POST_STOP_LOW_ALP,
        severity=Severity.INFO,
        title=f"Low ALP {_value(alp)} {days} days after stopping {drug}",
        summary=f"ALP {_value(alp)} (LLN {fmt(low)}) after stopping {drug} for liver injury, other liver "
        "tests within range: likely resolving; monitor LFTs weekly",
        evidence=_shown(
            panel,
            settings,
            sex,
            extra=[o for a in (Analyte.ALBUMIN, Analyte.INR, Analyte.PT) if (o := panel.get(a)) is not None],
        ),
        order=order,
        recommendations=advice.low_alp_actions(
            drug, _synthetic_shown(panel, settings, sex) if both else None
        ),
        references=(advice.SEED,),
        occurred_at=panel.observed_at,
        rests_on=(Analyte.ALP.value,),
    )


def _synthetic_shown(panel: Panel, settings: RuleSettings, sex: str) -> str:
    """ "Albumin and prothrombin time on this panel: albumin 4.1 g/dL (within
    range), INR 1.0 (within range)": the seed's "confirm" line, answered."""
    parts = []
    for analyte in (Analyte.ALBUMIN, Analyte.INR, Analyte.PT):
        obs = panel.get(analyte)
        if obs is None:
            continue
        value, low, high = reference(obs, settings, sex)
        if value is None or (low is None and high is None):
            verdict = "no range to judge it by"
        elif (low is not None and value < low) or (high is not None and value > high):
            verdict = "outside its range"
        else:
            verdict = "within range"
        parts.append(f"{analyte.label} {_value(obs)} ({verdict})")
    return "Albumin and prothrombin time on this panel: " + ", ".join(parts)


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
    drug = order.ingredient or "thiopurine"
    return Finding(
        rule=POST_STOP_NORMALIZED,
        severity=Severity.INFO,
        title=f"Liver enzymes normalized after stopping {drug}",
        summary=f"ALT, AST, ALP and total bilirubin within range after stopping {drug}: "
        "reintroduction may be considered at a reduced dose",
        evidence=_shown(panel, settings, sex),
        order=order,
        recommendations=tuple(advice.named(line, drug) for line in advice.NORMALIZED_ACTIONS),
        references=(advice.SEED,),
        occurred_at=panel.observed_at,
        rests_on=tuple(a.value for a in needed),
    )
