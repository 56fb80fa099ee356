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

LIVER_RULES = frozenset({HEPATOTOXICITY_STOP, HYS_LAW, CHOLESTASIS, LIVER_MILD, RECHALLENGE_RECURRENCE})
MONITORING_OVERDUE = "aza.monitoring.overdue"
