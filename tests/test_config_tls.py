"""One set of TLS key names for mllp.tls, mqtt.tls and web.tls (cert_file,
key_file, ca_file); mllp.tls's old names still work, with a warning that
names the new key, and errors speak the file's own words."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hl7_alerts.cli import main
from hl7_alerts.config import ConfigError, parse_config
from tests.support.certs import Authority


def test_the_three_sections_share_the_key_names(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    server = ca.issue("server", server=True)
    files = {"cert_file": str(server.cert), "key_file": str(server.key), "ca_file": str(ca.ca_path)}
    text = "\n".join(
        f"{section}:\n  tls:\n" + "".join(f"    {k}: {v}\n" for k, v in files.items())
        for section in ("mllp", "mqtt", "web")
    )
    config = parse_config(text, base_dir=tmp_path)
    assert config.warnings == ()
    for tls in (config.mllp.tls, config.web.tls, config.mqtt.tls):
        assert tls is not None
        assert (tls.cert_file, tls.key_file, tls.ca_file) == (server.cert, server.key, ca.ca_path)


def test_old_mllp_names_are_read_with_a_warning_naming_the_new_key(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    server = ca.issue("server", server=True)
    text = f"mllp:\n  tls:\n    cert: {server.cert}\n    key: {server.key}\n    client_ca: {ca.ca_path}\n"
    config = parse_config(text, source="site.yaml", base_dir=tmp_path)
    assert (config.mllp.tls.cert_file, config.mllp.tls.key_file, config.mllp.tls.ca_file) == (
        server.cert, server.key, ca.ca_path,
    )
    assert config.warnings == (
        "site.yaml:3: mllp.tls.cert is deprecated: use mllp.tls.cert_file",
        "site.yaml:4: mllp.tls.key is deprecated: use mllp.tls.key_file",
        "site.yaml:5: mllp.tls.client_ca is deprecated: use mllp.tls.ca_file",
    )


def test_an_old_and_a_new_name_for_one_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^site.yaml:3: mllp.tls.cert: also set as mllp.tls.cert_file"):
        parse_config("mllp:\n  tls:\n    cert: a.crt\n    cert_file: b.crt\n", source="site.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("web:\n  tls:\n    cert_file: a.crt\n", "web.tls.key_file is required", id="web-cert-without-key"),
        pytest.param("web:\n  tls:\n    ca_file: a.crt\n", "web.tls.ca_file needs", id="web-ca-without-tls"),
        pytest.param("mllp:\n  tls:\n    key_file: a.key\n", "mllp.tls.cert_file is required", id="new-names-speak-new"),
        pytest.param("web:\n  tls:\n    cert_file: nope.crt\n    key_file: nope.key\n", "x.yaml:3: web.tls.cert_file: no such file",
                     id="web-missing-file"),
    ],
)
def test_listener_tls_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="x.yaml", base_dir=tmp_path)
    assert expected in str(info.value)


def test_config_check_prints_the_deprecation(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    server = ca.issue("server", server=True)
    path = tmp_path / "site.yaml"
    path.write_text(f"mllp:\n  tls:\n    cert: {server.cert}\n    key_file: {server.key}\n")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"warning: {path}:3: mllp.tls.cert is deprecated: use mllp.tls.cert_file" in result.stderr
