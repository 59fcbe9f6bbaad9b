"""Running SQL off the event loop, and data in and out: a query's whole result as
NDJSON or CSV, a CSV file into a table.

Everything whose cost depends on what a user sends (running statements, encoding rows,
parsing a CSV file) runs in a worker thread of the SQL pool (``call``); the event loop
only hands over bytes. ``call`` also watches the time: a statement still running past
its limit (a session that turned ``statement_timeout`` off) is cancelled, and a worker
is always waited for before its connection goes back to the pool.

Streams open the statement before the response starts, so that an error in it (or in
its first row) is a proper error reply rather than a broken 200; an error midway ends
the body with a last line that says so. Memory holds one row and one chunk: rows are
read one at a time and sent in chunks of at most ``sql.stream_chunk`` bytes (a row
larger than that is an error, SQLSTATE 54000).
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import contextlib
import csv
import functools
import io
import re
from typing import IO, Any, AsyncIterator, Callable, Generator, Iterator, Sequence, TypeVar

import anyio
import psycopg
from psycopg import sql as pgsql

from agora.core.errors import InvalidInput
from agora.sql import values
from agora.sql.errors import SQLError
from agora.sql.execute import Stream, row_too_large, sql_error

T = TypeVar("T")
Chunks = Generator[bytes, None, None]

CHUNK = 256 * 1024  # bytes of an uploaded file copied at a time
_threads = 32  # threads running SQL for the HTTP API and the console, in all (sql.http_threads)
GRACE = 2.0  # seconds past the time limit before a statement is cancelled from here

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def configure(threads: int) -> None:
    """The size of the pool (sql.http_threads); it counts until the pool is made."""
    global _threads
    _threads = threads


def _workers() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        # Not the loop's default executor: thirty slow queries must not keep the other
        # services' file reads waiting.
        _pool = concurrent.futures.ThreadPoolExecutor(_threads, thread_name_prefix="agora-sql")
    return _pool


def _cancel(conn: psycopg.Connection) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.cancel_safe(timeout=5)


async def call(conn: psycopg.Connection, limit: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(conn, *args, **kwargs)`` in a worker thread. Past ``limit`` seconds (or when
    the request is cancelled) the running statement is cancelled; either way the
    worker is waited for, so that the connection is idle when this returns."""
    loop = asyncio.get_running_loop()
    work = _workers().submit(functools.partial(fn, conn, *args, **kwargs))
    outcome = asyncio.wrap_future(work)
    outcome.add_done_callback(_retrieved)
    try:
        await asyncio.wait({outcome}, timeout=limit + GRACE)  # (which never cancels it)
    except asyncio.CancelledError:
        await asyncio.shield(loop.run_in_executor(None, _stop, conn, work))
        raise
    if not work.done():
        await loop.run_in_executor(None, _stop, conn, work)
    return work.result()


def _retrieved(future: asyncio.Future) -> None:
    """Marks an outcome's exception seen (it is raised from the worker's future)."""
    if not future.cancelled():
        future.exception()


def _stop(conn: psycopg.Connection, work: concurrent.futures.Future) -> None:
    while not work.done():
        _cancel(conn)
        with contextlib.suppress(BaseException):
            work.result(timeout=5)


# -- streams ------------------------------------------------------------------------------


def _chunks(lines: Iterator[bytes], chunk: int) -> Iterator[bytes]:
    """Lines gathered into chunks of at most ``chunk`` bytes; a longer line is an error."""
    buffer: list[bytes] = []
    size = 0
    for line in lines:
        if len(line) > chunk:
            raise row_too_large(len(line), chunk)
        if size + len(line) > chunk:
            yield b"".join(buffer)
            buffer, size = [], 0
        buffer.append(line)
        size += len(line)
    if buffer:
        yield b"".join(buffer)


def ndjson_chunks(conn: psycopg.Connection, sql: str, params: Sequence[Any], chunk: int) -> Chunks:
    """``{"columns", "types"}``, one JSON array per row, ``{"rows": n}`` (or ``{"error"}``),
    in chunks of at most ``chunk`` bytes. The first ``next()`` opens the statement and
    raises its SQLError."""
    stream = Stream(conn, sql, params, values.JSON_ADAPTERS)
    try:
        yield values.dumps({"columns": stream.columns, "types": stream.types}) + b"\n"
        encode = values.json_row_encoder(stream.oids)
        count = 0
        try:
            for piece in _chunks((encode(row) + b"\n" for row in stream.rows()), chunk):
                count += piece.count(b"\n")
                yield piece
            yield values.dumps({"rows": count}) + b"\n"
        except SQLError as error:
            yield values.dumps({"error": {"detail": error.detail, "sqlstate": error.sqlstate}}) + b"\n"
    finally:
        stream.close()


def csv_chunks(conn: psycopg.Connection, sql: str, params: Sequence[Any], chunk: int) -> Chunks:
    """A header line, then the rows (PostgreSQL's text of each value, bytea base64, NULL
    empty), in chunks of at most ``chunk`` bytes. An error midway ends it with a
    ``# error: ...`` line."""
    stream = Stream(conn, sql, params, values.CSV_ADAPTERS)
    try:
        yield values.csv_lines([stream.columns])
        try:
            yield from _chunks(map(values.csv_line, stream.rows()), chunk)
        except SQLError as error:
            yield f"# error: {error.detail} (SQLSTATE {error.sqlstate})\r\n".encode()
    finally:
        stream.close()


async def open_stream(borrowed: contextlib.AbstractAsyncContextManager[psycopg.Connection], limit: float,
                      chunks: Callable[[psycopg.Connection], Chunks]) -> AsyncIterator[bytes]:
    """Borrow a connection, start ``chunks(conn)`` and read its first chunk (raising the
    statement's SQLError, with the connection given back); then an async iterator of
    every chunk, which gives the connection back when done or abandoned."""
    stack = contextlib.AsyncExitStack()
    conn = await stack.enter_async_context(borrowed)
    generator = chunks(conn)
    try:
        first = await call(conn, limit, lambda _conn: next(generator))
    except BaseException:
        with anyio.CancelScope(shield=True):
            await asyncio.get_running_loop().run_in_executor(None, generator.close)
            await stack.aclose()
        raise
    return _relay(conn, generator, first, stack)


async def _relay(conn: psycopg.Connection, generator: Chunks, first: bytes,
                 stack: contextlib.AsyncExitStack) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    work: concurrent.futures.Future | None = None
    try:
        yield first
        while True:
            work = _workers().submit(next, generator, None)
            chunk = await asyncio.wrap_future(work)
            if chunk is None:
                break
            yield chunk
    finally:
        # Also when the client went away: under a cancelled scope, hence the shield.
        with anyio.CancelScope(shield=True):
            def finish() -> None:
                if work is not None and not work.done():
                    _stop(conn, work)
                generator.close()  # the stream's close(): cancel, read what is left

            await loop.run_in_executor(None, finish)
            await stack.aclose()


# -- CSV import -----------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d{1,18}")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BOOL = re.compile(r"true|false", re.IGNORECASE)
_DATE = re.compile(r"\d{4}-\d\d-\d\d")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(?::\d\d(?:\.\d+)?)?")
_TIMESTAMPTZ = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d(?::?\d\d)?)")
# In order of preference: the first type every value of a column fits.
INFERRED = (("bigint", _INT), ("numeric", _NUMBER), ("boolean", _BOOL), ("date", _DATE),
            ("timestamp", _TIMESTAMP), ("timestamptz", _TIMESTAMPTZ))


def _text(upload: IO[bytes]) -> io.TextIOWrapper:
    upload.seek(0)
    return io.TextIOWrapper(upload, encoding="utf-8-sig", newline="", errors="strict")


def read_header(upload: IO[bytes]) -> list[str]:
    """The column names of a CSV file's first line (empty ones named column_N)."""
    try:
        text = _text(upload)
        try:
            header = next(csv.reader(text), None)
        finally:
            text.detach()
    except (UnicodeDecodeError, csv.Error) as error:
        raise InvalidInput(f"not a UTF-8 CSV file: {error}") from None
    if not header:
        raise InvalidInput("the CSV file is empty: its first line names the columns")
    names = [name.strip() or f"column_{i + 1}" for i, name in enumerate(header)]
    if len(set(names)) != len(names):
        raise InvalidInput("the CSV header names a column twice")
    if any(len(name.encode()) > 63 for name in names):
        raise InvalidInput("a column name in the CSV header is longer than 63 bytes")
    return names


def infer_types(upload: IO[bytes], count: int) -> list[str]:
    """For each column, the first of INFERRED that all its non-empty values fit, else text."""
    possible = [list(INFERRED) for _ in range(count)]
    try:
        text = _text(upload)
        try:
            reader = csv.reader(text)
            next(reader, None)
            for record in reader:
                for i, value in enumerate(record[:count]):
                    if value and possible[i]:
                        possible[i] = [(name, rule) for name, rule in possible[i] if rule.fullmatch(value)]
        finally:
            text.detach()
    except (UnicodeDecodeError, csv.Error) as error:
        raise InvalidInput(f"not a UTF-8 CSV file: {error}") from None
    return [p[0][0] if p else "text" for p in possible]


def import_csv(conn: psycopg.Connection, upload: IO[bytes], table: str, *, create: bool, infer: bool) -> int:
    """A CSV file (a header line, then rows) into ``table`` of schema public, in one
    transaction: a new table whose columns are the header's (all text, or the types
    the values fit), or appended to an existing one (the header names its columns).
    Empty fields are NULL. Returns the number of rows copied."""
    names = read_header(upload)
    types = infer_types(upload, len(names)) if create and infer else ["text"] * len(names)
    target = pgsql.Identifier("public", table)
    columns = pgsql.SQL(", ").join(map(pgsql.Identifier, names))
    copy = pgsql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(target, columns)
    try:
        with conn.transaction():
            if create:
                conn.execute(pgsql.SQL("CREATE TABLE {} ({})").format(target, pgsql.SQL(", ").join(
                    pgsql.SQL("{} {}").format(pgsql.Identifier(n), pgsql.SQL(t)) for n, t in zip(names, types))))
            with conn.cursor() as cursor:
                with cursor.copy(copy) as writer:
                    upload.seek(0)
                    bom = upload.read(3)
                    if bom != codecs.BOM_UTF8:
                        writer.write(bom)
                    while data := upload.read(CHUNK):
                        writer.write(data)
                return cursor.rowcount
    except psycopg.Error as error:
        raise sql_error(str(error).strip(), error.sqlstate) from None
