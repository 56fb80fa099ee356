"""``hl7-alerts web``: the clinicians' view of alerts, a process of its own.

A pager shows one line; the page behind it shows the alert's events, its
evidence and recommendations, and the patient's liver-enzyme trend, so the
clinician woken at 3 a.m. sees whether it is rising or falling and what was
done about the drug. It runs beside ``serve``, never inside it (a slow
browser must never delay an ACK), reads the same store through read-only
connections, and writes no clinical data: its own users, sessions and
access audit, and acknowledgements through the pagers' path.

`app.py` is the application (the gate every request passes, security
headers, the store handles), `views.py` the pages and JSON API, `auth.py`
passwords, sessions and proxy sign-on, `trend.py` the chart's numbers and
`charts.py` the SVG, `server.py` running it under uvicorn.
"""
