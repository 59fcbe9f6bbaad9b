"""The SQL pages at ``/sql``: the list of your databases (size, access, grants; create,
empty or from an uploaded SQLite file, whose converter's report or error is shown on a
page of its own; share, drop) and a console per database: the schema (tables, columns, types, indexes)
beside the editor, scripts of several statements (each one's result in a grid, or its
error), the editor's statement as a CSV download, and a CSV file imported into a table.

Session pages like the rest of the UI: every POST carries the session's CSRF token and
calls the domain (``hosted.py``) directly, never the JSON API. A database is named by
the ``db`` query parameter, ``owner/name``. Statements run as the user's own role on a
borrowed connection, in a worker thread (``results.call``), as the API's do. The console
works without JavaScript (plain forms); ``/static/sql/sql.js`` adds Ctrl+Enter and a
query history kept in the browser's localStorage (the CSP forbids inline scripts).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, FileSystemLoader
from starlette.datastructures import UploadFile

from agora.core.errors import AgoraError, InvalidInput, TooLarge
from agora.core.lazy import lazy_module
from agora.core.identity import Session
from agora.sql.api import check_new_name, upload_name, upload_path
from agora.sql.errors import SQLError
from agora.sql.hosted import HostedSQL, hosted_sql
from agora.web import pages
from agora.web.pages import PageRoute, actor, check_csrf, viewer
from agora.web.problems import status_of

# The psycopg side, loaded at the first query rather than at start-up.
execute = lazy_module("agora.sql.execute")
results = lazy_module("agora.sql.export")
values = lazy_module("agora.sql.values")
convert = lazy_module("agora.sql.convert")
psycopg = lazy_module("psycopg")

router = APIRouter(prefix="/sql", route_class=PageRoute, include_in_schema=False)

templates = Jinja2Templates(env=pages.templates.env.overlay(loader=ChoiceLoader([
    FileSystemLoader(Path(__file__).parent / "templates"), pages.templates.env.loader])))

MAX_SQL = 100_000  # characters of SQL typed into the console
SHOWN_ROWS = 1000  # rows the console shows of each statement (the API and export give more)
SHOWN_VALUE = 200  # characters of one value shown in the grid
SHOWN_TABLES = 500  # tables (and views) listed beside the editor
SHOWN_COLUMNS = 10_000  # columns listed, in all


def _hosted(request: Request) -> HostedSQL:
    return hosted_sql(request.app.state.runtime)


def _settings(request: Request) -> Any:
    return request.app.state.runtime.config.sql


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


def _cell(value: str | None) -> str:
    if value is None:
        return "NULL"
    return value if len(value) <= SHOWN_VALUE else f"{value[:SHOWN_VALUE]}… ({len(value)} characters)"


# -- the schema ---------------------------------------------------------------------------


@dataclass
class Column:
    name: str
    type: str
    nullable: bool
    default: str | None
    primary: bool


@dataclass
class Index:
    name: str
    definition: str


@dataclass
class Table:
    schema: str
    name: str
    kind: str  # table, view, materialized view, foreign table, partitioned table
    columns: list[Column] = field(default_factory=list)
    indexes: list[Index] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"


_KINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "f": "foreign table"}
_TABLES = """
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'
ORDER BY n.nspname <> 'public', n.nspname, c.relname LIMIT %s"""
_COLUMNS = """
SELECT a.attrelid::int8, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid),
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               WHERE i.indrelid = a.attrelid AND i.indisprimary AND a.attnum = ANY (i.indkey))
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY (%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum LIMIT %s"""
_INDEXES = """
SELECT i.indrelid::int8, c.relname::text, pg_catalog.pg_get_indexdef(i.indexrelid)
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = ANY (%s::oid[]) ORDER BY i.indrelid, NOT i.indisprimary, c.relname"""


def read_schema(conn: psycopg.Connection) -> list[Table]:
    """The database's tables and views (not PostgreSQL's own), their columns and indexes."""
    try:
        found = conn.execute(_TABLES, [SHOWN_TABLES], prepare=False).fetchall()
        tables = {oid: Table(schema, name, _KINDS.get(kind, str(kind))) for oid, schema, name, kind in found}
        oids = "{" + ",".join(map(str, tables)) + "}"
        for oid, name, type_, notnull, default, primary in conn.execute(
                _COLUMNS, [oids, SHOWN_COLUMNS], prepare=False):
            tables[oid].columns.append(Column(name, type_, not notnull, default, primary))
        for oid, name, definition in conn.execute(_INDEXES, [oids], prepare=False):
            tables[oid].indexes.append(Index(name, definition))
    except psycopg.Error as error:
        raise execute.sql_error(str(error).strip(), error.sqlstate) from None
    finally:
        execute.end_transaction(conn)
    return list(tables.values())


# -- the list of databases ----------------------------------------------------------------


@router.get("", name="sql.home")
async def databases_page(request: Request, session: Session = Depends(viewer)) -> Response:
    found = await _hosted(request).list(session.user)
    return _page(request, "sql/databases.html", session, databases=found, console_url=console_url,
                 notice=request.query_params.get("notice"), max_size=_settings(request).max_database_size,
                 max_upload=_settings(request).max_upload)


@router.post("/databases")
async def create_database(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    made = await _hosted(request).create(session.user, _value(form, "name"))
    return RedirectResponse(console_url(made.ref), status_code=303)


async def _uploaded(request: Request, session: Session, missing: str) -> tuple[Any, UploadFile]:
    """The form of an upload and its file, within sql.max_upload and CSRF-checked."""
    limit = _settings(request).max_upload
    declared = request.headers.get("content-length", "")
    # The form parser spools the file before the token can be checked: refuse what could
    # never be imported before it is read.
    if not declared.isdigit() or int(declared) > limit:
        raise TooLarge(f"uploaded files are limited to {limit} bytes (sql.max_upload); the form must declare its size")
    await check_csrf(request, session.csrf_token)
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise InvalidInput(missing)
    return form, upload


@router.post("/import/sqlite")
async def create_from_sqlite(request: Request, session: Session = Depends(viewer)) -> Response:
    """A new database from an uploaded SQLite file: the converter's report, or its error."""
    form, upload = await _uploaded(request, session, "choose a SQLite file")
    name = _value(form, "name", 200).strip() or _name_of(upload.filename)
    hosted = _hosted(request)
    context: dict[str, Any] = {"name": name, "filename": upload.filename}
    try:
        await check_new_name(hosted, session.user, name)
        async with upload_path(request.app.state.runtime, upload_name(upload.filename, f"{name}.sqlite")) as path:
            await asyncio.to_thread(_save, upload, path)
            info, report = await hosted.create_from_sqlite(session.user, name, path)
    except AgoraError as error:
        return _page(request, "sql/imported.html", session, status=status_of(error), error=error,
                     conversion=isinstance(error, convert.ConversionError), **context)
    finally:
        await upload.close()
    return _page(request, "sql/imported.html", session, database=info, report=report,
                 console_url=console_url(info.ref), **context)


def _name_of(filename: str) -> str:
    """A database name from a file's: "My Shop.sqlite" -> "my-shop"."""
    return re.sub(r"[^a-z0-9_-]+", "-", Path(filename).stem.lower()).strip("-_")[:63] or "imported"


def _save(upload: UploadFile, path: Path) -> None:
    """The form's file (spooled by the form parser) into ``path``, piece by piece."""
    upload.file.seek(0)
    with open(path, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1024 * 1024)


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


# -- the console ----------------------------------------------------------------------------


async def _console(request: Request, session: Session, ref: str, sql: str = "", *, run: str | None = None,
                   upload: UploadFile | None = None, form: Any = None, **context: Any) -> Response:
    """The console page; first runs the script ``run`` or imports ``upload``, if given,
    on the same borrowed connection that then reads the schema."""
    hosted = _hosted(request)
    info = await hosted.get(session.user, ref)
    s = _settings(request)
    schema: list[Table] = []
    try:
        async with hosted.borrow(session.user, info.ref) as conn:
            try:
                if run is not None:
                    context["outcome"] = await results.call(
                        conn, s.query_timeout * (run.count(";") + 1), execute.script, run,
                        max_rows=min(s.max_rows, SHOWN_ROWS), max_bytes=s.max_result_bytes)
                if upload is not None:
                    context.update(await _import(conn, s, upload, form))
            except (SQLError, InvalidInput) as error:
                context["error"] = error
            schema = await results.call(conn, s.query_timeout, read_schema)
    except SQLError as error:
        context.setdefault("error", error)
    return _page(request, "sql/console.html", session, database=info, sql=sql, cell=_cell, schema=schema,
                 shown_tables=SHOWN_TABLES, **context)


@router.get("/console")
async def console(request: Request, session: Session = Depends(viewer)) -> Response:
    return await _console(request, session, request.query_params.get("db", ""))


@router.post("/console")
async def run(request: Request, session: Session = Depends(actor)) -> Response:
    """The editor's script: each statement in turn, stopping at the first error."""
    form = await request.form()
    ref, sql = _value(form, "db"), _value(form, "sql", MAX_SQL)
    return await _console(request, session, ref, sql, run=sql)


@router.post("/export")
async def export(request: Request, session: Session = Depends(actor)) -> Response:
    """The editor's statement, its whole result as a CSV download."""
    form = await request.form()
    ref, sql = _value(form, "db"), _value(form, "sql", MAX_SQL)
    s = _settings(request)
    if len(statements := execute.split_statements(sql)) > 1:
        return await _console(request, session, ref, sql, error=InvalidInput(
            f"Export CSV takes one statement; the editor holds {len(statements)}"))
    try:
        chunks = await results.open_stream(_hosted(request).borrow(session.user, ref), s.query_timeout,
                                   lambda conn: results.csv_chunks(conn, sql, (), s.stream_chunk))
    except SQLError as error:
        return await _console(request, session, ref, sql, error=error)
    name = ref.replace("/", "-") or "result"
    return StreamingResponse(chunks, media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}.csv"',
                                      "Cache-Control": "no-store"})


@router.post("/import")
async def import_file(request: Request, session: Session = Depends(viewer)) -> Response:
    """A CSV file into a new table (its header names the columns) or onto an existing one."""
    form, upload = await _uploaded(request, session, "choose a CSV file to import")
    return await _console(request, session, _value(form, "db"), upload=upload, form=form)


async def _import(conn: psycopg.Connection, s: Any, upload: UploadFile, form: Any) -> dict[str, Any]:
    table = _value(form, "table").strip() or Path(upload.filename or "").stem.strip()
    if not table or len(table.encode()) > 63:
        raise InvalidInput("name the table: 1 to 63 bytes")
    create = _value(form, "mode") != "append"
    infer = _value(form, "types") == "infer"
    count = await results.call(conn, s.query_timeout, results.import_csv, upload.file, table, create=create, infer=infer)
    verb = "into a new table" if create else "onto table"
    return {"notice": f"{count} rows imported {verb} {table}.", "import_table": table}
