"""What alerts recommend and cite: the texts a clinician reads, in one place.

Pure, no logic beyond filling in the ordered drug. References name published
sources (Aithal 2011, CPIC, FDA 2009, the seed guidance), never a file of
this repository (CLINICAL.md decision 19); `docs/clinical.md` lists them with
the thresholds they back.
"""

from __future__ import annotations

from hl7_alerts.terminology import XANTHINE_OXIDASE_SUBSTRATES

SEED = (
    "Management of low ALP after stopping azathioprine due to elevated liver enzymes. "
    "Dr.Oracle Medical Advisory Board, 2025 (the seed guidance)"
)
AITHAL_2011 = (
    "Aithal GP et al. Case definition and phenotype standardization in drug-induced liver injury "
    "(International DILI Expert Working Group). Clin Pharmacol Ther 2011;89:806-15"
)
FDA_2009 = (
    "FDA Guidance for Industry. Drug-Induced Liver Injury: Premarketing Clinical Evaluation, 2009 (Hy's law)"
)
CPIC = (
    "Relling MV et al. CPIC guideline for thiopurine dosing based on TPMT and NUDT15 genotypes: "
    "2018 update. Clin Pharmacol Ther 2019;105:1095-105"
)
RECHALLENGE_CASE = (
    "Azathioprine-induced rapid hepatotoxicity. J Pharm Technol 2014 (cited by the seed guidance)"
)
SHARED_CARE = (
    "Ledingham J et al. BSR and BHPR guideline for the prescription and monitoring of non-biologic "
    "disease-modifying anti-rheumatic drugs. Rheumatology 2017;56:865-8 (WBC < 3.5, neutrophils < 1.6, "
    "platelets < 140 x10^9/L)"
)
FEBUXOSTAT_LABEL = (
    "Febuxostat (Uloric) prescribing information: contraindicated in patients treated with "
    "azathioprine or mercaptopurine"
)

# The seed's own answer to its question (a low ALP after stopping azathioprine
# for raised enzymes): every recommendation it lists, in its order. The
# albumin/PT line is replaced by the values when the panel carries them, and
# the drug is the one ordered (`low_alp_actions`).
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
_CONFIRM_SYNTHETIC = LOW_ALP_ACTIONS[3]
_ALLOPURINOL = LOW_ALP_ACTIONS[9]


def named(text: str, drug: str) -> str:
    """``text`` about azathioprine, said of the ordered ``drug`` (never
    "azathioprine" for mercaptopurine)."""
    if drug == "azathioprine":
        return text
    return text.replace("Azathioprine", drug.capitalize()).replace("azathioprine", drug)


def low_alp_actions(drug: str, shown: str | None) -> tuple[str, ...]:
    """The seed's recommendations for ``drug``; ``shown``, when the panel
    carries albumin and PT/INR, replaces the line asking to confirm them.
    The allopurinol co-therapy line is left out for a thiopurine that
    xanthine oxidase does not break down (thioguanine): its dose advice would
    be wrong."""
    return tuple(
        shown if line == _CONFIRM_SYNTHETIC and shown is not None else named(line, drug)
        for line in LOW_ALP_ACTIONS
        if line != _ALLOPURINOL or drug in XANTHINE_OXIDASE_SUBSTRATES
    )


NORMALIZED_ACTIONS = (
    "Liver enzymes have normalized after stopping azathioprine",
    "If reintroducing: start at 1/3 to 1/4 of the previous dose",
    "Check LFTs weekly in month 1, twice monthly in months 2-3, monthly after",
    "Consider TPMT and NUDT15 testing if not previously done",
)
REPEAT_PANEL = "Repeat ALT, AST, ALP, GGT, total and direct bilirubin"
SYMPTOMS = "Assess for jaundice, right upper quadrant pain, fatigue, nausea"
OTHER_CAUSES = "Exclude viral hepatitis, alcohol and other hepatotoxic drugs"
MILD_ACTIONS = (
    "Don't ignore mild persistent elevations of liver enzymes",
    "Recheck liver enzymes in 1 week",
    "Exclude other causes (viral hepatitis, alcohol use, other medications)",
)
SYNTHETIC_ACTIONS = (
    "Synthetic liver dysfunction: urgent clinical review",
    "Repeat albumin, PT/INR and bilirubin",
    "Assess for jaundice, encephalopathy and bleeding",
)
