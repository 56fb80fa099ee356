"""Throughput and latency benchmark: the daemon (on SQLite, on PostgreSQL,
and as two daemons sharing one PostgreSQL database) against two reference
MLLP servers (python-hl7, and a bare asyncio server that answers a fixed ACK).

Run it with ``.venv/bin/python -m bench.run --quick`` (see the README's
Performance section). Not part of the test suite: nothing here is timed by
pytest, except a smoke test that the generator and the quick path work.
"""
