"""What the tests and the benchmark share, one module per job.

Test files import from here, never from each other or from conftest (which
holds fixtures only). Nothing here is a fixture, and this file imports
nothing, so ``bench`` can take the PostgreSQL server without loading MQTT.

- ``ports``: ``port_open``, and ``free_port`` for the few servers that
  cannot bind port 0 and tell us what they got.
- ``pgserver``: ``PgServer``, a throwaway PostgreSQL (the benchmark's too).
- ``hl7kit``, ``rulekit``: builders for synthetic messages and rule inputs.
- ``certs``: a throwaway CA and certificates for the TLS tests.
"""
