"""One client's connection to a hosted database: a dedicated SQLite connection driven
from a thread of its own, so a long query never holds up the event loop.

PostgreSQL's transaction model is kept, since the wire protocol's clients expect it:
``BEGIN``/``START TRANSACTION`` in any spelling opens a transaction (``BEGIN IMMEDIATE``
for writers, so two writers queue instead of one failing on upgrade), ``COMMIT``/``END``
and ``ROLLBACK``/``ABORT`` close it (with a notice when there is none), and after an
error inside a transaction every statement fails with 25P02 until ``ROLLBACK`` (or
``ROLLBACK TO`` a savepoint) — ``COMMIT`` of a failed transaction rolls back.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Sequence

import apsw

from agora.sql.errors import SQLError, SQLTimeout, translate
from agora.sql.statements import Statement, one_statement, split_statements

if TYPE_CHECKING:
    from agora.sql.hosted import DatabaseInfo

PROGRESS_STEPS = 1000  # SQLite VM steps between two looks at the clock
# A statement that only reads is first tried on the event loop itself (a thread hop
# costs more than a point select); past this many progress calls (~steps/1000) it is
# stopped and run again on the session's thread, so nothing slow ever blocks the loop.
INLINE_BUDGET = 3


class _NotInline(Exception):
    """The statement must run on the session's thread (it writes, or is not quick)."""
_DML = re.compile(r"\b(INSERT|REPLACE|UPDATE|DELETE)\b", re.IGNORECASE)
_READ_ONLY = re.compile(r"\bREAD\s+ONLY\b", re.IGNORECASE)
_STORAGE = {int: "integer", float: "real", str: "text", bytes: "blob", bool: "integer"}
_CREATE_SKIP = {"TEMP", "TEMPORARY", "UNIQUE", "VIRTUAL"}


@dataclass(frozen=True)
class Column:
    name: str
    decltype: str | None  # as declared in the table ("INTEGER", "NUMERIC(10,2)"); None for expressions
    storage: str | None = None  # SQLite storage class of the first non-NULL value: integer/real/text/blob

    @property
    def type(self) -> str:
        """The declared type, else the storage class seen, else ""."""
        return self.decltype or (self.storage or "").upper()


@dataclass
class Result:
    columns: list[Column]
    rows: list[tuple]
    rows_affected: int
    truncated: bool
    command_tag: str  # "SELECT 3", "INSERT 0 1", "UPDATE 2", "CREATE TABLE", "BEGIN"; "" = empty query
    notice: str | None = None  # a warning PostgreSQL would send (e.g. no transaction in progress)


@dataclass(frozen=True)
class Limits:
    timeout: float  # seconds per statement
    max_rows: int
    max_bytes: int


def _value_size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes)) else 8


def _with_storage(columns: list[Column], rows: list[tuple]) -> list[Column]:
    """The columns with, where no type is declared, the storage class of the first
    non-NULL value (what an expression's values are)."""
    out = columns
    for i, column in enumerate(columns):
        if column.decltype is None and column.storage is None:
            kind = next((_STORAGE.get(type(row[i])) for row in rows if row[i] is not None), None)
            if kind:
                if out is columns:
                    out = list(columns)
                out[i] = Column(column.name, None, kind)
    return out


@lru_cache(maxsize=1024)
def _columns(description: tuple[tuple[str, str | None], ...]) -> tuple[Column, ...]:
    # A statement describes the same way each time it runs: its Columns are made once.
    return tuple(Column(name, decltype) for name, decltype in description)


_CONTROL = frozenset({"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"})


ABORTED = "current transaction is aborted, commands ignored until end of transaction block"  # 25P02
_ROWS, _CHANGES = 1, 2  # what a command tag ends with: the rows returned, the rows changed
_TAG_FORMS: dict[tuple[str, bool], tuple[str, int]] = {}


def _tag_form(stmt: Statement, readonly: bool) -> tuple[str, int]:
    """How a statement's command tag is made, ("SELECT ", _ROWS) or ("CREATE TABLE", 0):
    the same each time, so worked out once per statement text."""
    key = (stmt.sql, readonly)
    form = _TAG_FORMS.get(key)
    if form is None:
        words = stmt.keywords
        verb = words[0]
        if verb == "WITH" and not readonly and (m := _DML.search(stmt.sql)):
            verb = m.group(1).upper()
        if verb in ("INSERT", "REPLACE"):
            form = ("INSERT 0 ", _CHANGES)
        elif verb in ("UPDATE", "DELETE"):
            form = (f"{verb} ", _CHANGES)
        elif verb in ("CREATE", "DROP", "ALTER"):
            rest = [w for w in words[1:] if w not in _CREATE_SKIP]
            form = (f"{verb} {rest[0]}" if rest else verb, 0)
        elif verb in ("SELECT", "VALUES", "WITH", "PRAGMA", "EXPLAIN", "TABLE"):
            form = ("SELECT ", _ROWS)
        else:
            form = (verb, 0)
        if len(_TAG_FORMS) >= 4096:
            _TAG_FORMS.clear()
        _TAG_FORMS[key] = form
    return form


class SQLSession:
    """A connection to one database with one access level ("owner", "write", "read")."""

    def __init__(self, database: "DatabaseInfo", access: str, user_id: int, conn: apsw.Connection,
                 limits: Limits):
        self.database = database
        self.access = access
        self.user_id = user_id
        self.limits = limits
        self.failed = False
        self.closed = False
        self.revoked: str | None = None  # set when access is withdrawn while connected
        # Set by HostedSQL for long-lived connections: an awaitable that says whether the
        # access still holds (a grant changed on another node), asked every interval.
        self.recheck: Callable[[], Awaitable[str | None]] | None = None
        self.recheck_interval = 0.0
        self._checked_at = time.monotonic()
        self._conn = conn
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"sql-{database.name}")
        self._deadline = 0.0
        self._why: str | None = None  # "timeout" | "cancel" while a statement is being stopped
        self._busy = threading.Lock()
        self._inline = 0  # > 0: running on the event loop, with this many progress calls left
        self._seen: tuple[Any, bool] | None = None  # (description, readonly) of the statement running
        conn.set_progress_handler(self._progress, PROGRESS_STEPS)

    @property
    def read_only(self) -> bool:
        return self.access == "read"

    @property
    def in_transaction(self) -> bool:
        return self.failed or (not self.closed and not self._conn.get_autocommit())

    # -- what protocols call ----------------------------------------------------

    async def execute(self, sql: str, params: Sequence[Any] = (), *, limits: Limits | None = None) -> Result:
        """Run one statement (several is error 42601: use execute_batch or split them)."""
        limits = limits or self.limits
        result = self.execute_now(sql, params, limits=limits)
        if result is not None:
            return result
        return await self._run(self._execute, sql, params, limits)

    def execute_now(self, sql: str, params: Sequence[Any] = (), *, limits: Limits | None = None) -> Result | None:
        """Run one statement here and now if it only reads and is quick; else None, and
        nothing was done: ``execute`` then runs it on the session's thread. For callers
        that answer from a protocol callback, without a task switch."""
        if self.closed or self.revoked or (self.recheck is not None and
                                           time.monotonic() - self._checked_at >= self.recheck_interval):
            return None
        if not self._busy.acquire(False):
            return None
        try:
            self._why = None
            self._inline = INLINE_BUDGET
            return self._execute(sql, params, limits or self.limits)
        except _NotInline:
            return None
        finally:
            self._inline = 0
            self._busy.release()

    async def execute_batch(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[Result]:
        """Run statements in one transaction: all committed, or none (SQLError.index says
        which statement failed)."""
        return await self._run(self._batch, statements)

    async def describe(self, sql: str) -> tuple[int, list[Column]]:
        """(number of parameters, result columns) of one statement, without running it."""
        return await self._run(self._describe, sql)

    async def stream(self, sql: str, params: Sequence[Any] = (), *, chunk: int = 1000) -> AsyncIterator[tuple[list[Column], list[tuple]]]:
        """A query's whole result, ``chunk`` rows at a time, as (columns, rows) pairs
        (the first pair may have no rows). No row limit; the time limit applies to the
        computing of each chunk. Only statements that read may be streamed."""
        cursor, columns = await self._run(self._open_stream, sql, params)
        try:
            while True:
                rows = await self._run(self._fetch_chunk, cursor, chunk)
                if columns and rows and any(c.storage is None for c in columns):
                    columns = _with_storage(columns, rows)
                yield columns, rows
                if len(rows) < chunk:
                    return
        finally:
            if not self.closed:
                await self._run(cursor.close)

    def cancel(self) -> None:
        """Stop the running statement (thread-safe; from any thread or a signal)."""
        if self._busy.locked():
            self._why = "cancel"
            self._conn.interrupt()

    async def rollback(self) -> None:
        """End any transaction, failed or not (the pool does this between users)."""
        def work() -> None:
            self.failed = False
            if not self._conn.get_autocommit():
                self._conn.execute("ROLLBACK")
        await self._run(work)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.cancel()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=False)

    # -- on the session's thread ------------------------------------------------

    async def _recheck(self) -> None:
        assert self.recheck is not None
        self._checked_at = time.monotonic()
        access = await self.recheck()
        if access != self.access and not self.revoked:
            self.revoked = (f"your access to {self.database.ref} was withdrawn" if access is None else
                            f"your access to {self.database.ref} changed to {access}; reconnect")

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        if self.recheck is not None and time.monotonic() - self._checked_at >= self.recheck_interval:
            await self._recheck()
        if self.closed:
            raise SQLError("the connection to this database is closed", "08003")
        if self.revoked:
            raise SQLError(self.revoked, "42501")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, fn, args)

    def _guarded(self, fn, args):  # type: ignore[no-untyped-def]
        with self._busy:
            self._why = None
            return fn(*args)

    def _progress(self) -> bool:
        if self._inline:
            self._inline -= 1
            if not self._inline:
                self._why = "inline"
                return True
        if time.monotonic() > self._deadline:
            self._why = self._why or "timeout"
            return True
        return self._why is not None

    def _error(self, error: Exception) -> SQLError:
        if isinstance(error, apsw.InterruptError) and self._why == "timeout":
            return SQLTimeout(f"canceling statement due to statement timeout ({self.limits.timeout:g} s)", "57014")
        if isinstance(error, apsw.InterruptError):
            return SQLError("canceling statement due to user request", "57014")
        return translate(error)

    def _execute(self, sql: str, params: Sequence[Any], limits: Limits) -> Result:
        stmt = one_statement(sql)
        if stmt is None:
            return Result([], [], 0, False, "")
        if stmt.keywords[0] in _CONTROL:
            if self._inline:
                raise _NotInline()  # COMMIT fsyncs, BEGIN IMMEDIATE may wait for a lock
            control = self._transaction_control(stmt)
            if control is not None:
                return control
        if self.failed:
            raise SQLError(ABORTED, "25P02")
        in_tx = not self._conn.get_autocommit()
        try:
            result = self._statement(stmt, params, limits)
        except SQLError:
            if in_tx:
                self.failed = True
            raise
        if stmt.keywords[0] == "ROLLBACK":  # ROLLBACK TO a savepoint recovers a failed transaction
            self.failed = False
        return result

    def _statement(self, stmt: Statement, params: Sequence[Any], limits: Limits) -> Result:
        self._seen = None
        cursor = self._conn.cursor()
        cursor.exec_trace = self._trace
        rows: list[tuple] = []
        truncated = False
        size = 0
        max_rows, max_bytes = limits.max_rows, limits.max_bytes
        self._deadline = time.monotonic() + limits.timeout
        try:
            cursor.execute(stmt.sql, tuple(params))
            for row in cursor:
                row_size = sum(map(_value_size, row))
                if len(rows) >= max_rows or size + row_size > max_bytes:
                    truncated = True
                    break
                rows.append(row)
                size += row_size
        except apsw.ExecTraceAbort:
            raise _NotInline() from None
        except (apsw.Error, OverflowError, TypeError) as error:
            if self._why == "inline":
                raise _NotInline() from None
            raise self._error(error) from None
        finally:
            cursor.close(True)
        description, readonly = self._seen or ((), True)
        columns = list(_columns(description))
        text, count = _tag_form(stmt, readonly)
        if count == _ROWS:
            affected = len(rows)
            tag = text + str(affected)
        else:
            affected = 0 if readonly else self._conn.changes()
            tag = text + str(affected) if count else text
        return Result(_with_storage(columns, rows), rows, affected, truncated, tag)

    def _trace(self, cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
        """apsw's exec trace: what the statement returns and whether it writes, seen
        before it runs. On the event loop only what reads runs; the rest goes to the
        session's thread unrun."""
        readonly = cursor.is_readonly
        self._seen = (cursor.get_description(), readonly)
        return readonly or not self._inline

    def _transaction_control(self, stmt: Statement) -> Result | None:
        words = stmt.keywords
        verb = words[0]
        autocommit = self._conn.get_autocommit()
        if verb == "BEGIN" or verb == "START" and words[1:2] == ("TRANSACTION",):
            if not autocommit or self.failed:
                return Result([], [], 0, False, "BEGIN", "there is already a transaction in progress")
            if len(words) > 1 and words[1] in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
                sql = f"BEGIN {words[1]}"
            elif self.read_only or _READ_ONLY.search(stmt.sql):
                sql = "BEGIN"
            else:
                sql = "BEGIN IMMEDIATE"
            self._run_plain(sql)
            return Result([], [], 0, False, "BEGIN")
        ending = verb in ("COMMIT", "END") or verb in ("ROLLBACK", "ABORT") and "TO" not in words[1:3]
        if not ending:
            return None
        tag = "COMMIT" if verb in ("COMMIT", "END") else "ROLLBACK"
        if self.failed:
            self.failed = False
            if not autocommit:
                self._run_plain("ROLLBACK")
            return Result([], [], 0, False, "ROLLBACK")
        if autocommit:
            return Result([], [], 0, False, tag, "there is no transaction in progress")
        self._run_plain(tag)
        return Result([], [], 0, False, tag)

    def _run_plain(self, sql: str) -> None:
        self._deadline = time.monotonic() + self.limits.timeout
        try:
            self._conn.execute(sql)
        except apsw.Error as error:
            raise self._error(error) from None

    def _batch(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[Result]:
        if not self._conn.get_autocommit() or self.failed:
            raise SQLError("a batch runs in a transaction of its own; end the open transaction first", "25001")
        parsed = []
        for index, (sql, params) in enumerate(statements):
            try:
                stmt = one_statement(sql)
            except SQLError as error:
                error.index = index
                raise
            if stmt is None:
                continue
            if stmt.keywords[0] in ("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT"):
                raise SQLError("a batch is one transaction: it cannot contain BEGIN, COMMIT or ROLLBACK", "25001", index=index)
            parsed.append((index, stmt, params))
        self._run_plain("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
        results = []
        try:
            for index, stmt, params in parsed:
                try:
                    results.append(self._statement(stmt, params, self.limits))
                except SQLError as error:
                    error.index = index
                    raise
            self._run_plain("COMMIT")
        except BaseException:
            if not self._conn.get_autocommit():
                self._conn.execute("ROLLBACK")
            raise
        return results

    def _describe(self, sql: str) -> tuple[int, list[Column]]:
        stmt = one_statement(sql)
        if stmt is None or stmt.keywords[0] in ("BEGIN", "START", "COMMIT", "END", "ABORT") \
                or stmt.keywords[0] == "ROLLBACK" and "TO" not in stmt.keywords[1:3]:
            return 0, []
        seen: dict[str, Any] = {}

        def trace(cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
            seen["count"] = cursor.bindings_count
            seen["description"] = cursor.get_description()
            return False  # prepared is enough: do not run it

        cursor = self._conn.cursor()
        cursor.exec_trace = trace
        try:
            cursor.execute(stmt.sql, apsw._null_bindings)
        except apsw.ExecTraceAbort:
            pass
        except apsw.Error as error:
            raise self._error(error) from None
        finally:
            cursor.close(True)
        return seen.get("count", 0), [Column(n, d) for n, d in seen.get("description", ())]

    def _open_stream(self, sql: str, params: Sequence[Any]) -> tuple[apsw.Cursor, list[Column]]:
        stmt = one_statement(sql)
        if stmt is None:
            raise SQLError("no statement to run", "42601")
        if self.failed:
            raise SQLError(ABORTED, "25P02")
        seen: dict[str, Any] = {}

        def trace(cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
            seen["description"] = cursor.get_description()
            return bool(cursor.is_readonly)

        cursor = self._conn.cursor()
        cursor.exec_trace = trace
        self._deadline = time.monotonic() + self.limits.timeout
        try:
            cursor.execute(stmt.sql, tuple(params))
        except apsw.ExecTraceAbort:
            cursor.close(True)
            raise SQLError("only a statement that reads can be streamed or exported", "42601") from None
        except (apsw.Error, OverflowError, TypeError) as error:
            cursor.close(True)
            raise self._error(error) from None
        return cursor, [Column(n, d) for n, d in seen.get("description", ())]

    def _fetch_chunk(self, cursor: apsw.Cursor, chunk: int) -> list[tuple]:
        self._deadline = time.monotonic() + self.limits.timeout
        rows: list[tuple] = []
        try:
            for row in cursor:
                rows.append(row)
                if len(rows) >= chunk:
                    break
        except apsw.Error as error:
            raise self._error(error) from None
        return rows


__all__ = ["ABORTED", "Column", "Limits", "Result", "SQLSession", "split_statements"]
