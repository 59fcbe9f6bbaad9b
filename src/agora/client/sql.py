"""The hosted-SQL sub-API: ``client.sql.create/create_from_sqlite/databases/get/drop/
grant/revoke/query/batch/rows/export/info/url``.

``create_from_sqlite(name, path_or_file)`` uploads a SQLite database file (streamed,
never read whole into memory) and returns ``(SQLDatabase, SQLImportReport)``: the new
database and what the server's converter did (tables with their rows, warnings).

A database is named ``name`` (yours) or ``owner/name`` (shared with you). Values come
back typed: integers as int, NULL as None, blobs as bytes (``{"$base64": ...}`` on the
wire); bytes given as parameters travel the same way.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, AsyncIterator, Iterator, Sequence, Union
from urllib.parse import quote, urlsplit

import anyio
import httpx

from agora.client._http import AsyncAPI, Call, SyncAPI, _connection_failed, json_body, nothing, one
from agora.client.errors import error_for
from agora.client.models import from_json

API = "/api/v1/sql"


@dataclass(frozen=True)
class SQLGrant:
    user: str
    access: str  # "read" | "write"


@dataclass(frozen=True)
class SQLDatabase:
    name: str
    owner: str
    ref: str  # owner/name
    access: str  # yours: "owner" | "write" | "read"
    size: int
    created_at: datetime
    grants: list[SQLGrant] = field(default_factory=list)


@dataclass(frozen=True)
class SQLImportedColumn:
    name: str
    declared: str  # SQLite's declared type ("" for none)
    type: str  # the PostgreSQL type it was given


@dataclass(frozen=True)
class SQLImportedTable:
    name: str
    rows: int
    columns: list[SQLImportedColumn] = field(default_factory=list)


@dataclass(frozen=True)
class SQLImportReport:
    """What the server's converter made of an uploaded SQLite file."""

    tables: list[SQLImportedTable]
    indexes: list[str]
    views: list[str]
    warnings: list[str]
    rows: int  # copied, in all


@dataclass(frozen=True)
class SQLResult:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    rows_affected: int
    truncated: bool
    command: str


def _segment(ref: str) -> str:
    """A database in a URL: ``owner:name`` for ``owner/name``."""
    return quote(ref.replace("/", ":", 1), safe=":")


def decode_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$base64"}:
        return base64.b64decode(value["$base64"])
    return value


def encode_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    return value


def _database(data: Any) -> SQLDatabase:
    data = dict(data)
    data["grants"] = [SQLGrant(**g) for g in data.get("grants", [])]
    return from_json(SQLDatabase, data)


def _imported(response: httpx.Response) -> tuple[SQLDatabase, SQLImportReport]:
    data = json_body(response)
    report = dict(data["report"])
    report["tables"] = [from_json(SQLImportedTable, {**t, "columns": [from_json(SQLImportedColumn, c)
                                                                     for c in t.get("columns", [])]})
                        for t in report.get("tables", [])]
    return _database(data), from_json(SQLImportReport, report)


# A SQLite file to upload: a path, or a file opened in binary mode.
Source = Union[str, "os.PathLike[str]", IO[bytes]]
UPLOAD_CHUNK = 1024 * 1024
SQLITE = "application/vnd.sqlite3"


def _upload_headers(handle: IO[bytes]) -> dict[str, str]:
    """Content-Length where the size can be told (a regular file), else it is sent chunked."""
    headers = {"Content-Type": SQLITE}
    try:
        headers["Content-Length"] = str(os.fstat(handle.fileno()).st_size - handle.tell())
    except (AttributeError, OSError, ValueError):
        pass
    return headers


def _upload_timeout(transport: Any) -> httpx.Timeout:
    """The client's timeouts, but no limit on the wait for the answer: the server
    answers when its conversion is done, and a big file takes a while."""
    base = transport.http.timeout
    return httpx.Timeout(connect=base.connect, read=None, write=base.write, pool=base.pool)


def _result(data: Any) -> SQLResult:
    data = dict(data)
    data["rows"] = [[decode_value(v) for v in row] for row in data["rows"]]
    return from_json(SQLResult, data)


def _body(sql: str, params: Sequence[Any] | None) -> dict[str, Any]:
    return {"sql": sql, "params": [encode_value(p) for p in params or ()]}


def info() -> Call[dict]:
    return Call("GET", f"{API}/info", json_body)


def databases() -> Call[list[SQLDatabase]]:
    return Call("GET", f"{API}/databases", lambda r: [_database(d) for d in json_body(r)])


def create(name: str) -> Call[SQLDatabase]:
    return Call("POST", f"{API}/databases", lambda r: _database(json_body(r)), json={"name": name})


def create_from_sqlite(name: str) -> Call[tuple[SQLDatabase, SQLImportReport]]:
    """The upload's request line and how its answer reads (the body is sent by the caller)."""
    return Call("POST", f"{API}/databases/{quote(name, safe='')}/sqlite", _imported)


def get(ref: str) -> Call[SQLDatabase]:
    return Call("GET", f"{API}/databases/{_segment(ref)}", lambda r: _database(json_body(r)))


def drop(ref: str) -> Call[None]:
    return Call("DELETE", f"{API}/databases/{_segment(ref)}", nothing)


def grant(ref: str, user: str, access: str) -> Call[SQLGrant]:
    return Call("PUT", f"{API}/databases/{_segment(ref)}/grants/{quote(user, safe='')}", one(SQLGrant),
                json={"access": access})


def revoke(ref: str, user: str) -> Call[None]:
    return Call("DELETE", f"{API}/databases/{_segment(ref)}/grants/{quote(user, safe='')}", nothing)


def query(ref: str, sql: str, params: Sequence[Any] | None) -> Call[SQLResult]:
    return Call("POST", f"{API}/{_segment(ref)}/query", lambda r: _result(json_body(r)), json=_body(sql, params))


def batch(ref: str, statements: Sequence[str | tuple[str, Sequence[Any]]]) -> Call[list[SQLResult]]:
    items = [_body(s, ()) if isinstance(s, str) else _body(s[0], s[1]) for s in statements]
    return Call("POST", f"{API}/{_segment(ref)}/batch", lambda r: [_result(x) for x in json_body(r)["results"]],
                json={"statements": items})


def postgres_url(base_url: str, user: str | None, ref: str, port: int | None, *, password: str | None = None) -> str:
    """A ``postgresql://`` URL for psql/psycopg (dbname ``owner/name``, TLS required)."""
    if port is None:
        raise ValueError("this server does not serve the PostgreSQL protocol (no postgres listener)")
    host = urlsplit(base_url).hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    auth = quote(user or "", safe="") + (":" + quote(password, safe="") if password else "")
    return f"postgresql://{auth}{'@' if auth else ''}{host}:{port}/{quote(ref, safe='')}?sslmode=require"


class _Lines:
    """What the NDJSON stream says before its rows: the columns and their types."""

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.types: list[str] = []


def _stream_line(line: str, header: _Lines) -> list[Any] | None:
    item = json.loads(line)
    if isinstance(item, list):
        return [decode_value(v) for v in item]
    if "columns" in item:
        header.columns, header.types = item["columns"], item["types"]
    elif "error" in item:
        raise RuntimeError(f"query stopped: {item['error'].get('detail')} (SQLSTATE {item['error'].get('sqlstate')})")
    return None


class SyncSQL(SyncAPI):
    """``client.sql``: your hosted databases and those shared with you."""

    def info(self) -> dict:
        return self._run(info())

    def databases(self) -> list[SQLDatabase]:
        return self._run(databases())

    def create(self, name: str) -> SQLDatabase:
        return self._run(create(name))

    def create_from_sqlite(self, name: str, source: Source) -> tuple[SQLDatabase, SQLImportReport]:
        """Create database NAME holding what the SQLite file ``source`` (a path, or a file
        opened in binary mode) holds: (the database, the converter's report). A file the
        server cannot convert raises InvalidRequest (``problem`` names table, row and
        column where it can) and leaves no database."""
        call = create_from_sqlite(name)
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(open(source, "rb")) if isinstance(source, (str, os.PathLike)) else source
            headers = _upload_headers(handle)
            chunks = iter(lambda: handle.read(UPLOAD_CHUNK), b"")
            try:
                response = self._transport.http.post(call.path, content=chunks,
                                                     headers=headers, timeout=_upload_timeout(self._transport))
            except httpx.TransportError as error:
                raise _connection_failed(self._transport.base_url, error) from None
        return call.finish(response)

    def get(self, ref: str) -> SQLDatabase:
        return self._run(get(ref))

    def drop(self, ref: str) -> None:
        self._run(drop(ref))

    def grant(self, ref: str, user: str, access: str = "read") -> SQLGrant:
        return self._run(grant(ref, user, access))

    def revoke(self, ref: str, user: str) -> None:
        self._run(revoke(ref, user))

    def query(self, ref: str, sql: str, params: Sequence[Any] | None = None) -> SQLResult:
        """One statement; at most sql.max_rows rows (``truncated`` says if more were left)."""
        return self._run(query(ref, sql, params))

    def batch(self, ref: str, statements: Sequence[str | tuple[str, Sequence[Any]]]) -> list[SQLResult]:
        """Statements (SQL, or (SQL, params)) in one transaction: all or nothing."""
        return self._run(batch(ref, statements))

    def rows(self, ref: str, sql: str, params: Sequence[Any] | None = None) -> Iterator[list[Any]]:
        """Every row of a query, streamed (NDJSON), without the row limit."""
        header = _Lines()
        with self._transport.http.stream("POST", f"{API}/{_segment(ref)}/stream", json=_body(sql, params)) as response:
            if not response.is_success:
                response.read()
                raise error_for(response)
            for line in response.iter_lines():
                if line and (row := _stream_line(line, header)) is not None:
                    yield row

    def export(self, ref: str, sql: str, params: Sequence[Any] | None = None) -> Iterator[bytes]:
        """A query's whole result as CSV bytes, in pieces."""
        try:
            with self._transport.http.stream("POST", f"{API}/{_segment(ref)}/export", json=_body(sql, params)) as response:
                if not response.is_success:
                    response.read()
                    raise error_for(response)
                yield from response.iter_bytes()
        except httpx.TransportError as error:
            raise _connection_failed(self._transport.base_url, error) from None

    def url(self, ref: str, user: str | None = None, password: str | None = None) -> str:
        return postgres_url(self._transport.base_url, user, ref, self.info().get("postgres_port"), password=password)


class AsyncSQL(AsyncAPI):
    """``client.sql`` of the AsyncClient: the same operations, awaited."""

    async def info(self) -> dict:
        return await self._run(info())

    async def databases(self) -> list[SQLDatabase]:
        return await self._run(databases())

    async def create(self, name: str) -> SQLDatabase:
        return await self._run(create(name))

    async def create_from_sqlite(self, name: str, source: Source) -> tuple[SQLDatabase, SQLImportReport]:
        call = create_from_sqlite(name)
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(await anyio.to_thread.run_sync(open, source, "rb")) \
                if isinstance(source, (str, os.PathLike)) else source
            headers = _upload_headers(handle)

            async def chunks() -> AsyncIterator[bytes]:
                # Read in a thread: the caller's event loop does not wait on the disk.
                while chunk := await anyio.to_thread.run_sync(handle.read, UPLOAD_CHUNK):
                    yield chunk

            try:
                response = await self._transport.http.post(
                    call.path, content=chunks(), headers=headers,
                    timeout=_upload_timeout(self._transport))
            except httpx.TransportError as error:
                raise _connection_failed(self._transport.base_url, error) from None
        return call.finish(response)

    async def get(self, ref: str) -> SQLDatabase:
        return await self._run(get(ref))

    async def drop(self, ref: str) -> None:
        await self._run(drop(ref))

    async def grant(self, ref: str, user: str, access: str = "read") -> SQLGrant:
        return await self._run(grant(ref, user, access))

    async def revoke(self, ref: str, user: str) -> None:
        await self._run(revoke(ref, user))

    async def query(self, ref: str, sql: str, params: Sequence[Any] | None = None) -> SQLResult:
        return await self._run(query(ref, sql, params))

    async def batch(self, ref: str, statements: Sequence[str | tuple[str, Sequence[Any]]]) -> list[SQLResult]:
        return await self._run(batch(ref, statements))

    async def rows(self, ref: str, sql: str, params: Sequence[Any] | None = None) -> AsyncIterator[list[Any]]:
        header = _Lines()
        async with self._transport.http.stream("POST", f"{API}/{_segment(ref)}/stream", json=_body(sql, params)) as response:
            if not response.is_success:
                await response.aread()
                raise error_for(response)
            async for line in response.aiter_lines():
                if line and (row := _stream_line(line, header)) is not None:
                    yield row

    async def url(self, ref: str, user: str | None = None, password: str | None = None) -> str:
        return postgres_url(self._transport.base_url, user, ref, (await self.info()).get("postgres_port"),
                            password=password)
