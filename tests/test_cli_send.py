"""``hl7-alerts send`` as an integration engineer uses it on the first day:
an empty file is reported, not silently "sent", and a TLS listener (with
or without client certificates) can be tried with the tool we ship."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from tests.support.broker import Broker
from tests.support.certs import Authority
from tests.support.daemon import CLI, make_config, running
from tests.support.samples import SAMPLES
from tests.support.waiting import WAIT

ORDER = str(SAMPLES / "01_seed_order_azathioprine.hl7")


async def send(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*CLI, "send", *args], capture_output=True, text=True, timeout=WAIT, check=False,
        env={**os.environ},
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    return line


async def test_an_empty_file_is_reported_and_fails_the_run(tmp_path: Path, broker: Broker, prefix: str) -> None:
    empty, blank = tmp_path / "empty.hl7", tmp_path / "blank.hl7"
    empty.write_bytes(b"")
    blank.write_bytes(b"\r\n\r\n  \n")
    async with running(make_config(tmp_path, broker.port, prefix)) as daemon:
        result = await send("--port", str(daemon.port), str(empty), ORDER, str(blank))
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["RX0001\tCA\t"]  # the one real message still went
    assert result.stderr.splitlines() == [
        f"{empty}: no HL7 message in this file (nothing sent)",
        f"{blank}: no HL7 message in this file (nothing sent)",
    ]


async def test_send_over_mutual_tls_with_ca_cert_and_key(tmp_path: Path, broker: Broker, prefix: str) -> None:
    ca = Authority(tmp_path)
    server, client = ca.issue("server", server=True), ca.issue("client", server=False)
    rogue = Authority(tmp_path, "rogue CA")
    config = make_config(tmp_path, broker.port, prefix, mllp={
        "tls": {"cert": str(server.cert), "key": str(server.key), "client_ca": str(ca.ca_path)},
    })
    async with running(config) as daemon:
        port = str(daemon.port)
        ok = await send("--port", port, "--ca", str(ca.ca_path), "--cert", str(client.cert), "--key",
                        str(client.key), ORDER)
        no_client_cert = await send("--port", port, "--ca", str(ca.ca_path), ORDER)
        wrong_ca = await send("--port", port, "--ca", str(rogue.ca_path), ORDER)
        system_cas = await send("--port", port, "--tls", ORDER)
        plain = await send("--port", port, "--timeout", "5", ORDER)
    assert (ok.returncode, ok.stdout) == (0, "RX0001\tCA\t\n"), ok.stderr
    # The listener asks for a client certificate and drops us: said in one line.
    assert error_line(no_client_cert).startswith(
        (f"Error: cannot talk to 127.0.0.1:{port}", f"Error: TLS with 127.0.0.1:{port} failed")
    ), no_client_cert.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in error_line(wrong_ca)
    assert error_line(wrong_ca).startswith(f"Error: TLS with 127.0.0.1:{port} failed")
    assert "CERTIFICATE_VERIFY_FAILED" in error_line(system_cas)  # a private CA is not in the system's store
    assert error_line(plain).startswith(f"Error: cannot talk to 127.0.0.1:{port}")


async def test_send_over_tls_without_client_certificates(tmp_path: Path, broker: Broker, prefix: str) -> None:
    ca = Authority(tmp_path)
    server = ca.issue("server", server=True)
    config = make_config(tmp_path, broker.port, prefix, mllp={"tls": {"cert": str(server.cert), "key": str(server.key)}})
    async with running(config) as daemon:
        result = await send("--port", str(daemon.port), "--ca", str(ca.ca_path), ORDER)
    assert (result.returncode, result.stdout) == (0, "RX0001\tCA\t\n"), result.stderr


def test_tls_options_that_cannot_work_are_one_line(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    client = ca.issue("client", server=False)
    key_alone = subprocess.run([*CLI, "send", "--key", str(client.key), ORDER], capture_output=True, text=True,
                               timeout=WAIT, check=False)
    assert key_alone.returncode == 2
    assert "--key: needs --cert" in key_alone.stderr
    mismatched = subprocess.run([*CLI, "send", "--cert", str(client.cert), "--key", str(ca.ca_path), ORDER],
                                capture_output=True, text=True, timeout=WAIT, check=False)
    assert error_line(mismatched).startswith("Error: cannot load the TLS files (--ca, --cert, --key)")


async def test_a_closed_output_is_not_blamed_on_the_listener(tmp_path: Path, broker: Broker, prefix: str) -> None:
    """``send ... | head`` once said "cannot talk to 127.0.0.1:2575: Broken
    pipe": a reader that stops reading is not a listener that failed."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    try:
        async with running(make_config(tmp_path, broker.port, prefix)) as daemon:
            result = await asyncio.to_thread(
                subprocess.run, [*CLI, "send", "--port", str(daemon.port), ORDER], stdout=write_end,
                stderr=subprocess.PIPE, text=True, timeout=WAIT, check=False,
            )
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["Error: the output was closed (the rest was not sent)"]
