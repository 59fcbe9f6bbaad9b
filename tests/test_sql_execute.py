"""execute.py, values.py and export.py on a plain psycopg connection to a real PostgreSQL
(AGORA_TEST_DATABASE_URL's server, else the local one; skipped where there is none), in
a database of this module's own: PostgreSQL's types as JSON, CSV and text, parameters,
command tags and SQLSTATEs, results bounded in rows and in bytes as encoded (the
statement still runs to its end), batches all or nothing, streams a row at a time that
can be given up midway with the connection left idle, chunks bounded in bytes, scripts
split as psql splits them, CSV import, and the watchdog that stops a statement whose
session turned statement_timeout off."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import secrets
import time
import tracemalloc
from typing import Iterator

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agora.core.errors import InvalidInput
from agora.sql import execute, export, values
from agora.sql.errors import SQLDenied, SQLError, SQLTimeout
from agora.sql.execute import split_statements

BIG = 10**6
ADMIN = os.environ.get("AGORA_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    admin_url = ADMIN.replace("postgresql+asyncpg://", "postgresql://")
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL at {admin_url}: {error}")
    name = "agora_x_" + secrets.token_hex(5)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def conn(dsn) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True, options="-c statement_timeout=5000 -c TimeZone=UTC") as c:
        yield c


def run(conn, sql, params=(), max_rows=BIG, max_bytes=BIG, form=execute.JSON):
    return execute.run(conn, sql, params, max_rows=max_rows, max_bytes=max_bytes, form=form)


def document(conn, sql, params=(), **limits) -> dict:
    return json.loads(execute.query_json(conn, sql, params, max_rows=limits.get("max_rows", BIG),
                                         max_bytes=limits.get("max_bytes", BIG)))


def test_postgresql_types_as_json(conn):
    r = document(conn, """SELECT 1::int2 AS i2, 2::int4 i4, 9007199254740993::int8 i8, 1.50::numeric(6, 2) n,
        'NaN'::numeric nn, 0.5::float4 f4, 'Infinity'::float8 fi, '-Infinity'::float8 fm, 'NaN'::float8 fn,
        true b, 'x'::text t, 'ab'::char(3) c, 'v'::varchar v, 'name'::name nm,
        '2024-05-01 10:00:00.25+02'::timestamptz tz, '2024-05-01 10:00'::timestamp ts, 'infinity'::timestamp tsi,
        '2024-02-29'::date d, '10:30'::time tm, '10:30:00+05:30'::timetz ttz, '1 year 2 months 3 days 04:05:06'::interval iv,
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid u, '\\x00ff10'::bytea by, ''::bytea be,
        '{"a": [1, 2.50, null], "b": "\\n"}'::jsonb jb, '[1,\n 2]'::json js, ARRAY[1, NULL, 3] ai,
        ARRAY[['a', 'b'], ['c', NULL]] at, ARRAY['1.5'::numeric] an, ARRAY['{"k": 1}'::jsonb] aj,
        ARRAY['\\x01'::bytea] ab, ARRAY['2024-01-01 00:00+00'::timestamptz] ats, '{}'::int4[] ae,
        NULL::int4 nl, '192.168.0.1/24'::inet ip, int4range(1, 5) rg, '(1,2)'::point pt, ROW(1, 'a') rw,
        '<a/>'::xml x, 'fat & rat'::tsquery q, B'101'::bit(3) bt""")
    by_name = dict(zip(r["columns"], zip(r["types"], r["rows"][0])))
    assert by_name == {
        "i2": ("int2", 1), "i4": ("int4", 2), "i8": ("int8", 9007199254740993), "n": ("numeric", "1.50"),
        "nn": ("numeric", "NaN"), "f4": ("float4", 0.5), "fi": ("float8", "Infinity"),
        "fm": ("float8", "-Infinity"), "fn": ("float8", "NaN"), "b": ("bool", True), "t": ("text", "x"),
        "c": ("bpchar", "ab "), "v": ("varchar", "v"), "nm": ("name", "name"),
        "tz": ("timestamptz", "2024-05-01T08:00:00.25+00:00"), "ts": ("timestamp", "2024-05-01T10:00:00"),
        "tsi": ("timestamp", "infinity"), "d": ("date", "2024-02-29"), "tm": ("time", "10:30:00"),
        "ttz": ("timetz", "10:30:00+05:30"), "iv": ("interval", "1 year 2 mons 3 days 04:05:06"),
        "u": ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "by": ("bytea", {"$base64": "AP8Q"}),
        "be": ("bytea", {"$base64": ""}), "jb": ("jsonb", {"a": [1, 2.50, None], "b": "\n"}),
        "js": ("json", [1, 2]), "ai": ("_int4", [1, None, 3]), "at": ("_text", [["a", "b"], ["c", None]]),
        "an": ("_numeric", ["1.5"]), "aj": ("_jsonb", [{"k": 1}]), "ab": ("_bytea", [{"$base64": "AQ=="}]),
        "ats": ("_timestamptz", ["2024-01-01T00:00:00+00:00"]), "ae": ("_int4", []), "nl": ("int4", None),
        "ip": ("inet", "192.168.0.1/24"), "rg": ("int4range", "[1,5)"), "pt": ("point", "(1,2)"),
        "rw": ("record", "(1,a)"), "x": ("xml", "<a/>"), "q": ("tsquery", "'fat' & 'rat'"), "bt": ("bit", "101")}
    # jsonb's numbers keep their digits; NDJSON's lines hold (a json value's newlines go)
    raw = execute.query_json(conn, "SELECT '{\"n\": 1.000000000000000000001}'::jsonb, '{\n\"a\": 1}'::json",
                             (), max_rows=9, max_bytes=BIG)
    assert b'"rows":[[{"n": 1.000000000000000000001},{ "a": 1}]]' in raw


def test_user_defined_types_are_named_from_the_catalog(conn):
    conn.execute("DROP TYPE IF EXISTS mood; CREATE TYPE mood AS ENUM ('ok', 'bad')")
    r = run(conn, "SELECT 'ok'::mood, ARRAY['bad'::mood]")
    assert r.types == ["mood", "_mood"] and r.rows == [b'["ok","{bad}"]']


def test_the_console_and_csv_forms(conn):
    sql = "SELECT 1 AS i, '\\xcafe'::bytea AS b, true AS t, ARRAY[1, 2] AS a, NULL::text AS n, 1.5::float8 AS f"
    assert run(conn, sql, form=execute.TEXT).rows == [("1", "\\xcafe", "t", "{1,2}", None, "1.5")]
    chunks = list(export.csv_chunks(conn, sql, (), 1024))
    assert b"".join(chunks) == b"i,b,t,a,n,f\r\n1,yv4=,t,\"{1,2}\",,1.5\r\n"


def test_parameters(conn):
    r = run(conn, "SELECT $1::date + 1, $2 + 1, $3, $4::bytea, $5::int, $6, $7 * 2, $8::jsonb -> 'k'",
            ["2024-02-28", 41, True, b"\x00\xff", None, 10**30, 0.25, '{"k": [1]}'])
    assert json.loads(b"[" + r.rows[0] + b"]")[0] == ["2024-02-29", 42, True, {"$base64": "AP8="}, None,
                                                     "1000000000000000000000000000000", 0.5, [1]]
    assert [values.from_json(v) for v in (1, "s", None, True, {"$base64": "AAE="})] == [1, "s", None, True, b"\x00\x01"]
    for bad in ([1], {"x": 1}, {"$base64": "!!"}):
        with pytest.raises(InvalidInput):
            values.from_json(bad)
    with pytest.raises(SQLError) as error:
        run(conn, "SELECT $1::text", ["a\x00b"])
    assert error.value.sqlstate == "22021"
    with pytest.raises(SQLError) as error:
        run(conn, "SELECT '\x00'")
    assert error.value.sqlstate == "42601"
    assert run(conn, "SELECT '%s', '%%', $1::text", ["?"]).rows == [b'["%s","%%","?"]']


def test_commands_and_errors(conn):
    conn.execute("DROP TABLE IF EXISTS c; CREATE TABLE c (x int PRIMARY KEY)")
    r = run(conn, "INSERT INTO c SELECT generate_series(1, 3)")
    assert (r.command, r.rows_affected, r.columns, r.rows) == ("INSERT 0 3", 3, [], [])
    assert run(conn, "UPDATE c SET x = x + 10 WHERE x > 1").command == "UPDATE 2"
    assert run(conn, "SELECT * FROM c WHERE false").columns == ["x"]  # no rows, still its columns
    assert run(conn, "  ").command == ""
    assert run(conn, "-- nothing").command == ""
    cases = {"SELECT * FROM nope": "42P01", "SELEC 1": "42601", "INSERT INTO c VALUES (1)": "23505",
             "SELECT 1/0": "22012", "SELECT 1; SELECT 2": "42601", "COPY c FROM STDIN": "0A000",
             "COPY c TO STDOUT": "0A000", "SELECT pg_sleep(10)": "57014"}
    conn.execute("SET statement_timeout = 300")
    for sql, code in cases.items():
        with pytest.raises(SQLError) as error:
            run(conn, sql)
        assert error.value.sqlstate == code, (sql, error.value.detail)
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with pytest.raises(SQLTimeout):
        run(conn, "SELECT pg_sleep(10)")
    with pytest.raises(SQLError) as error:
        run(conn, "INSERT INTO c VALUES (1)")
    assert "DETAIL: Key (x)=(1) already exists." in error.value.detail
    assert run(conn, "SELECT 7").rows == [b"[7]"]


def test_denied_is_42501(conn):
    role = "agora_x_" + secrets.token_hex(4)
    try:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
    except psycopg.Error:
        pytest.skip("the test role cannot create roles")
    try:
        conn.execute("DROP TABLE IF EXISTS secret; CREATE TABLE secret (x int)")
        conn.execute(f"SET ROLE {role}")
        with pytest.raises(SQLDenied) as error:
            run(conn, "SELECT * FROM secret")
        assert error.value.sqlstate == "42501"
    finally:
        conn.execute("RESET ROLE")
        conn.execute(f"DROP ROLE {role}")


def test_results_are_bounded_in_rows_and_bytes_as_encoded(conn):
    r = run(conn, "SELECT g FROM generate_series(1, 100) g", max_rows=10)
    assert len(r.rows) == 10 and r.truncated and r.command == f"SELECT {r.rows_affected}"
    # a plain read is stopped there, whatever was left of it
    # (ten billion rows: read to its end, it would not come back)
    r = run(conn, "SELECT a, b FROM generate_series(1, 100000) a, generate_series(1, 100000) b", max_rows=10)
    assert len(r.rows) == 10 and r.truncated
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert [execute.plain_read(sql) for sql in (
        "select 1", " (SELECT 1)", "WITH a AS (SELECT 1) SELECT * FROM a", "TABLE t", "/* x */ VALUES (1)",
        "SELECT 'delete'", 'SELECT "update" FROM t')] == [True] * 7
    assert not any(execute.plain_read(sql) for sql in (
        "INSERT INTO t VALUES (1) RETURNING *", "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "SELECT * INTO t2 FROM t", "SELECT * FROM t FOR UPDATE", "SELECT nextval('s') FROM t", "EXPLAIN ANALYZE SELECT 1",
        "CALL p()", ""))
    # bytes as sent: a bytea of 3000 bytes is 4000 of base64, a '"' is two bytes in JSON
    r = run(conn, "SELECT decode(repeat('00', 3000), 'hex') FROM generate_series(1, 5)", max_bytes=9000)
    assert len(r.rows) == 2 and r.truncated and r.size <= 9000
    r = run(conn, "SELECT repeat('\"', 1000) FROM generate_series(1, 10)", max_bytes=5000)
    assert len(r.rows) == 2 and r.truncated
    assert len(execute.result_json(r)) < 5000 + 200
    r = run(conn, "SELECT repeat('x', 5000000)", max_bytes=1000)
    assert r.rows == [] and r.truncated
    # a truncated statement still ran to its end: nothing it did is lost
    conn.execute("DROP TABLE IF EXISTS kept; CREATE TABLE kept (x int)")
    r = run(conn, "INSERT INTO kept SELECT generate_series(1, 50) RETURNING x", max_rows=3)
    assert r.truncated and r.rows_affected == 50
    assert run(conn, "SELECT count(*) FROM kept").rows == [b"[50]"]


def test_batch_is_all_or_nothing(conn):
    conn.execute("DROP TABLE IF EXISTS b; CREATE TABLE b (x int PRIMARY KEY)")
    results = execute.batch(conn, [("INSERT INTO b VALUES ($1)", [1]), ("SELECT count(*) FROM b", [])],
                            max_rows=10, max_bytes=BIG)
    assert [r.command for r in results] == ["INSERT 0 1", "SELECT 1"]
    with pytest.raises(SQLError) as error:
        execute.batch(conn, [("INSERT INTO b VALUES (2)", []), ("SELECT 1", []), ("INSERT INTO b VALUES (1)", [])],
                      max_rows=10, max_bytes=BIG)
    assert (error.value.index, error.value.sqlstate) == (2, "23505")
    assert run(conn, "SELECT array_agg(x) FROM b").rows == [b"[[1]]"]
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # the byte budget is the batch's, not each statement's
    results = execute.batch(conn, [("SELECT repeat('a', 600)", []), ("SELECT repeat('b', 600)", [])],
                            max_rows=10, max_bytes=1000)
    assert [r.truncated for r in results] == [False, True]
    document = json.loads(execute.batch_json(conn, [("SELECT 1 AS one", [])], max_rows=1, max_bytes=100))
    assert document == {"results": [{"columns": ["one"], "types": ["int4"], "rows": [[1]], "rows_affected": 1,
                                     "truncated": False, "command": "SELECT 1"}]}


def test_streams_chunks_and_giving_up(conn):
    lines = b"".join(export.ndjson_chunks(conn, "SELECT g, 'v' || g FROM generate_series(1, 5000) g", (), 4096))
    parsed = [json.loads(line) for line in lines.splitlines()]
    assert parsed[0] == {"columns": ["g", "?column?"], "types": ["int4", "text"]}
    assert parsed[1] == [1, "v1"] and parsed[-1] == {"rows": 5000} and len(parsed) == 5002
    assert all(len(chunk) <= 4096 for chunk in export.ndjson_chunks(conn, "SELECT repeat('z', 100) FROM "
                                                                         "generate_series(1, 500)", (), 4096))
    # a row over the chunk: an error line, and the connection is clean
    tail = list(export.ndjson_chunks(conn, "SELECT repeat('z', 10000)", (), 4096))[-1]
    assert json.loads(tail)["error"]["sqlstate"] == "54000"
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # errors: before the first row, a proper error; a statement without rows does not run
    with pytest.raises(SQLError) as error:
        next(export.ndjson_chunks(conn, "SELECT 1 / (g - 1) FROM generate_series(1, 2) g", (), 4096))
    assert error.value.sqlstate == "22012"
    conn.execute("DROP TABLE IF EXISTS s; CREATE TABLE s (x int)")
    with pytest.raises(SQLError) as error:
        next(export.csv_chunks(conn, "INSERT INTO s VALUES (1)", (), 4096))
    assert error.value.sqlstate == "0A000" and run(conn, "SELECT count(*) FROM s").rows == [b"[0]"]
    # given up midway: the statement is cancelled, the connection idle and usable
    chunks = export.ndjson_chunks(conn, "SELECT a, b FROM generate_series(1, 100000) a, generate_series(1, 1000) b",
                                  (), 4096)
    next(chunks), next(chunks)
    chunks.close()  # (a hundred million rows left: drained rather than cancelled, it would not come back)
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert run(conn, "SELECT 8").rows == [b"[8]"]


def test_a_stream_holds_one_row_and_one_chunk(conn):
    row = 2 * 1024 * 1024
    sql = f"SELECT g, decode(repeat('ab', {row}), 'hex') FROM generate_series(1, 20) g"
    tracemalloc.start()
    try:
        total = sum(len(chunk) for chunk in export.ndjson_chunks(conn, sql, (), 4 * row))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 20 * row  # base64 of 20 rows of 2 MiB
    assert peak < 12 * row, peak  # not the result's 56 MiB


def test_scripts(conn):
    outcome = execute.script(conn, "DROP TABLE IF EXISTS sc; CREATE TABLE sc (x int); "
                                   "DROP TABLE IF EXISTS nothing_here; INSERT INTO sc VALUES (1), (2); "
                                   "SELECT * FROM sc ORDER BY x; SELECT 1/0; INSERT INTO sc VALUES (3)",
                             max_rows=10, max_bytes=BIG)
    assert [s.result.command if s.result else s.error.sqlstate for s in outcome.steps] == \
        ["DROP TABLE", "CREATE TABLE", "DROP TABLE", "INSERT 0 2", "SELECT 2", "22012"]
    assert outcome.steps[4].result.rows == [("1",), ("2",)]
    assert any("does not exist, skipping" in n for n in outcome.steps[2].notices)
    assert outcome.not_run == 1 and not outcome.rolled_back
    outcome = execute.script(conn, "BEGIN; INSERT INTO sc VALUES (4)", max_rows=10, max_bytes=BIG)
    assert outcome.rolled_back and conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert run(conn, "SELECT count(*) FROM sc").rows == [b"[2]"]
    outcome = execute.script(conn, "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql BEGIN ATOMIC "
                                   "SELECT 1; SELECT CASE WHEN true THEN 2 END; END; SELECT pg_temp.f()",
                             max_rows=10, max_bytes=BIG)
    assert outcome.steps[-1].result.rows == [("2",)]


@pytest.mark.parametrize("script, statements", [
    ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
    ("SELECT ';' ; SELECT \"a;b\" FROM t", ["SELECT ';'", 'SELECT "a;b" FROM t']),
    ("SELECT 'it''s; x'; SELECT E'\\'; still'", ["SELECT 'it''s; x'", "SELECT E'\\'; still'"]),
    ("/* a; /* nested; */ b; */ SELECT 1; -- c; \n SELECT 2", ["/* a; /* nested; */ b; */ SELECT 1", "-- c; \n SELECT 2"]),
    ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql; SELECT $tag$ ; $$ $tag$",
     ["CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql", "SELECT $tag$ ; $$ $tag$"]),
    ("CREATE OR REPLACE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END; CALL p()",
     ["CREATE OR REPLACE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END", "CALL p()"]),
    ("BEGIN; SELECT CASE WHEN true THEN 1 END; END;", ["BEGIN", "SELECT CASE WHEN true THEN 1 END", "END"]),
    ("SELECT $1, a$b FROM t;;; ;-- only a comment", ["SELECT $1, a$b FROM t"]),
    ("SELECT (1; 2)", ["SELECT (1; 2)"]),
    ("SELECT 'unterminated; x", ["SELECT 'unterminated; x"]),
    ("", []),
])
def test_split_statements(script, statements):
    assert split_statements(script) == statements


def test_csv_import(conn):
    data = "\ufeffid,name,price,day,ok,at\n1,a,1.5,2024-01-01,true,2024-01-01 10:00\n2,,,,,\n3,\"c, d\",-2,2024-01-03,FALSE,2024-01-01T10:00:00Z\n"
    count = export.import_csv(conn, io.BytesIO(data.encode()), "imp", create=True, infer=True)
    assert count == 3
    r = run(conn, "SELECT * FROM imp ORDER BY id")
    assert r.types == ["int8", "text", "numeric", "date", "bool", "text"]
    assert json.loads(b"[" + b",".join(r.rows) + b"]")[1] == [2, None, None, None, None, None]
    assert export.import_csv(conn, io.BytesIO(b"name,id\nx,9\n"), "imp", create=False, infer=False) == 1
    with pytest.raises(SQLError) as error:
        export.import_csv(conn, io.BytesIO(b"id\n10\nten\n"), "imp", create=False, infer=False)
    assert error.value.sqlstate == "22P02"
    assert run(conn, "SELECT count(*) FROM imp").rows == [b"[4]"]
    with pytest.raises(SQLError):
        export.import_csv(conn, io.BytesIO(b"a\n1\n"), "imp", create=True, infer=True)  # exists
    with pytest.raises(InvalidInput):
        export.import_csv(conn, io.BytesIO(b""), "empty", create=True, infer=True)
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_the_watchdog_stops_a_statement_with_no_time_limit(conn):
    conn.execute("SET statement_timeout = 0")

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(SQLTimeout):
            await export.call(conn, 0.2, execute.query_json, "SELECT pg_sleep(60)", (), max_rows=1, max_bytes=100)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < export.GRACE + 5
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert base64.b64decode(json.loads(execute.query_json(conn, "SELECT '\\x01'::bytea", (), max_rows=1,
                                                          max_bytes=100))["rows"][0][0]["$base64"]) == b"\x01"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("ab ;'\"$-/*()\nE") + ["begin", "end", "case", "$x$", "--", "/*", "*/",
                                                               "create function ", "begin atomic "]),
                max_size=40).map("".join))
def test_split_statements_never_fails_and_loses_no_code(text):
    pieces = split_statements(text)
    assert all(piece and piece == piece.strip() for piece in pieces)
    # every piece is a substring of the script, in order
    at = 0
    for piece in pieces:
        at = text.index(piece, at) + len(piece)


@given(st.lists(st.from_regex(r"SELECT [a-z0-9 ,+]{0,12}", fullmatch=True), max_size=6))
def test_plain_statements_split_at_their_semicolons(statements):
    assert split_statements(";\n".join(statements)) == [s.strip() for s in statements if s.strip()]
