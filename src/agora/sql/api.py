"""The hosted-SQL JSON API, ``/api/v1/sql/...``.

A database in a URL (``{db}``) is ``name`` (yours) or ``owner:name`` (anyone's that is
shared with you; ``:`` appears in no user or database name). Statements run on the
PostgreSQL engine as the calling user's own role, so PostgreSQL itself decides what
they may do. Shapes:

- ``GET /api/v1/sql/info``: ``{"postgres_port": n | null, "tls": true, limits...}``
- ``POST /api/v1/sql/databases`` ``{"name"}`` -> 201 database; ``GET`` lists yours and
  those shared with you; ``GET``/``DELETE /api/v1/sql/databases/{db}``;
  ``PUT /api/v1/sql/databases/{db}/grants/{user}`` ``{"access": "read"|"write"}``,
  ``DELETE`` to revoke. A database: ``{"name", "owner", "ref", "access", "size",
  "created_at", "grants": [{"user", "access"}]}``.
- ``POST /api/v1/sql/databases/{name}/sqlite`` with a SQLite database file as the body
  (``Content-Type: application/vnd.sqlite3`` or ``application/octet-stream``; curl:
  ``--data-binary @shop.sqlite -H 'Content-Type: application/vnd.sqlite3'``) -> 201, a new
  database ``name`` holding what the file holds (converted as the databases of earlier
  versions are: the convert package), its object with the converter's ``"report": {"tables":
  [{"name", "rows", "columns": [{"name", "declared", "type"}]}], "indexes", "views",
  "warnings", "rows"}``. The body goes to a temporary file in the data dir, never into
  memory; past sql.max_upload bytes 413. A file that cannot be converted is a 422 with
  ``table``, ``row`` and ``column`` where the converter can tell (no database is left);
  a name you already use 409; sql.max_databases reached 413 (as creating one).
- ``POST /api/v1/sql/{db}/query`` ``{"sql", "params": [...]}`` (one statement, ``$1``
  placeholders) -> ``{"columns": [names], "types": [PostgreSQL type names: int4, text,
  timestamptz, _int4 for int4[]...], "rows": [[...]], "rows_affected": n, "truncated":
  bool, "command": "SELECT 2"}``. At most sql.max_rows rows and sql.max_result_bytes bytes
  of them as sent; past either, ``truncated`` (a plain read is stopped there, any
  other statement still runs to its end).
  Values: integers and booleans as themselves, numeric as a string, timestamps ISO
  8601, bytea ``{"$base64": "..."}`` (accepted as a parameter too), json/jsonb as JSON,
  arrays as arrays, NULL as null, anything else as PostgreSQL's text (values.py).
- ``POST /api/v1/sql/{db}/batch`` ``{"statements": [{"sql", "params"}]}`` -> ``{"results":
  [query result...]}``: one transaction, all or nothing.
- ``POST /api/v1/sql/{db}/stream``: NDJSON, a ``{"columns", "types"}`` line, one JSON
  array per row, then ``{"rows": n}`` (or ``{"error": problem}`` if it failed midway).
- ``POST /api/v1/sql/{db}/export``: CSV with a header line (PostgreSQL's text of each
  value, bytea base64, NULL empty).

SQL errors are problem documents (status 400; 403 for denials (42501), 409 for a lock
wait that timed out (55P03), 507 for a full database (53100), 503 when the engine cannot
be reached) with ``sqlstate`` (PostgreSQL's code) and, in a batch, ``statement`` (0-based
index of the failing one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path as FilePath
from typing import Any, AsyncIterator
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from agora.core.errors import Conflict, InvalidInput, NotFound, TooLarge
from agora.core.lazy import lazy_module
from agora.core.identity import User
from agora.core.runtime import Runtime
from agora.sql.errors import SQLError
from agora.sql.hosted import MAX_IDENTIFIER, DatabaseInfo, HostedSQL, hosted_sql, validate_database_name
from agora.web.auth import api_user
from agora.web.problems import problem

# The psycopg side, loaded at the first query rather than at start-up.
execute = lazy_module("agora.sql.execute")
results = lazy_module("agora.sql.export")
values = lazy_module("agora.sql.values")
convert = lazy_module("agora.sql.convert")

router = APIRouter()
API_PREFIX = "/api/v1/sql"
api = APIRouter(prefix=API_PREFIX, tags=["sql"])

PROBLEM: dict[str, Any] = {"model": None, "content": {"application/problem+json": {}}}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {"description": "Missing, unknown, revoked or expired token", **PROBLEM}}
DB_ERRORS: dict[int | str, dict[str, Any]] = {**AUTH_ERRORS, 404: {"description": "No such database, or not shared with you", **PROBLEM}}
QUERY_ERRORS: dict[int | str, dict[str, Any]] = {**DB_ERRORS, 400: {"description": "The statement failed (see sqlstate)", **PROBLEM},
                403: {"description": "Not allowed (read-only access, or denied by isolation)", **PROBLEM},
                409: {"description": "A lock wait timed out (55P03)", **PROBLEM},
                413: {"description": "A statement longer than sql.max_statement", **PROBLEM},
                503: {"description": "The engine cannot be reached, or refused the connection", **PROBLEM},
                507: {"description": "The database is full (sql.max_database_size)", **PROBLEM}}
_STATUS = {"42501": 403, "55P03": 409, "53100": 507, "53300": 503, "57P01": 503, "57P03": 503}
_UNREACHABLE = ("08000", "08001", "08003", "08004", "08006")  # the engine, not the statement

DbRef = Path(description="A database: `name` (yours) or `owner:name`", max_length=200)

# An uploaded SQLite file: what it may be sent as, and how it is received.
SQLITE_TYPES = ("application/vnd.sqlite3", "application/x-sqlite3", "application/octet-stream")
SQLITE_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    kind: {"schema": {"type": "string", "format": "binary"}} for kind in ("application/vnd.sqlite3",
                                                                         "application/octet-stream")}}}
UPLOAD_CHUNK = 1024 * 1024  # bytes gathered before each write to the temporary file
UPLOAD_IDLE_TIMEOUT = 60.0  # seconds without a byte from the client before an upload is dropped
STALE_UPLOAD = 86400.0  # seconds after which an upload's folder left by a crash is removed
_SAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GrantOut(BaseModel):
    user: str
    access: str = Field(description="read or write")


class DatabaseOut(BaseModel):
    name: str
    owner: str
    ref: str = Field(description="owner/name, as psql's dbname")
    access: str = Field(description="Yours: owner, write or read")
    size: int = Field(description="Bytes on disk")
    created_at: datetime
    grants: list[GrantOut] = Field(description="Who else may use it (shown to the owner)")


class CreateRequest(Strict):
    name: str = Field(max_length=63)


class ColumnReportOut(BaseModel):
    name: str
    declared: str = Field(description="SQLite's declared type (empty: none)")
    type: str = Field(description="The PostgreSQL type it was given")


class TableReportOut(BaseModel):
    name: str
    rows: int = Field(description="Rows copied (checked against the SQLite file's count)")
    columns: list[ColumnReportOut]


class ReportOut(BaseModel):
    tables: list[TableReportOut]
    indexes: list[str] = Field(description="Indexes created (those the file named)")
    views: list[str] = Field(description="Views created")
    warnings: list[str] = Field(description="What could not be carried over as it was, and why")
    rows: int = Field(description="Rows copied, in all")


class ImportedDatabaseOut(DatabaseOut):
    report: ReportOut = Field(description="What the converter did")


class GrantRequest(Strict):
    access: str = Field(pattern="^(read|write)$")


class QueryRequest(Strict):
    sql: str
    params: list[Any] = Field(default_factory=list)


class BatchRequest(Strict):
    statements: list[QueryRequest] = Field(min_length=1)


class QueryOut(BaseModel):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    rows_affected: int
    truncated: bool
    command: str


class BatchOut(BaseModel):
    results: list[QueryOut]


def _hosted(request: Request) -> HostedSQL:
    return hosted_sql(request.app.state.runtime)


def ref_of(db: str) -> str:
    """The domain's ``owner/name`` for a URL's ``owner:name``."""
    if "/" in db:
        raise InvalidInput("in a URL, another user's database is owner:name")
    return db.replace(":", "/", 1)


def _out(info: DatabaseInfo) -> DatabaseOut:
    return DatabaseOut(name=info.name, owner=info.owner, ref=info.ref, access=info.access, size=info.size,
                       created_at=info.created_at, grants=[GrantOut(user=g.user, access=g.access) for g in info.grants])


def sql_problem(request: Request, error: SQLError) -> Response:
    extra: dict[str, Any] = {"sqlstate": error.sqlstate}
    if error.index is not None:
        extra["statement"] = error.index
    status = 503 if error.sqlstate in _UNREACHABLE else _STATUS.get(error.sqlstate, 400)
    return problem(status, error.detail, slug=error.slug, title=error.title, instance=request.url.path, **extra)


def _statement(request: Request, body: QueryRequest) -> tuple[str, list[Any]]:
    limit = request.app.state.runtime.config.sql.max_statement
    if len(body.sql) > limit or len(body.sql.encode("utf-8", "surrogatepass")) > limit:
        raise TooLarge(f"a statement has at most {limit} bytes (sql.max_statement)")
    return body.sql, values.params_from_json(body.params)


def report_out(report: convert.ConversionReport) -> ReportOut:
    return ReportOut(tables=[TableReportOut(name=t.name, rows=t.target_rows, columns=[
        ColumnReportOut(name=c.name, declared=c.declared, type=c.type) for c in t.columns]) for t in report.tables],
        indexes=list(report.indexes), views=list(report.views), warnings=list(report.warnings), rows=report.rows)


def conversion_problem(request: Request, error: convert.ConversionError) -> Response:
    """422, naming the table, row and column where the converter could tell."""
    extra: dict[str, Any] = {}
    for key, value in (("table", error.table), ("row", error.rowid), ("column", error.column)):
        if value is not None:
            extra[key] = value if isinstance(value, (int, str)) else str(value)
    return problem(422, error.detail, slug="sqlite-conversion", title=error.title, instance=request.url.path,
                   **extra)


async def check_new_name(hosted: HostedSQL, user: User, name: str) -> None:
    """Before an upload is received: the refusals ``create`` would give at its end."""
    validate_database_name(name)
    ref = f"{user.name}/{name}"
    if len(ref.encode()) > MAX_IDENTIFIER:
        raise InvalidInput(f"{ref!r} is longer than PostgreSQL's {MAX_IDENTIFIER} bytes: choose a shorter name")
    own = [d for d in await hosted.list(user) if d.access == "owner"]
    if any(d.name == name for d in own):
        raise Conflict(f"you already have a database named {name!r}")
    limit = hosted.settings.max_databases
    if len(own) >= limit:
        raise TooLarge(f"you have {len(own)} databases, the most allowed (sql.max_databases)")


def upload_name(filename: str | None, default: str) -> str:
    """The temporary file's name: the upload's own (the converter's messages name it)."""
    name = _SAFE_FILENAME.sub("_", FilePath(filename or "").name).strip("._")[:100]
    return name or default


def _fresh_folder(root: FilePath) -> FilePath:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = time.time()
    for old in root.iterdir():  # left by a crash mid-upload
        with contextlib.suppress(OSError):
            newest = max([old.stat().st_mtime] + [p.stat().st_mtime for p in old.iterdir()])
            if now - newest > STALE_UPLOAD:
                shutil.rmtree(old, ignore_errors=True)
    return FilePath(tempfile.mkdtemp(dir=root))


@contextlib.asynccontextmanager
async def upload_path(runtime: Runtime, filename: str) -> AsyncIterator[FilePath]:
    """A path for an uploaded file in the data dir (DATA_DIR/sql/uploads/<random>/), in a
    folder of its own that is removed afterwards."""
    folder = await asyncio.to_thread(_fresh_folder, runtime.data_dir / "sql" / "uploads")
    try:
        yield folder / filename
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


async def receive_file(request: Request, path: FilePath, limit: int) -> int:
    """The request's body into ``path``, at most ``limit`` bytes (TooLarge beyond);
    TimeoutError when the client stops sending, ClientDisconnect when it goes."""
    received = 0
    buffer = bytearray()
    handle = await asyncio.to_thread(open, path, "wb")
    stream = request.stream()
    try:
        while True:
            try:
                async with asyncio.timeout(UPLOAD_IDLE_TIMEOUT):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                break
            received += len(chunk)
            if received > limit:
                raise TooLarge(f"uploaded files are limited to {limit} bytes (sql.max_upload)")
            buffer += chunk
            if len(buffer) >= UPLOAD_CHUNK:
                await asyncio.to_thread(handle.write, buffer)
                buffer.clear()
        if buffer:
            await asyncio.to_thread(handle.write, buffer)
    finally:
        await stream.aclose()
        await asyncio.to_thread(handle.close)
    return received


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


@api.get("/info", summary="How to reach hosted SQL: the PostgreSQL port and the limits")
async def info(request: Request, user: User = Depends(api_user)) -> dict[str, Any]:
    runtime = request.app.state.runtime
    try:
        ports = json.loads((runtime.data_dir / "run" / "ports.json").read_text())
    except (OSError, ValueError):
        ports = {}
    s = runtime.config.sql
    return {"postgres_port": ports.get("postgres"), "tls": True, "query_timeout": s.query_timeout,
            "max_rows": s.max_rows, "max_result_bytes": s.max_result_bytes,
            "max_database_size": s.max_database_size, "max_databases": s.max_databases}


@api.get("/databases", response_model=list[DatabaseOut], responses=AUTH_ERRORS,
         summary="Your databases, then those shared with you")
async def list_databases(request: Request, user: User = Depends(api_user)) -> list[DatabaseOut]:
    return [_out(i) for i in await _hosted(request).list(user)]


@api.post("/databases", response_model=DatabaseOut, status_code=201, summary="Create a database",
          responses={**AUTH_ERRORS, 409: {"description": "You have one of that name", **PROBLEM},
                     413: {"description": "You have sql.max_databases already", **PROBLEM},
                     422: {"description": "Not a valid name", **PROBLEM}})
async def create_database(request: Request, body: CreateRequest, user: User = Depends(api_user)) -> DatabaseOut:
    return _out(await _hosted(request).create(user, body.name))


@api.post("/databases/{name}/sqlite", response_model=ImportedDatabaseOut, status_code=201,
          openapi_extra=SQLITE_BODY, summary="Create a database from a SQLite file",
          responses={**AUTH_ERRORS, 201: {"description": "Created, with the converter's report"},
                     408: {"description": "The client stopped sending", **PROBLEM},
                     409: {"description": "You have one of that name", **PROBLEM},
                     413: {"description": "Over sql.max_upload, or you have sql.max_databases already", **PROBLEM},
                     415: {"description": "Not sent as application/vnd.sqlite3 or application/octet-stream",
                           **PROBLEM},
                     422: {"description": "Not a valid name, or a file that cannot be converted (`table`, `row`, "
                                          "`column` say where); no database is left", **PROBLEM},
                     503: {"description": "The engine cannot be reached", **PROBLEM}})
async def create_from_sqlite(request: Request, response: Response, name: str = Path(max_length=63),
                             user: User = Depends(api_user)) -> Any:
    """The body, a SQLite database file, becomes the new database `name`: its tables with
    their types mapped to PostgreSQL's, rows, keys, indexes and views (see the report's
    warnings for what could not be carried over)."""
    runtime = request.app.state.runtime
    limit = runtime.config.sql.max_upload
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind not in SQLITE_TYPES:
        return problem(415, f"send the SQLite file as the body, as application/vnd.sqlite3 (not {kind})",
                       slug="unsupported-media-type", instance=request.url.path)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"uploaded files are limited to {limit} bytes (sql.max_upload)")
    hosted = _hosted(request)
    await check_new_name(hosted, user, name)
    async with upload_path(runtime, f"{name}.sqlite") as path:
        try:
            await receive_file(request, path, limit)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is listening; for the access log
        except TimeoutError:
            return problem(408, "no data arrived for too long; the upload was dropped", slug="upload-timeout",
                           title="Request timeout", headers={"Connection": "close"})
        try:
            info, report = await hosted.create_from_sqlite(user, name, path)
        except convert.ConversionError as error:
            return conversion_problem(request, error)
        except SQLError as error:
            return sql_problem(request, error)
    with contextlib.suppress(SQLError, NotFound):  # its size, now it is filled
        info = await hosted.get(user, info.name)
    response.headers["Location"] = f"{API_PREFIX}/databases/{quote(info.name)}"
    return ImportedDatabaseOut(**_out(info).model_dump(), report=report_out(report))


@api.get("/databases/{db}", response_model=DatabaseOut, responses=DB_ERRORS, summary="One database")
async def get_database(request: Request, db: str = DbRef, user: User = Depends(api_user)) -> DatabaseOut:
    return _out(await _hosted(request).get(user, ref_of(db)))


@api.delete("/databases/{db}", status_code=204, response_class=Response, summary="Drop a database (owner)",
            responses={**DB_ERRORS, 403: {"description": "Not the owner", **PROBLEM}})
async def drop_database(request: Request, db: str = DbRef, user: User = Depends(api_user)) -> Response:
    await _hosted(request).drop(user, ref_of(db))
    return Response(status_code=204)


@api.put("/databases/{db}/grants/{grantee}", response_model=GrantOut, summary="Share a database (owner)",
         responses={**DB_ERRORS, 403: {"description": "Not the owner", **PROBLEM}})
async def grant(request: Request, body: GrantRequest, db: str = DbRef, grantee: str = Path(max_length=64),
                user: User = Depends(api_user)) -> GrantOut:
    g = await _hosted(request).grant(user, ref_of(db), grantee, body.access)
    return GrantOut(user=g.user, access=g.access)


@api.delete("/databases/{db}/grants/{grantee}", status_code=204, response_class=Response,
            summary="Stop sharing a database with a user (owner)",
            responses={**DB_ERRORS, 403: {"description": "Not the owner", **PROBLEM}})
async def revoke(request: Request, db: str = DbRef, grantee: str = Path(max_length=64),
                 user: User = Depends(api_user)) -> Response:
    await _hosted(request).revoke(user, ref_of(db), grantee)
    return Response(status_code=204)


@api.post("/{db}/query", response_model=QueryOut, responses=QUERY_ERRORS, summary="Run one statement")
async def query(request: Request, body: QueryRequest, db: str = DbRef, user: User = Depends(api_user)) -> Any:
    sql, params = _statement(request, body)
    s = request.app.state.runtime.config.sql
    try:
        async with _hosted(request).borrow(user, ref_of(db)) as conn:
            return _json(await results.call(conn, s.query_timeout, execute.query_json, sql, params,
                                    max_rows=s.max_rows, max_bytes=s.max_result_bytes))
    except SQLError as error:
        return sql_problem(request, error)


@api.post("/{db}/batch", response_model=BatchOut, responses=QUERY_ERRORS,
          summary="Run statements in one transaction: all or nothing")
async def batch(request: Request, body: BatchRequest, db: str = DbRef, user: User = Depends(api_user)) -> Any:
    s = request.app.state.runtime.config.sql
    if len(body.statements) > s.max_batch:
        raise InvalidInput(f"a batch has at most {s.max_batch} statements (sql.max_batch)")
    statements = [_statement(request, item) for item in body.statements]
    try:
        async with _hosted(request).borrow(user, ref_of(db)) as conn:
            return _json(await results.call(conn, s.query_timeout * len(statements), execute.batch_json, statements,
                                    max_rows=s.max_rows, max_bytes=s.max_result_bytes))
    except SQLError as error:
        return sql_problem(request, error)


async def _stream(request: Request, body: QueryRequest, db: str, user: User, chunks: Any) -> Any:
    sql, params = _statement(request, body)
    s = request.app.state.runtime.config.sql
    return await results.open_stream(_hosted(request).borrow(user, ref_of(db)), s.query_timeout,
                             lambda conn: chunks(conn, sql, params, s.stream_chunk))


@api.post("/{db}/stream", responses={**QUERY_ERRORS, 200: {"content": {"application/x-ndjson": {}}}},
          response_class=StreamingResponse, summary="A query's whole result as NDJSON")
async def stream(request: Request, body: QueryRequest, db: str = DbRef, user: User = Depends(api_user)) -> Response:
    try:
        chunks = await _stream(request, body, db, user, results.ndjson_chunks)
    except SQLError as error:
        return sql_problem(request, error)
    return StreamingResponse(chunks, media_type="application/x-ndjson")


@api.post("/{db}/export", responses={**QUERY_ERRORS, 200: {"content": {"text/csv": {}}}},
          response_class=StreamingResponse, summary="A query's whole result as CSV")
async def export(request: Request, body: QueryRequest, db: str = DbRef, user: User = Depends(api_user)) -> Response:
    try:
        chunks = await _stream(request, body, db, user, results.csv_chunks)
    except SQLError as error:
        return sql_problem(request, error)
    name = ref_of(db).replace("/", "-")
    return StreamingResponse(chunks, media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


router.include_router(api)
