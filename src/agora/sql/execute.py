"""Running SQL for the HTTP API and the console on a borrowed psycopg connection.

Every function here is synchronous and blocking: the caller runs it in a worker thread
(``asyncio.to_thread``) on a connection nobody else uses meanwhile (``hosted.borrow``),
in autocommit mode, logged in as the user's own role. PostgreSQL does the work and
checks every permission; this module only sends statements and bounds what comes back.

A statement goes with the extended protocol (``$1``-style parameters, one statement)
and its rows come back one at a time (libpq's single-row mode), so memory holds one row
whatever the result's size. Results are bounded in rows (``max_rows``) and in bytes *as
encoded* (``max_bytes``): past either, rows are no longer kept and the result is marked
``truncated``; a plain read (``plain_read``) outside a transaction is then stopped,
anything else runs to its end (stopping it would roll back what an ``INSERT ...
RETURNING`` did). A stream (NDJSON, CSV) that is given up midway is cancelled, and the
connection is left idle.

Errors are ``SQLError(message, sqlstate)`` with PostgreSQL's own SQLSTATE; in a batch,
``.index`` is the 0-based position of the failing statement.
"""

from __future__ import annotations

import re
import select
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import psycopg
from psycopg import pq
from psycopg.adapt import AdaptersMap, PyFormat, Transformer

from agora.sql import values
from agora.sql.errors import SQLDenied, SQLError, SQLTimeout

_TEXT = pq.Format.TEXT
_S = pq.ExecStatus
_ACTIVE, _IDLE = pq.TransactionStatus.ACTIVE, pq.TransactionStatus.IDLE
_DIAG = pq.DiagnosticField
MAX_PARAMS = 65535  # the protocol's limit


# -- errors ------------------------------------------------------------------------------


def sql_error(message: str, sqlstate: str | None) -> SQLError:
    code = sqlstate or "08006"  # no code: the connection itself failed
    cls = SQLTimeout if code == "57014" else SQLDenied if code == "42501" else SQLError
    return cls(message, code)


def _from_result(res: pq.abc.PGresult, encoding: str) -> SQLError:
    def text(what: pq.DiagnosticField) -> str:
        raw = res.error_field(what)
        return raw.decode(encoding, "replace") if raw else ""

    message = text(_DIAG.MESSAGE_PRIMARY) or res.error_message.decode(encoding, "replace").strip() \
        or "the connection to the database was lost"
    for label, what in (("DETAIL", _DIAG.MESSAGE_DETAIL), ("HINT", _DIAG.MESSAGE_HINT)):
        if extra := text(what):
            message += f"\n{label}: {extra}"
    code = res.error_field(_DIAG.SQLSTATE)
    return sql_error(message, code.decode() if code else None)


def _from_exception(error: psycopg.Error, pg: pq.abc.PGconn | None = None) -> SQLError:
    if isinstance(error, psycopg.DataError) and error.sqlstate is None:
        return SQLError(str(error), "22021")  # a parameter psycopg cannot send (a NUL)
    if error.sqlstate is None and pg is not None and pg.status == pq.ConnStatus.OK:
        return SQLError(str(error).strip(), "08P01")  # refused by libpq, the connection is fine
    return sql_error(str(error).strip(), error.sqlstate)


# -- one statement -----------------------------------------------------------------------


# -- waiting --------------------------------------------------------------------------------
# libpq's blocking calls (PQgetResult) keep the GIL in psycopg's binding, which would stop
# the event loop and every other thread: the connection is driven in its nonblocking way,
# waiting in poll(), which lets go of the GIL.


def _poll(pg: pq.abc.PGconn, events: int) -> int:
    poller = select.poll()
    poller.register(pg.socket, events)
    return max((ready for _, ready in poller.poll()), default=0)


def _flush(pg: pq.abc.PGconn) -> None:
    """Send what libpq holds (a long statement does not go in one write)."""
    while pg.flush():
        if _poll(pg, select.POLLIN | select.POLLOUT) & select.POLLIN:
            pg.consume_input()  # the server may be talking (a notice): keep reading


def _result(pg: pq.abc.PGconn) -> pq.abc.PGresult | None:
    """The next result (None once the statement's results are all read)."""
    while pg.is_busy():
        _poll(pg, select.POLLIN)
        pg.consume_input()
    return pg.get_result()


def _copy_data(pg: pq.abc.PGconn) -> int:
    """The size of the next COPY TO STDOUT row (its data dropped); -1 at the end."""
    while True:
        size, _ = pg.get_copy_data(1)
        if size != 0:
            return size
        _poll(pg, select.POLLIN)
        pg.consume_input()


def _exec(pg: pq.abc.PGconn, encoding: str) -> pq.abc.PGresult:
    """After a send: its results read to the end; the last, or the first error."""
    _flush(pg)
    last = error = None
    while (res := _result(pg)) is not None:
        if res.status == _S.FATAL_ERROR and error is None:
            error = res
        last = res
    if error is not None:
        raise _from_result(error, encoding)
    assert last is not None
    return last


class _Context:
    """What psycopg's Transformer adapts with: a form's loaders, the connection's encoding."""

    def __init__(self, conn: psycopg.Connection, adapters: AdaptersMap):
        self.connection, self.adapters = conn, adapters


def _encode(conn: psycopg.Connection, sql: str) -> bytes:
    if "\x00" in sql:
        raise SQLError("a statement cannot contain a NUL character", "42601")
    try:
        return sql.encode(conn.info.encoding)
    except UnicodeEncodeError as error:
        raise SQLError(f"the statement cannot be sent in the database's encoding: {error}", "22021") from None


class Statement:
    """One statement on its way: sent, then its result read one row at a time.

    ``columns`` and ``oids`` are known once the first result came (``None`` before);
    ``command`` (PostgreSQL's tag, ``INSERT 0 2``) and ``affected`` once it ended."""

    def __init__(self, conn: psycopg.Connection, adapters: AdaptersMap):
        self.conn, self.pg = conn, conn.pgconn
        self.encoding = conn.info.encoding
        self.tx = Transformer.from_context(_Context(conn, adapters))  # type: ignore[arg-type]
        self.columns: list[str] | None = None
        self.oids: list[int] = []
        self.command, self.affected = "", 0
        self.error: SQLError | None = None
        self.done = False

    def _dump(self, params: Sequence[Any]) -> tuple[Any, Any, Any]:
        if not params:
            return None, None, None
        if len(params) > MAX_PARAMS:
            raise SQLError(f"a statement takes at most {MAX_PARAMS} parameters", "54023")
        try:
            dumped = self.tx.dump_sequence(params, [PyFormat.AUTO] * len(params))
        except psycopg.Error as error:
            raise _from_exception(error) from None
        except UnicodeEncodeError as error:
            raise SQLError(f"a parameter cannot be sent in the database's encoding: {error}", "22021") from None
        return dumped, self.tx.types, self.tx.formats

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        query = _encode(self.conn, sql)
        dumped, types, formats = self._dump(params)
        self._sent(lambda: self.pg.send_query_params(query, dumped, types, formats, _TEXT))

    def prepare(self, sql: str, params: Sequence[Any] = ()) -> pq.abc.PGresult:
        """Parse and describe the statement (unnamed), without running it: the
        result's columns, or an SQLError."""
        query = _encode(self.conn, sql)
        self._params = self._dump(params)
        try:
            self.pg.send_prepare(b"", query, self._params[1])
            _exec(self.pg, self.encoding)
            self.pg.send_describe_prepared(b"")
            return _exec(self.pg, self.encoding)
        except psycopg.Error as error:
            raise _from_exception(error) from None

    def send_prepared(self) -> None:
        dumped, _, formats = self._params
        self._sent(lambda: self.pg.send_query_prepared(b"", dumped, formats, _TEXT))

    def _sent(self, send: Callable[[], None]) -> None:
        try:
            send()
            self.pg.set_single_row_mode()
            _flush(self.pg)
        except psycopg.Error as error:
            raise _from_exception(error, self.pg) from None

    def _describe(self, res: pq.abc.PGresult) -> None:
        if self.columns is None:
            count = res.nfields
            self.columns = [(res.fname(i) or b"?column?").decode(self.encoding, "replace") for i in range(count)]
            self.oids = [res.ftype(i) for i in range(count)]
            self.tx.set_pgresult(res, set_loaders=True)

    def next_row(self) -> pq.abc.PGresult | None:
        """The next row's result (one row), or None once the statement ended."""
        while not self.done:
            try:
                res = _result(self.pg)
            except psycopg.Error as error:
                self.done, self.error = True, self.error or _from_exception(error)
                break
            if res is None:
                self.done = True
                break
            status = res.status
            if status == _S.SINGLE_TUPLE:
                self._describe(res)
                return res
            if status in (_S.TUPLES_OK, _S.COMMAND_OK):
                self._describe(res)
                self.command = (res.command_status or b"").decode(self.encoding, "replace")
                self.affected = res.command_tuples or 0
            elif status == _S.FATAL_ERROR:
                self.error = self.error or _from_result(res, self.encoding)
            elif status == _S.COPY_IN:
                while not self.pg.put_copy_end(b"COPY FROM STDIN is not available here"):
                    _poll(self.pg, select.POLLOUT)
                _flush(self.pg)
                self.error = SQLError("COPY ... FROM STDIN cannot run here: use the console's CSV import "
                                      "or psql's \\copy", "0A000")
            elif status == _S.COPY_OUT:
                while _copy_data(self.pg) > 0:
                    pass
                self.error = SQLError("COPY ... TO STDOUT cannot run here: use the export "
                                      "or psql's \\copy", "0A000")
            elif status != _S.EMPTY_QUERY:
                self.error = self.error or SQLError(f"unexpected reply from the database: {_S(status).name}", "XX000")
        return None

    def load(self, res: pq.abc.PGresult) -> tuple:
        self.tx.set_pgresult(res, set_loaders=False)
        try:
            return self.tx.load_row(0, tuple)  # type: ignore[arg-type]
        except Exception as error:  # a value PostgreSQL sent that a loader could not read
            self.stop()
            raise SQLError(f"a value of the result could not be read: {error}", "XX000") from None

    def finish(self) -> None:
        """Read the rest of the result (the statement runs to its end); raise its error."""
        while self.next_row() is not None:
            pass
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Give up the result: cancel the statement if it still runs, and read what is
        left, so that the connection is idle again. The cancel's error is dropped."""
        if self.done:
            return
        error = self.error
        try:
            if self.pg.transaction_status == _ACTIVE:
                self.conn.cancel_safe(timeout=5)
        except psycopg.Error:
            pass
        while self.next_row() is not None:
            pass
        self.error = error


# -- results ------------------------------------------------------------------------------


@dataclass
class Result:
    """A statement's outcome. ``rows`` holds each row as encoded for its form: JSON
    (bytes, one array per row) or TEXT (a tuple of str/None); ``size`` is their bytes."""

    columns: list[str]
    types: list[str]
    rows: list[Any]
    rows_affected: int
    truncated: bool
    command: str
    size: int = 0


@dataclass(frozen=True)
class Form:
    """How values come back: ``adapters`` load them, ``encoder(oids)`` gives the function
    that turns a loaded row into (what is kept, its size in bytes)."""

    adapters: AdaptersMap
    encoder: Callable[[Sequence[int]], Callable[[tuple], tuple[Any, int]]]


def _json_encoder(oids: Sequence[int]) -> Callable[[tuple], tuple[Any, int]]:
    encode = values.json_row_encoder(oids)

    def measure(row: tuple) -> tuple[bytes, int]:
        data = encode(row)
        return data, len(data) + 1  # and a comma

    return measure


def _text_size(row: tuple) -> tuple[tuple, int]:
    return row, sum(len(v) for v in row if v is not None) + len(row)


JSON = Form(values.JSON_ADAPTERS, _json_encoder)
TEXT = Form(values.TEXT_ADAPTERS, lambda oids: _text_size)

_TYPES = "SELECT oid::int8, typname::text FROM pg_catalog.pg_type WHERE oid = ANY(%s::oid[])"


def type_names(conn: psycopg.Connection, oids: Sequence[int]) -> list[str]:
    """PostgreSQL's names of the types (``int4``, ``timestamptz``, ``_text``); types not
    built in (enums, extensions' types) are looked up in the database."""
    names = [values.type_name(oid) for oid in oids]
    unknown = sorted({oid for oid, name in zip(oids, names) if name is None})
    found: dict[int, str] = {}
    if unknown:
        try:
            rows = conn.execute(_TYPES, ["{" + ",".join(map(str, unknown)) + "}"], prepare=False).fetchall()
            found = {int(oid): str(name) for oid, name in rows}
        except psycopg.Error:
            pass  # a failed transaction: the numbers will do
    return [name or found.get(oid, str(oid)) for oid, name in zip(oids, names)]


_READS = frozenset(("select", "values", "table", "show", "with", "fetch"))
_WRITES = frozenset(("insert", "update", "delete", "merge", "into", "call", "do", "nextval", "setval"))


def plain_read(sql: str) -> bool:
    """Whether a statement only reads, as far as its words say (a function it calls may
    still write): such a statement is stopped once its result is truncated."""
    words = [sql[start:end].lower() for kind, start, end in _tokens(sql) if kind == "word"]
    return bool(words) and words[0] in _READS and _WRITES.isdisjoint(words)


def run(conn: psycopg.Connection, sql: str, params: Sequence[Any] = (), *, max_rows: int, max_bytes: int,
        form: Form = JSON) -> Result:
    """One statement; keeps at most ``max_rows`` rows and ``max_bytes`` bytes of them.

    Past either, a plain read outside a transaction is stopped (a table scan need not
    go on); anything else runs to its end, its further rows read and dropped, so that
    what it did (``INSERT ... RETURNING``, a transaction) is not undone."""
    stoppable = conn.pgconn.transaction_status == _IDLE and plain_read(sql)
    statement = Statement(conn, form.adapters)
    statement.send(sql, params)
    rows: list[Any] = []
    size, truncated = 0, False
    measure: Callable[[tuple], tuple[Any, int]] | None = None
    while (res := statement.next_row()) is not None:
        if truncated:
            continue  # the statement runs to its end; its rows are not kept
        if measure is None:
            measure = form.encoder(statement.oids)
        kept, n = measure(statement.load(res))
        if len(rows) >= max_rows or size + n > max_bytes:
            truncated = True
            if stoppable:
                statement.stop()
            continue
        rows.append(kept)
        size += n
    if statement.error is not None:
        raise statement.error
    command, affected = statement.command, statement.affected
    if truncated and stoppable and not command:  # stopped before its end: what was read
        command, affected = f"SELECT {len(rows)}", len(rows)
    return Result(statement.columns or [], type_names(conn, statement.oids), rows, affected, truncated, command, size)


def result_json(result: Result) -> bytes:
    """The HTTP API's answer for a JSON-form result, as bytes."""
    head = values.dumps({"columns": result.columns, "types": result.types})
    tail = values.dumps({"rows_affected": result.rows_affected, "truncated": result.truncated,
                         "command": result.command})
    return b"".join((head[:-1], b',"rows":[', b",".join(result.rows), b"],", tail[1:]))


def query_json(conn: psycopg.Connection, sql: str, params: Sequence[Any], *, max_rows: int, max_bytes: int) -> bytes:
    return result_json(run(conn, sql, params, max_rows=max_rows, max_bytes=max_bytes))


def _simple(conn: psycopg.Connection, sql: str) -> str:
    try:
        conn.pgconn.send_query(sql.encode())
        res = _exec(conn.pgconn, conn.info.encoding)
    except psycopg.Error as error:
        raise _from_exception(error) from None
    return (res.command_status or b"").decode()


def end_transaction(conn: psycopg.Connection) -> bool:
    """Roll back a transaction a statement left open (or failed); True if there was one."""
    if conn.closed or conn.pgconn.transaction_status == _IDLE:
        return False
    try:
        _simple(conn, "ROLLBACK")
    except SQLError:
        pass
    return True


def batch(conn: psycopg.Connection, statements: Sequence[tuple[str, Sequence[Any]]], *, max_rows: int,
          max_bytes: int) -> list[Result]:
    """Statements in one transaction, all or nothing. ``max_bytes`` bounds the rows of
    all of them together; an error says which statement failed (``.index``)."""
    try:
        _simple(conn, "BEGIN")
        results = []
        for index, (sql, params) in enumerate(statements):
            try:
                result = run(conn, sql, params, max_rows=max_rows, max_bytes=max_bytes)
            except SQLError as error:
                error.index = index
                raise
            max_bytes -= result.size
            results.append(result)
        if conn.pgconn.transaction_status != _IDLE and _simple(conn, "COMMIT") == "ROLLBACK":
            raise SQLError("the transaction was rolled back", "40000")
        return results
    finally:
        end_transaction(conn)


def batch_json(conn: psycopg.Connection, statements: Sequence[tuple[str, Sequence[Any]]], *, max_rows: int,
               max_bytes: int) -> bytes:
    results = batch(conn, statements, max_rows=max_rows, max_bytes=max_bytes)
    return b'{"results":[' + b",".join(map(result_json, results)) + b"]}"


# -- streams ----------------------------------------------------------------------------


class Stream:
    """A statement's whole result, a row at a time (for NDJSON and CSV): ``columns`` and
    ``types`` first, then ``rows()``. ``close()`` gives up what is left."""

    def __init__(self, conn: psycopg.Connection, sql: str, params: Sequence[Any], adapters: AdaptersMap):
        self.statement = statement = Statement(conn, adapters)
        described = statement.prepare(sql, params)
        if not described.nfields:
            raise SQLError("the statement returns no rows to export (run it as a query)", "0A000")
        oids = [described.ftype(i) for i in range(described.nfields)]
        self.types = type_names(conn, oids)  # looked up now: the connection is busy later
        if any(name is None for name in map(values.type_name, oids)):
            statement.prepare(sql, params)  # the look-up replaced the unnamed statement
        statement.send_prepared()
        # The first row (or the end) is read now: an error at the start is a proper error.
        self._first = statement.next_row()
        if statement.error is not None:
            statement.finish()
        self.columns: list[str] = statement.columns or []
        self.oids = statement.oids

    def rows(self) -> Iterator[tuple]:
        statement = self.statement
        res, self._first = self._first, None
        while res is not None:
            yield statement.load(res)
            res = statement.next_row()
        statement.finish()

    @property
    def count(self) -> int:
        return self.statement.affected

    def close(self) -> None:
        self.statement.stop()


def row_too_large(size: int, limit: int) -> SQLError:
    return SQLError(f"a row of {size} bytes is larger than a stream's chunk ({limit} bytes, sql.stream_chunk)",
                    "54000")


# -- scripts (the console) --------------------------------------------------------------


@dataclass
class Step:
    sql: str
    result: Result | None = None
    error: SQLError | None = None
    notices: list[str] = field(default_factory=list)


@dataclass
class ScriptRun:
    steps: list[Step]
    not_run: int = 0  # statements after a failed one
    rolled_back: bool = False  # the script left a transaction open, and it was rolled back


def script(conn: psycopg.Connection, text: str, *, max_rows: int, max_bytes: int) -> ScriptRun:
    """The statements of a script one after another, as psql runs them (each its own
    transaction unless the script says BEGIN), stopping at the first error."""
    statements = split_statements(text)
    steps: list[Step] = []
    notices: list[str] = []

    def notice(diag: psycopg.errors.Diagnostic) -> None:
        notices.append(f"{diag.severity}: {diag.message_primary}")

    conn.add_notice_handler(notice)
    try:
        for index, sql in enumerate(statements):
            step = Step(sql)
            steps.append(step)
            try:
                step.result = run(conn, sql, max_rows=max_rows, max_bytes=max_bytes, form=TEXT)
                max_bytes -= step.result.size
            except SQLError as error:
                step.error = error
            step.notices, notices[:] = notices[:], []
            if step.error is not None:
                return ScriptRun(steps, len(statements) - index - 1, end_transaction(conn))
    finally:
        conn.remove_notice_handler(notice)
    return ScriptRun(steps, 0, end_transaction(conn))


_TOKENS = re.compile(r"""
      (?P<space>\s+)
    | (?P<line>--[^\n]*)
    | (?P<block>/\*)
    | (?P<quote>[eE]'(?:[^'\\]|\\.|'')*'? | '(?:[^']|'')*'? | "(?:[^"]|"")*"?)
    | (?P<dollar>\$(?:[A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)?\$)
    | (?P<word>[A-Za-z_\x80-\uffff][A-Za-z_0-9$\x80-\uffff]*)
    | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


def _tokens(text: str) -> Iterator[tuple[str | None, int, int]]:
    """(kind, start, end) of each token: nested /* comments */ and $tag$ bodies whole."""
    pos, length = 0, len(text)
    while pos < length:
        token = _TOKENS.match(text, pos)
        assert token is not None  # (?P<other>.) matches anything
        kind, end = token.lastgroup, token.end()
        if kind == "block":  # /* nests in PostgreSQL
            level = 1
            while level and end < length:
                if text.startswith("/*", end):
                    level, end = level + 1, end + 2
                elif text.startswith("*/", end):
                    level, end = level - 1, end + 2
                else:
                    end += 1
        elif kind == "dollar":
            close = text.find(token.group(), end)
            end = length if close < 0 else close + len(token.group())
        yield kind, pos, end
        pos = end


def split_statements(text: str) -> list[str]:
    """A script's statements, split at the semicolons outside quotes, comments,
    dollar-quoted bodies, parentheses and SQL-standard function bodies (BEGIN ATOMIC
    ... END), as psql splits them. Statements with no code in them go."""
    pieces: list[str] = []
    start = depth = begins = 0
    words: list[str] = []  # the statement's first words: is it CREATE FUNCTION/PROCEDURE?
    code = False
    for kind, pos, end in _tokens(text):
        if kind in ("space", "line", "block"):
            continue
        token = text[pos:end]
        if kind == "word":
            word = token.lower()
            if len(words) < 4:
                words.append(word)
            if word in ("begin", "case") and _is_routine(words):
                begins += 1
            elif word == "end" and begins:
                begins -= 1
        elif token == "(":
            depth += 1
        elif token == ")" and depth:
            depth -= 1
        elif token == ";" and not depth and not begins:
            if code:
                pieces.append(text[start:pos].strip())
            start, words, code = end, [], False
            continue
        code = True
    if code:
        pieces.append(text[start:].strip())
    return pieces


def _is_routine(words: list[str]) -> bool:
    if words[:1] != ["create"]:
        return False
    rest = words[3:] if words[1:3] == ["or", "replace"] else words[1:]
    return bool(rest) and rest[0] in ("function", "procedure")
