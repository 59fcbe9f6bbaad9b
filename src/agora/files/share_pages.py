"""The public side of share links: ``/s/{token}`` for anyone who has the link.

A shared file downloads (with ``Range`` and conditional requests, as from the API); a
shared folder shows a plain listing whose entries are ``/s/{token}/{path}``. A link
with a password asks for it: browsers get a form whose correct answer sets a cookie,
signed and scoped to that link, for half an hour; scripts send it with HTTP Basic
(any user name), as ``curl -u any:PASSWORD`` does. Wrong guesses go through the login
rate limiter under the key ``share:<id>`` and the client's address.

Errors never name the owner's paths: a visitor learns only "not here".
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, FileSystemLoader
from starlette.concurrency import run_in_threadpool

from agora.core.errors import AuthenticationFailed, Conflict, Forbidden, InvalidInput, NotFound, RateLimited
from agora.files.shares import UNLOCK_LIFETIME, ShareLink, ShareLinks, share_links_of
from agora.files.store import Entry, split_path
from agora.files.transfer import download
from agora.web import pages
from agora.web.auth import client_info
from agora.web.problems import problem

COOKIE = "agora_share"
REALM = 'Basic realm="Agora share link", charset="UTF-8"'

# The layout and filters of the web UI, plus this service's own templates.
templates = Jinja2Templates(env=pages.templates.env.overlay(loader=ChoiceLoader([
    FileSystemLoader(Path(__file__).parent / "templates"), pages.templates.env.loader])))

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Row:
    name: str
    href: str
    is_dir: bool
    size: int
    modified: datetime


def _links(request: Request) -> ShareLinks:
    return share_links_of(request.app.state.runtime)


def _here(token: str, parts: list[str], folder: bool = False) -> str:
    path = "/".join(quote(part, safe="") for part in parts)
    return f"/s/{token}/{path}{'/' if folder and parts else ''}" if parts else f"/s/{token}"


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _basic_password(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


def _password_form(request: Request, action: str, *, status: int, error: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    return _render(request, "share/password.html", status=status, headers=headers, action=action, error=error)


def _render(request: Request, template: str, *, status: int = 200, headers: dict[str, str] | None = None,
            **context: object) -> Response:
    response = templates.TemplateResponse(request, template, {"user": None, "csrf": None, **context},
                                          status_code=status, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response


async def _locked(request: Request, links: ShareLinks, link: ShareLink, action: str) -> Response | bool:
    """The answer asking for the link's password, or whether the visitor just gave it
    (with HTTP Basic: then a cookie spares the next requests a password hash each)."""
    if not link.has_password or links.unlocked(link, request.cookies.get(COOKIE)):
        return False
    password = _basic_password(request)
    if password is not None:
        try:
            await links.check_password(link, password, client_info(request))
            return True
        except RateLimited as error:
            retry = str(max(1, math.ceil(error.retry_after)))
            return problem(429, error.detail, slug=error.slug, headers={"Retry-After": retry})
        except AuthenticationFailed as error:
            return problem(401, error.detail, slug=error.slug, headers={"WWW-Authenticate": REALM})
    if _wants_html(request):
        # No WWW-Authenticate here: it would make the browser show its own dialog
        # instead of this page.
        return _password_form(request, action, status=401)
    return problem(401, "this link needs its password: send it with HTTP Basic (any user name)",
                   slug="unauthenticated", headers={"WWW-Authenticate": REALM})


def _remember(request: Request, response: Response, links: ShareLinks, link: ShareLink, token: str) -> Response:
    response.set_cookie(COOKIE, links.unlock_cookie(link), max_age=UNLOCK_LIFETIME, path=f"/s/{token}",
                        httponly=True, samesite="lax", secure=request.url.scheme == "https")
    return response


def _inside(link: ShareLink, subpath: str) -> tuple[list[str], str]:
    """The components below the shared folder and the owner's path they name."""
    try:
        parts = split_path(subpath)
    except InvalidInput:
        raise NotFound("no such file in this share") from None
    return parts, link.path.rstrip("/") + "/" + "/".join(parts) if parts else link.path


@router.api_route("/s/{token}", methods=["GET", "HEAD"])
@router.api_route("/s/{token}/{subpath:path}", methods=["GET", "HEAD"])
async def visit(token: str, request: Request, subpath: str = "") -> Response:
    links = _links(request)
    link = await links.open(token)
    parts, path = _inside(link, subpath)
    unlocked = await _locked(request, links, link, _here(token, parts))
    if isinstance(unlocked, Response):
        return unlocked
    files = links.files(link)
    try:
        entry = await run_in_threadpool(files.stat, path)
        if entry.is_dir:
            response = await _folder(request, link, token, parts, entry)
        else:
            response, counted = await download(request, files, path, disposition="inline")
            if counted:
                await links.count_download(link)
    except (NotFound, InvalidInput, Forbidden, Conflict):
        raise NotFound("no such file in this share") from None
    return _remember(request, response, links, link, token) if unlocked else response


async def _folder(request: Request, link: ShareLink, token: str, parts: list[str], entry: Entry) -> Response:
    files = _links(request).files(link)
    entries = await run_in_threadpool(files.list, entry.path)
    rows = [Row(name=e.name, href=_here(token, parts + [e.name], e.is_dir), is_dir=e.is_dir, size=e.size,
                modified=datetime.fromtimestamp(e.mtime, timezone.utc)) for e in entries]
    title = parts[-1] if parts else (link.path.rsplit("/", 1)[-1] or f"{link.owner}'s files")
    parent = _here(token, parts[:-1], True) if parts else None
    return _render(request, "share/folder.html", title=title, owner=link.owner, expires_at=link.expires_at,
                   entries=rows, parent=parent)


@router.post("/s/{token}")
@router.post("/s/{token}/{subpath:path}")
async def unlock(token: str, request: Request, subpath: str = "") -> Response:
    """The password form's answer: a cookie for this link, then back to what was asked."""
    links = _links(request)
    link = await links.open(token)
    parts, _ = _inside(link, subpath)
    here = _here(token, parts)
    if not link.has_password:
        return RedirectResponse(here, status_code=303)
    # No file parts: a multipart body (not capped like a urlencoded one) must not spool
    # an anonymous upload to disk.
    form = await request.form(max_files=0, max_fields=8)
    password = form.get("password")
    try:
        await links.check_password(link, password if isinstance(password, str) else "", client_info(request))
    except RateLimited as error:
        retry = max(1, math.ceil(error.retry_after))
        return _password_form(request, here, status=429, headers={"Retry-After": str(retry)},
                              error=f"Too many wrong passwords. Try again in {retry} seconds.")
    except AuthenticationFailed:
        return _password_form(request, here, status=401, error="Wrong password.")
    return _remember(request, RedirectResponse(here, status_code=303), links, link, token)
