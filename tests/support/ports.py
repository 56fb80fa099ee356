"""TCP ports on 127.0.0.1 for the servers the tests and the benchmark start.

The rule: a server we start binds port 0 and tells us what it got (the
daemon logs it: see ``daemon.serve``). ``free_port`` is only for servers
that cannot: Mosquitto and PostgreSQL take their port from a config file or
a flag, and a broker a test restarts must come back on the same port. Its
probe closes the socket before the server binds, so another process may take
the port in between; callers that can, retry (``PgServer``). A test that
needs a port where nothing answers (a broker or a database that is down)
takes ``refused_port``, which holds the port for as long as it needs it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def free_port() -> int:
    """A port nothing was bound to a moment ago (see the module's warning)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    """Whether something accepts connections on ``port`` right now."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port that refuses connections for as long as the block lasts: bound
    by us, so no other process can take it, and never listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        yield port
