"""What pages say (CLINICAL.md decision 19; issue 19 items 8 and 10): the
ordered drug, genes in capitals, analytes as clinicians write them, values
already on the panel instead of asking for them, a pattern only with ALT or
ALP above ULN, published references, and advice that is right for the drug."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from hl7_alerts.rules.common import Finding, RuleSettings
from hl7_alerts.rules.engine import evaluate, evaluate_orders
from hl7_alerts.terminology import Analyte
from tests.support.rulekit import T0, coded, context, obs, order, past

A = Analyte
D = timedelta(days=1)
SETTINGS = RuleSettings()
MP = RuleSettings(thiopurines=frozenset({"azathioprine", "mercaptopurine"}))


def _every_finding(drug: str, settings: RuleSettings) -> list[Finding]:
    """One finding of (nearly) every rule for a patient on ``drug``."""
    on = context(order(ingredient=drug))
    stopped = context(order(ingredient=drug, start=T0 - 60 * D, stop=T0 - 14 * D),
                      alerts=(past("aza.hepatotoxicity.stop", T0 - 15 * D),))
    rechallenge = context(order(ingredient=drug, order_id="RX0", start=T0 - 120 * D, stop=T0 - 60 * D),
                          order(ingredient=drug, order_id="RX2", start=T0 - 30 * D),
                          alerts=(past("aza.hepatotoxicity.stop", T0 - 65 * D),))
    new = order(ingredient=drug, order_id="RX9", start=T0)
    panels = [
        (on, [obs(A.ALT, 200, ref="7-56"), obs(A.BILI_TOTAL, 3.0, ref="0.1-1.2"), obs(A.INR, 1.8)]),
        (on, [obs(A.ALT, 200, ref="7-56"), obs(A.ALP, 400, ref="42-141")]),
        (on, [obs(A.BILI_TOTAL, 3.0, ref="0.1-1.2")]),
        (on, [obs(A.GGT, 60, ref="9-48")]),
        (on, [obs(A.NEUTROPHILS, 0.5), obs(A.PLATELETS, 100)]),
        (on, [coded(A.TPMT, "Poor metabolizer")]),
        (on, [replace(obs(A.ALT, 400, unit=" "), flag="HH")]),
        (stopped, [obs(A.ALT, 40, ref="7-56"), obs(A.AST, 30, ref="10-40"), obs(A.ALP, 39, ref="42-141")]),
        (stopped, [obs(A.ALT, 40, ref="7-56"), obs(A.AST, 30, ref="10-40"), obs(A.ALP, 60, ref="42-141"),
                   obs(A.BILI_TOTAL, 0.5, ref="0.1-1.2")]),
        (rechallenge, [obs(A.ALT, 200, ref="7-56")]),
    ]
    found = [f for ctx, panel in panels if panel for f in evaluate(ctx, panel, settings)]
    found += evaluate_orders(context(new), [new], settings)
    allopurinol = order(order_id="AL1", ingredient="allopurinol", start=T0 - D)
    found += evaluate_orders(context(allopurinol, new), [new], settings)
    return found


RULES_SEEN = {
    "aza.hys_law", "aza.hepatotoxicity.stop", "aza.cholestasis", "aza.hyperbilirubinemia", "aza.liver.mild",
    "aza.synthetic_function", "aza.myelosuppression", "aza.pgx.poor_metabolizer", "aza.post_stop.low_alp",
    "aza.post_stop.normalized", "aza.rechallenge.recurrence", "aza.pgx.missing", "aza.interaction.allopurinol",
    "aza.result.unscored",
}


@pytest.mark.parametrize(("drug", "settings"), [("azathioprine", SETTINGS), ("mercaptopurine", MP)],
                         ids=["azathioprine", "mercaptopurine"])
def test_pages_name_the_drug_genes_and_analytes_as_clinicians_write_them(drug: str, settings: RuleSettings) -> None:
    findings = _every_finding(drug, settings)
    assert {f.rule for f in findings} >= RULES_SEEN
    for f in findings:
        shown = " ".join((f.title, f.summary, *f.recommendations))
        assert drug in shown.lower(), f.rule
        if drug != "azathioprine":
            assert "azathioprine" not in shown.lower(), (f.rule, shown)
        for wrong in ("Tpmt", "Nudt15", "bilirubin_total", "bilirubin_direct"):
            assert wrong not in shown, (f.rule, wrong)
        for reference in f.references:
            for file_like in ("CLINICAL", "shared/", ".md"):
                assert file_like not in reference, reference


def test_references_cite_published_sources() -> None:
    cited = " ".join(r for f in _every_finding("azathioprine", SETTINGS) for r in f.references)
    for source in ("Aithal GP et al.", "Clin Pharmacol Ther 2011", "FDA Guidance for Industry",
                   "CPIC guideline", "Dr.Oracle Medical Advisory Board, 2025 (the seed guidance)",
                   "J Pharm Technol 2014", "BSR and BHPR guideline"):
        assert source in cited, source


def test_genes_in_capitals() -> None:
    (finding,) = evaluate(context(order()), [coded(A.TPMT, "Poor metabolizer"), coded(A.NUDT15, "*1/*3")], SETTINGS)
    assert finding.title == "TPMT poor metabolizer, NUDT15 intermediate metabolizer on azathioprine"


@pytest.mark.parametrize(("tpmt", "nudt15", "dose"), [
    ("*1/*3A", "*1/*1", "start azathioprine at 30-80% of the normal dose"),
    ("*1/*1", "*1/*3", "start azathioprine at 30-80% of the normal dose"),
    ("*1/*3A", "*1/*3", "start azathioprine at 20-50% of the normal dose"),
    ("*3A/*3A", "*1/*3", "avoid azathioprine or drastically reduce the dose"),
], ids=["tpmt-im", "nudt15-im", "both-im", "poor"])
def test_cpic_dosing(tpmt: str, nudt15: str, dose: str) -> None:
    (finding,) = evaluate(context(order()), [coded(A.TPMT, tpmt), coded(A.NUDT15, nudt15)], SETTINGS)
    assert dose in finding.recommendations[0]


def test_febuxostat_is_contraindicated_not_a_dose_reduction() -> None:
    new = order(order_id="RX9", start=T0)
    febuxostat = order(order_id="FX1", ingredient="febuxostat", start=T0 - D)
    (finding,) = evaluate_orders(context(febuxostat, new, history=(coded(A.TPMT, "*1/*1"), coded(A.NUDT15, "*1/*1"))),
                                 [new], SETTINGS)
    text = " ".join((finding.summary, *finding.recommendations))
    assert "contraindicated" in finding.recommendations[0]
    for dose_advice in ("1/3", "Reduce", "reduce"):
        assert dose_advice not in text
    assert any("Febuxostat" in r and "contraindicated" in r for r in finding.references)


@pytest.mark.parametrize(("neutrophils", "sepsis"), [(0.99, True), (1.0, False), (1.5, False)], ids=str)
def test_neutropenic_sepsis_line_below_1_0(neutrophils: float, sepsis: bool) -> None:
    (finding,) = evaluate(context(order()), [obs(A.NEUTROPHILS, neutrophils)], SETTINGS)
    assert ("neutropenic sepsis" in finding.recommendations[0]) is sepsis
    platelets = evaluate(context(order()), [obs(A.PLATELETS, 40)], SETTINGS)[0]
    assert not any("sepsis" in r for r in platelets.recommendations)


def test_values_on_the_panel_are_stated_not_asked_for() -> None:
    with_them = evaluate(context(order()), [obs(A.ALT, 200, ref="7-56"), obs(A.ALBUMIN, 3.9, ref="3.5-5.0"),
                                            obs(A.INR, 1.0)], SETTINGS)[0]
    assert "On this panel: albumin 3.9 g/dL, INR 1" in with_them.recommendations
    assert "Check albumin and PT/INR" not in with_them.recommendations
    half = evaluate(context(order()), [obs(A.ALT, 200, ref="7-56"), obs(A.ALBUMIN, 3.9, ref="3.5-5.0")], SETTINGS)[0]
    assert "On this panel: albumin 3.9 g/dL; check PT/INR" in half.recommendations
    without = evaluate(context(order()), [obs(A.ALT, 200, ref="7-56")], SETTINGS)[0]
    assert "Check albumin and PT/INR" in without.recommendations
    hys = evaluate(context(order()), [obs(A.ALT, 200, ref="7-56"), obs(A.BILI_TOTAL, 3.0, ref="0.1-1.2"),
                                      obs(A.INR, 2.2)], SETTINGS)[0]
    assert hys.title == "Hy's law on azathioprine: ALT 3.57 × ULN, total bilirubin 2.5 × ULN"
    assert any(r.startswith("INR 2.2 on this panel") for r in hys.recommendations)
    assert not any(r.startswith("Check INR") for r in hys.recommendations)


def test_low_alp_page_answers_albumin_and_pt_it_carries() -> None:
    stopped = context(order(start=T0 - 60 * D, stop=T0 - 14 * D), alerts=(past("aza.hepatotoxicity.stop", T0 - 15 * D),))
    (finding,) = evaluate(stopped, [obs(A.ALP, 39, ref="42-141"), obs(A.ALBUMIN, 4.1, ref="3.5-5.0"),
                                    obs(A.INR, 1.0, ref="0.8-1.2")], SETTINGS)
    assert "Confirm that albumin and prothrombin time are normal" not in finding.recommendations
    assert ("Albumin and prothrombin time on this panel: albumin 4.1 g/dL (within range), "
            "INR 1 (within range)") in finding.recommendations


@pytest.mark.parametrize(("panel", "pattern"), [
    ([obs(A.GGT, 60, ref="9-48"), obs(A.ALT, 40, ref="7-56"), obs(A.ALP, 100, ref="42-141")], None),
    ([obs(A.BILI_TOTAL, 3.0, ref="0.1-1.2"), obs(A.ALT, 40, ref="7-56"), obs(A.ALP, 100, ref="42-141")], None),
    ([obs(A.ALT, 300, ref="7-56"), obs(A.ALP, 100, ref="42-141")], "hepatocellular"),
    ([obs(A.ALT, 40, ref="7-56"), obs(A.ALP, 150, ref="42-141")], "cholestatic"),
], ids=["ggt-only", "bilirubin-only", "alt-above", "alp-above"])
def test_a_pattern_only_with_alt_or_alp_above_uln(panel: list, pattern: str | None) -> None:
    (finding,) = evaluate(context(order()), panel, SETTINGS)
    assert (finding.pattern.type if finding.pattern else None) == pattern


def test_boundary_figures_shown_are_the_figures_compared() -> None:
    """Decision 17 (item 4): a warning never says "(3.0 × ULN)"."""
    (mild,) = evaluate(context(order()), [obs(A.ALT, 3.28, unit="ukat/L", ref="0.1-1.1")], SETTINGS)
    assert mild.rule == "aza.liver.mild"
    assert "2.98 × ULN" in mild.summary
    (stop,) = evaluate(context(order()), [obs(A.ALT, 3.3, unit="ukat/L", ref="0.1-1.1")], SETTINGS)
    assert stop.title == "Azathioprine hepatotoxicity: ALT 3.0 × ULN"
    assert stop.evidence[0].x_uln == 3.0


@pytest.mark.parametrize(("drug", "allopurinol_line"), [("azathioprine", True), ("mercaptopurine", True),
                                                         ("thioguanine", False)])
def test_low_alp_advice_on_allopurinol_only_for_drugs_xanthine_oxidase_breaks_down(
    drug: str, allopurinol_line: bool
) -> None:
    settings = RuleSettings(thiopurines=frozenset({"azathioprine", "mercaptopurine", "thioguanine"}))
    stopped = context(order(ingredient=drug, start=T0 - 60 * D, stop=T0 - 14 * D),
                      alerts=(past("aza.hepatotoxicity.stop", T0 - 15 * D),))
    (finding,) = evaluate(stopped, [obs(A.ALP, 39, ref="42-141")], settings)
    assert any("allopurinol" in r for r in finding.recommendations) is allopurinol_line
    assert len(finding.recommendations) == (16 if allopurinol_line else 15)
