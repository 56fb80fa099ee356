"""Every CLINICAL.md rule (but monitoring.overdue) as tables: a row per case,
both sides of every threshold, the whole engine's output compared.

Decisions pinned here: 1 (which rules share a panel), 6 (synthetic function
needs an active thiopurine), 10 (rechallenge), 11 (PGx results)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hl7_alerts.model import Severity
from hl7_alerts.rules.common import DEFAULT_RANGES, DefaultRange, RuleSettings
from hl7_alerts.rules.engine import evaluate, evaluate_orders
from hl7_alerts.rules.liver import LOW_ALP_ACTIONS
from hl7_alerts.rules.pharmacogenomics import Metabolizer, metabolizer
from hl7_alerts.terminology import Analyte
from tests.support.rulekit import T0, coded, context, obs, order, past

A = Analyte
S = Severity
D = timedelta(days=1)
H = timedelta(hours=1)
SETTINGS = RuleSettings()

STOP, HYS, CHOL, MILD = "aza.hepatotoxicity.stop", "aza.hys_law", "aza.cholestasis", "aza.liver.mild"
RECH, SYN = "aza.rechallenge.recurrence", "aza.synthetic_function"
HYPERBILI, UNSCORED = "aza.hyperbilirubinemia", "aza.result.unscored"
LOW_ALP, NORMAL = "aza.post_stop.low_alp", "aza.post_stop.normalized"
MYELO, POOR = "aza.myelosuppression", "aza.pgx.poor_metabolizer"
MISSING, ALLO = "aza.pgx.missing", "aza.interaction.allopurinol"

ON = context(order())
# Stopped 14 days ago after a liver alert on it (the seed's patient).
STOPPED = context(order(start=T0 - 60 * D, stop=T0 - 14 * D), alerts=(past(STOP, T0 - 15 * D),))
# An earlier order stopped 5 days after a liver alert; a new one since.
RECHALLENGE = context(
    order(order_id="RX0", start=T0 - 120 * D, stop=T0 - 60 * D),
    order(order_id="RX2", start=T0 - 30 * D),
    alerts=(past(STOP, T0 - 65 * D),),
)


def seed_panel(alp: float, alt: float = 40, bili: float = 0.8) -> list:
    return [obs(A.ALT, alt, ref="7-56"), obs(A.AST, 32, ref="10-40"), obs(A.ALP, alp, ref="42-141"),
            obs(A.BILI_TOTAL, bili, ref="0.1-1.2")]


CASES = [
    # id, context, observations, expected [(rule, severity)]
    # -- Hy's law (decision 1: folds stop into itself)
    ("hys-same-specimen", ON, [obs(A.ALT, 170, ref="7-56"), obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2")], [(HYS, S.CRITICAL)]),
    ("hys-bili-just-below-2x", ON, [obs(A.ALT, 170, ref="7-56"), obs(A.BILI_TOTAL, 2.39, ref="0.1-1.2")], [(STOP, S.CRITICAL)]),
    ("hys-bili-umol-default-range", ON, [obs(A.ALT, 170, ref="7-56"), obs(A.BILI_TOTAL, 42, unit="umol/L")], [(HYS, S.CRITICAL)]),
    ("hys-bili-within-48h", context(order(), history=(obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2", at=T0 - 48 * H, specimen="S0"),)),
     [obs(A.ALT, 170, ref="7-56")], [(HYS, S.CRITICAL)]),
    ("hys-bili-49h-apart", context(order(), history=(obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2", at=T0 - 49 * H, specimen="S0"),)),
     [obs(A.ALT, 170, ref="7-56")], [(STOP, S.CRITICAL)]),
    # ALT 2.98× is no Hy's law; the bilirubin 2.0× is isolated jaundice, which takes liver.mild's place
    # (issue 19 item 7; before aza.hyperbilirubinemia this row expected aza.liver.mild).
    ("hys-alt-below-3x", ON, [obs(A.ALT, 167, ref="7-56"), obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2")], [(HYPERBILI, S.HIGH)]),
    # -- cholestasis (may share a panel with stop)
    ("alp-at-2x", ON, [obs(A.ALP, 282, ref="42-141")], [(CHOL, S.HIGH)]),
    ("alp-below-2x-is-mild", ON, [obs(A.ALP, 281, ref="42-141")], [(MILD, S.WARNING)]),
    ("cholestasis-and-stop-one-panel", ON, [obs(A.ALT, 170, ref="7-56"), obs(A.ALP, 300, ref="42-141")],
     [(STOP, S.CRITICAL), (CHOL, S.HIGH)]),
    ("cholestasis-no-order", context(), [obs(A.ALP, 900, ref="42-141")], []),
    # -- liver.mild (only when no other liver rule fires)
    ("mild-alt-above-uln", ON, [obs(A.ALT, 57, ref="7-56")], [(MILD, S.WARNING)]),
    ("alt-at-uln-silent", ON, [obs(A.ALT, 56, ref="7-56")], []),
    ("mild-ggt", ON, [obs(A.GGT, 49, ref="9-48")], [(MILD, S.WARNING)]),
    ("ggt-at-uln-silent", ON, [obs(A.GGT, 48, ref="9-48")], []),
    ("mild-ggt-default-range", ON, [obs(A.GGT, 49)], [(MILD, S.WARNING)]),
    ("mild-persistent-two-panels-high", context(order(), history=(obs(A.ALT, 60, ref="7-56", at=T0 - 7 * D, specimen="S0"),)),
     [obs(A.ALT, 57, ref="7-56")], [(MILD, S.HIGH)]),
    ("mild-previous-normal-warning", context(order(), history=(obs(A.ALT, 56, ref="7-56", at=T0 - 7 * D, specimen="S0"),)),
     [obs(A.ALT, 57, ref="7-56")], [(MILD, S.WARNING)]),
    ("mild-previous-other-analyte-warning", context(order(), history=(obs(A.AST, 60, ref="10-40", at=T0 - 7 * D, specimen="S0"),)),
     [obs(A.ALT, 57, ref="7-56")], [(MILD, S.WARNING)]),
    ("mild-folded-into-stop", ON, [obs(A.ALT, 170, ref="7-56"), obs(A.GGT, 60, ref="9-48")], [(STOP, S.CRITICAL)]),
    # -- rechallenge (decision 1: replaces stop and mild; decision 10)
    ("rechallenge-mild-high", RECHALLENGE, [obs(A.ALT, 57, ref="7-56")], [(RECH, S.HIGH)]),
    ("rechallenge-at-3x-critical", RECHALLENGE, [obs(A.ALT, 168, ref="7-56")], [(RECH, S.CRITICAL)]),
    ("rechallenge-below-3x-high", RECHALLENGE, [obs(A.ALT, 167, ref="7-56")], [(RECH, S.HIGH)]),
    ("rechallenge-normal-silent", RECHALLENGE, [obs(A.ALT, 56, ref="7-56")], []),
    ("rechallenge-hys-law-still-fires", RECHALLENGE, [obs(A.ALT, 170, ref="7-56"), obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2")],
     [(HYS, S.CRITICAL), (RECH, S.CRITICAL)]),
    ("rechallenge-with-cholestasis", RECHALLENGE, [obs(A.ALP, 300, ref="42-141")], [(CHOL, S.HIGH), (RECH, S.HIGH)]),
    ("rechallenge-stopped-30-days-after-alert", context(
        order(order_id="RX0", start=T0 - 120 * D, stop=T0 - 60 * D), order(order_id="RX2", start=T0 - 30 * D),
        alerts=(past(STOP, T0 - 90 * D),)), [obs(A.ALT, 57, ref="7-56")], [(RECH, S.HIGH)]),
    ("not-rechallenge-stopped-31-days-after-alert", context(
        order(order_id="RX0", start=T0 - 120 * D, stop=T0 - 60 * D), order(order_id="RX2", start=T0 - 30 * D),
        alerts=(past(STOP, T0 - 91 * D),)), [obs(A.ALT, 57, ref="7-56")], [(MILD, S.WARNING)]),
    ("not-rechallenge-no-liver-alert", context(
        order(order_id="RX0", start=T0 - 120 * D, stop=T0 - 60 * D), order(order_id="RX2", start=T0 - 30 * D)),
        [obs(A.ALT, 57, ref="7-56")], [(MILD, S.WARNING)]),
    ("not-rechallenge-alert-after-stop", context(
        order(order_id="RX0", start=T0 - 120 * D, stop=T0 - 60 * D), order(order_id="RX2", start=T0 - 30 * D),
        alerts=(past(STOP, T0 - 59 * D),)), [obs(A.ALT, 57, ref="7-56")], [(MILD, S.WARNING)]),
    # -- synthetic function (decision 6: needs an active thiopurine)
    ("synthetic-low-albumin-open-alert", context(order(), alerts=(past(STOP, T0 - 2 * D, open=True),)),
     [obs(A.ALBUMIN, 3.4, ref="3.5-5.0")], [(SYN, S.HIGH)]),
    ("synthetic-albumin-at-lln-silent", context(order(), alerts=(past(STOP, T0 - 2 * D, open=True),)),
     [obs(A.ALBUMIN, 3.5, ref="3.5-5.0")], []),
    ("synthetic-albumin-g-per-l-default", context(order(), alerts=(past(STOP, T0 - 2 * D, open=True),)),
     [obs(A.ALBUMIN, 34, unit="g/L")], [(SYN, S.HIGH)]),
    ("synthetic-inr-above-limit", context(order(), alerts=(past(CHOL, T0 - 2 * D, open=True),)),
     [obs(A.INR, 1.6, ref="0.8-1.2")], [(SYN, S.HIGH)]),
    ("synthetic-inr-at-limit-silent", context(order(), alerts=(past(CHOL, T0 - 2 * D, open=True),)),
     [obs(A.INR, 1.5, ref="0.8-1.2")], []),
    ("synthetic-closed-alert-silent", context(order(), alerts=(past(STOP, T0 - 2 * D),)), [obs(A.INR, 1.6)], []),
    ("synthetic-bilirubin-above-uln", ON, [obs(A.BILI_TOTAL, 1.3, ref="0.1-1.2"), obs(A.INR, 1.6)], [(SYN, S.HIGH)]),
    ("synthetic-bilirubin-at-uln-silent", ON, [obs(A.BILI_TOTAL, 1.2, ref="0.1-1.2"), obs(A.INR, 1.6)], []),
    ("synthetic-with-this-panels-liver-alert", ON, [obs(A.ALT, 170, ref="7-56"), obs(A.INR, 1.6)],
     [(STOP, S.CRITICAL), (SYN, S.HIGH)]),
    # Decision 16: "active" here means exposed; a stop beyond the follow-up of the open alert is not.
    ("synthetic-needs-active-thiopurine", context(order(start=T0 - 200 * D, stop=T0 - 91 * D),
                                                  alerts=(past(STOP, T0 - 92 * D, open=True),)),
     [obs(A.INR, 1.6)], []),
    # -- post-stop
    ("seed-low-alp", STOPPED, seed_panel(39), [(LOW_ALP, S.INFO)]),
    ("alp-at-lln-normalized", STOPPED, seed_panel(42), [(NORMAL, S.INFO)]),
    # 14 days after the stop the patient is still exposed (decision 16): ALT above ULN is mild again.
    ("normalized-alt-above-uln-silent", STOPPED, seed_panel(42, alt=57), [(MILD, S.WARNING)]),
    ("normalized-bilirubin-above-uln-silent", STOPPED, seed_panel(42, bili=1.3), []),
    ("normalized-needs-all-four", STOPPED, seed_panel(42)[:3], []),
    ("low-alp-alone", STOPPED, [obs(A.ALP, 39, ref="42-141")], [(LOW_ALP, S.INFO)]),
    ("low-alp-default-range", STOPPED, [obs(A.ALP, 41)], [(LOW_ALP, S.INFO)]),
    ("low-alp-day-90", context(order(start=T0 - 120 * D, stop=T0 - 90 * D), alerts=(past(STOP, T0 - 91 * D),)),
     [obs(A.ALP, 39, ref="42-141")], [(LOW_ALP, S.INFO)]),
    ("low-alp-day-91-silent", context(order(start=T0 - 120 * D, stop=T0 - 91 * D), alerts=(past(STOP, T0 - 92 * D),)),
     [obs(A.ALP, 39, ref="42-141")], []),
    ("low-alp-no-liver-alert-silent", context(order(start=T0 - 60 * D, stop=T0 - 14 * D)), [obs(A.ALP, 39, ref="42-141")], []),
    ("low-alp-thiopurine-active-again-silent", context(
        order(order_id="RX0", start=T0 - 60 * D, stop=T0 - 14 * D), order(order_id="RX2", start=T0 - D),
        alerts=(past(STOP, T0 - 15 * D),)), [obs(A.ALP, 39, ref="42-141")], []),
    ("low-alp-before-stop-is-baseline", STOPPED, [obs(A.ALP, 39, ref="42-141", at=T0 - 70 * D)], []),
    # -- myelosuppression
    ("wbc-below", ON, [obs(A.WBC, 3.4)], [(MYELO, S.HIGH)]),
    ("wbc-at-limit", ON, [obs(A.WBC, 3.5)], []),
    ("neutrophils-below", ON, [obs(A.NEUTROPHILS, 1.59)], [(MYELO, S.HIGH)]),
    ("neutrophils-at-limit", ON, [obs(A.NEUTROPHILS, 1.6)], []),
    ("neutrophils-critical", ON, [obs(A.NEUTROPHILS, 0.99)], [(MYELO, S.CRITICAL)]),
    ("neutrophils-at-critical-limit-high", ON, [obs(A.NEUTROPHILS, 1.0)], [(MYELO, S.HIGH)]),
    ("platelets-below", ON, [obs(A.PLATELETS, 139)], [(MYELO, S.HIGH)]),
    ("platelets-at-limit", ON, [obs(A.PLATELETS, 140)], []),
    ("platelets-critical", ON, [obs(A.PLATELETS, 49)], [(MYELO, S.CRITICAL)]),
    ("platelets-at-critical-limit-high", ON, [obs(A.PLATELETS, 50)], [(MYELO, S.HIGH)]),
    ("platelets-per-ul", ON, [obs(A.PLATELETS, 139000, unit="/uL")], [(MYELO, S.HIGH)]),
    ("wbc-k-per-ul", ON, [obs(A.WBC, 3.4, unit="K/uL")], [(MYELO, S.HIGH)]),
    ("wbc-10-3-per-ul", ON, [obs(A.WBC, 3.5, unit="10*3/uL")], []),
    ("count-unknown-unit-silent", ON, [obs(A.WBC, 2.0, unit="furlongs")], []),
    ("myelo-no-order", context(), [obs(A.NEUTROPHILS, 0.5)], []),
    # -- PGx result while on a thiopurine (decision 11)
    ("tpmt-poor-text", ON, [coded(A.TPMT, "Poor metabolizer")], [(POOR, S.CRITICAL)]),
    ("tpmt-possible-intermediate", ON, [coded(A.TPMT, "Possible intermediate metabolizer")], [(POOR, S.HIGH)]),
    ("tpmt-likely-intermediate-st", ON, [coded(A.TPMT, "LIKELY INTERMEDIATE METABOLIZER", value_type="ST")], [(POOR, S.HIGH)]),
    ("tpmt-normal-silent", ON, [coded(A.TPMT, "Normal metabolizer")], []),
    ("nudt15-rapid-silent", ON, [coded(A.NUDT15, "Rapid metabolizer")], []),
    ("tpmt-two-no-function", ON, [coded(A.TPMT, "*3A/*3C")], [(POOR, S.CRITICAL)]),
    ("tpmt-one-no-function", ON, [coded(A.TPMT, "*1/*3A")], [(POOR, S.HIGH)]),
    ("tpmt-wild-type-silent", ON, [coded(A.TPMT, "*1/*1")], []),
    ("nudt15-one-no-function", ON, [coded(A.NUDT15, "*1/*3")], [(POOR, S.HIGH)]),
    ("nudt15-two-no-function", ON, [coded(A.NUDT15, "*2/*3")], [(POOR, S.CRITICAL)]),
    ("nudt15-tpmt-allele-not-counted", ON, [coded(A.NUDT15, "*1/*4")], []),
    ("pgx-no-thiopurine-silent", context(), [coded(A.TPMT, "Poor metabolizer")], []),
    ("pgx-unreadable-silent", ON, [coded(A.TPMT, "see report")], []),
]


@pytest.mark.parametrize(("ctx", "observations", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_panel_rules(ctx, observations: list, expected: list) -> None:
    findings = evaluate(ctx, observations, SETTINGS)
    assert [(f.rule, f.severity) for f in findings] == expected
    for f in findings:
        assert f.recommendations, f.rule
        assert f.occurred_at == observations[0].observed_at


def test_seed_low_alp_carries_every_seed_recommendation() -> None:
    (finding,) = evaluate(STOPPED, seed_panel(39), SETTINGS)
    assert finding.recommendations == LOW_ALP_ACTIONS
    text = " ".join(finding.recommendations).lower()
    for phrase in ("favorable sign", "weekly for the next 2-4 weeks", "albumin and prothrombin time",
                   "jaundice", "1/3 to 1/4", "twice monthly", "tpmt and nudt15", "alternative immunosuppressive",
                   "allopurinol", "complete normalization", "above 3x uln", "mild persistent",
                   "excluding other causes", "too rapidly", "recur rapidly", "asymptomatic"):
        assert phrase in text, phrase


def test_every_liver_finding_carries_the_pattern() -> None:
    findings = evaluate(ON, [obs(A.ALT, 500, ref="7-56"), obs(A.ALP, 300, ref="42-141")], SETTINGS)
    assert [(f.rule, f.pattern.type if f.pattern else None) for f in findings] == [(STOP, "mixed"), (CHOL, "mixed")]
    (hepatocellular,) = evaluate(ON, [obs(A.ALT, 600, ref="7-56"), obs(A.ALP, 141, ref="42-141")], SETTINGS)
    assert hepatocellular.pattern is not None
    assert hepatocellular.pattern.type == "hepatocellular"
    (cholestatic,) = evaluate(ON, [obs(A.ALT, 60, ref="7-56"), obs(A.ALP, 300, ref="42-141")], SETTINGS)
    assert cholestatic.pattern is not None
    assert cholestatic.pattern.type == "cholestatic"


FEMALE_ALT = RuleSettings(default_ranges={**DEFAULT_RANGES, A.ALT: DefaultRange(low=7, high=56, by_sex={"F": (7, 35)})})

THRESHOLDS = [
    ("cholestasis-x-uln", RuleSettings(cholestasis_alp_x_uln=3.0), ON, [obs(A.ALP, 300, ref="42-141")], [(MILD, S.WARNING)]),
    ("hys-bili-x-uln", RuleSettings(hys_law_bilirubin_x_uln=1.5), ON,
     [obs(A.ALT, 170, ref="7-56"), obs(A.BILI_TOTAL, 1.8, ref="0.1-1.2")], [(HYS, S.CRITICAL)]),
    ("hys-window", RuleSettings(hys_law_window_hours=72),
     context(order(), history=(obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2", at=T0 - 60 * H, specimen="S0"),)),
     [obs(A.ALT, 170, ref="7-56")], [(HYS, S.CRITICAL)]),
    ("post-stop-days", RuleSettings(post_stop_days=10), STOPPED, [obs(A.ALP, 39, ref="42-141")], []),
    ("rechallenge-days", RuleSettings(rechallenge_days=4), RECHALLENGE, [obs(A.ALT, 57, ref="7-56")], [(MILD, S.WARNING)]),
    ("synthetic-inr", RuleSettings(synthetic_inr_above=2.0), ON, [obs(A.BILI_TOTAL, 1.3, ref="0.1-1.2"), obs(A.INR, 1.9)], []),
    ("wbc-limit", RuleSettings(wbc_below=4.0), ON, [obs(A.WBC, 3.9)], [(MYELO, S.HIGH)]),
    ("platelet-critical-limit", RuleSettings(platelets_critical_below=100), ON, [obs(A.PLATELETS, 99)], [(MYELO, S.CRITICAL)]),
    ("tpmt-activity-poor", RuleSettings(tpmt_activity_poor_below=6.3, tpmt_activity_intermediate_below=15.1), ON,
     [coded(A.TPMT, "5.0", value_type="NM", value=5.0)], [(POOR, S.CRITICAL)]),
    ("tpmt-activity-intermediate", RuleSettings(tpmt_activity_poor_below=6.3, tpmt_activity_intermediate_below=15.1), ON,
     [coded(A.TPMT, "15.0", value_type="NM", value=15.0)], [(POOR, S.HIGH)]),
    ("tpmt-activity-normal", RuleSettings(tpmt_activity_poor_below=6.3, tpmt_activity_intermediate_below=15.1), ON,
     [coded(A.TPMT, "15.1", value_type="NM", value=15.1)], []),
    ("sex-specific-default-female", FEMALE_ALT, context(order(), sex="F"), [obs(A.ALT, 40)], [(MILD, S.WARNING)]),
    ("sex-specific-default-male", FEMALE_ALT, context(order(), sex="M"), [obs(A.ALT, 40)], []),
    ("sex-specific-default-unknown-sex", FEMALE_ALT, context(order()), [obs(A.ALT, 40)], []),
    ("tpmt-activity-unset-not-read", SETTINGS, ON, [coded(A.TPMT, "1.0", value_type="NM", value=1.0)], []),
    ("mercaptopurine-watched-when-configured", RuleSettings(thiopurines=frozenset({"azathioprine", "mercaptopurine"})),
     context(order(ingredient="mercaptopurine")), [obs(A.WBC, 3.4)], [(MYELO, S.HIGH)]),
]


@pytest.mark.parametrize(("settings", "ctx", "observations", "expected"), [c[1:] for c in THRESHOLDS],
                         ids=[c[0] for c in THRESHOLDS])
def test_thresholds_come_from_settings(settings: RuleSettings, ctx, observations: list, expected: list) -> None:
    assert [(f.rule, f.severity) for f in evaluate(ctx, observations, settings)] == expected


PGX_NORMAL = (coded(A.TPMT, "Normal metabolizer", at=T0 - 400 * D), coded(A.NUDT15, "*1/*1", at=T0 - 400 * D))
NEW = order(order_id="RX9", start=T0)
ALLOPURINOL = order(order_id="AL1", ingredient="allopurinol", start=T0 - 10 * D)

ORDER_CASES = [
    # id, context (orders on file, results on file), started orders, expected [(rule, severity)]
    ("pgx-missing-both", context(NEW), [NEW], [(MISSING, S.INFO)]),
    ("pgx-missing-nudt15", context(NEW, history=PGX_NORMAL[:1]), [NEW], [(MISSING, S.INFO)]),
    ("pgx-both-on-file-silent", context(NEW, history=PGX_NORMAL), [NEW], []),
    ("pgx-poor-on-file", context(NEW, history=(coded(A.TPMT, "Poor metabolizer", at=T0 - 400 * D), PGX_NORMAL[1])),
     [NEW], [(POOR, S.CRITICAL)]),
    ("pgx-intermediate-on-file", context(NEW, history=(PGX_NORMAL[0], coded(A.NUDT15, "*1/*3", at=T0 - 99 * D))),
     [NEW], [(POOR, S.HIGH)]),
    ("pgx-only-for-thiopurines", context(ALLOPURINOL), [ALLOPURINOL], []),
    ("allopurinol-first-then-thiopurine", context(ALLOPURINOL, NEW, history=PGX_NORMAL), [NEW], [(ALLO, S.HIGH)]),
    ("thiopurine-first-then-allopurinol", context(order(), order(order_id="AL2", ingredient="allopurinol", start=T0)),
     [order(order_id="AL2", ingredient="allopurinol", start=T0)], [(ALLO, S.HIGH)]),
    ("febuxostat-critical", context(NEW, order(order_id="FX1", ingredient="febuxostat", start=T0 - D), history=PGX_NORMAL),
     [NEW], [(ALLO, S.CRITICAL)]),
    ("allopurinol-stopped-before-silent", context(order(order_id="AL1", ingredient="allopurinol", start=T0 - 10 * D, stop=T0),
                                                  NEW, history=PGX_NORMAL), [NEW], []),
    ("allopurinol-without-thiopurine-silent", context(ALLOPURINOL), [ALLOPURINOL], []),
    ("thiopurine-stopped-then-allopurinol-silent",
     context(order(stop=T0 - D), order(order_id="AL2", ingredient="allopurinol", start=T0)),
     [order(order_id="AL2", ingredient="allopurinol", start=T0)], []),
]


@pytest.mark.parametrize(("ctx", "started", "expected"), [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES])
def test_order_rules(ctx, started: list, expected: list) -> None:
    assert [(f.rule, f.severity) for f in evaluate_orders(ctx, started, SETTINGS)] == expected


def test_pgx_missing_names_which() -> None:
    (finding,) = evaluate_orders(context(NEW, history=PGX_NORMAL[:1]), [NEW], SETTINGS)
    assert "NUDT15" in finding.title
    assert "TPMT" not in finding.title
    (both,) = evaluate_orders(context(NEW), [NEW], SETTINGS)
    assert "TPMT and NUDT15" in both.title


@pytest.mark.parametrize(("analyte", "text", "expected"), [
    (A.TPMT, "Poor metabolizer", Metabolizer.POOR),
    (A.TPMT, "TPMT *3A/*3A", Metabolizer.POOR),
    (A.TPMT, "*1/*2", Metabolizer.INTERMEDIATE),
    (A.TPMT, "*1/*3B", Metabolizer.INTERMEDIATE),
    (A.TPMT, "*1/*4", Metabolizer.INTERMEDIATE),
    (A.TPMT, "*1 / *1", Metabolizer.NORMAL),
    (A.TPMT, "Ultrarapid metabolizer", Metabolizer.NORMAL),
    (A.NUDT15, "*1/*2", Metabolizer.INTERMEDIATE),
    (A.NUDT15, "*3/*3", Metabolizer.POOR),
    (A.NUDT15, "pending", None),
], ids=str)
def test_metabolizer_reading(analyte: Analyte, text: str, expected: Metabolizer | None) -> None:
    assert metabolizer(coded(analyte, text), SETTINGS) is expected


# -- Issue 19: the cases a ward sees, with both sides of each boundary.

LONG_AFTER = context(order(start=T0 - 200 * D, stop=T0 - 60 * D), alerts=(past(STOP, T0 - 61 * D),))
"""Stopped 60 days ago after a (closed) liver alert: past exposure, inside the post-stop window."""

SAFETY_CASES = [
    # Item 2 (false reassurance): the seed's low ALP reassures only when it comes alone.
    ("low-alp-with-ast-3x-and-bili-2.3x-is-hys-law", STOPPED,
     [obs(A.ALP, 39, ref="42-141"), obs(A.AST, 120, ref="10-40"), obs(A.BILI_TOTAL, 2.8, ref="0.1-1.2")],
     [(HYS, S.CRITICAL)]),
    ("low-alp-with-ast-3x-and-bili-2.3x-unexposed-no-reassurance", LONG_AFTER,
     [obs(A.ALP, 39, ref="42-141"), obs(A.AST, 120, ref="10-40"), obs(A.BILI_TOTAL, 2.8, ref="0.1-1.2")], []),
    ("low-alp-ast-at-uln-reassures", LONG_AFTER, [obs(A.ALP, 39, ref="42-141"), obs(A.AST, 40, ref="10-40")],
     [(LOW_ALP, S.INFO)]),
    ("low-alp-ast-1.01x-no-reassurance", LONG_AFTER, [obs(A.ALP, 39, ref="42-141"), obs(A.AST, 40.4, ref="10-40")],
     []),
    ("low-alp-alt-1.01x-no-reassurance", LONG_AFTER, [obs(A.ALP, 39, ref="42-141"), obs(A.ALT, 56.6, ref="7-56")],
     []),
    ("low-alp-bili-at-uln-reassures", LONG_AFTER,
     [obs(A.ALP, 39, ref="42-141"), obs(A.BILI_TOTAL, 1.2, ref="0.1-1.2")], [(LOW_ALP, S.INFO)]),
    ("low-alp-bili-1.01x-no-reassurance", LONG_AFTER,
     [obs(A.ALP, 39, ref="42-141"), obs(A.BILI_TOTAL, 1.21, ref="0.1-1.2")], []),
    ("low-alp-ast-unscorable-no-reassurance", LONG_AFTER,
     [obs(A.ALP, 39, ref="42-141"), obs(A.AST, 40, unit="furlongs")], []),
    ("low-alp-while-a-liver-rule-fires-no-reassurance", STOPPED,
     [obs(A.ALP, 39, ref="42-141"), obs(A.GGT, 60, ref="9-48")], [(MILD, S.WARNING)]),
    ("normalized-while-a-liver-rule-fires-is-not-said", STOPPED, [*seed_panel(42), obs(A.GGT, 60, ref="9-48")],
     [(MILD, S.WARNING)]),
    # Item 4 / decision 17: thresholds compare the figure the page shows (two decimals).
    ("ukat-3.3-over-1.1-is-3.00x-critical", ON, [obs(A.ALT, 3.3, unit="ukat/L", ref="0.1-1.1")], [(STOP, S.CRITICAL)]),
    ("ukat-3.28-over-1.1-is-2.98x-mild", ON, [obs(A.ALT, 3.28, unit="ukat/L", ref="0.1-1.1")], [(MILD, S.WARNING)]),
    ("alp-1.995x-shows-2.00x-cholestasis", ON, [obs(A.ALP, 281.3, ref="42-141")], [(CHOL, S.HIGH)]),
    ("alp-1.994x-shows-1.99x-mild", ON, [obs(A.ALP, 281.2, ref="42-141")], [(MILD, S.WARNING)]),
    ("alt-1.004x-shows-1.00x-silent", ON, [obs(A.ALT, 56.2, ref="7-56")], []),
    ("alt-1.005x-shows-1.01x-mild", ON, [obs(A.ALT, 56.3, ref="7-56")], [(MILD, S.WARNING)]),
    ("neutrophils-per-ul-at-the-reported-precision", ON, [obs(A.NEUTROPHILS, 999, unit="/uL")], [(MYELO, S.CRITICAL)]),
    ("neutrophils-per-ul-at-the-critical-limit", ON, [obs(A.NEUTROPHILS, 1000, unit="/uL")], [(MYELO, S.HIGH)]),
    ("platelets-per-ul-just-below", ON, [obs(A.PLATELETS, 139999, unit="/uL")], [(MYELO, S.HIGH)]),
    ("platelets-per-ul-at-the-limit", ON, [obs(A.PLATELETS, 140000, unit="/uL")], []),
    # Item 5 / decision 15: counts in every spelling senders use.
    ("neutrophils-x10e9", ON, [obs(A.NEUTROPHILS, 0.4, unit="x10E9/L")], [(MYELO, S.CRITICAL)]),
    ("platelets-g-per-l", ON, [obs(A.PLATELETS, 30, unit="G/L")], [(MYELO, S.CRITICAL)]),
    ("wbc-thou-per-ul", ON, [obs(A.WBC, 3.4, unit="thou/uL")], [(MYELO, S.HIGH)]),
    ("alt-units-per-l-default-range", ON, [obs(A.ALT, 400, unit="Units/L")], [(STOP, S.CRITICAL)]),
    ("alt-iu-default-range", ON, [obs(A.ALT, 400, unit="IU")], [(STOP, S.CRITICAL)]),
    ("alt-u-per-l-at-37c-default-range", ON, [obs(A.ALT, 400, unit="U/L@37C")], [(STOP, S.CRITICAL)]),
    # Item 7: isolated jaundice, and cholestasis with jaundice.
    ("isolated-jaundice-bili-4.0", ON, [obs(A.BILI_TOTAL, 4.0, ref="0.1-1.2"), obs(A.ALT, 40, ref="7-56"),
                                        obs(A.ALP, 100, ref="42-141")], [(HYPERBILI, S.HIGH)]),
    ("bili-2.00x-hyperbilirubinemia", ON, [obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2")], [(HYPERBILI, S.HIGH)]),
    ("bili-1.99x-silent", ON, [obs(A.BILI_TOTAL, 2.39, ref="0.1-1.2")], []),
    ("bili-umol-default-range", ON, [obs(A.BILI_TOTAL, 42, unit="umol/L")], [(HYPERBILI, S.HIGH)]),
    ("hyperbilirubinemia-takes-mild's-place", ON, [obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2"), obs(A.ALT, 60, ref="7-56")],
     [(HYPERBILI, S.HIGH)]),
    ("hyperbilirubinemia-with-stop-is-hys-law", ON,
     [obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2"), obs(A.ALT, 170, ref="7-56")], [(HYS, S.CRITICAL)]),
    ("cholestasis-2.8x-with-bili-3.3x-critical", ON,
     [obs(A.ALP, 395, ref="42-141"), obs(A.BILI_TOTAL, 4.0, ref="0.1-1.2")], [(CHOL, S.CRITICAL)]),
    ("cholestasis-with-bili-1.99x-high", ON,
     [obs(A.ALP, 395, ref="42-141"), obs(A.BILI_TOTAL, 2.39, ref="0.1-1.2")], [(CHOL, S.HIGH)]),
    ("cholestasis-bili-within-48h-critical",
     context(order(), history=(obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2", at=T0 - 48 * H, specimen="S0"),)),
     [obs(A.ALP, 395, ref="42-141")], [(CHOL, S.CRITICAL)]),
    ("cholestasis-bili-49h-before-high",
     context(order(), history=(obs(A.BILI_TOTAL, 2.4, ref="0.1-1.2", at=T0 - 49 * H, specimen="S0"),)),
     [obs(A.ALP, 395, ref="42-141")], [(CHOL, S.HIGH)]),
    # Item 9 / decision 10: a rechallenge follows stop, Hy's law or cholestasis (not mild), >= 24 h later.
    ("rechallenge-after-cholestasis", context(
        order(order_id="RX0", start=T0 - 120 * D, stop=T0 - 60 * D), order(order_id="RX2", start=T0 - 30 * D),
        alerts=(past(CHOL, T0 - 65 * D),)), [obs(A.ALT, 57, ref="7-56")], [(RECH, S.HIGH)]),
    ("rechallenge-after-hys-law", context(
        order(order_id="RX0", start=T0 - 120 * D, stop=T0 - 60 * D), order(order_id="RX2", start=T0 - 30 * D),
        alerts=(past(HYS, T0 - 65 * D),)), [obs(A.ALT, 57, ref="7-56")], [(RECH, S.HIGH)]),
    ("not-rechallenge-after-mild", context(
        order(order_id="RX0", start=T0 - 120 * D, stop=T0 - 60 * D), order(order_id="RX2", start=T0 - 30 * D),
        alerts=(past(MILD, T0 - 65 * D),)), [obs(A.ALT, 57, ref="7-56")], [(MILD, S.WARNING)]),
    ("not-rechallenge-same-day-dose-change", context(
        order(order_id="RX0", start=T0 - 120 * D, stop=T0 - 30 * D),
        order(order_id="RX2", start=T0 - 30 * D + 23 * H), alerts=(past(STOP, T0 - 31 * D),)),
     [obs(A.ALT, 57, ref="7-56")], [(MILD, S.WARNING)]),
    ("rechallenge-24h-after-the-stop", context(
        order(order_id="RX0", start=T0 - 120 * D, stop=T0 - 30 * D),
        order(order_id="RX2", start=T0 - 29 * D), alerts=(past(STOP, T0 - 31 * D),)),
     [obs(A.ALT, 57, ref="7-56")], [(RECH, S.HIGH)]),
    # Item 8: febrile neutropenia line (tested on the text below); thioguanine watched when configured.
    ("neutrophils-0.99-critical", ON, [obs(A.NEUTROPHILS, 0.99)], [(MYELO, S.CRITICAL)]),
]


@pytest.mark.parametrize(("ctx", "observations", "expected"), [c[1:] for c in SAFETY_CASES],
                         ids=[c[0] for c in SAFETY_CASES])
def test_issue_19_panel_cases(ctx, observations: list, expected: list) -> None:
    findings = evaluate(ctx, observations, SETTINGS)
    assert [(f.rule, f.severity) for f in findings] == expected
    for f in findings:
        assert f.recommendations, f.rule


MP = RuleSettings(thiopurines=frozenset({"azathioprine", "mercaptopurine", "thioguanine"}))
TG = order(order_id="TG1", ingredient="thioguanine", start=T0)
MERCAPTO = order(order_id="MP1", ingredient="mercaptopurine", start=T0)
FEBUXOSTAT = order(order_id="FX1", ingredient="febuxostat", start=T0 - D)

SAFETY_ORDER_CASES = [
    # id, settings, context, started, expected
    ("thioguanine-with-allopurinol-silent", MP, context(ALLOPURINOL, TG, history=PGX_NORMAL), [TG], []),
    ("thioguanine-with-febuxostat-silent", MP, context(FEBUXOSTAT, TG, history=PGX_NORMAL), [TG], []),
    ("mercaptopurine-with-allopurinol", MP, context(ALLOPURINOL, MERCAPTO, history=PGX_NORMAL), [MERCAPTO],
     [(ALLO, S.HIGH)]),
    ("allopurinol-after-thioguanine-silent", MP,
     context(TG, order(order_id="AL9", ingredient="allopurinol", start=T0 + D)),
     [order(order_id="AL9", ingredient="allopurinol", start=T0 + D)], []),
    ("pgx-both-intermediate", SETTINGS, context(NEW, history=(coded(A.TPMT, "*1/*3A", at=T0 - 9 * D),
                                                              coded(A.NUDT15, "*1/*3", at=T0 - 9 * D))),
     [NEW], [(POOR, S.HIGH)]),
    # Decision 11: once per patient.
    ("pgx-missing-once-per-patient", SETTINGS, context(NEW, alerts=(past(MISSING, T0 - 100 * D),)), [NEW], []),
    ("pgx-missing-open-no-second", SETTINGS, context(NEW, alerts=(past(MISSING, T0 - 100 * D, open=True),)),
     [NEW], []),
]


@pytest.mark.parametrize(("settings", "ctx", "started", "expected"), [c[1:] for c in SAFETY_ORDER_CASES],
                         ids=[c[0] for c in SAFETY_ORDER_CASES])
def test_issue_19_order_cases(settings: RuleSettings, ctx, started: list, expected: list) -> None:
    assert [(f.rule, f.severity) for f in evaluate_orders(ctx, started, settings)] == expected


@pytest.mark.parametrize(("arrived_after_start", "fires"), [
    (timedelta(days=30), True), (timedelta(days=30, seconds=1), False), (timedelta(days=2000), False),
], ids=["30-days", "30-days-and-a-second", "years"])
def test_pgx_missing_not_for_a_long_running_order(arrived_after_start: timedelta, fires: bool) -> None:
    """Decision 11: an order that started more than 30 days before it first
    arrived (therapy since 2019, seen at go-live) raises no pgx.missing."""
    found = evaluate_orders(context(NEW), [NEW], SETTINGS, arrived_at=T0 + arrived_after_start)
    assert [f.rule for f in found] == ([MISSING] if fires else [])
