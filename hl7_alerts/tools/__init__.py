"""Developer tools run with ``python -m hl7_alerts.tools.<name>``; not part
of the daemon."""
