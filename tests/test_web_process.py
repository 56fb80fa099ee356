"""The web view as a site runs it: ``hl7-alerts web`` as its own process beside
a real ``hl7-alerts serve`` on the same store, with a real Mosquitto. An
ack from the page (sent twice, as a double click would) is published once,
as the ``acknowledged`` event naming the signed-in user, by the daemon from
the outbox; the web process's user commands work on the store; HTTPS with
web.tls uses the same key names as the other listeners."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import httpx2 as httpx

from tests.support.backends import Backend
from tests.support.broker import Broker
from tests.support.certs import Authority
from tests.support.daemon import CLI, NO_MONITORING, serve, write_config
from tests.support.mllp import send_all
from tests.support.mqtt import recording
from tests.support.samples import OPEN_CRITICAL, STOP, sample_messages
from tests.support.waiting import eventually
from tests.support.webkit import PASSWORD, WebProcess, add_user, csrf_of


async def test_an_ack_from_the_page_is_published_once_by_the_running_daemon(
    tmp_path: Path, broker: Broker, prefix: str, backend: Backend
) -> None:
    config = write_config(
        tmp_path / "config.yaml", broker.port, prefix, store=backend.store_section(), rules=NO_MONITORING,
        web={"port": 0, "base_url": "http://127.0.0.1/"},
    )
    async with recording(broker, prefix) as mqtt, serve(config) as daemon:
        await send_all(daemon.port, sample_messages(*OPEN_CRITICAL))
        firing = next(a for a in await mqtt.wait_alerts(2) if a["rule"] == STOP)
        assert firing["links"]["view"] == f"http://127.0.0.1/alerts/{firing['alert_id']}"
        added = await asyncio.to_thread(add_user, config)
        assert added.returncode == 0, added.stderr
        assert added.stdout == "dr.web\tadded\n"
        with WebProcess(config) as site:
            async with httpx.AsyncClient(base_url=site.url, follow_redirects=False) as browser:
                signed = await browser.post("/login", data={"username": "dr.web", "password": PASSWORD})
                assert signed.status_code == 303
                page = await browser.get(f"/alerts/{firing['alert_id']}")
                assert page.status_code == 200
                token = csrf_of(page.text)
                answers = await asyncio.gather(*(
                    browser.post(f"/alerts/{firing['alert_id']}/ack", data={"csrf": token}) for _ in range(2)
                ))
            assert sorted(a.headers["location"].rsplit("=", 1)[1] for a in answers) == [
                "acknowledged", "already_acknowledged",
            ]
            await mqtt.wait_for(lambda m: any(b.get("event") == "acknowledged" for t, b in m if "/alerts/" in t))
            # Everything the store queued has gone out: no second event can still come.
            await eventually(lambda: backend.query("SELECT count(*) FROM outbox WHERE delivered_at IS NULL") == [(0,)],
                             what="the outbox to drain")
        acks = [a for a in mqtt.alerts() if a["event"] == "acknowledged"]
    assert len(acks) == 1
    assert acks[0]["alert_id"] == firing["alert_id"]
    assert acks[0]["acknowledged"]["by"] == "dr.web"
    assert acks[0]["links"]["view"] == firing["links"]["view"]
    audit = backend.query("SELECT kind, detail FROM audit WHERE alert_id = ? AND kind IN ('acknowledged', 'ack_ignored') ORDER BY id",
                          (firing["alert_id"],))
    assert [k for k, _ in audit] == ["acknowledged", "ack_ignored"]
    assert '"by": "dr.web"' in audit[0][1]
    access = backend.query("SELECT username, action, detail FROM web_access WHERE action = 'ack' ORDER BY id")
    assert sorted(access) == [("dr.web", "ack", "acknowledged"), ("dr.web", "ack", "already_acknowledged")]


def test_user_commands(tmp_path: Path) -> None:
    import subprocess  # noqa: PLC0415

    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  path: {tmp_path / 'store.sqlite3'}\n")

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, "web", "user", *args, "--config", str(config)], input=stdin,
                              capture_output=True, text=True, check=False)

    assert add_user(config, "dr.a").stdout == "dr.a\tadded\n"
    assert add_user(config, "dr.b").stdout == "dr.b\tadded\n"
    assert add_user(config, "dr.a", "another long password").stdout == "dr.a\tpassword changed\n"
    short = add_user(config, "dr.c", "short")
    assert short.returncode == 1
    assert "password must be at least 10 characters" in short.stderr
    listed = run("list").stdout.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["dr.a", "dr.b"]
    assert run("remove", "dr.b").stdout == "dr.b\tremoved\n"
    gone = run("remove", "dr.b")
    assert (gone.returncode, gone.stderr) == (1, "no user dr.b\n")
    assert [line.split("\t")[0] for line in run("list").stdout.splitlines()] == ["dr.a"]
    stored = (tmp_path / "store.sqlite3").read_bytes()
    assert b"$argon2id$" in stored
    assert PASSWORD.encode() not in stored


async def test_https_with_the_unified_tls_keys(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    server = ca.issue("web", server=True)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"store:\n  path: {tmp_path / 'store.sqlite3'}\nlogging:\n  format: json\n"
        f"web:\n  port: 0\n  tls:\n    cert_file: {server.cert}\n    key_file: {server.key}\n"
    )
    assert (await asyncio.to_thread(add_user, config)).returncode == 0
    with WebProcess(config) as site:
        trust = ssl.create_default_context(cafile=str(ca.ca_path))
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{site.port}", verify=trust) as browser:
            signed = await browser.post("/login", data={"username": "dr.web", "password": PASSWORD},
                                        follow_redirects=False)
        cookie = signed.headers["set-cookie"]
        assert signed.status_code == 303
        assert re.search(r"; secure", cookie, re.IGNORECASE)  # Secure under TLS
        assert signed.headers["strict-transport-security"].startswith("max-age=")
