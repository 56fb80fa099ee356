"""TLS contexts, built one way for every connection the daemon makes or takes.

`server_context` is what a listener presents (the MLLP listener; TLS 1.2 or
later; with a client CA, mutual TLS). `client_context` is what a client
checks a server with (the broker, `hl7-alerts send`): the given CA or the
system's trust store, the host name unless told otherwise, and a client
certificate when the server asks for one. Files that cannot be loaded raise
`ssl.SSLError` or `OSError`, which `config` turns into errors naming the key.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A listener's context. With ``client_ca`` every client must show a
    certificate signed by it (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert, keyfile=key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client's context: ``ca_file`` (None: the system's trust store) to
    verify the server, and a client certificate when one is given."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context
