"""Rule ids: a public contract (pagers route on them), in one place."""

from __future__ import annotations

HEPATOTOXICITY_STOP = "aza.hepatotoxicity.stop"
HYS_LAW = "aza.hys_law"
CHOLESTASIS = "aza.cholestasis"
LIVER_MILD = "aza.liver.mild"
RECHALLENGE_RECURRENCE = "aza.rechallenge.recurrence"
SYNTHETIC_FUNCTION = "aza.synthetic_function"
POST_STOP_LOW_ALP = "aza.post_stop.low_alp"
POST_STOP_NORMALIZED = "aza.post_stop.normalized"
MYELOSUPPRESSION = "aza.myelosuppression"
PGX_POOR_METABOLIZER = "aza.pgx.poor_metabolizer"
PGX_MISSING = "aza.pgx.missing"
INTERACTION_ALLOPURINOL = "aza.interaction.allopurinol"
HYPERBILIRUBINEMIA = "aza.hyperbilirubinemia"
RESULT_UNSCORED = "aza.result.unscored"
MONITORING_OVERDUE = "aza.monitoring.overdue"

LIVER_RULES = frozenset(
    {HEPATOTOXICITY_STOP, HYS_LAW, CHOLESTASIS, HYPERBILIRUBINEMIA, LIVER_MILD, RECHALLENGE_RECURRENCE}
)
"""CLINICAL.md's "liver alert"."""
MARROW_RULES = frozenset({MYELOSUPPRESSION})
RECHALLENGE_CAUSES = frozenset({HEPATOTOXICITY_STOP, HYS_LAW, CHOLESTASIS})
"""Alerts that make a later order a rechallenge when the drug stopped after them
(decision 10: not liver.mild)."""

ALL_RULES = frozenset(
    {
        HEPATOTOXICITY_STOP,
        HYS_LAW,
        CHOLESTASIS,
        HYPERBILIRUBINEMIA,
        LIVER_MILD,
        RECHALLENGE_RECURRENCE,
        SYNTHETIC_FUNCTION,
        POST_STOP_LOW_ALP,
        POST_STOP_NORMALIZED,
        MYELOSUPPRESSION,
        PGX_POOR_METABOLIZER,
        PGX_MISSING,
        INTERACTION_ALLOPURINOL,
        MONITORING_OVERDUE,
        RESULT_UNSCORED,
    }
)
"""Every rule id the daemon publishes (the alert schema lists them)."""
