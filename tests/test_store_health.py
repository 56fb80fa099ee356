"""A store that cannot be written, as a running `hl7-alerts serve` meets it.

At start: a store the daemon cannot write is a start-up error in one line,
exit 1 (systemd's Restart= then has something to restart), never
`daemon_ready` followed by AR to everything. While running: a commit the
store fails makes /healthz "not ready" at once, and the writer reopens its
connection, so that once the cause is fixed messages are accepted again
without a restart.

How a test denies root a write: these tests run as root, which file modes do
not stop. As root, the daemon runs under ``setpriv`` with CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH and CAP_FOWNER dropped from its bounding set, so a
0444 file or a 0555 folder stops it as it stops the ``hl7-alerts`` service
user (run as another user, the modes alone do). A full disk is
RLIMIT_FSIZE on the daemon's process, set and lifted from here with
prlimit(2): a write past it fails as one past a full disk does (EFBIG),
for root too, and nothing else on the machine is touched. PostgreSQL's
refusal is a database made read-only for new sessions.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from hl7_alerts.store import SqliteStore
from hl7_alerts.store.postgres import PostgresStore
from tests.support.daemon import CLI, ServeProcess, write_config
from tests.support.hl7kit import alt, oru
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.pgserver import TEST_PG_SETTINGS, PgServer
from tests.support.waiting import WAIT

# Root without the capabilities that let it write what file modes deny.
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]


def as_service_user() -> list[str]:
    return NO_DAC if os.geteuid() == 0 else []


def message(control: str, *, note_bytes: int = 0) -> bytes:
    """An ALT result; with ``note_bytes``, an NTE that long (the raw message
    is stored whole, so it is that much to write)."""
    text = oru(control, "20261020080000", alt("30"))
    if note_bytes:
        text += f"NTE|1||{'x' * note_bytes}\r"
    return text.encode()


def _healthz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def healthz(serve: ServeProcess) -> tuple[int, dict[str, object]]:
    assert serve.metrics_port is not None
    return await asyncio.to_thread(_healthz, serve.metrics_port)


def _failing_gauge(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as response:
        text = response.read().decode()
    (value,) = re.findall(r"^hl7_alerts_store_commit_failing (\S+)$", text, flags=re.MULTILINE)
    return float(value)


async def commit_failing(serve: ServeProcess) -> float:
    assert serve.metrics_port is not None
    return await asyncio.to_thread(_failing_gauge, serve.metrics_port)


async def code(client: AsyncMllpClient, raw: bytes) -> str:
    return ack_fields(await client.send(raw))["code"]


# -- at start --------------------------------------------------------------


def serve_once(config: Path, wrapper: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*wrapper, *CLI, "serve", "--config", str(config)], capture_output=True, text=True,
                          timeout=WAIT, check=False)


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """What a person reads on stderr: the lines that are not the JSON log."""
    return [line for line in done.stderr.splitlines() if not line.startswith("{")]


@pytest.fixture
def restore_modes(tmp_path: Path) -> Iterator[None]:
    yield
    for path in (tmp_path / "state", tmp_path / "state" / "store.sqlite3"):
        if path.exists():
            os.chmod(path, 0o700)


@pytest.mark.usefixtures("restore_modes")
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("read-only folder", "attempt to write a readonly database"),
        ("read-only file", "attempt to write a readonly database"),
        ("folder is a file", "File exists"),
    ],
)
async def test_a_store_that_cannot_be_written_is_a_one_line_start_up_error(
    tmp_path: Path, refused_port: int, prefix: str, case: str, reason: str
) -> None:
    folder = tmp_path / "state"
    store = folder / "store.sqlite3"
    if case == "folder is a file":
        folder.write_text("not a folder\n")
    else:
        await (await SqliteStore.open(store)).close()  # an existing store, as a daemon left it
        os.chmod(folder if case == "read-only folder" else store, 0o555 if case == "read-only folder" else 0o444)
    config = write_config(tmp_path / "config.yaml", refused_port, prefix, store={"path": str(store)})
    done = serve_once(config, as_service_user())
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done)
    assert line.startswith(f"Error: store unavailable: {store}"), line
    assert line.endswith(reason), line
    assert "daemon_ready" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


async def test_a_read_only_postgresql_is_a_one_line_start_up_error(
    tmp_path: Path, pg_dsn: str, refused_port: int, prefix: str
) -> None:
    await (await PostgresStore.open(pg_dsn)).close()  # the schema is there: only the write fails
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        name = admin.info.dbname
        statement = sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on")
        admin.execute(statement.format(sql.Identifier(name)))
    config = write_config(tmp_path / "config.yaml", refused_port, prefix, store={"dsn": pg_dsn})
    done = serve_once(config, [])
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done)  # the migration's CREATE ... IF NOT EXISTS already meets it
    assert line.startswith("Error: store unavailable: store.dsn"), line
    assert line.endswith("in a read-only transaction"), line
    assert "daemon_ready" not in done.stderr + done.stdout


# -- while running ------------------------------------------------------------


async def test_a_full_disk_is_ar_and_not_ready_until_a_commit_succeeds_again(
    tmp_path: Path, refused_port: int, prefix: str
) -> None:
    store = tmp_path / "store.sqlite3"
    config = write_config(tmp_path / "config.yaml", refused_port, prefix, mllp={"max_message_bytes": 4 << 20})
    log = tmp_path / "serve.log"
    async with ServeProcess(config, log) as serve:
        assert serve.process is not None
        pid = serve.process.pid
        client = await AsyncMllpClient.connect(serve.port)
        assert await code(client, message("S1")) == "AA"
        # The WAL from the start again (nothing reads meanwhile), so what a
        # commit appends to it is what it writes past the store's size.
        with sqlite3.connect(store) as db:
            assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        room = 256 << 10  # room for the health probe's page or two, not for 1 MiB
        limit = max(p.stat().st_size for p in (store, store.with_name("store.sqlite3-wal"), log)) + room
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        try:
            assert await code(client, message("BIG1", note_bytes=1 << 20)) == "AR"
            status, health = await healthz(serve)
            # The probe committed (its one row fits): it used to answer 200.
            assert status == 503, health
            (reason,) = health["reasons"]  # type: ignore[misc]
            assert str(reason).startswith("the store failed the last commit: "), reason
            assert await commit_failing(serve) == 1
            assert await code(client, message("BIG1", note_bytes=1 << 20)) == "AR"  # the sender's resend
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        # Space is back: the next resend is accepted, no restart.
        assert await code(client, message("BIG1", note_bytes=1 << 20)) == "AA"
        assert (await healthz(serve))[0] == 200
        assert await commit_failing(serve) == 0
        assert await code(client, message("S2")) == "AA"
        await client.close()
        assert serve.events("store_reopened")  # the writer did not carry on with a failed connection


async def test_postgresql_read_only_then_writable_again_is_accepted_without_a_restart(
    tmp_path: Path, pg_dsn: str, refused_port: int, prefix: str
) -> None:
    """The database refuses writes (here: read-only for new sessions, as a
    primary demoted to a standby is), then takes them again. A writer that
    kept its connection would stay read-only for ever: it reopens after a
    failed commit."""
    config = write_config(tmp_path / "config.yaml", refused_port, prefix, store={"dsn": pg_dsn, "writers": 1})
    async with ServeProcess(config, tmp_path / "serve.log") as serve:
        client = await AsyncMllpClient.connect(serve.port)
        assert await code(client, message("P1")) == "AA"
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            database = sql.Identifier(admin.info.dbname)
            admin.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(database))
            # The daemon's sessions end (a failover does that); it reconnects.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert await code(client, message("P2")) == "AR"
            assert await code(client, message("P2")) == "AR"  # read-only now, not just a dropped connection
            status, health = await healthz(serve)
            assert status == 503, health
            admin.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(database))
        # The writer's session may have been opened read-only after its last
        # failure: one more AR at most, then a new session takes the write.
        codes = [await code(client, message("P2"))]
        if codes[0] != "AA":
            codes.append(await code(client, message("P2")))
        assert codes[-1] == "AA", codes
        assert (await healthz(serve))[0] == 200
        await client.close()
        assert serve.events("store_reopened")


async def test_postgresql_gone_and_back_is_ar_and_not_ready_then_accepted_again(
    tmp_path: Path, refused_port: int, prefix: str
) -> None:
    """The database server stops (a restart, a failover) and comes back on
    the same address: AR and 503 meanwhile, AA and 200 after, no restart.
    A server of its own: the session's is shared with other tests."""
    with PgServer(TEST_PG_SETTINGS) as server:
        dsn = server.create_database("gone_and_back")
        config = write_config(tmp_path / "config.yaml", refused_port, prefix, store={"dsn": dsn, "writers": 1})
        async with ServeProcess(config, tmp_path / "serve.log") as serve:
            client = await AsyncMllpClient.connect(serve.port)
            assert await code(client, message("G1")) == "AA"
            await asyncio.to_thread(server.pause)
            try:
                assert await code(client, message("G2")) == "AR"
                status, health = await healthz(serve)
                assert status == 503, health
            finally:
                await asyncio.to_thread(server.resume)
            assert await code(client, message("G2")) == "AA"
            assert (await healthz(serve))[0] == 200
            await client.close()
