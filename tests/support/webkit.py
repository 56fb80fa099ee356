"""The web view as the tests drive it: a store holding the seed story (the
real pipeline, no daemon), local users, and the app in-process through
Starlette's TestClient (its lifespan opens the store in the client's own
event loop), signed in or not."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
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
from tests.support.daemon import CLI, log_lines
from tests.support.samples import SEED_STORY, sample_messages
from tests.support.waiting import WAIT, eventually_sync

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


class WebProcess:
    """``hl7-alerts web --config C`` as a process of its own: entering starts
    it and returns once its ``web_ready`` log line names the port."""

    def __init__(self, config: Path, log: Path | None = None) -> None:
        self.config = config
        self.log = log or config.parent / "web.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> WebProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([*CLI, "web", "--config", str(self.config)], stdout=out, stderr=out)
        try:
            ready = eventually_sync(self._ready, WAIT, what=f"web_ready in {self.log}", detail=self.tail)
        except BaseException:
            self.stop()
            raise
        self.port = int(ready["port"])
        return self

    def _ready(self) -> dict[str, Any] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"hl7-alerts web exited {self.process.returncode}:\n{self.tail()}")
        return next((e for e in log_lines(self.log.read_text()) if e.get("event") == "web_ready"), None)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:]) if self.log.exists() else ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT)
        return self.process.returncode

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_user(config: Path, name: str = "dr.web", password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    """``hl7-alerts web user add NAME`` with the password on standard input."""
    return subprocess.run([*CLI, "web", "user", "add", name, "--config", str(config)], input=password + "\n",
                          capture_output=True, text=True, timeout=WAIT, check=False)
