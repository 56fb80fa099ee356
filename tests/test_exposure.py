"""Every network exposure is said before the daemon runs (issue 18 item 9):
`config check` warns and `serve` logs at start for MLLP beyond loopback with
neither TLS nor an allowlist, MQTT or PostgreSQL over a network without TLS,
metrics beyond loopback, and pager acks nobody signs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hl7_alerts.cli import main
from hl7_alerts.config import Config
from hl7_alerts.config.exposure import exposures, is_loopback
from tests.support.broker import Broker
from tests.support.daemon import serve, write_config

ACKS = "mqtt.acks.hmac_key_file"


def keys(data: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    """The keys warned about, without the (always present) unsigned-acks one."""
    return [e.key for e in exposures(Config.model_validate(data), environ or {}) if e.key != ACKS]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.53", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("", False), ("10.1.2.3", False), ("broker.example", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param({}, [], id="defaults"),
        pytest.param({"mllp": {"host": "0.0.0.0"}}, ["mllp.host"], id="mllp-everywhere-open"),
        pytest.param({"mllp": {"host": ""}}, ["mllp.host"], id="mllp-empty-host"),
        pytest.param({"mllp": {"host": "0.0.0.0", "allow": ["10.20.0.0/16"]}}, [], id="mllp-allowlist"),
        pytest.param({"mllp": {"host": "0.0.0.0", "tls": {"cert_file": "s.crt", "key_file": "s.key"}}}, [], id="mllp-tls"),
        pytest.param({"mllp": {"host": "0.0.0.0", "allow": ["0.0.0.0/0"]}}, ["mllp.allow", "mllp.host"],
                     id="mllp-allowlist-of-everyone"),
        pytest.param({"mqtt": {"host": "broker.example"}}, ["mqtt.host"], id="mqtt-remote-plain"),
        pytest.param({"mqtt": {"host": "broker.example", "tls": {}}}, [], id="mqtt-remote-tls"),
        pytest.param({"store": {"dsn": "postgresql://u@db1.example/h"}}, ["store.dsn"], id="pg-no-sslmode"),
        pytest.param({"store": {"dsn": "postgresql://u@db1.example/h?sslmode=prefer"}}, ["store.dsn"],
                     id="pg-prefer"),
        pytest.param({"store": {"dsn": "postgresql://u@db1.example/h?sslmode=verify-full"}}, [], id="pg-tls"),
        pytest.param({"store": {"dsn": "postgresql://u@localhost/h"}}, [], id="pg-loopback"),
        pytest.param({"store": {"dsn": "postgresql://u@/h?host=/var/run/postgresql"}}, [], id="pg-socket"),
        pytest.param({"store": {"dsn": "postgresql://u@/h"}}, [], id="pg-default-socket"),
        pytest.param({"store": {"dsn": "postgresql://u@db1.example,db2.example/h?sslmode=require"}}, [],
                     id="pg-two-hosts-tls"),
        pytest.param({"metrics": {"host": "0.0.0.0"}}, ["metrics.host"], id="metrics-everywhere"),
        pytest.param({"metrics": {"host": "0.0.0.0", "enabled": False}}, [], id="metrics-off"),
        pytest.param({"web": {"host": "0.0.0.0"}}, ["web.host"], id="web-everywhere-plain"),
        pytest.param({"web": {"host": "127.0.0.1"}}, [], id="web-loopback"),
        pytest.param({"web": {"host": "0.0.0.0", "tls": {"cert_file": "w.crt", "key_file": "w.key"}}}, [],
                     id="web-tls"),
    ],
)
def test_exposures(data: dict[str, Any], expected: list[str]) -> None:
    assert keys(data) == expected


def test_pgsslmode_from_the_environment_counts() -> None:
    dsn = {"store": {"dsn": "postgresql://u@db1.example/h"}}
    assert keys(dsn, {"PGSSLMODE": "verify-full"}) == []
    assert keys(dsn, {"PGSSLMODE": "disable"}) == ["store.dsn"]


def test_a_remote_broker_with_a_password_says_the_password_goes_in_the_clear() -> None:
    found = exposures(Config.model_validate({"mqtt": {"host": "10.9.8.7", "password": "s3cret"}}), {})
    mqtt = next(e for e in found if e.key == "mqtt.host")
    assert "mqtt.password is sent in the clear" in mqtt.warning
    assert "s3cret" not in str(found)


def test_unsigned_acks_and_a_key_file_others_can_read(tmp_path: Path) -> None:
    [unsigned] = exposures(Config(), {})
    assert unsigned.key == ACKS
    assert "make sure the broker restricts who may publish on hl7alerts/acks" in unsigned.warning
    key = tmp_path / "acks.key"
    key.write_text("k" * 40)
    key.chmod(0o640)
    signed = Config.model_validate({"mqtt": {"acks": {"hmac_key_file": str(key)}}})
    assert exposures(signed, {}) == []
    key.chmod(0o644)
    [readable] = exposures(signed, {})
    assert (readable.key, "mode 0644" in readable.warning) == (ACKS, True)


def test_config_check_warns_but_the_file_is_valid(tmp_path: Path) -> None:
    """The probe of issue 18: MLLP on 0.0.0.0 with no allowlist and no TLS,
    and a remote broker with a password and no TLS, were accepted without a word."""
    site = tmp_path / "site.yaml"
    site.write_text("mllp:\n  host: 0.0.0.0\nmqtt:\n  host: 10.9.8.7\n  username: hl7\n  password: s3cret\n")
    result = CliRunner().invoke(main, ["config", "check", str(site)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"ok: {site}")
    warnings = result.stderr.splitlines()
    assert [w.split(":", 2)[1].strip() for w in warnings] == ["mllp.host", "mqtt.host", ACKS]
    assert all(w.startswith("warning: ") for w in warnings)
    assert "s3cret" not in result.stderr


def test_serve_logs_each_exposure_at_start(tmp_path: Path, broker: Broker, prefix: str) -> None:
    config = write_config(tmp_path / "config.yaml", broker.port, prefix,
                          mllp={"host": "0.0.0.0"}, metrics={"host": "0.0.0.0"})
    with serve(config) as daemon:
        logged = [(e["key"], e["level"]) for e in daemon.events("config_exposure")]
        ready = daemon.events("daemon_ready")
    assert logged == [("mllp.host", "warning"), (ACKS, "warning"), ("metrics.host", "warning")]
    assert ready  # said, and then served
