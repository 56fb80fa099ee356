"""The web view through its public seam, HTTP: every page and API route
with and without a session, proxy sign-on from a trusted address and from
another, CSRF, the access audit, security headers, the PHI policy, and the
routes under web.base_url's path. The app runs in-process (TestClient) on a
store that holds the seed story, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from hl7_alerts.cli import main
from hl7_alerts.config import Config
from tests.support.backends import Backend
from tests.support.samples import OPEN_CRITICAL, STOP, sample_messages
from tests.support.webkit import NOW, client, csrf_of, seed, sign_in, store_config, web_config

ALERT_ID = re.compile(r'href="[^"]*/alerts/([0-9a-f]{32})"')


def access_rows(config: Config, backend: Backend | None = None) -> list[tuple[Any, ...]]:
    sql = "SELECT username, via, peer, action, alert_id, patient, detail FROM web_access ORDER BY id"
    if backend is not None:
        return backend.query(sql)
    import sqlite3  # noqa: PLC0415

    with sqlite3.connect(config.store.path) as db:
        return db.execute(sql).fetchall()


def critical_id(config: Config) -> str:
    with client(config) as c:
        sign_in(c, config)
        body = c.get("/api/alerts", params={"rule": STOP, "closed": "1"}).json()
    return str(body["alerts"][0]["alert_id"])


# -- deny by default ------------------------------------------------------------------

PAGES = ["/", "/?severity=critical", "/alerts/0123456789abcdef0123456789abcdef", "/nowhere"]
API = ["/api/alerts", "/api/alerts/0123456789abcdef0123456789abcdef", "/api/nowhere"]


def test_without_a_session_pages_redirect_to_sign_in_and_the_api_answers_401(tmp_path: Path) -> None:
    config = web_config(tmp_path)
    seed(config)
    alert = critical_id(config)
    before = access_rows(config)
    with client(config) as c:
        for path in PAGES:
            r = c.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/login?next="), path
            assert "TESTPATIENT" not in r.text
            assert "H010001" not in r.text
        for path in API:
            r = c.get(path)
            assert (r.status_code, r.json()) == (401, {"error": "sign in first"}), path
        for path in (f"/alerts/{alert}", f"/api/alerts/{alert}"):
            r = c.get(path)
            assert r.status_code in (303, 401)
            assert "H010001" not in r.text
        r = c.post(f"/alerts/{alert}/ack", data={"csrf": "x"})
        assert r.status_code == 303
        assert r.headers["location"].startswith("/login")
        r = c.post("/logout", data={"csrf": "x"})
        assert r.status_code == 303
        assert r.headers["location"].startswith("/login")
        # What needs no session holds no patient data.
        assert c.get("/login").status_code == 200
        assert c.get("/static/style.css").status_code == 200
    assert access_rows(config) == before  # nothing was shown, nothing audited


def test_a_forged_or_expired_session_cookie_is_no_session(tmp_path: Path) -> None:
    config = web_config(tmp_path, session_idle="30m")
    seed(config)
    with client(config) as c:
        c.cookies.set("hl7alerts_session", "forged")
        assert c.get("/").status_code == 303
        assert c.get("/api/alerts").status_code == 401
        c.cookies.clear()
        sign_in(c, config)
        assert c.get("/api/alerts").status_code == 200
        token = c.cookies.get("hl7alerts_session")
    later = NOW.replace(hour=NOW.hour + 1)  # an hour idle: past web.session_idle
    assert token is not None
    with client(config, now=later) as c:
        c.cookies.set("hl7alerts_session", token)
        assert c.get("/api/alerts").status_code == 401


def test_every_page_and_api_route_with_a_session(tmp_path: Path) -> None:
    config = web_config(tmp_path)
    seed(config)
    with client(config) as c:
        r = sign_in(c, config)
        assert (r.status_code, r.headers["location"]) == (303, "/")
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Secure" not in cookie
        listing = c.get("/")
        assert listing.status_code == 200
        # The seed story ends with the critical alert resolved: the open ones are the pgx and low-ALP alerts.
        assert "aza.post_stop.low_alp" in listing.text
        assert "aza.pgx.missing" in listing.text
        assert '<meta http-equiv="refresh" content="60">' in listing.text
        everything = c.get("/?closed=1")
        ids = ALERT_ID.findall(everything.text)
        assert len(ids) == 3
        assert c.get("/?severity=critical&closed=1").text.count("/alerts/") == 1
        assert c.get("/?ack=yes").text.count('class="alert ') == 0
        assert c.get("/?severity=urgent").status_code == 400
        for alert in ids:
            page = c.get(f"/alerts/{alert}")
            assert page.status_code == 200
            assert "<svg" in page.text
            assert 'id="series-ALT"' in page.text
            api = c.get(f"/api/alerts/{alert}").json()
            assert api["alert"]["alert_id"] == alert
            assert next(e["event"] for e in api["events"]) == "firing"
        listed = c.get("/api/alerts", params={"closed": "1"}).json()["alerts"]
        assert sorted(a["alert_id"] for a in listed) == sorted(ids)
        assert listed[0]["severity"] == "critical"  # most severe first
        assert c.get("/alerts/0123456789abcdef0123456789abcdef").status_code == 404
        assert c.get("/api/alerts/0123456789abcdef0123456789abcdef").status_code == 404
        assert c.get("/nowhere").status_code == 404
        assert c.post("/logout", data={"csrf": csrf_of(listing.text)}).status_code == 303
        assert c.get("/api/alerts").status_code == 401  # the session ended with sign-out


def test_security_headers_on_every_response(tmp_path: Path) -> None:
    config = web_config(tmp_path)
    seed(config)
    with client(config) as c:
        responses = [c.get("/login"), c.get("/"), c.get("/api/alerts"), c.get("/static/style.css")]
        sign_in(c, config)
        responses += [c.get("/"), c.get(f"/alerts/{critical_id(config)}"), c.get("/nowhere")]
    for r in responses:
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "script-src" not in csp
        assert "'unsafe-inline'" not in csp
        assert "default-src 'none'" in csp
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
    page = responses[-2].text
    assert "<script" not in page
    assert "style=" not in page
    assert "<style" not in page


# -- signing in -----------------------------------------------------------------------


def test_wrong_passwords_are_refused_then_throttled(tmp_path: Path) -> None:
    config = web_config(tmp_path, login_attempts=3)
    seed(config)
    with client(config) as c:
        assert sign_in(c, config, password="wrong password!").status_code == 401
        assert sign_in(c, config, name="nobody").status_code == 401
        assert sign_in(c, config, password="also wrong!!").status_code == 401
        # Three failures from this address: even the right password waits now.
        r = sign_in(c, config)
        assert r.status_code == 429
        assert "Too many failed sign-ins" in r.text
        assert c.get("/api/alerts").status_code == 401
    with client(config, peer="10.9.9.9") as c:  # another address, another user name: not throttled
        assert sign_in(c, config).status_code == 303
    actions = [(r[0], r[3]) for r in access_rows(config)]
    assert actions == [("dr.web", "login_failed"), ("nobody", "login_failed"), ("dr.web", "login_failed"),
                       ("dr.web", "login")]


def test_sign_in_goes_back_where_it_was_asked_for_and_never_elsewhere(tmp_path: Path) -> None:
    config = web_config(tmp_path)
    seed(config)
    with client(config) as c:
        r = c.post("/login", data={"username": "dr.web", "password": "correct horse battery", "next": "/?ack=no"})
        assert r.headers["location"] == "/?ack=no"
    for target in ("https://evil.example/", "//evil.example/x"):
        with client(config) as c:
            r = c.post("/login", data={"username": "dr.web", "password": "correct horse battery", "next": target})
            assert r.headers["location"] == "/"


# -- single sign-on through a proxy ---------------------------------------------------

PROXY = {"trusted_proxy": {"header": "X-Remote-User", "addresses": ["10.20.0.5/32"]}}


def test_proxy_header_is_honoured_from_a_trusted_address(tmp_path: Path) -> None:
    config = web_config(tmp_path, **PROXY)
    seed(config, users={})
    with client(config, peer="10.20.0.5") as c:
        r = c.get("/api/alerts", params={"closed": "1"}, headers={"X-Remote-User": "dr.sso", "X-Forwarded-For": "10.1.2.3"})
        assert r.status_code == 200
        alert = r.json()["alerts"][0]["alert_id"]
        page = c.get(f"/alerts/{alert}", headers={"X-Remote-User": "dr.sso"})
        assert page.status_code == 200
        assert "dr.sso" in page.text
        # The session it started serves only while the proxy still vouches for the user.
        assert c.get("/api/alerts").status_code == 401
    rows = access_rows(config)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("dr.sso", "proxy", "10.1.2.3 via 10.20.0.5", "api_list"),
        ("dr.sso", "proxy", "10.20.0.5", "view_alert"),
    ]


def test_proxy_header_from_anywhere_else_is_ignored_and_logged(tmp_path: Path) -> None:
    config = web_config(tmp_path, **PROXY)
    seed(config, users={})
    with structlog.testing.capture_logs() as logs, client(config, peer="10.20.0.6") as c:
        r = c.get("/api/alerts", headers={"X-Remote-User": "dr.sso"})
        assert r.status_code == 401
        r = c.get("/", headers={"X-Remote-User": "dr.sso"})
        assert r.status_code == 303
    ignored = [e for e in logs if e["event"] == "web_proxy_header_ignored"]
    assert ignored
    assert ignored[0]["peer"] == "10.20.0.6"
    assert "dr.sso" not in json.dumps(ignored, default=str)
    assert access_rows(config) == []


# -- acknowledging: CSRF, once, audited ----------------------------------------------------


def test_ack_needs_the_pages_csrf_token_and_is_recorded_once(tmp_path: Path) -> None:
    config = web_config(tmp_path)
    seed(config, messages=sample_messages(*OPEN_CRITICAL))
    alert = critical_id(config)
    with client(config) as c:
        sign_in(c, config)
        page = c.get(f"/alerts/{alert}")
        assert "Acknowledge as dr.web" in page.text
        token = csrf_of(page.text)
        refused = c.post(f"/alerts/{alert}/ack", data={"csrf": "not-the-token"})
        assert refused.status_code == 403
        assert c.post(f"/alerts/{alert}/ack", data={}).status_code == 403
        assert c.get(f"/api/alerts/{alert}").json()["alert"]["acknowledged_by"] is None
        done = c.post(f"/alerts/{alert}/ack", data={"csrf": token})
        assert (done.status_code, done.headers["location"]) == (303, f"/alerts/{alert}?acked=acknowledged")
        again = c.post(f"/alerts/{alert}/ack", data={"csrf": token})
        assert again.headers["location"] == f"/alerts/{alert}?acked=already_acknowledged"
        body = c.get(f"/api/alerts/{alert}").json()
        after = c.get(f"/alerts/{alert}")
    assert body["alert"]["acknowledged_by"] == "dr.web"
    assert [e["event"] for e in body["events"]].count("acknowledged") == 1
    assert body["events"][-1]["by"] == "dr.web"
    assert "Acknowledge as" not in after.text  # acknowledged: no button
    actions = [(r[3], r[4], r[6]) for r in access_rows(config) if r[3] in ("ack", "csrf_refused")]
    assert actions == [("csrf_refused", alert, ""), ("csrf_refused", alert, ""), ("ack", alert, "acknowledged"),
                       ("ack", alert, "already_acknowledged")]


# -- the access audit, and alerts show --------------------------------------------------


def test_every_view_writes_an_audit_row_and_alerts_show_prints_them(tmp_path: Path, backend: Backend) -> None:
    config = store_config(backend.store_section())
    seed(config)
    alert = critical_id(config)
    with client(config, peer="10.3.4.5") as c:
        sign_in(c, config)
        c.get("/")
        c.get(f"/alerts/{alert}")
        c.get(f"/api/alerts/{alert}")
        c.get("/api/alerts")
    rows = backend.query(
        "SELECT username, via, peer, action, alert_id, patient FROM web_access WHERE username = 'dr.web' ORDER BY id"
    )
    views = [r for r in rows if r[3] not in ("login",)]
    # critical_id's own look at the list first, then this test's four views.
    assert [(r[3], r[4]) for r in views[-4:]] == [
        ("list", None), ("view_alert", alert), ("api_alert", alert), ("api_list", None),
    ]
    assert views[-3][5] == "GENHOSP|MR|H010001"
    assert views[-3][2] == "10.3.4.5"
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"store": backend.store_section()}))
    shown = CliRunner().invoke(main, ["alerts", "show", alert, "--config", str(path)])
    assert shown.exit_code == 0, shown.output
    access = json.loads(shown.stdout)["access"]
    assert [(a["user"], a["action"], a["from"]) for a in access] == [
        ("dr.web", "view_alert", "10.3.4.5"), ("dr.web", "api_alert", "10.3.4.5"),
    ]


# -- PHI -----------------------------------------------------------------------------


@pytest.mark.parametrize("allowed", [True, False], ids=["phi-allowed", "phi-not-allowed"])
def test_names_and_birth_dates_only_as_the_phi_policy_allows(tmp_path: Path, allowed: bool) -> None:
    phi = {"alerts": {"phi": {"include_name": True, "include_birth_date": True}}}
    seeded = store_config({"path": str(tmp_path / "store.sqlite3")})
    seeded = seeded.model_copy(update={"alerts": seeded.alerts.model_validate(phi["alerts"])})
    seed(seeded, messages=sample_messages(*OPEN_CRITICAL))  # payloads stored with name and birth date
    config = store_config({"path": str(tmp_path / "store.sqlite3")})
    if allowed:
        config = seeded
    alert = critical_id(config)
    with client(config) as c:
        sign_in(c, config)
        page, api = c.get(f"/alerts/{alert}").text, c.get(f"/api/alerts/{alert}").text
        listing = c.get("/").text
    for text in (page, api, listing):
        assert ("TESTPATIENT" in text) is allowed
    assert ("19700101" in page) is allowed


# -- under web.base_url's path ------------------------------------------------------------


def test_routes_live_under_the_base_urls_path(tmp_path: Path) -> None:
    config = web_config(tmp_path, base_url="https://ward.example/hl7-alerts/")
    seed(config)
    with client(config) as c:
        r = c.get("/hl7-alerts/")
        assert (r.status_code, r.headers["location"]) == (303, "/hl7-alerts/login?next=%2Fhl7-alerts%2F")
        assert c.get("/hl7-alerts/api/alerts").status_code == 401
        r = sign_in(c, config)
        assert r.headers["location"] == "/hl7-alerts/"
        assert "Secure" in r.headers["set-cookie"]
        assert "Path=/hl7-alerts" in r.headers["set-cookie"]
        listing = c.get("/hl7-alerts/")
        assert listing.status_code == 200
        assert 'href="/hl7-alerts/static/style.css"' in listing.text
        links = [h for h in re.findall(r'href="([^"]+)"', listing.text) if not h.startswith("data:")]
        assert links
        assert all(h.startswith("/hl7-alerts/") for h in links)
        assert c.get("/").status_code == 404  # nothing outside the prefix
        assert c.get("/hl7-alerts/static/style.css").status_code == 200
