"""`hl7-alerts config check FILE`, the cross-section checks, and config.yaml
as the documentation of every default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from pydantic import BaseModel

from hl7_alerts.cli import main
from hl7_alerts.config import Config, ConfigError, parse_config
from tests.support.samples import ROOT


def check(path: Path) -> Result:
    # In-process (test_cli.py covers the installed entry point as a process).
    return CliRunner().invoke(main, ["config", "check", str(path)])


def test_check_accepts_the_shipped_config_with_a_summary() -> None:
    result = check(ROOT / "config.yaml")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"ok: {ROOT / 'config.yaml'}"
    assert "  metrics   127.0.0.1:9464" in lines
    assert "  retention 400 days" in lines


def test_check_names_file_line_and_key_of_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text("mllp:\n  port: seventy\nmetrics:\n  port: 70000\nhealth:\n  max_outbox_age: 5\n")
    result = check(bad)
    assert result.exit_code == 1
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    assert errors[0] == f"{bad}:2: mllp.port: Input should be a valid integer, unable to parse string as an integer"
    assert errors[1] == f"{bad}:4: metrics.port: Input should be less than or equal to 65535"
    assert errors[2] == f"{bad}:6: health.max_outbox_age: unknown key"


def test_check_fails_on_a_missing_file(tmp_path: Path) -> None:
    result = check(tmp_path / "nope.yaml")
    assert result.exit_code == 1
    assert "cannot read config" in result.stderr


def test_retention_must_cover_the_rules_history_window() -> None:
    text = "rules:\n  history_days: 500\nretention:\n  days: 90\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="site.yaml")
    assert str(caught.value) == (
        "site.yaml:4: retention.days: must be at least rules.history_days (500): the rules read that much history"
    )
    with pytest.raises(ConfigError, match=r"^site.yaml:2: retention.days: must be at least"):
        parse_config("rules:\n  history_days: 500\n", source="site.yaml")  # the default 400 is too short
    assert parse_config("rules:\n  history_days: 500\nretention:\n  days: 500\n").retention.days == 500


def test_shipped_config_yaml_shows_every_default() -> None:
    text = (ROOT / "config.yaml").read_text()
    assert parse_config(text) == Config()
    data = yaml.safe_load(text)
    defaults = Config()
    for section in Config.model_fields:
        model = getattr(defaults, section)
        assert isinstance(model, BaseModel)
        for key in type(model).model_fields:
            # Keys whose default is "unset" appear as comments with an example.
            assert key in data[section] or getattr(model, key) is None, f"config.yaml lacks {section}.{key}"


def test_patient_id_type_takes_a_list_in_order_of_preference(tmp_path: Path) -> None:
    cfg = parse_config("patient:\n  id_type: [mr, PI]\n  untyped_ids: reject\n")
    options = cfg.parse_options()
    assert (options.patient_id_types, options.accept_untyped_ids) == (("MR", "PI"), False)
    assert Config().parse_options().patient_id_types == ("MR",)
    assert Config().parse_options().accept_untyped_ids is True
    site = tmp_path / "site.yaml"
    site.write_text("patient:\n  id_type: [MR, PI]\n  untyped_ids: reject\n")
    lines = check(site).stdout.splitlines()
    assert "  patients  keyed by the PID-3 and MRG-1 identifier of type MR or else PI (any authority, kept in the key)" in lines
    assert "  patients  untyped identifiers (empty PID-3.5) are refused: such a message gets AE" in lines
    assert any("one patient sent with different types becomes separate patients" in line for line in lines)


def test_check_says_untyped_identifiers_are_accepted_by_default() -> None:
    lines = check(ROOT / "config.yaml").stdout.splitlines()
    assert "  patients  untyped identifiers (empty PID-3.5) are accepted as MR when no typed one is there" in lines


@pytest.mark.parametrize(("text", "error"), [
    ("patient:\n  untyped_ids: maybe\n", "site.yaml:2: patient.untyped_ids: Input should be 'accept' or 'reject'"),
    ("patient:\n  id_type: []\n", "site.yaml:2: patient.id_type: Value error, must be an identifier type"),
    ("patient:\n  id_type: [MR, mr]\n", "site.yaml:2: patient.id_type: Value error, lists an identifier type twice"),
])
def test_patient_settings_are_validated(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="site.yaml")
    assert str(caught.value).startswith(error)


def test_issue_19_rule_keys_reach_the_rules() -> None:
    """rules.exposure_days, follow_up_days, late_order_days, long_running_days,
    dose_change_hours and bilirubin_x_uln: config.yaml → RuleSettings."""
    text = ("rules:\n  exposure_days: 14\n  follow_up_days: 60\n  late_order_days: 7\n  long_running_days: 10\n"
            "  dose_change_hours: 12\n  bilirubin_x_uln: 2.5\n")
    r = parse_config(text).rule_settings()
    assert (r.exposure_days, r.follow_up_days, r.late_order_days, r.long_running_days, r.dose_change_hours,
            r.bilirubin_x_uln) == (14, 60, 7, 10, 12.0, 2.5)
    with pytest.raises(ConfigError, match=r"rules.exposure_days"):
        parse_config("rules:\n  exposure_days: -1\n")
