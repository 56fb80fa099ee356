"""The whole configuration, checks across its sections, and the settings
each stage takes (`settings.py` values), so no stage reads the config
itself and validating a file loads no stage."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from pydantic import PrivateAttr

from hl7_alerts.alerts import PhiPolicy
from hl7_alerts.config.sections import (
    AlertsConfig,
    HealthConfig,
    Hl7Config,
    LoggingConfig,
    MetricsConfig,
    MllpConfig,
    MqttConfig,
    OrdersConfig,
    PatientConfig,
    RetentionConfig,
    RulesConfig,
    Section,
    StoreConfig,
    TerminologyConfig,
    WebConfig,
)
from hl7_alerts.messages import ParseOptions
from hl7_alerts.rules.common import DEFAULT_RANGES, DefaultRange, RuleSettings
from hl7_alerts.settings import MqttSettings, MqttTlsSettings, PipelineSettings, StoreSettings
from hl7_alerts.terminology import Terminology


class Config(Section):
    mllp: MllpConfig = MllpConfig()
    store: StoreConfig = StoreConfig()
    mqtt: MqttConfig = MqttConfig()
    hl7: Hl7Config = Hl7Config()
    patient: PatientConfig = PatientConfig()
    orders: OrdersConfig = OrdersConfig()
    terminology: TerminologyConfig = TerminologyConfig()
    rules: RulesConfig = RulesConfig()
    alerts: AlertsConfig = AlertsConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    health: HealthConfig = HealthConfig()
    retention: RetentionConfig = RetentionConfig()
    web: WebConfig = WebConfig()

    # Set by the loader: what the file says that still works but should
    # change (a renamed key), each naming file, line and the new key.
    _warnings: tuple[str, ...] = PrivateAttr(default=())

    @property
    def warnings(self) -> tuple[str, ...]:
        return self._warnings

    def cross_check(self) -> list[tuple[tuple[str, ...], tuple[str, ...], str]]:
        """Problems between sections, as (key, the other key involved, message)."""
        problems: list[tuple[tuple[str, ...], tuple[str, ...], str]] = []
        if self.retention.days < self.rules.history_days:
            problems.append(
                (
                    ("retention", "days"),
                    ("rules", "history_days"),
                    f"must be at least rules.history_days ({self.rules.history_days}): "
                    "the rules read that much history",
                )
            )
        if self.store.dsn is not None and self.store.lease_seconds <= self.mqtt.publish_timeout_seconds:
            problems.append(
                (
                    ("store", "lease_seconds"),
                    ("mqtt", "publish_timeout_seconds"),
                    f"must be longer than mqtt.publish_timeout_seconds "
                    f"({self.mqtt.publish_timeout_seconds}): a claim must outlive the wait for a PUBACK",
                )
            )
        return problems

    # -- what each stage takes ------------------------------------------------

    def terminology_tables(self) -> Terminology:
        return Terminology(
            local_lab_codes={k.upper(): v for k, v in self.terminology.lab_codes.items()},
            drug_codes=dict(self.terminology.drug_codes),
            thiopurines=frozenset(self.terminology.thiopurines),
        )

    def parse_options(self) -> ParseOptions:
        return ParseOptions(
            terminology=self.terminology_tables(),
            timezone=ZoneInfo(self.hl7.timezone),
            fallback_charset=self.hl7.fallback_charset,
            patient_id_types=self.patient.id_types,
            patient_authority=self.patient.authority,
            accept_untyped_ids=self.patient.untyped_ids == "accept",
            accepted_versions=self.hl7.versions,
            accepted_processing_ids=tuple(p.upper() for p in self.hl7.processing_ids),
        )

    def rule_settings(self) -> RuleSettings:
        ranges = dict(DEFAULT_RANGES)
        for analyte, rc in self.rules.ranges.items():
            by_sex = {k: v for k, v in (("F", rc.female), ("M", rc.male)) if v is not None}
            ranges[analyte] = DefaultRange(low=rc.low, high=rc.high, by_sex=by_sex)
        r = self.rules
        return RuleSettings(
            thiopurines=frozenset(str(t) for t in self.terminology.thiopurines),
            hepatotoxicity_x_uln=r.hepatotoxicity_x_uln,
            hys_law_bilirubin_x_uln=r.hys_law_bilirubin_x_uln,
            hys_law_window_hours=r.hys_law_window_hours,
            cholestasis_alp_x_uln=r.cholestasis_alp_x_uln,
            bilirubin_x_uln=r.bilirubin_x_uln,
            rechallenge_days=r.rechallenge_days,
            dose_change_hours=r.dose_change_hours,
            post_stop_days=r.post_stop_days,
            exposure_days=r.exposure_days,
            follow_up_days=r.follow_up_days,
            late_order_days=r.late_order_days,
            long_running_days=r.long_running_days,
            synthetic_inr_above=r.synthetic_inr_above,
            wbc_below=r.wbc_below,
            neutrophils_below=r.neutrophils_below,
            platelets_below=r.platelets_below,
            neutrophils_critical_below=r.neutrophils_critical_below,
            platelets_critical_below=r.platelets_critical_below,
            tpmt_activity_poor_below=r.tpmt_activity_poor_below,
            tpmt_activity_intermediate_below=r.tpmt_activity_intermediate_below,
            xanthine_oxidase_inhibitors={str(k): v for k, v in r.interacting_drugs.items()},
            default_ranges=ranges,
        )

    def pipeline_settings(self) -> PipelineSettings:
        return PipelineSettings(
            rules=self.rule_settings(),
            topic_prefix=self.mqtt.topic_prefix,
            phi=PhiPolicy(
                include_name=self.alerts.phi.include_name,
                include_birth_date=self.alerts.phi.include_birth_date,
            ),
            history_days=self.rules.history_days,
            monitoring=self.rules.monitoring.settings(),
            view_base_url=self.web.base_url,
            dispense_lapse=timedelta(days=self.orders.dispense_lapse_days),
        )

    def mqtt_settings(self) -> MqttSettings:
        m = self.mqtt
        return MqttSettings(
            host=m.host,
            port=m.port,
            topic_prefix=m.topic_prefix,
            client_id=m.client_id,
            username=m.username,
            password=m.password,
            keepalive=m.keepalive_seconds,
            reconnect_max=m.reconnect_max_seconds,
            publish_timeout=m.publish_timeout_seconds,
            session_expiry=m.session_expiry_seconds,
            message_expiry=m.message_expiry_seconds,
            max_inflight=m.max_inflight,
            several_daemons=self.store.dsn is not None,
            shared_acks=m.shared_acks,
            tls=None if m.tls is None else MqttTlsSettings(
                ca_file=m.tls.ca_file,
                cert_file=m.tls.cert_file,
                key_file=m.tls.key_file,
                check_hostname=m.tls.check_hostname,
            ),
        )

    def store_settings(self) -> StoreSettings:
        return StoreSettings(
            path=self.store.path,
            dsn=self.store.dsn,
            # The MQTT client id is unique per daemon (the broker insists): it
            # names this daemon's outbox claims too.
            owner=self.mqtt.client_id,
            lease_seconds=self.store.lease_seconds,
            writers=self.store.writers,
        )
