"""Clinical rules: pure functions from (patient context, new results, time) to findings.

One module per clinical area; `engine.evaluate` is the one entry point. No
I/O, no globals, no wall clock: every rule is tested with a table of cases.
"""

from hl7_alerts.rules.engine import Finding, RuleSettings, evaluate

__all__ = ["Finding", "RuleSettings", "evaluate"]
