"""The publisher over TLS with a client certificate and a username/password
from config, against a Mosquitto TLS listener with certificates made here."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.certs import Authority
from tests.support.daemon import make_config, running
from tests.support.mllp import send_all
from tests.support.mqtt import events, recording
from tests.support.ports import free_port
from tests.support.samples import OPEN_CRITICAL, PGX, STOP, sample_messages


def make_certificates(directory: Path) -> None:
    """A throwaway CA (tests/support/certs.py, no openssl binary needed), a
    server certificate for 127.0.0.1 and a client certificate, under the
    names the broker config below uses."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = Authority(directory)
    ca.ca_path.rename(directory / "ca.crt")
    ca.issue("server", server=True)
    ca.issue("client", server=False)
    for path in directory.iterdir():
        os.chmod(path, 0o644)  # Mosquitto reads them after dropping root
    os.chmod(directory, 0o755)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Broker, int, Path]]:
    # Mosquitto reads these after dropping root, and pytest's tmp_path sits
    # under a 0700 folder: use a world-traversable temporary folder instead.
    certs = Path(tempfile.mkdtemp(prefix="hl7-alerts-tls-"))
    make_certificates(certs)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(certs / "passwd"), "hl7user", "s3cret"], check=True,
                   capture_output=True)
    os.chmod(certs / "passwd", 0o644)
    # Mosquitto takes its listener's port from its config and does not report
    # an ephemeral one: a probed free port is the only way to name it.
    tls_port = free_port()
    broker = Broker(tmp_path / "mosquitto", extra_conf=(
        f"password_file {certs}/passwd\n"
        f"listener {tls_port} 127.0.0.1\ncafile {certs}/ca.crt\ncertfile {certs}/server.crt\n"
        f"keyfile {certs}/server.key\nrequire_certificate true\n"
    ))
    try:
        broker.start()
        yield broker, tls_port, certs
    finally:
        broker.stop()
        shutil.rmtree(certs)


async def test_alerts_go_out_over_tls_with_client_certificate_and_password(
    tmp_path: Path, tls_broker: tuple[Broker, int, Path], prefix: str
) -> None:
    broker, tls_port, certs = tls_broker
    config = make_config(tmp_path, tls_port, prefix, mqtt={
        "username": "hl7user", "password": "s3cret",
        "tls": {"ca_file": str(certs / "ca.crt"), "cert_file": str(certs / "client.crt"),
                "key_file": str(certs / "client.key")},
    })
    async with recording(broker, prefix) as mqtt, running(config) as daemon:  # the recorder uses the plain port
        await send_all(daemon.port, sample_messages(*OPEN_CRITICAL))
        alerts = await mqtt.wait_alerts(2)
    assert events(alerts) == [("H010001", PGX, "firing", 1), ("H010001", STOP, "firing", 1)]
    assert f"as {prefix} (p5, c0, k30, u'hl7user')" in (broker.directory / "mosquitto.log").read_text()
