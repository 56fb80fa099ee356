"""``hl7-alerts send``: HL7 files over MLLP, one line per answer."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hl7_alerts.messages import salvage_header
from hl7_alerts.mllp import MllpClient
from hl7_alerts.segments import MessageError, read_segments, split_file
from hl7_alerts.timeutil import UTC_ZONE


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=2575, show_default=True, type=int)
@click.option("--timeout", default=30.0, show_default=True, type=float, help="seconds to wait for each ACK")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def send(host: str, port: int, timeout: float, files: tuple[Path, ...]) -> None:
    """Send HL7 files over MLLP; print MSH-10, ACK code and MSA-3 per message.

    A file may hold one message or many (CR, LF or CRLF segment ends, batch
    envelopes allowed). Exits 1 if any message is not answered AA or CA.
    """
    failures = 0
    try:
        with MllpClient(host, port, timeout=timeout) as client:
            for path in files:
                for message in split_file(path.read_bytes()):
                    header = salvage_header(message, UTC_ZONE)
                    control_id = header.control_id if header else "(no MSH)"
                    code, text = _ack_fields(client.send(message))
                    click.echo(f"{control_id}\t{code}\t{text}")
                    if code not in ("AA", "CA"):
                        failures += 1
    except OSError as exc:
        raise click.ClickException(f"cannot talk to {host}:{port}: {exc}") from None
    if failures:
        sys.exit(1)


def _ack_fields(ack: bytes) -> tuple[str, str]:
    try:
        _, segments = read_segments(ack.decode("utf-8", errors="replace"))
    except MessageError:
        return "??", "unreadable answer"
    msa = next((s for s in segments if s.name == "MSA"), None)
    if msa is None:
        return "??", "answer has no MSA segment"
    return msa.get(1), msa.get(3)
