"""Clinical rules: pure functions from (patient context, new results, time) to findings.

One module per clinical area (`liver`, `marrow`, `pharmacogenomics`,
`interactions`, `monitoring`), shared helpers and `RuleSettings` in `common`,
rule ids in `ids`. Production enters through `engine`: `engine.assess` for the
new results of a message (findings plus the per-panel verdicts that resolve
alerts) and `engine.evaluate_orders` for the orders a message started;
`engine.evaluate` is `assess` without the verdicts, for tests and tools. The
overdue-monitoring schedule (`monitoring.next_due`) is driven by the
pipeline's overdue unit of work instead. No I/O, no globals, no wall clock:
every rule is tested with a table of cases. This package imports nothing, so
importing one rule module never loads the others.
"""
