"""The settings values the stages take: the pipeline, the publisher, the store.

`config.py` builds them from config.yaml; the stages take them and never the
`Config`, so a stage can be built and tested without a config file, and the
config's validation never loads a stage. The rule it keeps: frozen values
that import only pure modules (no pydantic, asyncio, ssl, sockets or store).
What turns a setting into a live object (an SSL context, a connection) lives
with the stage that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from hl7_alerts.alerts import PhiPolicy
from hl7_alerts.rules.common import RuleSettings
from hl7_alerts.rules.monitoring import MonitoringSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineSettings:
    """What the units of work need: rules, topics, PHI policy, history, the
    monitoring schedule. A reload swaps the whole value at once."""

    rules: RuleSettings = field(default_factory=RuleSettings)
    topic_prefix: str = "hl7alerts"
    phi: PhiPolicy = field(default_factory=PhiPolicy)
    history_days: int = 400
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    # Why alert events are not published, when they are not (`hl7-alerts
    # replay --quiet`): each is stored and audited with this reason, never
    # queued for MQTT nor reminded about. Empty: publish (the daemon).
    quiet: str = ""
    # web.base_url: when set, every alert event links to the alert's page.
    view_base_url: str | None = None
    # An order opened by dispenses lapses this long after its last one (decision 14).
    dispense_lapse: timedelta = timedelta(days=90)


# Daemons sharing a store share the pagers' acks: each ack goes to one of
# them, and is recorded once whichever it is.
ACK_SHARE_GROUP = "hl7-alerts"


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttTlsSettings:
    """TLS to the broker: a CA to verify it (None: the system's trust store),
    and a client certificate if it asks for one."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    """The publisher's broker session, window and timings."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "hl7alerts"
    client_id: str = "hl7-alerts"
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    publish_timeout: float = 10.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    batch: int = 100
    session_expiry: int = 3600
    message_expiry: int | None = 86400
    max_inflight: int = 20
    tls: MqttTlsSettings | None = None
    # Rows written by another process (``hl7-alerts alerts ack``, another
    # daemon on the same PostgreSQL) raise no in-process signal; the outbox
    # is looked at again after this long idle.
    outbox_recheck: float = 5.0
    # Several daemons share the store (PostgreSQL): each pager ack goes to
    # one of them (an MQTT v5 shared subscription), and each keeps its own
    # retained status, so one daemon's last will does not say "offline"
    # for a site whose other daemon is serving.
    several_daemons: bool = False
    # ... and of those, whether the acks subscription is shared (each ack to
    # one daemon) or plain (every daemon reads every ack; recorded once).
    shared_acks: bool = True
    # Stopping with a shared acks subscription: after leaving the group, acks
    # already routed to us are handled until none came for ``acks_quiet``
    # seconds (at most ``acks_settle_max``).
    acks_quiet: float = 0.5
    acks_settle_max: float = 10.0

    @property
    def status_topic(self) -> str:
        if self.several_daemons:
            return f"{self.topic_prefix}/status/{self.client_id}"
        return f"{self.topic_prefix}/status"

    @property
    def acks_topic(self) -> str:
        return f"{self.topic_prefix}/acks"

    @property
    def acks_subscription(self) -> str:
        if not (self.several_daemons and self.shared_acks):
            return self.acks_topic
        return f"$share/{ACK_SHARE_GROUP}/{self.acks_topic}"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSettings:
    """Which store `store.open_store` opens: SQLite at ``path`` (one daemon),
    unless ``dsn`` names a PostgreSQL database (several daemons may share it)."""

    path: Path = Path("data/hl7-alerts.sqlite3")
    dsn: str | None = None
    # PostgreSQL: names this daemon's outbox claims; the MQTT client id, which
    # the broker already insists is unique per daemon.
    owner: str = "hl7-alerts"
    # PostgreSQL: how long a claim on outbox rows lasts unrenewed.
    lease_seconds: float = 30.0
    # PostgreSQL: connections writing for this daemon. SQLite: one.
    writers: int = 2
