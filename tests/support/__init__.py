"""What the tests and the benchmark share, one module per job.

Test files import from here, never from each other or from conftest (which
holds fixtures only). Nothing here is a fixture, and this file imports
nothing, so ``bench`` can take the PostgreSQL server without loading MQTT.

- ``waiting``: ``WAIT`` and ``eventually`` (its blocking twin
  ``eventually_sync``): every wait is on a condition with a deadline.
- ``clock``: ``FakeClock``, the one clock a test moves by hand.
- ``ports``: ``port_open``; ``refused_port``, a port held where nothing
  answers; ``free_port`` only for servers that cannot bind port 0 and tell
  us what they got (Mosquitto, PostgreSQL).
- ``broker``: ``Broker``, a Mosquitto the test starts, stops and restarts.
- ``pgserver``: ``PgServer``, a throwaway PostgreSQL (the benchmark's too).
- ``daemon``: the daemon in the test's event loop (``make_config``,
  ``running``), or as an ``hl7-alerts serve`` process on port 0 that reads
  its ports from the daemon's log (``serve``, ``write_config``);
  ``NO_MONITORING``, the rules section without monitoring.
- ``mllp``: ``AsyncMllpClient``, ``send_all`` and ``ack_fields``.
- ``mqtt``: ``recording`` (an ``MqttRecorder``), the alert JSON Schema check,
  and ``pager_ack``, a pager's acknowledgement payload.
- ``backends``: ``Backend``, SQLite or PostgreSQL for one test.
- ``samples``: the sample files (``SAMPLES``, ``SEED_STORY``, ``sample_messages``).
- ``hl7kit``, ``rulekit``: builders for synthetic messages and rule inputs.
- ``certs``: a throwaway CA and certificates for the TLS tests.
"""
