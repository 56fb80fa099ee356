"""Fixtures, and only fixtures: a real Mosquitto (shared, or the test's own to
stop and restart), a throwaway PostgreSQL server with a fresh database per
test, the store backend a test runs on, a topic prefix of its own, and a
port where nothing answers; and, after every test, structlog back at its
defaults.

What the fixtures are made of, and every helper a test imports, lives in
tests/support/.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.support import ports
from tests.support.backends import Backend
from tests.support.broker import Broker
from tests.support.pgserver import TEST_PG_SETTINGS, PgServer, PgServerError


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Mosquitto shared by tests that only publish and subscribe (each test
    uses its own topic prefix)."""
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto this test may stop and restart."""
    b = Broker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server of our own (own directory under /tmp, free port,
    never the machine's 5432), shared by the session; tests get databases."""
    server = PgServer(TEST_PG_SETTINGS)
    try:
        server.start()
    except PgServerError as exc:
        pytest.fail(f"{exc}\n(or run .ci/run, which installs it)", pytrace=False)
    yield server
    server.stop()


_pg_databases = itertools.count(1)


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """The DSN of a fresh, empty database, unique to this test; dropped after
    it (connections the test left open are closed), so disk use stays flat."""
    name = f"test_{next(_pg_databases)}"
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each backend in turn: the store's contract holds on both."""
    if request.param == "sqlite":
        return Backend("sqlite", tmp_path)
    return Backend("postgresql", tmp_path, dsn=request.getfixturevalue("pg_dsn"))


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix (and MQTT client id) unique to this test."""
    digest = hashlib.blake2b(request.node.nodeid.encode(), digest_size=5).hexdigest()
    return f"t{digest}{os.getpid()}"


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port where nothing answers (a broker or database that is down),
    held for the whole test so no other process can take it meanwhile."""
    with ports.refused_port() as port:
        yield port


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    """Every test starts from structlog's defaults. A command run in-process
    (CliRunner) configures logging for the whole process (`logs.configure`,
    level warning for most commands), and a later test's `capture_logs`
    would then miss every info event the configured level filters out."""
    yield
    structlog.reset_defaults()
