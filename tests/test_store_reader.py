"""Read-only connections for the processes beside the daemon (the web view):
on both backends they see what the daemon's writer committed, cannot write,
and a reader never creates a store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hl7_alerts.settings import StoreSettings
from hl7_alerts.store import StoreError
from hl7_alerts.store.reader import StoreReader
from hl7_alerts.store.web import web
from tests.support.backends import Backend

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def settings_of(backend: Backend) -> StoreSettings:
    if backend.dsn is not None:
        return StoreSettings(dsn=backend.dsn, owner="reader-test")
    return StoreSettings(path=backend.folder / "store.sqlite3")


async def test_a_reader_sees_commits_and_cannot_write(backend: Backend) -> None:
    writer = await backend.open()
    reader = await StoreReader.open(settings_of(backend), size=2)
    try:
        assert await reader.read(lambda tx: tx.users()) == []
        await writer.transact(lambda tx: web(tx).put_user("dr.r", "$argon2id$x", NOW))
        assert [n for n, _ in await reader.read(lambda tx: tx.users())] == ["dr.r"]
        with pytest.raises(StoreError):
            await reader.read(lambda tx: tx.put_user("dr.w", "$argon2id$y", NOW))
        assert [n for n, _ in await reader.read(lambda tx: tx.users())] == ["dr.r"]
    finally:
        await reader.close()
        await writer.close()


async def test_a_reader_never_creates_a_sqlite_store(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite3"
    with pytest.raises(StoreError, match="no store at"):
        await StoreReader.open(replace(StoreSettings(), path=missing))
    assert not missing.exists()
