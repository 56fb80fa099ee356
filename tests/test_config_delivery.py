"""Config keys of delivery and the alert lifecycle: reminders, MQTT session,
TLS; defaults, durations, and errors that name the key and line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from hl7_alerts.config import ConfigError, parse_config
from hl7_alerts.model import Severity


def test_defaults() -> None:
    config = parse_config("")
    assert config.alerts.reminder_after == timedelta(minutes=15)
    policy = config.alerts.reminder_policy()
    assert (policy.after_seconds, policy.max_reminders) == (900, 3)
    assert policy.severities == {Severity.CRITICAL, Severity.HIGH}
    assert (config.alerts.phi.include_name, config.alerts.phi.include_birth_date) == (False, False)
    mqtt = config.mqtt
    assert (mqtt.session_expiry_seconds, mqtt.message_expiry_seconds, mqtt.max_inflight, mqtt.tls) == (
        3600, 86400, 20, None)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("15m", 900, id="minutes"),
        pytest.param("90s", 90, id="seconds"),
        pytest.param("1h", 3600, id="hours"),
        pytest.param("0.5h", 1800, id="fraction"),
        pytest.param("2d", 172800, id="days"),
        pytest.param("600", 600, id="bare-number-string"),
        pytest.param(600, 600, id="number"),
    ],
)
def test_reminder_after_reads_durations(text: str | int, seconds: int) -> None:
    config = parse_config(f"alerts:\n  reminder_after: {text}\n")
    assert config.alerts.reminder_after.total_seconds() == seconds


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        pytest.param("alerts:\n  reminder_after: soon\n", "x.yaml:2: alerts.reminder_after:", id="bad-duration"),
        pytest.param("alerts:\n  reminder_after: 0\n", "x.yaml:2: alerts.reminder_after:", id="zero"),
        pytest.param("alerts:\n  reminder_max: -1\n", "x.yaml:2: alerts.reminder_max:", id="negative-max"),
        pytest.param("alerts:\n  reminder_severities: [urgent]\n", "x.yaml:2: alerts.reminder_severities.0:",
                     id="unknown-severity"),
        pytest.param("mqtt:\n  max_inflight: 0\n", "x.yaml:2: mqtt.max_inflight:", id="no-window"),
        pytest.param("mqtt:\n  tls:\n    ca: x\n", "x.yaml:3: mqtt.tls.ca: unknown key", id="tls-typo"),
    ],
)
def test_errors_name_the_key_and_line(yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(yaml_text, source="x.yaml")


def test_tls_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    text = "mqtt:\n  tls:\n    ca_file: certs/ca.crt\n    cert_file: /etc/ssl/client.crt\n"
    tls = parse_config(text, base_dir=tmp_path).mqtt.tls
    assert tls is not None
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (tmp_path / "certs/ca.crt", Path("/etc/ssl/client.crt"), None)


def test_the_shipped_config_yaml_is_the_defaults() -> None:
    shipped = parse_config((Path(__file__).resolve().parent.parent / "config.yaml").read_text())
    defaults = parse_config("")
    assert shipped.alerts == defaults.alerts
    assert shipped.mqtt == defaults.mqtt
