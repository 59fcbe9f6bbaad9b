"""The query phase of a session: the simple and the extended query protocol over the
domain's SQLSession (which keeps PostgreSQL's transaction semantics: a failed
transaction, 'E' in ReadyForQuery, refuses statements until ROLLBACK).

Extended protocol: after an error every message up to the next Sync is skipped
(PostgreSQL does the same, so a pipelined batch stops at its first failure). SET, SHOW,
version() and the catalog queries of psql and drivers are answered here (catalog.py).

Two ways in: :meth:`QueryRunner.answer_now` answers messages at once when that takes
no waiting (Bind, Sync, Parse, and Describe/Execute of a statement the domain can run
inline: a quick read); the session's protocol callback gives it what arrives while
:meth:`QueryRunner.run` is idle, so a pipelined Bind/Describe/Execute/Sync of a point
select is answered in that callback, without waking the session's task (and, being what
drivers send for each execution of a prepared statement, in one go: execution_now).
Everything else, and every message after it, goes through ``run``.
"""

from __future__ import annotations

import asyncio
import re
from functools import lru_cache
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agora.core.errors import AgoraError
from agora.sql.session import ABORTED, Result
from agora.sql.pgwire import catalog, frames, messages
from agora.sql.pgwire.params import infer_param_types
from agora.sql.pgwire.results import Rows, columns_of, encode_rows, oid_for_expression, result_oids
from agora.sql.pgwire.rewrite import first_words, rewrite, split_statements
from agora.sql.pgwire.types import TEXT, UNKNOWN, decode_param

if TYPE_CHECKING:
    from agora.sql.pgwire.session import PGSession

FLUSH_ROWS = 256  # a longer result goes out in writes of this many DataRows, each drained
MAX_PREPARED = 10_000  # statements + portals one session may hold
_REPORTED = ("application_name", "client_encoding", "DateStyle", "TimeZone", "IntervalStyle")


class StatementError(Exception):
    def __init__(self, sqlstate: str, message: str, position: int | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.position = position


@dataclass
class Prepared:
    sql: str
    param_types: list[int]
    columns: list[tuple[str, int]] | None = None  # described: (name, oid)
    plain: bool = False  # nothing for this module to answer: straight to the domain
    unknown: list[int] = field(default_factory=list)  # parameters the client gave no type


@dataclass
class Portal:
    statement: Prepared
    params: list[Any]
    result_formats: list[int]
    rows: Rows | None = None
    oids: list[int] | None = None
    position: int = 0
    described: bool = False


@dataclass
class QueryRunner:
    session: "PGSession"
    statements: dict[str, Prepared] = field(default_factory=dict)
    portals: dict[str, Portal] = field(default_factory=dict)
    skipping: bool = False      # extended protocol: skip until Sync

    def __post_init__(self) -> None:
        self.send = self.session.out.append  # bound once: called for every message sent

    # -- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        s = self.session
        self.send(messages.READY_FOR_QUERY[self.status()])
        while not s.stopping:
            event = await s.next_event(s.settings.idle_timeout)
            kind = type(event)
            if event is None or kind is frames.Terminate:
                return
            if kind is frames.Fatal:
                from agora.sql.pgwire.session import Goodbye
                raise Goodbye(event.sqlstate, event.message)
            if self.now(event):
                continue
            s.busy = True
            try:
                if kind is frames.Query:
                    await self.simple_query(event.sql)
                elif kind is frames.Malformed and event.type == b"Q":
                    # A simple-query client sends no Sync: answer and be ready again.
                    self.error(StatementError(event.sqlstate, event.message))
                    self.send(messages.READY_FOR_QUERY[self.status()])
                else:
                    try:
                        await self.extended(event)
                    except StatementError as error:
                        self.error(error)
                        self.skipping = True
            finally:
                s.busy = False

    def answer_now(self, events: list[frames.Event]) -> int:
        """How many of ``events`` (from the first) were answered here and now."""
        if 3 <= len(events) <= 4 and events[-1] is frames.SYNC and events[-2] is frames.EXECUTE_ALL \
                and (len(events) == 3 or events[1] is frames.DESCRIBE_PORTAL) and type(events[0]) is frames.Bind \
                and self.execution_now(events[0], described=len(events) == 4):
            return len(events)
        done = 0
        for event in events:
            if not self.now(event):
                break
            done += 1
        return done

    def execution_now(self, bind: frames.Bind, described: bool) -> bool:
        """Bind, [Describe,] Execute and Sync of the unnamed portal, which is what a driver
        sends for each execution of a prepared statement, answered in one go: the same
        steps and replies as message by message, less the dispatching. False: nothing
        was done (it goes message by message, which also names what is wrong)."""
        statement = self.statements.get(bind.statement)
        if self.skipping or bind.portal or statement is None or not statement.plain or self.session.sql.failed:
            return False
        try:
            values = self.bind_values(bind, statement)
        except StatementError:
            return False
        try:
            result = self.session.sql.execute_now(statement.sql, values)
        except AgoraError as error:
            self.send(messages.BIND_COMPLETE)
            self.error(_statement_error(statement.sql, error))
            self.sync()
            return True
        if result is None:
            return False
        self.send(messages.BIND_COMPLETE)
        portal = Portal(statement, values, bind.result_formats)
        self.portal_ran(portal, self.rows(statement.sql, result))
        assert portal.rows is not None and portal.oids is not None
        if described:
            self.describe_portal(portal)
        try:
            if portal.rows.columns:
                self.session.out.extend(_data_rows(portal.rows.rows, portal.oids, portal.result_formats))
            self.portal_executed(portal, len(portal.rows.rows))
        except StatementError as error:
            self.error(error)
        self.sync()
        return True

    def now(self, event: frames.Event) -> bool:
        """Answer one message at once if that needs no waiting; False: nothing was done,
        and it is run()'s (with every message after it, to keep their order)."""
        kind = type(event)
        if kind is frames.Sync:
            self.sync()
            return True
        if kind is frames.Terminate or kind is frames.Fatal:
            return False
        if kind is frames.Flush or self.skipping:
            return True
        if kind is frames.Query:
            return self.query_now(event.sql)
        try:
            if kind is frames.Bind:
                self.bind(event)
            elif kind is frames.Execute:
                return self.execute_portal_now(event)
            elif kind is frames.Describe:
                return self.describe_now(event)
            elif kind is frames.Parse:
                self.parse(event)
            elif kind is frames.Close:
                self.close(event)
            else:
                return False  # Malformed: run() answers it
        except StatementError as error:
            self.error(error)
            self.skipping = True
        return True

    def sync(self) -> None:
        self.skipping = False
        status = self.status()
        if status == "I":
            self.portals.clear()  # portals end with their transaction, as in PostgreSQL
        else:
            self.portals.pop("", None)
        self.send(messages.READY_FOR_QUERY[status])

    def status(self) -> str:
        sql = self.session.sql
        return "E" if sql.failed else "T" if sql.in_transaction else "I"

    def error(self, error: StatementError) -> None:
        self.send(messages.error_response(error.sqlstate, error.message, position=error.position))

    # -- simple query ---------------------------------------------------------------

    async def simple_query(self, sql: str) -> None:
        pieces = split_statements(sql)
        if not pieces:
            self.send(messages.EMPTY_QUERY_RESPONSE)
        for piece in pieces:
            try:
                rows = await self.execute(piece, [])
            except StatementError as error:
                self.error(error)
                break
            if rows.columns:
                await self.send_rows(rows.rows, self.describe_rows(rows), [])
            self.complete(rows)
        self.send(messages.READY_FOR_QUERY[self.status()])

    def query_now(self, sql: str) -> bool:
        """A simple Query of one plain statement the domain runs here and now (a quick
        read), answered as simple_query would; False: nothing was done."""
        pieces = split_statements(sql)
        if len(pieces) != 1 or not _plain(pieces[0]):
            return False
        try:
            rows = self.domain_now(pieces[0], [])
            if rows is None:
                return False
            if rows.columns:
                # A quick read has few rows (SQLSession's inline budget): no flush between.
                self.session.out.extend(_data_rows(rows.rows, self.describe_rows(rows), ()))
            self.complete(rows)
        except StatementError as error:
            self.error(error)
        self.send(messages.READY_FOR_QUERY[self.status()])
        return True

    def describe_rows(self, rows: Rows) -> list[int]:
        """Send the RowDescription of a simple query's result (text format); its type OIDs."""
        oids = result_oids(rows.columns, rows.rows)
        self.send(_row_description(tuple(n for n, _ in rows.columns), tuple(oids), ()))
        return oids

    async def send_rows(self, rows: Any, oids: list[int], formats: list[int]) -> None:
        s = self.session
        for message in _data_rows(rows, oids, formats):
            s.out.append(message)
            if len(s.out) >= FLUSH_ROWS:
                await s.flush()

    def complete(self, rows: Rows) -> None:
        if not rows.tag and not rows.columns:  # the domain's answer to an empty statement
            self.send(messages.EMPTY_QUERY_RESPONSE)
            return
        if rows.truncated:
            self.send(messages.notice_response(
                f"the result was cut at {len(rows.rows)} rows (sql.max_rows / sql.max_result_bytes)",
                sqlstate="01000", severity="WARNING"))
        self.send(messages.command_complete(rows.tag))

    # -- extended query -------------------------------------------------------------

    async def extended(self, event: frames.Event) -> None:
        """What now() left: an Execute or Describe that waits for the domain, a malformed
        message, one that does not belong here (Bind, Parse and Close never wait)."""
        kind = type(event)
        if kind is frames.Execute:
            await self.execute_portal(event)
        elif kind is frames.Describe:
            await self.describe(event)
        elif kind is frames.Malformed:
            raise StatementError(event.sqlstate, event.message)
        else:
            raise StatementError("08P01", f"unexpected message {kind.__name__} in the query phase")

    def close(self, event: frames.Close) -> None:
        (self.statements if event.kind == "S" else self.portals).pop(event.name, None)
        self.send(messages.CLOSE_COMPLETE)

    def parse(self, event: frames.Parse) -> None:
        if event.name and event.name in self.statements:
            raise StatementError("42P05", f'prepared statement "{event.name}" already exists')
        if len(self.statements) + len(self.portals) >= MAX_PREPARED:
            raise StatementError("54000", f"too many prepared statements (at most {MAX_PREPARED})")
        try:
            nparams, cast_types, several = _analyse(event.sql)
        except ValueError as error:
            raise StatementError("42P02", str(error)) from None
        if several:
            raise StatementError("42601", "cannot insert multiple commands into a prepared statement")
        self.refuse_if_aborted(event.sql)
        count = max(nparams, len(event.param_types))
        given = list(event.param_types) + [0] * (count - len(event.param_types))
        types = [given[i] or cast_types.get(i + 1, 0) for i in range(count)]
        # Untyped parameters are read as text (SQLite's column affinity converts them);
        # a client that asks (Describe) gets a better guess from the schema then.
        unknown = [i for i, t in enumerate(types) if t in (0, UNKNOWN)]
        self.statements[event.name] = Prepared(event.sql, [TEXT if t in (0, UNKNOWN) else t for t in types],
                                               plain=self.plain(event.sql), unknown=unknown)
        self.send(messages.PARSE_COMPLETE)

    def bind(self, event: frames.Bind) -> None:
        statement = self.statement(event.statement)
        if event.portal and event.portal in self.portals:
            raise StatementError("42P03", f'cursor "{event.portal}" already exists')
        self.refuse_if_aborted(statement.sql)
        values = self.bind_values(event, statement)
        self.portals[event.portal] = Portal(statement, values, event.result_formats)
        self.send(messages.BIND_COMPLETE)

    def refuse_if_aborted(self, sql: str) -> None:
        """In a failed transaction only its end may be parsed or bound, as in PostgreSQL
        (which checks at Parse and Bind, not only when the statement runs)."""
        if self.session.sql.failed and not _ends_transaction(sql):
            raise StatementError("25P02", ABORTED)

    @staticmethod
    def bind_values(event: frames.Bind, statement: Prepared) -> list[Any]:
        """A Bind's parameters as values for the domain."""
        if len(event.params) != len(statement.param_types):
            raise StatementError("08P01", f"bind message supplies {len(event.params)} parameters, but prepared "
                                          f"statement requires {len(statement.param_types)}")
        formats = event.param_formats
        if len(formats) not in (0, 1, len(event.params)):
            raise StatementError("08P01", "bind message has a wrong number of parameter formats")
        values = []
        for i, (raw, oid) in enumerate(zip(event.params, statement.param_types)):
            binary = bool(formats[i] if len(formats) > 1 else formats[0] if formats else 0)
            try:
                values.append(None if raw is None else decode_param(raw, oid, binary))
            except (ValueError, UnicodeDecodeError) as error:
                raise StatementError("22P02", f"invalid value for parameter ${i + 1}: {error}") from None
        return values

    def statement(self, name: str) -> Prepared:
        statement = self.statements.get(name)
        if statement is None:
            raise StatementError("26000", f'prepared statement "{name}" does not exist')
        return statement

    def portal(self, name: str) -> Portal:
        portal = self.portals.get(name)
        if portal is None:
            raise StatementError("34000", f'portal "{name}" does not exist')
        return portal

    def describe_now(self, event: frames.Describe) -> bool:
        if event.kind == "S":
            statement = self.statement(event.name)
            if statement.unknown or statement.columns is None:
                return False
            self.describe_statement(statement)
            return True
        portal = self.portal(event.name)
        if portal.rows is None and not self.run_portal_now(portal):
            return False
        self.describe_portal(portal)
        return True

    async def describe(self, event: frames.Describe) -> None:
        if event.kind == "S":
            statement = self.statement(event.name)
            if statement.unknown:
                guessed = await infer_param_types(rewrite(statement.sql).sql, self.schema_runner())
                for i in statement.unknown:
                    statement.param_types[i] = guessed.get(i + 1, TEXT)
                statement.unknown = []
            if statement.columns is None:
                statement.columns = await self.describe_sql(statement.sql)
            self.describe_statement(statement)
            return
        portal = self.portal(event.name)
        # The portal runs now, so that its columns' types are those of its values.
        await self.run_portal(portal)
        self.describe_portal(portal)

    def describe_statement(self, statement: Prepared) -> None:
        self.send(messages.parameter_description(statement.param_types))
        self.send(messages.row_description(statement.columns) if statement.columns else messages.NO_DATA)

    def describe_portal(self, portal: Portal) -> None:
        assert portal.rows is not None and portal.oids is not None
        portal.described = True
        if portal.rows.columns:
            self.send(_row_description(tuple(n for n, _ in portal.rows.columns), tuple(portal.oids),
                                       tuple(portal.result_formats)))
        else:
            self.send(messages.NO_DATA)

    async def describe_sql(self, sql: str) -> list[tuple[str, int]]:
        words = first_words(sql, 1)
        if words not in (["SELECT"], ["WITH"], ["VALUES"], ["PRAGMA"], ["SHOW"]) and "RETURNING" not in sql.upper():
            return []
        if words == ["SHOW"] or catalog.is_catalog_query(sql) or catalog.simple_function(sql, self.session_info()):
            rows = await self.execute(sql, [None] * 100) if words != ["SHOW"] else Rows([(sql.split()[-1], "TEXT")])
            return [(n, TEXT) for n, _ in rows.columns]
        describe = getattr(self.session.sql, "describe", None)
        if describe is None:
            return []
        try:
            result = await _await(describe(sql))
        except AgoraError as error:
            raise StatementError(getattr(error, "sqlstate", "42000"), error.detail) from None
        if isinstance(result, tuple) and len(result) == 2:  # (parameter count, columns)
            result = result[1]
        columns = columns_of(result)
        # An expression's text says more than its alias: `count(*) AS n`, `$1::int AS b`.
        items = catalog.select_items(sql) if words == ["SELECT"] else []
        if len(items) != len(columns) or any(expr.strip().endswith("*") for _, expr in items):
            items = [(name, name) for name, _ in columns]
        return [(name, oid_for_expression(_without_alias(expr), decltype))
                for (name, decltype), (_, expr) in zip(columns, items)]

    async def run_portal(self, portal: Portal) -> None:
        if portal.rows is None:
            run = self.domain if portal.statement.plain else self.execute
            self.portal_ran(portal, await run(portal.statement.sql, portal.params))

    def run_portal_now(self, portal: Portal) -> bool:
        """Run a portal's statement here and now if the domain can (a quick read)."""
        if not portal.statement.plain:
            return False
        rows = self.domain_now(portal.statement.sql, portal.params)
        if rows is None:
            return False
        self.portal_ran(portal, rows)
        return True

    @staticmethod
    def portal_ran(portal: Portal, rows: Rows) -> None:
        portal.rows = rows
        described = portal.statement.columns
        if described and len(described) == len(rows.columns):
            portal.oids = [oid for _, oid in described]
        else:
            portal.oids = result_oids(rows.columns, rows.rows)

    async def execute_portal(self, event: frames.Execute) -> None:
        portal = self.portal(event.portal)
        await self.run_portal(portal)
        assert portal.rows is not None and portal.oids is not None
        rows = portal.rows.rows
        end = len(rows) if event.max_rows == 0 else min(len(rows), portal.position + event.max_rows)
        if portal.rows.columns:
            await self.send_rows(rows[portal.position:end], portal.oids, portal.result_formats)
        self.portal_executed(portal, end)

    def execute_portal_now(self, event: frames.Execute) -> bool:
        portal = self.portal(event.portal)
        if portal.rows is None and not self.run_portal_now(portal):
            return False
        assert portal.rows is not None and portal.oids is not None
        rows = portal.rows.rows
        end = len(rows) if event.max_rows == 0 else min(len(rows), portal.position + event.max_rows)
        if end - portal.position > FLUSH_ROWS:
            return False  # many rows: run() sends them in flushed slices
        if portal.rows.columns:
            self.session.out.extend(_data_rows(rows[portal.position:end], portal.oids, portal.result_formats))
        self.portal_executed(portal, end)
        return True

    def portal_executed(self, portal: Portal, end: int) -> None:
        assert portal.rows is not None
        portal.position = end
        if end < len(portal.rows.rows):
            self.send(messages.PORTAL_SUSPENDED)
        else:
            self.complete(portal.rows)

    # -- one statement ----------------------------------------------------------------

    def session_info(self) -> dict[str, str]:
        s = self.session
        return {**s.params, "database": s.database, "user": s.user.name, "pid": str(s.process_id),
                "owner": s.database.split("/")[0] if "/" in s.database else s.user.name}

    def schema_runner(self) -> Any:
        async def run(sql: str, params: list[Any]) -> Rows:
            return await self.domain(sql, params)
        return run

    async def domain(self, sql: str, params: list[Any]) -> Rows:
        try:
            result = await _await(self.session.sql.execute(sql, params))
        except AgoraError as error:
            raise _statement_error(sql, error) from None
        return self.rows(sql, result)

    def domain_now(self, sql: str, params: list[Any]) -> Rows | None:
        try:
            result = self.session.sql.execute_now(sql, params)
        except AgoraError as error:
            raise _statement_error(sql, error) from None
        return None if result is None else self.rows(sql, result)

    def rows(self, sql: str, result: Result) -> Rows:
        """The domain's result as the wire protocol sends it (its notice sent first)."""
        if result.notice:
            self.send(messages.notice_response(result.notice, severity="WARNING",
                                               sqlstate="25P01" if "no transaction" in result.notice else "25001"))
        rows = result.rows
        return Rows([(c.name, c.decltype) for c in result.columns], rows,
                    result.command_tag or _tag(sql, len(rows), result.rows_affected), result.truncated)

    async def execute(self, sql: str, params: list[Any]) -> Rows:
        words = first_words(sql, 3)
        head = words[0] if words else ""
        if head == "SET":
            return self.set(sql)
        if head == "SHOW":
            name = re.sub(r"(?is)^\s*show\s+", "", sql).strip().rstrip(";").strip()
            if name.lower() == "all":
                return Rows([("name", "TEXT"), ("setting", "TEXT"), ("description", "TEXT")],
                            [(k, v, "") for k, v in self.session.params.items()], "SHOW")
            return Rows([(name.lower().replace(" ", "_") if " " not in name else "transaction_isolation", "TEXT")],
                        [(catalog.setting_value(name, self.session_info()),)], "SHOW")
        if head in ("RESET", "DISCARD", "LISTEN", "UNLISTEN", "DEALLOCATE", "CLOSE"):
            if head == "DEALLOCATE":
                target = words[-1] if len(words) > 1 else ""
                if target == "ALL":
                    self.statements.clear()
                else:
                    self.statements.pop(sql.split()[-1].strip('";'), None)
            return Rows([], tag={"DISCARD": "DISCARD ALL", "CLOSE": "CLOSE CURSOR"}.get(head, head))
        simple = catalog.simple_function(sql, self.session_info())
        if simple is not None:
            return simple
        if catalog.is_catalog_query(sql):
            return await catalog.answer(sql, self.schema_runner(), self.databases, self.session_info())
        return await self.domain(sql, params)

    @staticmethod
    def plain(sql: str) -> bool:
        return _plain(sql)

    def set(self, sql: str) -> Rows:
        match = re.match(r"(?is)^\s*set\s+(?:session\s+|local\s+)?([a-z_][a-z0-9_.]*)\s*(?:to|=)\s*(.*?)\s*;?\s*$", sql)
        if match:
            name, value = match.group(1), match.group(2).strip().strip("'")
            known = {k.lower(): k for k in self.session.params}
            if name.lower() == "client_encoding" and value.upper().replace("-", "") not in ("UTF8", "UNICODE"):
                raise StatementError("22023", f"unsupported client encoding {value!r}: only UTF8")
            if name.lower() in known:
                key = known[name.lower()]
                if key in _REPORTED and key != "client_encoding":
                    self.session.params[key] = value if key != "TimeZone" else self.session.params[key]
                    self.send(messages.parameter_status(key, self.session.params[key]))
        # Other settings (search_path, statement_timeout, SET TRANSACTION ...) are accepted
        # and have no effect here.
        return Rows([], tag="SET")

    async def databases(self) -> list[dict[str, Any]]:
        from agora.sql.hosted import hosted_sql

        listed = await _await(hosted_sql(self.session.runtime).list(self.session.user))
        out = []
        for db in listed:
            get = (lambda k, d=db: d.get(k)) if isinstance(db, dict) else (lambda k, d=db: getattr(d, k, None))
            owner, name = get("owner"), get("name")
            owner = getattr(owner, "name", owner)
            ref = name if owner == self.session.user.name else f"{owner}/{name}"
            out.append({"name": ref, "owner": owner, "privileges": get("access") or ""})
        return out


def _statement_error(sql: str, error: AgoraError) -> StatementError:
    return StatementError(getattr(error, "sqlstate", None) or "XX000", error.detail,
                          getattr(error, "position", None) or error_position(sql, error.detail))


def _data_rows(rows: Any, oids: list[int], formats: list[int]) -> list[bytes]:
    try:
        return encode_rows(rows, oids, formats)
    except (ValueError, TypeError, OverflowError) as error:
        raise StatementError("22P02", f"a value does not fit its column's type: {error}") from None


_NAMED = re.compile(r'near "(?P<near>[^"]+)": syntax error|no such (?:table|column|function): (?P<name>[\w.]+)')


def error_position(sql: str, message: str) -> int | None:
    """Where in the statement SQLite's error points (1-based, as ErrorResponse's P
    field): the token it names, if it appears in the text. psql then marks it."""
    match = _NAMED.search(message)
    if not match:
        return None
    token = match.group("near") or match.group("name").split(".")[-1]
    found = re.search(r"(?<![\w])" + re.escape(token) + r"(?![\w])", sql, re.IGNORECASE) or \
        re.search(re.escape(token), sql, re.IGNORECASE)
    return found.start() + 1 if found else None


@lru_cache(maxsize=1024)
def _row_description(names: tuple[str, ...], oids: tuple[int, ...], formats: tuple[int, ...]) -> bytes:
    # The same statement describes the same way on every execution: encode it once.
    return messages.row_description(list(zip(names, oids)), formats)


@lru_cache(maxsize=1024)
def _plain(sql: str) -> bool:
    """True for statements execute() would hand to the domain unchanged."""
    words = first_words(sql, 1)
    return bool(words) and words[0] in ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "REPLACE") \
        and not catalog.is_simple_function(sql) and not catalog.is_catalog_query(sql)


@lru_cache(maxsize=1024)
def _analyse(sql: str) -> tuple[int, dict[int, int], bool]:
    """(highest $N, types named by casts, several statements?) of a statement's text;
    cached, since drivers send the same few statements over and over."""
    info = rewrite(sql)
    return info.nparams, info.cast_types, len(split_statements(sql)) > 1


@lru_cache(maxsize=256)
def _ends_transaction(sql: str) -> bool:
    """COMMIT, ROLLBACK (TO SAVEPOINT too), END, ABORT, or an empty statement."""
    words = first_words(sql, 1)
    return not words or words[0] in ("COMMIT", "ROLLBACK", "END", "ABORT")


def _without_alias(expression: str) -> str:
    return re.sub(r'(?is)\s+AS\s+("[^"]*"|\w+)\s*$', "", expression)


def _tag(sql: str, nrows: int, affected: int) -> str:
    words = first_words(sql, 2)
    head = words[0] if words else ""
    if head in ("SELECT", "WITH", "VALUES", "PRAGMA", "EXPLAIN"):
        return f"SELECT {nrows}"
    if head == "INSERT":
        return f"INSERT 0 {affected}"
    if head in ("UPDATE", "DELETE"):
        return f"{head} {affected}"
    return " ".join(words) if head in ("CREATE", "DROP", "ALTER") else head


async def _await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value
