"""files.py: what holds PHI is owner-only whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hl7_alerts.files import make_private_dir, private_umask, write_private
from tests.support.daemon import CLI, ServeProcess, write_config
from tests.support.mllp import AsyncMllpClient, ack_fields
from tests.support.samples import SEED_STORY, sample_messages
from tests.support.waiting import WAIT


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
def test_write_private_is_owner_only_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "deep" / "out.json"
    write_private(target, "{}")
    write_private(target, b"[1]")
    assert target.read_bytes() == b"[1]"
    assert mode(target) == 0o600
    assert mode(target.parent) == 0o700
    assert mode(target.parent.parent) == 0o700
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no temporary file left


@pytest.mark.usefixtures("permissive_umask")
def test_private_umask_covers_files_created_inside_and_is_restored(tmp_path: Path) -> None:
    with private_umask():
        (tmp_path / "a").write_text("x")
    (tmp_path / "b").write_text("x")
    assert mode(tmp_path / "a") == 0o600
    assert mode(tmp_path / "b") == 0o666


@pytest.mark.usefixtures("permissive_umask")
def test_make_private_dir_leaves_existing_folders_alone(tmp_path: Path) -> None:
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    make_private_dir(existing / "mine")
    assert mode(existing) == 0o755
    assert mode(existing / "mine") == 0o700


# -- the store, as `serve` creates it -----------------------------------------
# A real `hl7-alerts serve` under umask 000 (the widest a shell or a service
# manager can hand it): SQLite creates -wal and -shm itself, with the
# database file's mode, so what is checked is what the process made.


def serve_config(tmp_path: Path, store: Path, refused_port: int, prefix: str) -> Path:
    # No broker (the refused port): nothing here waits for a delivery.
    return write_config(tmp_path / "config.yaml", refused_port, prefix, store={"path": str(store)})


async def send_one(port: int) -> None:
    client = await AsyncMllpClient.connect(port)
    try:
        (message,) = sample_messages(SEED_STORY[0])
        assert ack_fields(await client.send(message))["code"] in ("AA", "CA")
    finally:
        await client.close()


async def test_serve_under_umask_000_creates_the_store_owner_only(
    tmp_path: Path, refused_port: int, prefix: str
) -> None:
    store = tmp_path / "state" / "hl7" / "store.sqlite3"
    config = serve_config(tmp_path, store, refused_port, prefix)
    async with ServeProcess(config, tmp_path / "serve.log", umask=0o000) as serve:
        await send_one(serve.port)
        # While it runs: the WAL and the shared memory index exist.
        modes = {p.name: mode(p) for p in store.parent.iterdir()}
    assert modes == {"store.sqlite3": 0o600, "store.sqlite3-wal": 0o600, "store.sqlite3-shm": 0o600}
    assert mode(store.parent) == 0o700
    assert mode(store.parent.parent) == 0o700


async def test_serve_narrows_an_existing_store_left_readable_by_everyone(
    tmp_path: Path, refused_port: int, prefix: str
) -> None:
    store = tmp_path / "store.sqlite3"
    config = serve_config(tmp_path, store, refused_port, prefix)
    async with ServeProcess(config, tmp_path / "serve.log") as serve:
        await send_one(serve.port)
    # As an older version (or a restore with cp) would have left it.
    os.chmod(store, 0o644)
    wal = tmp_path / "store.sqlite3-wal"
    wal.write_bytes(b"")
    os.chmod(wal, 0o664)
    async with ServeProcess(config, tmp_path / "serve.log", umask=0o000) as serve:
        await send_one(serve.port)
        assert (mode(store), mode(wal), mode(tmp_path / "store.sqlite3-shm")) == (0o600, 0o600, 0o600)
        assert serve.events("file_mode_narrowed")


def test_offline_commands_under_umask_000_write_owner_only(tmp_path: Path) -> None:
    archive = tmp_path / "feed.hl7"
    archive.write_bytes(b"".join(m + b"\r" for m in sample_messages(*SEED_STORY)))
    outputs = tmp_path / "out"
    runs = [
        ["survey", "--json", str(outputs / "survey.json"), str(archive)],
        ["backtest", "--json", str(outputs / "backtest.json"), "--report", str(outputs / "report"), str(archive)],
    ]
    for args in runs:
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT * 4, check=False,
                              preexec_fn=lambda: os.umask(0o000) and None)
        assert done.returncode in (0, 1), done.stderr  # 1: the run found something to say
    made = sorted(outputs.rglob("*"))
    assert {p.relative_to(outputs).as_posix(): mode(p) for p in made} == {
        "survey.json": 0o600,
        "backtest.json": 0o600,
        "report": 0o700,
        "report/index.html": 0o600,
        "report/alerts.csv": 0o600,
    }
    assert mode(outputs) == 0o700
