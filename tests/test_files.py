"""files.py: what holds PHI is owner-only whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hl7_alerts.files import make_private_dir, private_umask, write_private


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
