"""The web view's ASGI application: what every request goes through.

`create_app` builds the Starlette app. Its lifespan opens the store twice:
read-only connections for every page (`StoreReader`), and a writer of the
web process's own (never the daemon's) for what the view writes: sessions,
the access audit, and acknowledgements, which go through
`lifecycle.acknowledge_alert` exactly as a pager's do. Deny by default:
`Gate` lets only the sign-in page and the stylesheet through without a
session; any other path, known or not, answers 401 (``/api/...``) or
redirects to sign-in. `SecurityHeaders` adds the CSP (no inline script or
style), no-referrer, frame-ancestors none, no caching, to every response.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hl7_alerts.config import Config
from hl7_alerts.model import PatientKey
from hl7_alerts.store import Store, Transaction, open_store
from hl7_alerts.store.queries import SqlTransaction
from hl7_alerts.store.reader import StoreReader
from hl7_alerts.store.web import web
from hl7_alerts.web import auth

T = TypeVar("T")
log = structlog.get_logger("hl7_alerts.web")
HERE = Path(__file__).resolve().parent

# Paths (after the prefix) served without a session: nothing on them is PHI.
OPEN_PATHS = ("/login", "/static/")
# A session's last-seen time is written at most this often.
TOUCH_EVERY = 60.0

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class WebContext:
    """What the handlers share: config, the two store handles, the clock."""

    config: Config
    clock: Callable[[], datetime]
    prefix: str
    secure_cookie: bool
    templates: Jinja2Templates
    reader: StoreReader | None = None
    writer: Store | None = None

    async def read(self, unit: Callable[[SqlTransaction], T]) -> T:
        assert self.reader is not None, "store not open"
        return await self.reader.read(unit)

    async def write(self, unit: Callable[[Transaction], T]) -> T:
        assert self.writer is not None, "store not open"
        return await self.writer.transact(unit)

    async def audit(
        self,
        viewer: auth.Viewer,
        action: str,
        *,
        alert_id: str | None = None,
        patient: PatientKey | None = None,
        detail: str = "",
    ) -> None:
        """One access audit row, committed before the page is sent: a view
        that cannot be audited is not shown (the caller's 503)."""
        at = self.clock()
        await self.write(
            lambda tx: web(tx).record_access(
                at=at,
                username=viewer.username,
                via=viewer.via,
                peer=viewer.peer,
                action=action,
                alert_id=alert_id,
                patient=patient,
                detail=detail,
            )
        )

    def url(self, path: str) -> str:
        return f"{self.prefix}{path}"

    # -- who is asking ------------------------------------------------------------

    async def identify(self, request: Request) -> tuple[auth.Viewer | None, str | None]:
        """The signed-in viewer (or None), and a new session token to set as
        the cookie when this request started one (proxy sign-on)."""
        w = self.config.web
        host = request.client.host if request.client else ""
        headers = {k.lower(): v for k, v in request.headers.items()}
        peer = auth.peer_of(host, headers, w.trusted_proxy)
        now = self.clock().timestamp()
        idle, lifetime = w.session_idle.total_seconds(), w.session_max.total_seconds()
        session = None
        token = request.cookies.get(auth.COOKIE)
        if token:
            hashed = auth.token_hash(token)
            session = await self.read(lambda tx: tx.session(hashed))
            if session is not None and auth.expired(session, now, idle=idle, lifetime=lifetime):
                await self.write(lambda tx: web(tx).end_session(hashed))
                session = None
        named = auth.proxy_user(headers, host, w.trusted_proxy)
        if named is not None:
            if session is None or session.username != named or session.via != "proxy":
                new, session = auth.new_session(named, "proxy", now)
                started = session
                await self.write(lambda tx: _start_session(tx, started, now - idle, now - lifetime))
                return auth.Viewer(username=named, via="proxy", peer=peer, session=session), new
        elif session is not None and session.via == "proxy":
            # The proxy no longer vouches for this browser (or the request
            # came round it): its session is not enough on its own.
            session = None
        if session is None:
            return None, None
        if now - session.seen_ts > TOUCH_EVERY:
            hashed = session.token_hash
            await self.write(lambda tx: web(tx).touch_session(hashed, now))
            session = dataclasses.replace(session, seen_ts=now)
        return auth.Viewer(username=session.username, via=session.via, peer=peer, session=session), None

    def set_cookie(self, response: Response, token: str) -> None:
        response.set_cookie(
            auth.COOKIE,
            token,
            path=self.prefix or "/",
            httponly=True,
            samesite="strict",
            secure=self.secure_cookie,
        )


def _start_session(tx: Transaction, session: Any, seen_before: float, created_before: float) -> None:
    queries = web(tx)
    queries.end_stale_sessions(seen_before, created_before)
    queries.add_session(session)


def context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.web
    return ctx


def viewer(request: Request) -> auth.Viewer:
    found: auth.Viewer = request.state.viewer
    return found


class Gate(BaseHTTPMiddleware):
    """Deny by default: no session, no page (401 for the API)."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        ctx = context(request)
        path = request.url.path
        if ctx.prefix and path == ctx.prefix:
            return RedirectResponse(f"{ctx.prefix}/", status_code=303)
        if not path.startswith(f"{ctx.prefix}/"):
            return Response("not found", status_code=404)  # nothing lives outside web.base_url's path
        inner = path[len(ctx.prefix) :]
        if any(inner == p or (p.endswith("/") and inner.startswith(p)) for p in OPEN_PATHS):
            return await call_next(request)
        try:
            who, token = await ctx.identify(request)
        except Exception:
            log.exception("web_store_unavailable")
            return Response("The store cannot be read just now; try again.", status_code=503)
        if who is None:
            if inner.startswith("/api/"):
                return JSONResponse({"error": "sign in first"}, status_code=401)
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{ctx.url('/login')}?next={quote(target, safe='')}", status_code=303)
        request.state.viewer = who
        response = await call_next(request)
        if token is not None:
            ctx.set_cookie(response, token)
        return response


class SecurityHeaders:
    """Headers every response carries, sign-in page and errors included."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", CSP.encode()),
            (b"referrer-policy", b"no-referrer"),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"cache-control", b"no-store"),
        ] + ([(b"strict-transport-security", b"max-age=31536000")] if hsts else [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in self.headers}
                message["headers"] = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() not in names
                ] + self.headers
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(
    config: Config,
    *,
    clock: Callable[[], datetime] = system_clock,
    on_ready: Callable[[], None] | None = None,
) -> Starlette:
    """The web view for ``config``; the store is opened by the app's lifespan."""
    from hl7_alerts.web import views  # noqa: PLC0415 (views import this module)

    w = config.web
    secure = w.tls.enabled or (w.base_url or "").startswith("https://")
    templates = Jinja2Templates(directory=HERE / "templates")  # autoescapes (Starlette sets it)
    ctx = WebContext(
        config=config, clock=clock, prefix=w.path_prefix, secure_cookie=secure, templates=templates
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        settings = config.store_settings()
        # The web process's own writer: one connection, named apart from the daemon's.
        ctx.writer = await open_store(dataclasses.replace(settings, owner=f"{settings.owner}-web", writers=1))
        try:
            ctx.reader = await StoreReader.open(settings)
            try:
                if on_ready is not None:
                    on_ready()
                yield
            finally:
                await ctx.reader.close()
        finally:
            await ctx.writer.close()

    app = Starlette(
        routes=views.routes(ctx.prefix),
        middleware=[Middleware(SecurityHeaders, hsts=secure), Middleware(Gate)],
        lifespan=lifespan,
        exception_handlers={HTTPException: views.http_error, 500: views.server_error},
    )
    app.state.web = ctx
    return app


def window(now: datetime, evidence_at: datetime, days: int) -> tuple[datetime, datetime]:
    """The trend's window: the last ``days`` days; for an alert older than
    that, the ``days`` up to a week after its newest evidence."""
    end = now if evidence_at >= now - timedelta(days=days) else evidence_at + timedelta(days=7)
    return end - timedelta(days=days), end
