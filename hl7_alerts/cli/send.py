"""``hl7-alerts send``: HL7 files over MLLP, one line per answer."""

from __future__ import annotations

import os
import ssl
import sys
from pathlib import Path

import click

from hl7_alerts.batches import read_batch
from hl7_alerts.messages import salvage_header
from hl7_alerts.mllp import MllpClient
from hl7_alerts.segments import MessageError, read_segments, split_file
from hl7_alerts.timeutil import UTC_ZONE
from hl7_alerts.tls import client_context

_PEM = click.Path(exists=True, dir_okay=False, path_type=Path)


class _OutputClosed(Exception):
    """Whoever read our output (``| head``) stopped reading: not the listener's fault."""


def _say(line: str) -> None:
    """One answer's line on stdout; a closed stdout is `_OutputClosed`, so it
    is never reported as the connection's (both are a broken pipe)."""
    try:
        click.echo(line)
    except BrokenPipeError:
        raise _OutputClosed from None


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=2575, show_default=True, type=int)
@click.option("--timeout", default=30.0, show_default=True, type=float, help="seconds to wait for each ACK")
@click.option("--tls", "use_tls", is_flag=True, help="MLLP over TLS (server checked with the system CAs)")
@click.option("--ca", "ca_file", type=_PEM, help="PEM CA bundle to check the server with (implies --tls)")
@click.option("--cert", "cert_file", type=_PEM, help="PEM client certificate, for mutual TLS (implies --tls)")
@click.option("--key", "key_file", type=_PEM, help="PEM key of --cert, when not in the same file")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def send(
    *,
    host: str,
    port: int,
    timeout: float,
    use_tls: bool,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    files: tuple[Path, ...],
) -> None:
    """Send HL7 files over MLLP; print MSH-10, ACK code and MSA-3 per message.

    A file may hold one message or many (CR, LF or CRLF segment ends). A
    batch file (FHS or BHS first) goes as one frame, and its answer, a batch
    acknowledgment, gives one line per message. Exits 1 if any message is not
    answered AA or CA, or a file holds no message. With --tls (or --ca,
    --cert), the server's certificate must name --host; --cert and --key
    answer a listener that asks for a client certificate (mllp.tls.ca_file).
    """
    if key_file is not None and cert_file is None:
        raise click.BadParameter("needs --cert", param_hint="--key")
    tls = None
    if use_tls or ca_file is not None or cert_file is not None:
        try:
            tls = client_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        except (ssl.SSLError, OSError) as exc:
            raise click.ClickException(f"cannot load the TLS files (--ca, --cert, --key): {exc}") from None
    failures = 0
    try:
        with MllpClient(host, port, timeout=timeout, tls=tls) as client:
            for path in files:
                data = path.read_bytes()
                if _is_batch(data):
                    # One frame, as a batch-sending engine sends it; the batch
                    # acknowledgment answers each of its messages.
                    for control_id, code, text in _batch_answers(client.send(_as_frame(data))):
                        _say(f"{control_id}\t{code}\t{text}")
                        failures += code not in ("AA", "CA")
                    continue
                messages = split_file(data)
                if not messages:
                    click.echo(f"{path}: no HL7 message in this file (nothing sent)", err=True)
                    failures += 1
                for message in messages:
                    header = salvage_header(message, UTC_ZONE)
                    control_id = header.control_id if header else "(no MSH)"
                    code, text = _ack_fields(client.send(message))
                    _say(f"{control_id}\t{code}\t{text}")
                    if code not in ("AA", "CA"):
                        failures += 1
    except _OutputClosed:
        # Python's advice for a closed stdout: point it at devnull, so that
        # flushing it at exit does not fail again, and stop.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise click.ClickException("the output was closed (the rest was not sent)") from None
    except ssl.SSLError as exc:
        raise click.ClickException(f"TLS with {host}:{port} failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot talk to {host}:{port}: {exc}") from None
    if failures:
        sys.exit(1)


def _is_batch(data: bytes) -> bool:
    """A batch file (FHS or BHS first): sent whole, as one frame."""
    return data.removeprefix(b"\xef\xbb\xbf").lstrip(b"\r\n \t").startswith((b"FHS", b"BHS"))


def _as_frame(data: bytes) -> bytes:
    return data.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def _batch_answers(answer: bytes) -> list[tuple[str, str, str]]:
    """(MSA-2, MSA-1, MSA-3) of each ACK in a batch acknowledgment, or of the
    one ACK that answers a batch with no readable message."""
    batch = read_batch(answer)
    acks = batch.messages if batch is not None else (answer,)
    out = []
    for ack in acks:
        code, text = _ack_fields(ack)
        control_id = _msa2(ack) or "(no MSH)"
        out.append((control_id, code, text))
    return out


def _msa2(ack: bytes) -> str:
    try:
        _, segments = read_segments(ack.decode("utf-8", errors="replace"))
    except MessageError:
        return ""
    msa = next((s for s in segments if s.name == "MSA"), None)
    return msa.get(2) if msa is not None else ""


def _ack_fields(ack: bytes) -> tuple[str, str]:
    try:
        _, segments = read_segments(ack.decode("utf-8", errors="replace"))
    except MessageError:
        return "??", "unreadable answer"
    msa = next((s for s in segments if s.name == "MSA"), None)
    if msa is None:
        return "??", "answer has no MSA segment"
    return msa.get(1), msa.get(3)
