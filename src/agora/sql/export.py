"""A query's whole result as a stream of bytes (NDJSON or CSV), for the API and the
console: the statement is opened before the response starts, so that an error in it is
a proper error reply rather than a broken 200; an error midway ends the body with a
last line that says so."""

from __future__ import annotations

import csv
import io
import json
from contextlib import AbstractAsyncContextManager
from typing import Any, AsyncIterator, Sequence

from agora.sql.errors import SQLError
from agora.sql.session import Column, SQLSession
from agora.sql.values import row_to_json, to_csv


class OpenResult:
    """A running query: its columns, its first rows, the rest to come."""

    def __init__(self, manager: AbstractAsyncContextManager[SQLSession], chunks: Any,
                 columns: list[Column], rows: list[tuple]):
        self.manager, self.chunks, self.columns, self.rows = manager, chunks, columns, rows
        self.closed = False

    async def batches(self) -> AsyncIterator[list[tuple]]:
        yield self.rows
        async for _, rows in self.chunks:
            yield rows

    async def close(self) -> None:
        """Give the session back (also when the client went away midway)."""
        if not self.closed:
            self.closed = True
            await self.chunks.aclose()
            await self.manager.__aexit__(None, None, None)


async def open_result(manager: AbstractAsyncContextManager[SQLSession], sql: str,
                      params: Sequence[Any] = ()) -> OpenResult:
    """Borrow a session from ``manager`` and start ``sql``; raises SQLError (with the
    session given back) when the statement cannot start."""
    session = await manager.__aenter__()
    try:
        chunks = session.stream(sql, params)
        columns, rows = await chunks.__anext__()
    except BaseException as error:
        await manager.__aexit__(type(error), error, None)
        raise
    return OpenResult(manager, chunks, columns, rows)


async def ndjson(result: OpenResult) -> AsyncIterator[bytes]:
    """``{"columns", "types"}``, one JSON array per row, ``{"rows": n}`` (or ``{"error"}``)."""
    count = 0
    try:
        yield json.dumps({"columns": [c.name for c in result.columns],
                          "types": [c.type for c in result.columns]}).encode() + b"\n"
        async for batch in result.batches():
            count += len(batch)
            yield b"".join(json.dumps(row_to_json(r)).encode() + b"\n" for r in batch)
        yield json.dumps({"rows": count}).encode() + b"\n"
    except SQLError as error:
        yield json.dumps({"error": {"detail": error.detail, "sqlstate": error.sqlstate}}).encode() + b"\n"
    finally:
        await result.close()


def _csv(rows: list[list[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


async def csv_rows(result: OpenResult) -> AsyncIterator[bytes]:
    """A header line, then the rows (blobs base64, NULL empty)."""
    try:
        yield _csv([[c.name for c in result.columns]])
        async for batch in result.batches():
            yield _csv([[to_csv(v) for v in r] for r in batch])
    except SQLError as error:
        yield f"# error: {error.detail} (SQLSTATE {error.sqlstate})\r\n".encode()
    finally:
        await result.close()

