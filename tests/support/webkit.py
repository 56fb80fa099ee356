"""The web view as the tests drive it: a store holding the seed story (the
real pipeline, no daemon), local users, and the app in-process through
Starlette's TestClient (its lifespan opens the store in the client's own
event loop), signed in or not."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.testclient import TestClient

from hl7_alerts.config import Config, parse_config
from hl7_alerts.messages import parse_message
from hl7_alerts.pipeline import process
from hl7_alerts.store import open_store
from hl7_alerts.store.web import web
from hl7_alerts.web.app import create_app
from hl7_alerts.web.auth import hash_password
from tests.support.samples import SEED_STORY, sample_messages

# When the tests "are": a month after the seed story's last panel, so the
# whole story sits inside the trend's 180-day window.
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"


def web_config(folder: Path, **web_section: Any) -> Config:
    data = {"store": {"path": str(folder / "store.sqlite3")}, "web": web_section, "logging": {"format": "json"}}
    return parse_config(json.dumps(data))


def store_config(store: dict[str, Any], **web_section: Any) -> Config:
    return parse_config(json.dumps({"store": store, "web": web_section, "logging": {"format": "json"}}))


async def _seed(config: Config, messages: list[bytes], users: dict[str, str]) -> None:
    store = await open_store(config.store_settings())
    options, settings = config.parse_options(), config.pipeline_settings()
    try:
        for raw in messages:
            parsed = parse_message(raw, options)
            await store.transact(lambda tx, p=parsed, r=raw: process(tx, p, r, received_at=NOW, settings=settings))
        for name, password in users.items():
            hashed = hash_password(password)
            await store.transact(lambda tx, n=name, h=hashed: web(tx).put_user(n, h, NOW))
    finally:
        await store.close()


def seed(config: Config, *, messages: list[bytes] | None = None, users: dict[str, str] | None = None) -> None:
    """The store after ``messages`` (default: the whole seed story), with users."""
    if messages is None:
        messages = sample_messages(*SEED_STORY)
    asyncio.run(_seed(config, messages, {"dr.web": PASSWORD} if users is None else users))


@contextmanager
def client(config: Config, *, peer: str = "127.0.0.1", now: datetime = NOW) -> Iterator[TestClient]:
    """The app in-process, as a browser at ``peer`` sees it (no redirects followed)."""
    app = create_app(config, clock=lambda: now)
    url = urlsplit(config.web.base_url or "http://testserver")
    base = f"{url.scheme}://{url.netloc}"  # paths in the tests carry the prefix themselves
    with TestClient(app, base_url=base, client=(peer, 50000), follow_redirects=False) as c:
        yield c


def sign_in(c: TestClient, config: Config, name: str = "dr.web", password: str = PASSWORD) -> Any:
    prefix = config.web.path_prefix
    return c.post(f"{prefix}/login", data={"username": name, "password": password, "next": f"{prefix}/"})


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "no CSRF token on the page"
    return found[1]
