"""The one entry point: run every rule over every new panel.

Results are grouped into panels (specimen + observation time); each rule sees
one panel and the patient context, and returns at most one finding for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hl7_alerts.model import Observation, PatientContext
from hl7_alerts.rules import liver
from hl7_alerts.rules.common import Finding, Panel, RuleSettings, panels

Rule = Callable[[PatientContext, Panel, RuleSettings], Finding | None]

PANEL_RULES: tuple[Rule, ...] = (liver.hepatotoxicity_stop,)

__all__ = ["PANEL_RULES", "Finding", "RuleSettings", "evaluate"]


def evaluate(ctx: PatientContext, new: Sequence[Observation], settings: RuleSettings) -> list[Finding]:
    """Findings for the new results of one message, in observation-time order."""
    findings: list[Finding] = []
    for panel in panels(new):
        for rule in PANEL_RULES:
            finding = rule(ctx, panel, settings)
            if finding is not None:
                findings.append(finding)
    return findings
