"""Known failures of every command end in one line naming the cause and a
non-zero exit, never a traceback; commands that only look at the store never
create one (nor its folders), never migrate it and never write to it.

Each case runs the real ``hl7-alerts`` process, as a person at a terminal
would meet it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hl7_alerts.store import SqliteStore
from hl7_alerts.store.postgres import PostgresStore
from tests.support.daemon import CLI
from tests.support.waiting import WAIT

# Commands that only read the store, with the arguments each needs.
READ_ONLY = [
    pytest.param(["alerts", "list"], id="alerts-list"),
    pytest.param(["alerts", "show", "0123abcd"], id="alerts-show"),
    pytest.param(["schedule", "list"], id="schedule-list"),
    pytest.param(["orders", "list", "--patient", "H1"], id="orders-list"),
]
# Commands that act on what a daemon stored: a missing store is an error too.
NEEDS_A_STORE = [*READ_ONLY, pytest.param(["alerts", "ack", "0123abcd", "--by", "dr.x"], id="alerts-ack")]


def hl7_alerts(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT, check=False,
                          cwd=cwd, env={**os.environ})


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exit 1 and one "Error: ..." line, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip("\n").endswith(errors[0])  # the last thing said
    return errors[0]


def config_for(tmp_path: Path, store: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  path: {store}\nmllp:\n  port: 0\nmetrics:\n  enabled: false\n")
    return config


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", NEEDS_A_STORE)
def test_a_missing_store_is_one_line_and_nothing_is_created(tmp_path: Path, command: list[str]) -> None:
    config = config_for(tmp_path, "wrong/folder/hl7-alerts.sqlite3")
    line = one_error_line(hl7_alerts(*command, "--config", str(config)))
    assert line == f"Error: store unavailable: no store at {tmp_path / 'wrong/folder/hl7-alerts.sqlite3'} (store.path)"
    assert not (tmp_path / "wrong").exists()


@pytest.mark.parametrize("command", NEEDS_A_STORE)
def test_a_file_that_is_not_a_store_is_one_line_and_left_alone(tmp_path: Path, command: list[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("patient list, not a database\n" * 50)
    before = digest(notes)
    line = one_error_line(hl7_alerts(*command, "--config", str(config_for(tmp_path, "notes.txt"))))
    assert line.startswith(f"Error: store unavailable: {notes}")
    assert line.endswith("file is not a database"), line
    assert digest(notes) == before


@pytest.mark.parametrize("command", READ_ONLY)
def test_read_only_commands_on_an_older_store_do_not_migrate_it(tmp_path: Path, command: list[str]) -> None:
    store = tmp_path / "s.sqlite3"
    asyncio.run(_make_store(store))
    with sqlite3.connect(store) as db:
        latest = db.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        db.execute("DELETE FROM schema_version WHERE version = ?", (latest,))
    line = one_error_line(hl7_alerts(*command, "--config", str(config_for(tmp_path, "s.sqlite3"))))
    assert f"store schema version {latest - 1} is older than this hl7-alerts ({latest})" in line
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == latest - 1


async def _make_store(path: Path) -> None:
    await (await SqliteStore.open(path)).close()


@pytest.mark.parametrize("command", READ_ONLY)
def test_read_only_commands_leave_the_store_unwritten(tmp_path: Path, command: list[str]) -> None:
    store = tmp_path / "s.sqlite3"
    asyncio.run(_make_store(store))
    with sqlite3.connect(store) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        changes = db.execute("PRAGMA data_version").fetchone()
    before = digest(store)
    result = hl7_alerts(*command, "--config", str(config_for(tmp_path, "s.sqlite3")))
    assert "Traceback" not in result.stderr
    assert digest(store) == before
    wal = store.with_name("s.sqlite3-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA data_version").fetchone() == changes


@pytest.mark.parametrize("command", NEEDS_A_STORE)
def test_on_postgresql_a_database_without_the_schema_is_one_line_and_stays_empty(
    tmp_path: Path, pg_dsn: str, command: list[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  dsn: {pg_dsn}\n")
    line = one_error_line(hl7_alerts(*command, "--config", str(config)))
    assert line == "Error: store unavailable: store.dsn: the database has no hl7-alerts schema (no schema_version table)"
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)


@pytest.mark.parametrize("command", READ_ONLY)
def test_on_postgresql_read_only_commands_do_not_migrate_an_older_schema(
    tmp_path: Path, pg_dsn: str, command: list[str]
) -> None:
    async def make_store() -> None:
        await (await PostgresStore.open(pg_dsn, owner="t")).close()

    asyncio.run(make_store())
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        latest = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        conn.execute("DELETE FROM schema_version WHERE version = %s", (latest,))
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  dsn: {pg_dsn}\n")
    line = one_error_line(hl7_alerts(*command, "--config", str(config)))
    assert f"store schema version {latest - 1} is older than this hl7-alerts ({latest})" in line
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == latest - 1


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_with_the_mllp_port_taken_is_one_line(tmp_path: Path, taken_port: int, refused_port: int) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mllp:\n  port: {taken_port}\nmetrics:\n  enabled: false\nstore:\n  path: s.sqlite3\n"
        f"mqtt:\n  port: {refused_port}\nlogging:\n  format: json\n"
    )
    line = one_error_line(hl7_alerts("serve", "--config", str(config)))
    assert line == (f"Error: cannot listen for MLLP on 127.0.0.1:{taken_port} (mllp.host, mllp.port): "
                    "Address already in use")


ORDERS_CSV = "patient_id,order_id,drug,start\nH1,RX1,{drug},2026-09-01\n"


def test_orders_import_of_a_latin1_csv_names_the_line_and_the_fix(tmp_path: Path) -> None:
    csv = tmp_path / "orders.csv"
    csv.write_bytes((ORDERS_CSV.format(drug="azathioprine") + "H2,RX2,Imuran comprimés,2026-09-01\n")
                    .encode("latin-1"))
    line = one_error_line(hl7_alerts("orders", "import", "--config", str(config_for(tmp_path, "s.sqlite3")),
                                     str(csv)))
    assert line.startswith(f"Error: {csv}:3: not UTF-8 (byte 0xe9); save the file as UTF-8")
    assert not (tmp_path / "s.sqlite3").exists()  # refused before the store is opened


def test_orders_import_reads_a_utf16_csv_by_its_byte_order_mark(tmp_path: Path) -> None:
    csv = tmp_path / "orders.csv"
    csv.write_bytes(ORDERS_CSV.format(drug="azathioprine").encode("utf-16"))  # BOM + UTF-16LE, as Excel writes
    config = str(config_for(tmp_path, "s.sqlite3"))
    result = hl7_alerts("orders", "import", "--config", config, str(csv))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported 1,")
    listed = hl7_alerts("orders", "list", "--config", config, "--patient", "H1")
    assert "\tRX1\tazathioprine\t" in listed.stdout


def test_orders_import_into_a_file_that_is_not_a_store_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database\n" * 50)
    csv = tmp_path / "orders.csv"
    csv.write_text(ORDERS_CSV.format(drug="azathioprine"))
    line = one_error_line(hl7_alerts("orders", "import", "--config", str(config_for(tmp_path, "notes.txt")),
                                     str(csv)))
    assert line.startswith(f"Error: store unavailable: {tmp_path / 'notes.txt'}")


def test_a_missing_config_file_is_one_line(tmp_path: Path) -> None:
    line = one_error_line(hl7_alerts("alerts", "list", "--config", str(tmp_path / "nope.yaml")))
    assert line == f"Error: {tmp_path / 'nope.yaml'}: cannot read config: No such file or directory"
