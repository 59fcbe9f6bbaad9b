"""The web UI: login and logout, the dashboard, the user's API tokens and the API docs.

Pages are rendered on the server (Jinja2) and enhanced with htmx. The CSP forbids inline
scripts, so every script is a static file under ``static/``. The admin pages live in
``admin_pages.py``; their router is included into this one (at the bottom).

CSRF: a logged-in page carries the session's CSRF token as a hidden form field and, for
htmx, as the ``X-CSRF-Token`` header; every POST checks it. The login form has no session
yet, so it uses a double-submit cookie instead.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Coroutine
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.routing import NoMatchFound

from agora.core.errors import (AgoraError, AuthenticationFailed, EncryptionRequired, Forbidden,
                               InvalidInput, RateLimited)
from agora.core.identity import MAX_TOKEN_NAME_LENGTH, Session
from agora.core.tables import utcnow
from agora.web.auth import SESSION_COOKIE, client_info, identity
from agora.web.problems import status_of

TEMPLATES = Path(__file__).parent / "templates"
CSRF_COOKIE = "agora_csrf"
CSRF_HEADER = "x-csrf-token"
# The API allows ten years; the form asks in days.
MAX_TOKEN_DAYS = 3650
# Longer form values are cut before they reach any check: nothing legitimate is longer.
MAX_FIELD = 4096


# -- rendering ----------------------------------------------------------------------


def _when(value: datetime | None, empty: str = "never") -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else empty


def _size(value: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor:
            shown = value / factor
            return f"{shown:.0f} {unit}" if shown == int(shown) else f"{shown:.1f} {unit}"
    return f"{value} bytes"


templates = Jinja2Templates(directory=TEMPLATES)
templates.env.trim_blocks = templates.env.lstrip_blocks = True
templates.env.filters["when"] = _when
templates.env.filters["size"] = _size


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def page(request: Request, template: str, session: Session | None, *, status: int = 200,
         headers: dict[str, str] | None = None, **context: Any) -> Response:
    """Render ``template`` with the layout's context; pages are never cached (they can
    show secrets and the CSRF token)."""
    context.update(user=session.user if session else None, csrf=session.csrf_token if session else None)
    response = templates.TemplateResponse(request, template, context, status_code=status, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def render_error(request: Request, status: int, title: str, detail: str) -> Response:
    """An error page in the layout (also used by problems.py for browsers outside /api/)."""
    session = getattr(request.state, "page_session", None)
    return page(request, "error.html", session, status=status, code=status, title=title, detail=detail)


def flash(request: Request, message: str, *, status: int = 200, kind: str = "error",
          headers: dict[str, str] | None = None) -> Response:
    """A message for the page's #flash area, answering an htmx request."""
    response = templates.TemplateResponse(request, "_flash.html", {"message": message, "kind": kind},
                                          status_code=status, headers=headers)
    # The swap target came from the page; errors go to the message area instead.
    response.headers["HX-Retarget"] = "#flash"
    response.headers["HX-Reswap"] = "innerHTML"
    return response


def error_response(request: Request, error: AgoraError) -> Response:
    status = status_of(error)
    headers = {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if is_htmx(request):
        return flash(request, error.detail, status=status, headers=headers)
    response = render_error(request, status, error.title, error.detail)
    response.headers.update(headers)
    return response


# -- sessions and CSRF --------------------------------------------------------------


class LoginRequired(Exception):
    """No valid session came with a request for a page that needs one."""


class PageRoute(APIRoute):
    """A page always answers in HTML: a redirect to the login page when the session is
    missing, else an error page (or, for htmx, a message in the page) for domain errors,
    whatever the Accept header says."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                return login_redirect(request)
            except AgoraError as error:
                return error_response(request, error)

        return page_handler


def safe_next(value: str | None, default: str = "/dashboard") -> str:
    """``value`` if it is a path on this site, else ``default``: never an open redirect."""
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith("//"):
        return default
    # Browsers read '\' as '/' and drop tabs and newlines, so "/\evil" or "/\t/evil"
    # would leave the site; refuse every such character outright.
    if "\\" in value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path in ("/login", "/logout"):
        return default
    return value


def login_redirect(request: Request) -> Response:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        here = "/dashboard"
    if is_htmx(request):
        current = urlsplit(request.headers.get("hx-current-url", ""))
        here = safe_next(current.path + (f"?{current.query}" if current.query else ""))
        # A redirect answer to an XHR would be followed by the XHR itself.
        response = Response(status_code=401)
        response.headers["HX-Redirect"] = f"/login?next={quote(here, safe='/')}"
        return response
    return RedirectResponse(f"/login?next={quote(here, safe='/')}", status_code=303)


async def current_session(request: Request) -> Session | None:
    cached = getattr(request.state, "page_session", None)
    if cached is not None:
        return cached
    secret = request.cookies.get(SESSION_COOKIE)
    session = await identity(request).session(secret) if secret else None
    request.state.page_session = session
    return session


async def viewer(request: Request) -> Session:
    """The session of a page that needs a login."""
    session = await current_session(request)
    if session is None:
        raise LoginRequired()
    return session


def _same(sent: object, expected: str) -> bool:
    return isinstance(sent, str) and bool(sent) and secrets.compare_digest(sent.encode(), expected.encode())


async def check_csrf(request: Request, expected: str) -> None:
    sent: object = request.headers.get(CSRF_HEADER)
    if sent is None:
        sent = (await request.form()).get("csrf_token")
    if not _same(sent, expected):
        raise Forbidden("the form's security token is missing or out of date: reload the page and try again")


async def actor(request: Request, session: Session = Depends(viewer)) -> Session:
    """The session of a POST: logged in and carrying the session's CSRF token."""
    await check_csrf(request, session.csrf_token)
    return session


def field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value[:MAX_FIELD] if isinstance(value, str) else ""


router = APIRouter(include_in_schema=False, route_class=PageRoute)


# -- login and logout ---------------------------------------------------------------


@router.get("/")
async def home(request: Request) -> Response:
    target = "/dashboard" if await current_session(request) else "/login"
    return RedirectResponse(target, status_code=303)


def login_form(request: Request, target: str, *, status: int = 200, error: str | None = None,
               username: str = "", headers: dict[str, str] | None = None) -> Response:
    token = request.cookies.get(CSRF_COOKIE, "")
    if not 32 <= len(token) <= 64 or not token.replace("-", "").replace("_", "").isalnum():
        token = secrets.token_urlsafe(32)
    response = page(request, "login.html", None, status=status, headers=headers, login_csrf=token,
                    next=target, error=error, username=username)
    response.set_cookie(CSRF_COOKIE, token, path="/login", httponly=True, samesite="lax",
                        secure=is_https(request))
    return response


@router.get("/login")
async def login_page(request: Request) -> Response:
    target = safe_next(request.query_params.get("next"))
    if await current_session(request):
        return RedirectResponse(target, status_code=303)
    return login_form(request, target)


def _retry_message(seconds: int) -> str:
    at = (utcnow() + timedelta(seconds=seconds)).strftime("%H:%M:%S UTC")
    wait = f"{seconds} seconds" if seconds < 120 else f"{math.ceil(seconds / 60)} minutes"
    return f"Too many failed attempts. Try again in {wait} (at {at})."


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    name = field(form, "username").strip().lower()
    password = field(form, "password")
    target = safe_next(field(form, "next"))
    if not _same(field(form, "csrf_token"), request.cookies.get(CSRF_COOKIE, "")):
        return login_form(request, target, status=403, username=name,
                          error="This form has expired or did not come from this site. Please try again.")
    client = client_info(request, "web")
    try:
        user = await identity(request).authenticate(name, password, client)
    except RateLimited as error:
        retry = max(1, math.ceil(error.retry_after))
        return login_form(request, target, status=429, username=name, error=_retry_message(retry),
                          headers={"Retry-After": str(retry)})
    except EncryptionRequired:
        return login_form(request, target, status=403, username=name,
                          error="Passwords are accepted only over HTTPS from your address: "
                                "open this page with https:// and log in there.")
    except AuthenticationFailed:
        return login_form(request, target, status=401, username=name, error="Wrong user name or password.")
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        await identity(request).end_session(old)
    secret, _ = await identity(request).create_session(user, client)
    response = RedirectResponse(target, status_code=303)
    # No Max-Age: the server slides the session's expiry; the browser keeps the cookie
    # until it closes.
    response.set_cookie(SESSION_COOKIE, secret, path="/", httponly=True, samesite="lax",
                        secure=is_https(request))
    response.delete_cookie(CSRF_COOKIE, path="/login", httponly=True, samesite="lax", secure=is_https(request))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    secret = request.cookies.get(SESSION_COOKIE)
    session = await current_session(request)
    if session is not None and secret:
        await check_csrf(request, session.csrf_token)
        await identity(request).end_session(secret)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=is_https(request))
    return response


# -- dashboard ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceCard:
    name: str
    title: str
    summary: str

    @property
    def route(self) -> str:
        # A service's pages name their start page "<service>.home"; until the app has
        # such a route, the card says that the service is not there.
        return f"{self.name}.home"


CARDS = (
    ServiceCard("files", "Files", "Share, upload and download files over FTP(S), WebDAV and HTTP."),
    ServiceCard("mail", "Mail", "Send and read mail with any mail client over SMTP, IMAP and POP3."),
    ServiceCard("bank", "Bank", "Hold money in accounts, transfer it and read statements."),
    ServiceCard("sql", "SQL", "Query databases hosted here over HTTP or the PostgreSQL protocol."),
)


def _home(request: Request, card: ServiceCard) -> str | None:
    try:
        return str(request.app.url_path_for(card.route))
    except NoMatchFound:
        return None


@router.get("/dashboard")
async def dashboard(request: Request, session: Session = Depends(viewer)) -> Response:
    cards = [(card, _home(request, card)) for card in CARDS]
    client = client_info(request, "web")
    return page(request, "dashboard.html", session, cards=cards, exposed=not client.secure and not client.loopback)


# -- API tokens ---------------------------------------------------------------------


async def tokens_page(request: Request, session: Session, *, status: int = 200, **context: Any) -> Response:
    tokens = await identity(request).list_tokens(session.user)
    context.setdefault("form", {})
    return page(request, "tokens.html", session, status=status, tokens=tokens, now=utcnow(),
                max_days=MAX_TOKEN_DAYS, max_name=MAX_TOKEN_NAME_LENGTH, **context)


@router.get("/tokens")
async def tokens(request: Request, session: Session = Depends(viewer)) -> Response:
    return await tokens_page(request, session)


def _expiry(days: str) -> datetime | None:
    days = days.strip()
    if not days:
        return None
    if not days.isdigit() or not 1 <= int(days) <= MAX_TOKEN_DAYS:
        raise InvalidInput(f"the expiry is a whole number of days from 1 to {MAX_TOKEN_DAYS}, or empty for none")
    return utcnow() + timedelta(days=int(days))


@router.post("/tokens")
async def create_token(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    values = {"name": field(form, "name"), "expires_days": field(form, "expires_days")}
    try:
        token, secret = await identity(request).create_token(
            session.user, values["name"], expires_at=_expiry(values["expires_days"]),
            client=client_info(request, "web"))
    except InvalidInput as error:
        return await tokens_page(request, session, status=422, error=error.detail, form=values)
    return await tokens_page(request, session, status=201, created=token, secret=secret)


@router.post("/tokens/{token_id}/revoke")
async def revoke_token(token_id: str, request: Request, session: Session = Depends(actor)) -> Response:
    token = await identity(request).revoke_token(session.user, token_id, client=client_info(request, "web"))
    if is_htmx(request):
        return page(request, "_token_row.html", session, token=token, now=utcnow())
    return RedirectResponse("/tokens", status_code=303)


# -- API documentation --------------------------------------------------------------


@router.get("/api/docs")
async def api_docs(request: Request) -> Response:
    """Swagger UI from our own copy (static/vendor), started by static/swagger-init.js."""
    return templates.TemplateResponse(request, "api_docs.html", {"openapi_url": request.app.openapi_url})

