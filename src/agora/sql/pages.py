"""The SQL pages at ``/sql``: the list of your databases (size, access, grants; create,
share, drop) and a console per database (editor, results table, errors inline, history).

Session pages like the rest of the UI: every POST carries the session's CSRF token and
calls the domain (``hosted.py``) directly, never the JSON API. A database is named by
the ``db`` query parameter, ``owner/name``. The console works without JavaScript (a
plain form); ``/static/sql/sql.js`` adds Ctrl+Enter and a query history kept in the
browser's localStorage (the CSP forbids inline scripts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, FileSystemLoader

from agora.core.identity import Session
from agora.sql.errors import SQLError
from agora.sql.export import csv_rows, open_result
from agora.sql.hosted import HostedSQL, hosted_sql
from agora.web import pages
from agora.web.pages import PageRoute, actor, viewer

router = APIRouter(prefix="/sql", route_class=PageRoute, include_in_schema=False)

templates = Jinja2Templates(env=pages.templates.env.overlay(loader=ChoiceLoader([
    FileSystemLoader(Path(__file__).parent / "templates"), pages.templates.env.loader])))

MAX_SQL = 100_000  # characters of SQL typed into the console
SHOWN_ROWS = 1000  # rows the console shows (the API and export give more)


def _hosted(request: Request) -> HostedSQL:
    return hosted_sql(request.app.state.runtime)


def _page(request: Request, template: str, session: Session, *, status: int = 200, **context: Any) -> Response:
    context.update(user=session.user, csrf=session.csrf_token)
    response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _value(form: Any, name: str, limit: int = pages.MAX_FIELD) -> str:
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def console_url(ref: str) -> str:
    return "/sql/console?" + urlencode({"db": ref})


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "\\x" + value.hex() if len(value) <= 64 else f"\\x{value[:64].hex()}… ({len(value)} bytes)"
    return str(value)


@router.get("", name="sql.home")
async def databases_page(request: Request, session: Session = Depends(viewer)) -> Response:
    found = await _hosted(request).list(session.user)
    ports = request.app.state.runtime.config
    return _page(request, "sql/databases.html", session, databases=found, console_url=console_url,
                 notice=request.query_params.get("notice"), max_size=ports.sql.max_database_size)


@router.post("/databases")
async def create_database(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    made = await _hosted(request).create(session.user, _value(form, "name"))
    return RedirectResponse(console_url(made.ref), status_code=303)


@router.post("/drop")
async def drop_database(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    await _hosted(request).drop(session.user, _value(form, "db"))
    return RedirectResponse("/sql?notice=dropped", status_code=303)


@router.post("/grants")
async def grant(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    await _hosted(request).grant(session.user, _value(form, "db"), _value(form, "user"), _value(form, "access"))
    return RedirectResponse("/sql?notice=shared", status_code=303)


@router.post("/revoke")
async def revoke(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    await _hosted(request).revoke(session.user, _value(form, "db"), _value(form, "user"))
    return RedirectResponse("/sql?notice=unshared", status_code=303)


async def _console(request: Request, session: Session, ref: str, sql: str = "", **context: Any) -> Response:
    info = await _hosted(request).get(session.user, ref)
    return _page(request, "sql/console.html", session, database=info, sql=sql, cell=_cell, **context)


@router.get("/console")
async def console(request: Request, session: Session = Depends(viewer)) -> Response:
    return await _console(request, session, request.query_params.get("db", ""))


@router.post("/console")
async def run(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    ref, sql = _value(form, "db"), _value(form, "sql", MAX_SQL)
    hosted = _hosted(request)
    try:
        async with hosted.session(session.user, ref) as conn:
            result = await conn.execute(sql, limits=_limits(hosted))
    except SQLError as error:
        return await _console(request, session, ref, sql, error=error)
    return await _console(request, session, ref, sql, result=result)


@router.post("/export")
async def export(request: Request, session: Session = Depends(actor)) -> Response:
    """The console's statement, its whole result as a CSV download."""
    form = await request.form()
    ref, sql = _value(form, "db"), _value(form, "sql", MAX_SQL)
    try:
        result = await open_result(_hosted(request).session(session.user, ref), sql)
    except SQLError as error:
        return await _console(request, session, ref, sql, error=error)
    name = ref.replace("/", "-") or "result"
    return StreamingResponse(csv_rows(result), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}.csv"',
                                      "Cache-Control": "no-store"})


def _limits(hosted: HostedSQL):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    limits = hosted.limits()
    return replace(limits, max_rows=min(limits.max_rows, SHOWN_ROWS))
