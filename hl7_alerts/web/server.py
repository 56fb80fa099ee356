"""Running the web view: uvicorn on ``web.host:web.port``, HTTPS with the
context `tls.py` builds from ``web.tls`` (the MLLP listener's loader). The
socket is bound here, before anything else, so its port is known (port 0
picks one); the ``web_ready`` log line names it once the store is open."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import structlog
import uvicorn

from hl7_alerts.config import Config
from hl7_alerts.tls import server_context
from hl7_alerts.web.app import create_app

log = structlog.get_logger("hl7_alerts.web")


def _tls(config: Config) -> Any:
    tls = config.web.tls
    if tls.cert_file is None or tls.key_file is None:
        return None
    cert, key, ca = tls.cert_file, tls.key_file, tls.ca_file

    def factory(_: uvicorn.Config, __: Any) -> ssl.SSLContext:
        return server_context(cert, key, ca)

    return factory


def serve_web(config: Config) -> None:
    """Serve until SIGTERM or SIGINT (uvicorn's own handlers: this is the
    top of the web process)."""
    w = config.web
    factory = _tls(config)
    sock = socket.create_server((w.host, w.port), family=_family(w.host), backlog=128)
    port = sock.getsockname()[1]

    def ready() -> None:
        log.info("web_ready", host=w.host, port=port, tls=factory is not None, base_url=w.base_url)

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, on_ready=ready),
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            lifespan="on",
            ssl_context_factory=factory,
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
