"""The pages and the JSON API: what each route reads, audits and shows.

Every view of patient data writes its access audit row (who, which alert
and patient, when, from where) before it answers. Names and birth dates are
shown only as far as ``alerts.phi`` allows now, as on MQTT. The alert page
acknowledges through `lifecycle.acknowledge_alert`, the path a pager's ack
takes: recorded once, audited, published by the running daemon from the
outbox as the ``acknowledged`` event.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from hl7_alerts.alerts import AckOutcome, AckRequest
from hl7_alerts.lifecycle import acknowledge_alert
from hl7_alerts.model import Severity
from hl7_alerts.rules import ids
from hl7_alerts.store import AlertRecord, Transaction
from hl7_alerts.store.base import AlertFilter, EventRow
from hl7_alerts.store.queries import SqlTransaction
from hl7_alerts.store.web import web
from hl7_alerts.web import auth
from hl7_alerts.web.app import HERE, WebContext, context, viewer, window
from hl7_alerts.web.trend import Trend, build_trend

log = structlog.get_logger("hl7_alerts.web")

ACK_LABELS = {"yes": True, "no": False}
RULE_IDS = sorted(
    v for k, v in vars(ids).items() if k.isupper() and isinstance(v, str) and v.startswith("aza.")
)
_RULE = re.compile(r"aza\.[a-z0-9_.]{1,80}")


# -- shared bits --------------------------------------------------------------------


def _filter(request: Request) -> AlertFilter:
    q = request.query_params
    severity = q.get("severity") or None
    rule = q.get("rule") or None
    if severity is not None and severity not in {s.value for s in Severity}:
        raise HTTPException(400, "unknown severity")
    if rule is not None and not _RULE.fullmatch(rule):
        raise HTTPException(400, "unknown rule")
    ack = q.get("ack") or None
    if ack is not None and ack not in ACK_LABELS:
        raise HTTPException(400, "ack must be yes or no")
    return AlertFilter(
        severity=severity,
        rule=rule,
        acknowledged=None if ack is None else ACK_LABELS[ack],
        include_closed=q.get("closed") == "1",
    )


def _patient(ctx: WebContext, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload's patient block as the PHI policy allows it now."""
    phi = ctx.config.alerts.phi
    patient = dict(payload.get("patient") or {})
    if not phi.include_name:
        patient.pop("name", None)
    if not phi.include_birth_date:
        patient.pop("birth_date", None)
    return patient


def _shown(ctx: WebContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "patient": _patient(ctx, payload)}


def summary(ctx: WebContext, record: AlertRecord) -> dict[str, Any]:
    a, t = record.alert, record.tracking
    return {
        "alert_id": a.alert_id,
        "state": str(a.state),
        "severity": str(a.severity),
        "rule": a.rule,
        "version": a.version,
        "title": record.payload.get("title", ""),
        "summary": record.payload.get("summary", ""),
        "patient": _patient(ctx, record.payload),
        "opened_at": a.opened_at.isoformat(),
        "acknowledged_by": t.acknowledged_by,
        "acknowledged_at": t.acknowledged_at.isoformat() if t.acknowledged_at else None,
        "url": ctx.url(f"/alerts/{a.alert_id}"),
    }


def _event(ctx: WebContext, row: EventRow) -> dict[str, Any]:
    body = row.payload
    source = body.get("source") or {}
    who = (body.get("acknowledged") or {}).get("by") if row.event == "acknowledged" else None
    if who is None:
        who = (
            f"{source.get('sending_application', '')} {source.get('control_id', '')}".strip() or "hl7-alerts"
        )
    return {
        "version": row.version,
        "event": str(row.event),
        "severity": body.get("severity"),
        "title": body.get("title"),
        "summary": body.get("summary"),
        "by": who,
        "at": row.created_at,
        "delivered_at": row.delivered_at,
    }


def trend_json(trend: Trend) -> dict[str, Any]:
    def series(s: Any) -> dict[str, Any]:
        return {
            "analyte": s.analyte,
            "label": s.label,
            "points": [
                {
                    "at": p.at.isoformat(),
                    "value": p.value,
                    "value_text": p.value_text,
                    "unit": p.unit,
                    "y": p.y,
                    "status": p.status,
                    "flag": p.flag,
                }
                for p in s.points
            ],
        }

    return {
        "start": trend.start.isoformat(),
        "end": trend.end.isoformat(),
        "liver_x_uln": [series(s) for s in trend.liver],
        "counts_10e9_per_l": [series(s) for s in trend.counts],
        "orders": [
            {
                "order_id": b.order_id,
                "drug": b.drug,
                "status": str(b.status),
                "start": b.start.isoformat(),
                "end": b.end.isoformat(),
            }
            for b in trend.bands
        ],
        "alerts": [
            {
                "alert_id": m.alert_id,
                "rule": m.rule,
                "severity": m.severity,
                "at": m.at.isoformat(),
                "current": m.current,
            }
            for m in trend.markers
        ],
    }


async def _alert_data(ctx: WebContext, alert_id: str) -> tuple[AlertRecord, list[EventRow], Trend] | None:
    """One alert, its events and its patient's trend, in one read snapshot."""
    now = ctx.clock()
    days = ctx.config.web.trend_days
    settings = ctx.config.rule_settings()

    def unit(tx: SqlTransaction) -> tuple[AlertRecord, list[EventRow], Trend] | None:
        record = tx.alert_record(alert_id)
        if record is None:
            return None
        start, end = window(now, record.alert.evidence_at, days)
        patient = record.alert.patient
        history = tx.patient_history(patient, start - timedelta(days=1))
        trend = build_trend(
            history,
            tx.patient_orders(patient),
            tx.patient_alerts(patient, start),
            settings=settings,
            start=start,
            end=end,
            alert_id=alert_id,
        )
        return record, tx.alert_events(alert_id), trend

    return await ctx.read(unit)


# -- pages -------------------------------------------------------------------------


async def alert_list(request: Request) -> Response:
    ctx, who = context(request), viewer(request)
    wanted = _filter(request)
    records = await ctx.read(lambda tx: tx.filtered_alerts(wanted))
    await ctx.audit(
        who, "list", detail=f"{len(records)} alerts: " + " ".join(r.alert.alert_id for r in records)
    )
    return ctx.templates.TemplateResponse(
        request,
        "alerts.html",
        {
            "ctx": ctx,
            "viewer": who,
            "alerts": [summary(ctx, r) for r in records],
            "wanted": wanted,
            "severities": [s.value for s in Severity],
            "rules": RULE_IDS,
            "refresh": ctx.config.web.refresh_seconds,
        },
    )


async def alert_page(request: Request) -> Response:
    ctx, who = context(request), viewer(request)
    alert_id = request.path_params["alert_id"]
    found = await _alert_data(ctx, alert_id)
    if found is None:
        await ctx.audit(who, "view_alert", alert_id=alert_id, detail="no such alert")
        raise HTTPException(404, "no such alert")
    record, events, trend = found
    await ctx.audit(who, "view_alert", alert_id=alert_id, patient=record.alert.patient)
    from hl7_alerts.web.charts import render_svg  # noqa: PLC0415 (matplotlib: only when a page is drawn)

    svg = await asyncio.to_thread(render_svg, trend)
    a, t = record.alert, record.tracking
    return ctx.templates.TemplateResponse(
        request,
        "alert.html",
        {
            "ctx": ctx,
            "viewer": who,
            "alert": summary(ctx, record),
            "payload": _shown(ctx, record.payload),
            "events": [_event(ctx, e) for e in events],
            "chart": svg,
            "trend": trend,
            "can_ack": a.state == "open" and t.acknowledged_at is None,
            "csrf": who.session.csrf,
            "acked": request.query_params.get("acked"),
        },
    )


async def acknowledge(request: Request) -> Response:
    ctx, who = context(request), viewer(request)
    alert_id = request.path_params["alert_id"]
    form = await request.form()
    token = form.get("csrf")
    if not isinstance(token, str) or not auth.same(token, who.session.csrf):
        await ctx.audit(who, "csrf_refused", alert_id=alert_id)
        log.warning("web_csrf_refused", peer=who.peer)
        raise HTTPException(
            403, "the form has expired or did not come from this page; reload it and try again"
        )
    now = ctx.clock()
    request_ = AckRequest(alert_id=alert_id, by=who.username, at=now)
    settings = ctx.config.pipeline_settings()

    def unit(tx: Transaction) -> AckOutcome:
        outcome = acknowledge_alert(tx, request_, settings=settings, at=now)
        record = tx.alert_record(alert_id)
        web(tx).record_access(
            at=now,
            username=who.username,
            via=who.via,
            peer=who.peer,
            action="ack",
            alert_id=alert_id,
            patient=None if record is None else record.alert.patient,
            detail=str(outcome),
        )
        return outcome

    outcome = await ctx.write(unit)
    if outcome is AckOutcome.UNKNOWN_ALERT:
        raise HTTPException(404, "no such alert")
    return RedirectResponse(ctx.url(f"/alerts/{alert_id}?acked={outcome}"), status_code=303)


async def login_form(request: Request) -> Response:
    ctx = context(request)
    return ctx.templates.TemplateResponse(
        request,
        "login.html",
        {
            "ctx": ctx,
            "next": _next(ctx, request.query_params.get("next")),
            "error": None,
        },
    )


def _next(ctx: WebContext, target: str | None) -> str:
    """Where to go after signing in: only a path of this view."""
    home = ctx.url("/")
    if not target or not target.startswith(home if ctx.prefix else "/") or target.startswith("//"):
        return home
    return target


async def login(request: Request) -> Response:
    ctx = context(request)
    w = ctx.config.web
    form = await request.form()
    name = str(form.get("username") or "").strip()[: auth.MAX_NAME]
    password = str(form.get("password") or "")
    target = _next(ctx, str(form.get("next") or ""))
    host = request.client.host if request.client else ""
    peer = auth.peer_of(host, {k.lower(): v for k, v in request.headers.items()}, w.trusted_proxy)
    now = ctx.clock()
    failures = await ctx.read(lambda tx: tx.failed_logins(name, peer, now - w.login_window))
    if failures >= w.login_attempts:
        log.warning("web_login_throttled", peer=peer)
        return ctx.templates.TemplateResponse(
            request,
            "login.html",
            {
                "ctx": ctx,
                "next": target,
                "error": "Too many failed sign-ins. Wait a few minutes and try again.",
            },
            status_code=429,
        )
    stored = await ctx.read(lambda tx: tx.password_hash(name))
    ok = await asyncio.to_thread(auth.verify_password, stored, password)
    if not ok:
        await ctx.write(
            lambda tx: web(tx).record_access(
                at=now, username=name, via="password", peer=peer, action="login_failed"
            )
        )
        log.info("web_login_failed", peer=peer)
        return ctx.templates.TemplateResponse(
            request,
            "login.html",
            {
                "ctx": ctx,
                "next": target,
                "error": "Wrong user name or password.",
            },
            status_code=401,
        )
    token, session = auth.new_session(name, "password", now.timestamp())
    idle, lifetime = w.session_idle.total_seconds(), w.session_max.total_seconds()

    def start(tx: Transaction) -> None:
        queries = web(tx)
        queries.end_stale_sessions(now.timestamp() - idle, now.timestamp() - lifetime)
        queries.add_session(session)
        queries.record_access(at=now, username=name, via="password", peer=peer, action="login")

    await ctx.write(start)
    response = RedirectResponse(target, status_code=303)
    ctx.set_cookie(response, token)
    return response


async def logout(request: Request) -> Response:
    ctx, who = context(request), viewer(request)
    form = await request.form()
    token = form.get("csrf")
    if not isinstance(token, str) or not auth.same(token, who.session.csrf):
        raise HTTPException(403, "the form has expired; reload the page and try again")
    hashed = who.session.token_hash

    def end(tx: Transaction) -> None:
        web(tx).end_session(hashed)
        web(tx).record_access(
            at=ctx.clock(), username=who.username, via=who.via, peer=who.peer, action="logout"
        )

    await ctx.write(end)
    response = RedirectResponse(ctx.url("/login"), status_code=303)
    response.delete_cookie(auth.COOKIE, path=ctx.prefix or "/")
    return response


# -- the JSON API ------------------------------------------------------------------


async def api_alerts(request: Request) -> Response:
    ctx, who = context(request), viewer(request)
    wanted = _filter(request)
    records = await ctx.read(lambda tx: tx.filtered_alerts(wanted))
    await ctx.audit(
        who, "api_list", detail=f"{len(records)} alerts: " + " ".join(r.alert.alert_id for r in records)
    )
    return JSONResponse({"alerts": [summary(ctx, r) for r in records]})


async def api_alert(request: Request) -> Response:
    ctx, who = context(request), viewer(request)
    alert_id = request.path_params["alert_id"]
    found = await _alert_data(ctx, alert_id)
    if found is None:
        await ctx.audit(who, "api_alert", alert_id=alert_id, detail="no such alert")
        return JSONResponse({"error": "no such alert"}, status_code=404)
    record, events, trend = found
    await ctx.audit(who, "api_alert", alert_id=alert_id, patient=record.alert.patient)
    return JSONResponse(
        {
            "alert": summary(ctx, record),
            "payload": _shown(ctx, record.payload),
            "events": [_event(ctx, e) for e in events],
            "trend": trend_json(trend),
        }
    )


# -- errors ------------------------------------------------------------------------


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("web_error", error=type(exc).__name__)
    return await _error(request, 500, "something went wrong; the error is logged")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return await _error(request, exc.status_code, exc.detail)


async def _error(request: Request, status: int, detail: str) -> Response:
    if request.url.path.startswith(context(request).url("/api/")):
        return JSONResponse({"error": detail}, status_code=status)
    return HTMLResponse(f"<!doctype html><title>{status}</title><p>{_escape(detail)}</p>", status_code=status)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def routes(prefix: str) -> list[BaseRoute]:
    """Every route, under ``prefix`` (web.base_url's path)."""
    return [
        Route(f"{prefix}/", alert_list, methods=["GET"]),
        Route(f"{prefix}/alerts/{{alert_id}}", alert_page, methods=["GET"]),
        Route(f"{prefix}/alerts/{{alert_id}}/ack", acknowledge, methods=["POST"]),
        Route(f"{prefix}/api/alerts", api_alerts, methods=["GET"]),
        Route(f"{prefix}/api/alerts/{{alert_id}}", api_alert, methods=["GET"]),
        Route(f"{prefix}/login", login_form, methods=["GET"]),
        Route(f"{prefix}/login", login, methods=["POST"]),
        Route(f"{prefix}/logout", logout, methods=["POST"]),
        Mount(f"{prefix}/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
