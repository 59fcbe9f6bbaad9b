"""The SQLite -> PostgreSQL converter (sql/convert.py), against a real PostgreSQL server:
each test converts SQLite files built here into a database of its own."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import sqlite3
import tracemalloc
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from agora.sql import convert
from agora.sql.convert import ConversionError, convert_sqlite


def _admin_url() -> str:
    """The server of the run's test database (scripts/test-env.sh), else the local one."""
    url = os.environ.get("AGORA_TEST_DATABASE_URL", "").replace("postgresql+asyncpg://", "postgresql://")
    if not url:
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    return url.split("?", 1)[0].rsplit("/", 1)[0] + "/postgres"


ADMIN_URL = _admin_url()


def _server_or_skip() -> None:
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as error:
        if os.environ.get("CI") in ("true", "1"):
            raise
        pytest.skip(f"no PostgreSQL server at {ADMIN_URL}: {error}")


@pytest.fixture
def database() -> Iterator[str]:
    """A new, empty database (dropped afterwards); yields its connection URL."""
    _server_or_skip()
    name = "convert_" + secrets.token_hex(6)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} STRATEGY FILE_COPY").format(sql.Identifier(name)))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def target(database: str) -> Iterator[psycopg.Connection[Any]]:
    # As hosted.borrow() lends them: autocommit.
    with psycopg.connect(database, autocommit=True) as conn:
        yield conn


def sqlite_file(path: Path, script: str, *rows: tuple[str, list[tuple[Any, ...]]]) -> Path:
    """A SQLite database made by ``script``, then ``(insert statement, rows)`` pairs."""
    db = sqlite3.connect(path)
    db.executescript(script)
    for statement, values in rows:
        db.executemany(statement, values)
    db.commit()
    db.close()
    return path


def columns(conn: psycopg.Connection[Any], table: str) -> dict[str, tuple[Any, ...]]:
    """name -> (data_type, character_maximum_length, numeric_precision, numeric_scale,
    is_nullable, column_default, is_identity)"""
    return {row[0]: row[1:] for row in conn.execute(
        "SELECT column_name, data_type, character_maximum_length, numeric_precision, "
        "numeric_scale, is_nullable, column_default, is_identity FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position", (table,))}


def tables(conn: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
        "ORDER BY table_name")]


def rows(conn: psycopg.Connection[Any], table: str, order: str = "1") -> list[tuple[Any, ...]]:
    return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY " + order).format(
        sql.Identifier(table))).fetchall()


def indexes(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    return dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes "
                             "WHERE schemaname = 'public' AND tablename = %s", (table,)).fetchall())


def constraints(conn: psycopg.Connection[Any], table: str) -> set[tuple[str, tuple[str, ...]]]:
    """(type, columns) of the table's PRIMARY KEY / UNIQUE / FOREIGN KEY constraints."""
    found = conn.execute(
        "SELECT c.contype, array_agg(a.attname ORDER BY k.n) FROM pg_constraint c "
        "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
        "WHERE c.conrelid = %s::regclass AND c.contype IN ('p', 'u', 'f') GROUP BY c.oid, c.contype",
        (sql.Identifier(table).as_string(None),)).fetchall()
    return {(kind, tuple(names)) for kind, names in found}


# --- types ----------------------------------------------------------------------------

def test_declared_types_map_by_affinity(tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE t (
            i INTEGER, n INT, b BIGINT, s SMALLINT, s_big SMALLINT,
            r REAL, f FLOAT, d DOUBLE PRECISION,
            num NUMERIC, dec DECIMAL(10,2),
            t TEXT, v VARCHAR(20), c CHAR(3), cl CLOB, nv NVARCHAR(5),
            bo BOOLEAN, j JSON, u UUID, tm TIME);
        """, ("INSERT INTO t VALUES (" + ", ".join("?" * 19) + ")", [
            (1, 2, 2**62, 7, 100000, 1.5, 2.25, -0.5, 3, 12.34, "text", "varchar", "abc", "clob",
             "short", 1, '{"a": [1, 2]}', "a8098c1a-f86e-11da-bd1a-00112444be1e", "12:30:00"),
            (None,) * 19,
        ]))
    report = convert_sqlite(source, target)
    types = {name: info[:4] for name, info in columns(target, "t").items()}
    assert types == {
        "i": ("bigint", None, 64, 0), "n": ("bigint", None, 64, 0),
        "b": ("bigint", None, 64, 0), "s": ("smallint", None, 16, 0),
        "s_big": ("bigint", None, 64, 0),   # 100000 does not fit a smallint
        "r": ("double precision", None, 53, None), "f": ("double precision", None, 53, None),
        "d": ("double precision", None, 53, None),
        "num": ("numeric", None, None, None), "dec": ("numeric", None, 10, 2),
        "t": ("text", None, None, None), "v": ("character varying", 20, None, None),
        "c": ("text", None, None, None), "cl": ("text", None, None, None),
        "nv": ("character varying", 5, None, None),
        "bo": ("boolean", None, None, None), "j": ("json", None, None, None),
        "u": ("uuid", None, None, None), "tm": ("time without time zone", None, None, None),
    }
    [row, empty] = rows(target, "t", "i NULLS LAST")
    assert row[:11] == (1, 2, 2**62, 7, 100000, 1.5, 2.25, -0.5, Decimal(3), Decimal("12.34"),
                        "text")
    assert row[11:16] == ("varchar", "abc", "clob", "short", True)
    assert row[16] == {"a": [1, 2]}
    assert str(row[17]) == "a8098c1a-f86e-11da-bd1a-00112444be1e"
    assert row[18] == dt.time(12, 30)
    assert empty == (None,) * 19
    assert [(t.name, t.source_rows, t.target_rows) for t in report.tables] == [("t", 2, 2)]
    assert any("s_big" in w and "bigint" in w for w in report.warnings)


def test_declared_limits_sqlite_never_enforced_widen_the_type(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE t (id INTEGER PRIMARY KEY, code VARCHAR(3), money DECIMAL(5,2),
                        fits DECIMAL(5,2), tiny TINYINT);
        INSERT INTO t VALUES (1, 'abc', 999.99, 1.005, 1), (2, 'abcdef', 123456.5, NULL, 40000);
        """)
    report = convert_sqlite(source, target)
    assert {n: i[:4] for n, i in columns(target, "t").items()} == {
        "id": ("bigint", None, 64, 0), "code": ("text", None, None, None),
        "money": ("numeric", None, None, None), "fits": ("numeric", None, 5, 2),
        "tiny": ("bigint", None, 64, 0)}
    assert rows(target, "t") == [(1, "abc", Decimal("999.99"), Decimal("1.01"), 1),
                                 (2, "abcdef", Decimal("123456.5"), None, 40000)]
    warned = "\n".join(report.warnings)
    for column in ("code", "money", "tiny"):
        assert f"t.{column}" in warned


def test_untyped_and_blob_columns_take_the_type_of_their_values(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE t (id INTEGER PRIMARY KEY, ints, texts, mixed, reals, blobs BLOB,
                        blob_text BLOB, raw, empty, empty_blob BLOB);
        """, ("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)", [
            (1, 1, "a", 1, 1.5, b"\x00\x01", "text in a blob column", b"\xff\xfe"),
            (2, 2**40, "b", "two", 2, b"\xff", "more", "text"),
        ]))
    convert_sqlite(source, target)
    types = {name: info[0] for name, info in columns(target, "t").items()}
    assert types == {"id": "bigint", "ints": "bigint", "texts": "text", "mixed": "text",
                     "reals": "double precision", "blobs": "bytea", "blob_text": "text",
                     "raw": "bytea", "empty": "text", "empty_blob": "bytea"}
    assert rows(target, "t") == [
        (1, 1, "a", "1", 1.5, b"\x00\x01", "text in a blob column", b"\xff\xfe", None, None),
        (2, 2**40, "b", "two", 2.0, b"\xff", "more", b"text", None, None),
    ]


def test_dates_and_times_when_every_value_parses(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE t (id INTEGER PRIMARY KEY, d DATE, d_time DATE, ts DATETIME, ts2 TIMESTAMP,
                        tz DATETIME, bad DATETIME, epoch DATETIME);
        """, ("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
            (1, "2024-02-29", "2024-01-01 10:00:00", "2024-01-02 03:04:05",
             "2024-01-02T03:04:05.123456", "2024-01-02T03:04:05Z", "2024-01-02", 1700000000),
            (2, None, "2024-01-02", "2024-01-02", "1999-12-31 23:59", "2024-01-02 03:04:05+02:00",
             "yesterday", 1700000001),
        ]))
    report = convert_sqlite(source, target)
    types = {name: info[0] for name, info in columns(target, "t").items()}
    assert types == {"id": "bigint", "d": "date", "d_time": "timestamp without time zone",
                     "ts": "timestamp without time zone", "ts2": "timestamp without time zone",
                     "tz": "timestamp with time zone", "bad": "text", "epoch": "bigint"}
    utc = dt.timezone.utc
    target.execute("SET TIME ZONE 'UTC'")
    assert rows(target, "t") == [
        (1, dt.date(2024, 2, 29), dt.datetime(2024, 1, 1, 10), dt.datetime(2024, 1, 2, 3, 4, 5),
         dt.datetime(2024, 1, 2, 3, 4, 5, 123456), dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=utc),
         "2024-01-02", 1700000000),
        (2, None, dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 2), dt.datetime(1999, 12, 31, 23, 59),
         dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=utc), "yesterday", 1700000001),
    ]
    warned = "\n".join(report.warnings)
    assert "t.bad (DATETIME) became text: rowid 2 holds 'yesterday'" in warned
    assert "t.epoch (DATETIME) became bigint" in warned


def test_boolean_from_0_and_1_else_the_values_type(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE t (id INTEGER PRIMARY KEY, flag BOOLEAN, words BOOL, counted BOOLEAN);
        INSERT INTO t VALUES (1, 1, 'true', 1), (2, 0, 'no', 2), (3, NULL, NULL, 0), (4, TRUE, 'T', 1);
        """)
    report = convert_sqlite(source, target)
    assert {n: i[0] for n, i in columns(target, "t").items()} == {
        "id": "bigint", "flag": "boolean", "words": "boolean", "counted": "bigint"}
    assert rows(target, "t") == [(1, True, True, 1), (2, False, False, 2), (3, None, None, 0),
                                 (4, True, True, 1)]
    assert any("t.counted (BOOLEAN) became bigint: rowid 2 holds 2" in w for w in report.warnings)


def test_integer_primary_key_becomes_an_identity_that_continues(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);
        INSERT INTO items (id, name) VALUES (1, 'a'), (2, 'b'), (5, 'e');
        CREATE TABLE logged (id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT);
        INSERT INTO logged (note) VALUES ('x'), ('y'), ('z');
        DELETE FROM logged WHERE id = 3;       -- AUTOINCREMENT never gives 3 again
        CREATE TABLE empty (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE not_alias (id INT PRIMARY KEY, v TEXT);
        INSERT INTO not_alias VALUES (10, 'x');
        """)
    convert_sqlite(source, target)
    assert columns(target, "items")["id"][4:] == ("NO", None, "YES")
    target.execute("INSERT INTO items (name) VALUES ('next')")
    assert rows(target, "items")[-1] == (6, "next")
    target.execute("INSERT INTO logged (note) VALUES ('after')")
    assert rows(target, "logged") == [(1, "x"), (2, "y"), (4, "after")]
    target.execute("INSERT INTO empty (v) VALUES ('first')")
    assert rows(target, "empty") == [(1, "first")]
    assert columns(target, "not_alias")["id"][6] == "NO"   # INT PRIMARY KEY is no rowid alias
    for table in ("items", "logged", "empty", "not_alias"):
        assert constraints(target, table) == {("p", ("id",))}
    with pytest.raises(psycopg.errors.UniqueViolation):
        target.execute("INSERT INTO items (id, name) VALUES (5, 'again')")


def test_a_database_made_through_the_old_postgresql_face(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    """Agora's SQLite dialect kept PostgreSQL's type names, and SERIAL ids were NULL."""
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE users (id SERIAL PRIMARY KEY, name CHARACTER VARYING(50) NOT NULL,
                            created_at TIMESTAMP WITH TIME ZONE, payload BYTEA, meta JSONB,
                            doc JSON, tags TEXT[], span INTERVAL, n INT4, seq BIGSERIAL);
        INSERT INTO users (name, created_at, payload, meta, doc, tags, span, n) VALUES
            ('a', '2024-01-01 10:00:00+00', x'00', '{"a": 1}', '{"b" : 2}', '{x,y}', '1 day', 4),
            ('b', NULL, 'as text', NULL, NULL, NULL, NULL, NULL);
        CREATE TABLE kept (id SERIAL PRIMARY KEY, v TEXT);
        INSERT INTO kept VALUES (7, 'x'), (NULL, 'y');
        """)
    report = convert_sqlite(source, target)
    assert {n: i[0] for n, i in columns(target, "users").items()} == {
        "id": "integer", "name": "character varying", "created_at": "timestamp with time zone",
        "payload": "bytea", "meta": "jsonb", "doc": "json", "tags": "text", "span": "text",
        "n": "integer", "seq": "bigint"}
    assert columns(target, "users")["id"][6] == "YES"
    target.execute("SET TIME ZONE 'UTC'")
    assert rows(target, "users") == [
        (1, "a", dt.datetime(2024, 1, 1, 10, tzinfo=dt.timezone.utc), b"\x00", {"a": 1},
         {"b": 2}, "{x,y}", "1 day", 4, 1),
        (2, "b", None, b"as text", None, None, None, None, None, 2)]
    target.execute("INSERT INTO users (name) VALUES ('c')")
    assert target.execute("SELECT id, seq FROM users WHERE name = 'c'").fetchone() == (3, 3)
    target.execute("INSERT INTO kept (v) VALUES ('z')")
    assert rows(target, "kept") == [(7, "x"), (8, "y"), (9, "z")]
    assert constraints(target, "kept") == {("p", ("id",))}
    assert any("2 rows of 'users' had no id" in w for w in report.warnings)


def test_not_null_and_defaults(tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE t (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL DEFAULT 'it''s',
            n INTEGER NOT NULL DEFAULT -1,
            r REAL DEFAULT 0.5,
            flag BOOLEAN DEFAULT 1,
            at DATETIME DEFAULT CURRENT_TIMESTAMP,
            at_text TEXT DEFAULT CURRENT_TIMESTAMP,
            day DATE DEFAULT (date('now')),
            raw BLOB DEFAULT x'0102',
            expr INTEGER DEFAULT (1 + 2),
            odd TEXT DEFAULT (strftime('%s', 'now')));
        INSERT INTO t (id) VALUES (1);
        """)
    report = convert_sqlite(source, target)
    info = columns(target, "t")
    assert info["name"][4] == "NO" and info["n"][4] == "NO" and info["r"][4] == "YES"
    target.execute("SET TIME ZONE 'UTC'")
    target.execute("INSERT INTO t DEFAULT VALUES")
    [old, new] = rows(target, "t")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    assert new[0] == 2 and new[1:6] == ("it's", -1, 0.5, True, new[5])
    assert abs(new[5] - now) < dt.timedelta(minutes=1)
    assert abs(dt.datetime.fromisoformat(new[6]) - now) < dt.timedelta(minutes=1)
    assert len(new[6]) == 19 and new[7] == now.date()
    assert new[8:10] == (b"\x01\x02", 3)
    assert new[10] is None
    assert old[1:5] == new[1:5]
    assert any("strftime" in w for w in report.warnings)


# --- keys, indexes, views -------------------------------------------------------------

def test_keys_unique_and_indexes(tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE pairs (a TEXT, b INTEGER, c TEXT, PRIMARY KEY (a, b), UNIQUE (c));
        CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT UNIQUE, name TEXT, price REAL,
                            UNIQUE (name, price));
        CREATE INDEX items_price ON items (price DESC, name);
        CREATE UNIQUE INDEX items_lower ON items (lower(name));
        CREATE INDEX items_cheap ON items (price) WHERE price < 10;
        CREATE INDEX items_odd ON items (instr(name, 'x'));
        INSERT INTO pairs VALUES ('x', 1, 'one'), ('x', 2, 'two');
        INSERT INTO items VALUES (1, 'A1', 'Apple', 1.0), (2, 'B2', 'Pear', 12.0);
        """)
    report = convert_sqlite(source, target)
    assert constraints(target, "pairs") == {("p", ("a", "b")), ("u", ("c",))}
    assert constraints(target, "items") == {("p", ("id",)), ("u", ("sku",)), ("u", ("name", "price"))}
    found = indexes(target, "items")
    assert "USING btree (price DESC, name)" in found["items_price"]
    assert found["items_lower"].startswith("CREATE UNIQUE INDEX items_lower")
    assert "lower(name)" in found["items_lower"]
    assert "WHERE (price < " in found["items_cheap"]
    assert "items_odd" not in found
    assert sorted(report.indexes) == ["items_cheap", "items_lower", "items_price"]
    assert any("items_odd" in w and "instr" in w for w in report.warnings)
    with pytest.raises(psycopg.errors.UniqueViolation):
        target.execute("INSERT INTO items (sku, name) VALUES ('C3', 'APPLE')")


def test_foreign_keys_are_created_after_the_rows(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        -- the child first: its rows can only be checked once the parent's are in
        CREATE TABLE orders (id INTEGER PRIMARY KEY,
                             customer INTEGER REFERENCES Customers ON DELETE CASCADE);
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE lines (id INTEGER PRIMARY KEY, order_id INTEGER, code TEXT,
                            FOREIGN KEY (order_id) REFERENCES orders (id));
        CREATE TABLE dangling (id INTEGER PRIMARY KEY, customer INTEGER REFERENCES customers(id));
        CREATE TABLE "django_line" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT,
            "order_id" integer NOT NULL REFERENCES "orders" ("id") DEFERRABLE INITIALLY DEFERRED,
            "a" integer, "b" text,
            CONSTRAINT pair FOREIGN KEY ("a", "b") REFERENCES pairs ("x", "y") DEFERRABLE INITIALLY DEFERRED);
        CREATE TABLE pairs (x integer, y text, PRIMARY KEY (x, y));
        INSERT INTO customers VALUES (1, 'ann'), (2, 'bob');
        INSERT INTO orders VALUES (10, 1), (11, 2), (12, NULL);
        INSERT INTO lines VALUES (1, 10, 'a');
        INSERT INTO dangling VALUES (1, 1), (2, 99);   -- SQLite did not check it
        """)
    report = convert_sqlite(source, target)
    assert ("f", ("customer",)) in constraints(target, "orders")
    assert ("f", ("order_id",)) in constraints(target, "lines")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        target.execute("INSERT INTO orders (customer) VALUES (42)")
    target.execute("DELETE FROM customers WHERE id = 2")
    assert rows(target, "orders") == [(10, 1), (12, None)]   # ON DELETE CASCADE
    assert rows(target, "dangling") == [(1, 1), (2, 99)]
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        target.execute("INSERT INTO dangling (customer) VALUES (77)")
    assert any("'dangling'" in w and "NOT VALID" in w for w in report.warnings)
    deferred = target.execute(
        "SELECT conrelid::regclass::text, condeferrable, condeferred FROM pg_constraint "
        "WHERE contype = 'f' ORDER BY 1, 2").fetchall()
    assert deferred == [("dangling", False, False), ("django_line", True, True),
                        ("django_line", True, True), ("lines", False, False),
                        ("orders", False, False)]


def test_views_that_run_on_postgresql_are_kept(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE People (id INTEGER PRIMARY KEY, Name TEXT, age INTEGER);
        INSERT INTO People VALUES (1, 'ann', 30), (2, 'bob', 17);
        CREATE VIEW adults AS SELECT name, age FROM people WHERE age >= 18;
        CREATE VIEW "Named View" (who) AS SELECT [Name] FROM `People` WHERE ifnull(age, 0) == 30;
        CREATE VIEW counted AS SELECT count(*) AS n FROM adults;
        CREATE VIEW lite_only AS SELECT strftime('%Y', 'now') AS year;
        CREATE VIEW aliased AS SELECT Name AS Who, CAST(age AS TEXT) AS AgeText FROM People;
        """)
    report = convert_sqlite(source, target)
    assert sorted(report.views) == ["Named View", "adults", "aliased", "counted"]
    assert list(columns(target, "aliased")) == ["Who", "AgeText"]
    assert rows(target, "aliased") == [("ann", "30"), ("bob", "17")]
    assert rows(target, "adults") == [("ann", 30)]
    assert rows(target, "Named View") == [("ann",)]
    assert rows(target, "counted") == [(1,)]
    assert "lite_only" not in tables(target)
    assert any("view 'lite_only'" in w for w in report.warnings)


def test_any_identifier_sqlite_allows(tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", '''
        CREATE TABLE "select" ("from" INTEGER PRIMARY KEY, "a ""quoted"" name" TEXT,
                               [bracketed col] TEXT, `back tick` INT, "Ünïcødé 名前" TEXT,
                               "MixedCase" TEXT, "semi;colon--" TEXT);
        INSERT INTO "select" VALUES (1, 'q', 'b', 2, 'u', 'm', 's');
        CREATE TABLE "Table With Spaces" ("x" TEXT UNIQUE);
        INSERT INTO "Table With Spaces" VALUES ('y');
        CREATE INDEX "index ""odd""" ON "select" ("a ""quoted"" name", "Ünïcødé 名前");
        ''')
    convert_sqlite(source, target)
    assert tables(target) == ["Table With Spaces", "select"]
    assert list(columns(target, "select")) == [
        "from", 'a "quoted" name', "bracketed col", "back tick", "Ünïcødé 名前", "MixedCase",
        "semi;colon--"]
    assert rows(target, "select") == [(1, "q", "b", 2, "u", "m", "s")]
    assert rows(target, "Table With Spaces") == [("y",)]
    assert 'index "odd"' in indexes(target, "select")
    target.execute('INSERT INTO "select" ("MixedCase") VALUES (%s)', ("next",))
    assert rows(target, "select")[-1][0] == 2


def test_unicode_blobs_nulls_and_extremes(tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    values = [
        (1, "héllo wörld ✓ 😀 עברית", b"\x00\xff" * 1000, -(2**63), 2**63 - 1, 1e308),
        (2, "tab\there, new\nline, back\\slash, \r, quote' \"", b"", None, -(2**63), float("inf")),
        (3, None, None, None, None, None),
        (4, "x" * 100_000, bytes(range(256)), None, 0, -0.0),
        (5, "", b"\\x00", None, 1, float("-inf")),
    ]
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT, b BLOB, small SMALLINT, i INTEGER, r REAL);
        """, ("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", values))
    convert_sqlite(source, target)
    assert rows(target, "t") == values


def test_a_100k_row_table_in_batches(tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE big (id INTEGER PRIMARY KEY, n INTEGER, label TEXT, r REAL);
        WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 100000)
        INSERT INTO big SELECT i, i * 7, 'row ' || i, i / 3.0 FROM k;
        """)
    report = convert_sqlite(source, target, batch_rows=997)
    assert [(t.name, t.source_rows, t.target_rows) for t in report.tables] == [("big", 100000, 100000)]
    assert report.rows == 100000
    assert target.execute("SELECT count(*), sum(n), min(label), max(id) FROM big").fetchone() == (
        100000, 7 * 100000 * 100001 // 2, "row 1", 100000)
    assert target.execute("SELECT label, r FROM big WHERE id = 12345").fetchone() == (
        "row 12345", 12345 / 3.0)
    target.execute("INSERT INTO big (n) VALUES (0)")
    assert target.execute("SELECT max(id) FROM big").fetchone() == (100001,)


def test_memory_stays_bounded_by_the_batch(tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB, t TEXT);
        WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 3000)
        INSERT INTO blobs SELECT i, randomblob(10000), hex(randomblob(2000)) FROM k;
        """)   # 42 MB of values
    tracemalloc.start()
    try:
        report = convert_sqlite(source, target, batch_rows=50)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.tables[0].target_rows == 3000
    assert peak < 8_000_000, peak
    assert target.execute("SELECT sum(length(b)), sum(length(t)) FROM blobs").fetchone() == (
        30_000_000, 12_000_000)


def test_objects_belong_to_the_connecting_role(tmp_path: Path, database: str) -> None:
    role = "convert_owner_" + secrets.token_hex(4)
    dbname = database.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            sql.Identifier(dbname), sql.Identifier(role)))
    try:
        source = sqlite_file(tmp_path / "t.sqlite", """
            CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
            INSERT INTO t VALUES (1, 'a');
            CREATE VIEW v AS SELECT v FROM t;
            """)
        url = database.replace("postgres@", f"{role}@", 1)
        with psycopg.connect(url, autocommit=True) as conn:
            convert_sqlite(source, conn)
            owners = conn.execute("SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
                                  "JOIN pg_namespace n ON n.oid = c.relnamespace "
                                  "WHERE n.nspname = 'public'").fetchall()
        assert {name for name, _owner in owners} >= {"t", "v", "t_pkey", "t_id_seq"}
        assert {owner for _name, owner in owners} == {role}
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO postgres").format(sql.Identifier(dbname)))
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_into_another_schema(tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    target.execute('CREATE SCHEMA "Legacy"')
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO t VALUES (1, 'a');
        CREATE VIEW v AS SELECT v FROM t;
        """)
    convert_sqlite(source, target, schema="Legacy")
    assert tables(target) == []
    assert target.execute('SELECT * FROM "Legacy".v').fetchall() == [("a",)]
    assert target.execute("SHOW search_path").fetchone() == ('"$user", public',)
    with pytest.raises(ValueError):
        convert_sqlite(source, target, batch_rows=0)


def test_a_legacy_wal_database_is_read_as_it_was_left(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    """Agora kept its SQLite databases in WAL mode: rows still in the -wal file count."""
    path = tmp_path / "wal.sqlite"
    writer = sqlite3.connect(path)
    writer.executescript("""
        PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
        CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO t VALUES (1, 'in the wal');
        """)
    writer.commit()
    assert (tmp_path / "wal.sqlite-wal").stat().st_size > 0
    report = convert_sqlite(path, target)
    writer.close()
    assert rows(target, "t") == [(1, "in the wal")]
    assert report.tables[0].target_rows == 1


# --- what cannot be converted ---------------------------------------------------------

def test_a_value_that_does_not_fit_names_table_rowid_and_column(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE fine (id INTEGER PRIMARY KEY);
        INSERT INTO fine VALUES (1);
        CREATE TABLE prices (id INTEGER PRIMARY KEY, amount INTEGER, n REAL, label TEXT);
        INSERT INTO prices VALUES (1, 10, 1.0, x'68c3a9'), (2, ' 12 ', '2.5', 'b'), (7, 'ten', 3, 'c');
        """)
    with pytest.raises(ConversionError) as caught:
        convert_sqlite(source, target)
    message = str(caught.value)
    assert "'prices'" in message and "rowid 7" in message and "'amount'" in message
    assert "'ten'" in message
    assert (caught.value.table, caught.value.rowid, caught.value.column) == ("prices", 7, "amount")
    assert tables(target) == []   # nothing left behind

    report = convert_sqlite(source, target, on_mismatch="widen")
    assert columns(target, "prices")["amount"][0] == "text"
    assert columns(target, "prices")["n"][0] == "double precision"
    # SQLite had stored ' 12 ' in the INTEGER column as 12, and '2.5' in the REAL one as 2.5
    assert rows(target, "prices") == [(1, "10", 1.0, "hé"), (2, "12", 2.5, "b"), (7, "ten", 3.0, "c")]
    assert any("rowid 7" in w and "became text" in w for w in report.warnings)


def test_rows_without_a_rowid_are_named_by_their_primary_key(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE pairs (a TEXT, b INTEGER, n INTEGER, PRIMARY KEY (a, b)) WITHOUT ROWID;
        INSERT INTO pairs VALUES ('x', 1, 1), ('y', 2, 'two');
        CREATE TABLE shadowed (rowid TEXT, _rowid_ TEXT, oid TEXT, n INTEGER);
        INSERT INTO shadowed VALUES ('r', 'r_', 'o', 'nine');
        """)
    with pytest.raises(ConversionError, match=r"'pairs', primary key \('y', 2\): column 'n'"):
        convert_sqlite(source, target)
    report = convert_sqlite(source, target, on_mismatch="widen")
    assert rows(target, "pairs") == [("x", 1, "1"), ("y", 2, "two")]
    assert rows(target, "shadowed") == [("r", "r_", "o", "nine")]
    assert any("'shadowed', row ('r', 'r_', 'o', 'nine')" in w for w in report.warnings)


def test_a_table_wider_than_one_statistics_pass(tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    names = [f"c{i}" for i in range(250)]
    source = sqlite_file(tmp_path / "t.sqlite", f"CREATE TABLE wide ({', '.join(names)});",
                         (f"INSERT INTO wide VALUES ({', '.join('?' * 250)})",
                          [tuple(range(250)), tuple(str(i) for i in range(250))]))
    convert_sqlite(source, target)
    assert set(info[0] for info in columns(target, "wide").values()) == {"text"}
    assert rows(target, "wide", "c0") == [tuple(str(i) for i in range(250))] * 2


def test_text_sqlite_accepts_but_postgresql_cannot_hold(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "nul.sqlite", "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT);",
                         ("INSERT INTO t VALUES (?, ?)", [(1, "fine"), (2, "nul\x00inside")]))
    with pytest.raises(ConversionError, match=r"'t', rowid 2: column 's'"):
        convert_sqlite(source, target)
    convert_sqlite(source, target, on_mismatch="widen")
    assert rows(target, "t") == [(1, b"fine"), (2, b"nul\x00inside")]

    bad = sqlite_file(tmp_path / "utf8.sqlite", """
        CREATE TABLE u (id INTEGER PRIMARY KEY, s TEXT);
        INSERT INTO u VALUES (1, 'ok'), (2, 'ok'), (3, CAST(x'61ff62' AS TEXT));
        """)
    with pytest.raises(ConversionError, match=r"'u', rowid 3: column 's' holds text that is not valid UTF-8"):
        convert_sqlite(bad, target)


@pytest.mark.parametrize("content", [
    b"", b"not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 5000])
def test_a_file_that_is_no_database(tmp_path: Path, target: psycopg.Connection[Any],
                                    content: bytes) -> None:
    path = tmp_path / "x.sqlite"
    path.write_bytes(content)
    if not content:   # an empty file is an empty database
        assert convert_sqlite(path, target).tables == []
        return
    with pytest.raises(ConversionError, match="x.sqlite"):
        convert_sqlite(path, target)
    assert tables(target) == []


def test_a_corrupt_or_missing_database(tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    path = sqlite_file(tmp_path / "c.sqlite", """
        PRAGMA page_size = 1024;
        CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT);
        """, ("INSERT INTO b VALUES (?, ?)", [(i, "v" * 200) for i in range(2000)]))
    data = bytearray(path.read_bytes())
    data[1024 * 5:1024 * 40] = b"\xa5" * (1024 * 35)   # b's pages, overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(ConversionError, match="c.sqlite|'b'") as caught:
        convert_sqlite(path, target)
    assert "malformed" in str(caught.value) or "corrupt" in str(caught.value)
    assert tables(target) == []
    with pytest.raises(ConversionError, match="missing.sqlite"):
        convert_sqlite(tmp_path / "missing.sqlite", target)


def test_a_row_count_that_differs_rolls_everything_back(
        tmp_path: Path, target: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE first (id INTEGER PRIMARY KEY); INSERT INTO first VALUES (1);
        CREATE TABLE second (id INTEGER PRIMARY KEY); INSERT INTO second VALUES (1), (2);
        """)
    real = convert._copy_rows

    def losing_one(db: Any, conn: psycopg.Connection[Any], table: Any, batch_rows: int) -> int:
        copied = real(db, conn, table, batch_rows)
        if table.name == "second":
            conn.execute('DELETE FROM second WHERE id = 2')
        return copied

    monkeypatch.setattr(convert, "_copy_rows", losing_one)
    with pytest.raises(ConversionError, match="'second': 2 rows in SQLite, 1 in PostgreSQL"):
        convert_sqlite(source, target)
    assert tables(target) == []


def test_sql_a_newer_sqlite_wrote(tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    """apsw bundles a newer SQLite than Python's: what only it understands is skipped with
    a warning, not a reason to lose the rows."""
    apsw = pytest.importorskip("apsw")
    bundled = tuple(map(int, apsw.sqlite_lib_version().split(".")))
    if bundled < (3, 44) or sqlite3.sqlite_version_info >= (3, 44):
        pytest.skip("needs apsw's SQLite >= 3.44 and Python's older")
    path = tmp_path / "new.sqlite"
    db = apsw.Connection(str(path))
    db.execute("""
        CREATE TABLE t (a INTEGER, b TEXT);
        INSERT INTO t VALUES (1, 'x'), (2, 'y');
        CREATE VIEW ordered AS SELECT group_concat(b ORDER BY a DESC) AS g FROM t;
        CREATE VIEW plain AS SELECT a FROM t;
        """)
    db.close()
    report = convert_sqlite(path, target)
    assert rows(target, "t") == [(1, "x"), (2, "y")]
    assert report.views == ["plain"]
    warned = "\n".join(report.warnings)
    assert "malformed database schema (ordered)" in warned and "view 'ordered'" in warned


def test_triggers_and_virtual_tables_are_reported(
        tmp_path: Path, target: psycopg.Connection[Any]) -> None:
    source = sqlite_file(tmp_path / "t.sqlite", """
        CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, up TEXT AS (upper(v)) STORED,
                        n INTEGER AS (length(v)));
        INSERT INTO t (v) VALUES ('ab');
        CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN SELECT 1; END;
        CREATE VIRTUAL TABLE docs USING fts5(title, body);
        INSERT INTO docs VALUES ('one', 'first body'), ('two', 'second body');
        """)
    report = convert_sqlite(source, target)
    assert tables(target) == ["docs", "t"]   # not the full-text index's own tables
    assert rows(target, "docs") == [("one", "first body"), ("two", "second body")]
    assert rows(target, "t") == [(1, "ab", "AB", 2)]
    warned = "\n".join(report.warnings)
    assert "trigger 't_audit'" in warned and "virtual table 'docs'" in warned
    assert "generated column t.up" in warned and "generated column t.n" in warned


# --- round trip ---------------------------------------------------------------------

_INT64 = st.integers(-(2**63), 2**63 - 1)
_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
_COLUMN_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "INTEGER": _INT64,
    "SMALLINT": st.one_of(st.integers(-(2**15), 2**15 - 1), _INT64),
    "REAL": st.floats(allow_nan=False),
    "TEXT": _TEXT,
    "BLOB": st.binary(max_size=40),
    "NUMERIC": st.one_of(_INT64, st.floats(allow_nan=False, allow_infinity=False)),
    "BOOLEAN": st.booleans(),
    "DATE": st.dates(),
    "DATETIME": st.datetimes(min_value=dt.datetime(1, 1, 1, 0, 0, 1)),
    "VARCHAR(12)": st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                           max_size=12),
    "": st.one_of(_INT64, _TEXT),
    "TIME": st.times(),
    "UUID": st.uuids(),
    "JSON": st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _TEXT
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
        max_leaves=6),
}
_NAME = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                min_size=1, max_size=10)


def _fold(name: str) -> str:   # SQLite tells names apart but for ASCII case
    return name.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"))


def _stored(kind: str, value: Any) -> Any:
    """What SQLite is given for a value of the column kind."""
    if kind == "DATE":
        return value.isoformat()
    if kind == "DATETIME":
        return value.isoformat(sep=" ")
    if kind in ("TIME", "UUID"):
        return str(value)
    if kind == "JSON":
        return json.dumps(value)
    if kind == "BOOLEAN":
        return int(value)
    return value


def _expected(kind: str, values: list[Any]) -> list[Any]:
    """What PostgreSQL gives back for the values of one column."""
    if kind == "NUMERIC":   # SQLite keeps a whole REAL as an INTEGER there
        return [None if v is None else Decimal(int(v)) if float(v).is_integer() and abs(v) < 2**63
                else Decimal(repr(v)) for v in values]
    if kind == "":   # untyped: integers stay integers unless some value is text
        if all(v is None or isinstance(v, int) for v in values):
            return values
        return [v if v is None or isinstance(v, str) else str(v) for v in values]
    if kind == "REAL":
        return [None if v is None else float(v) for v in values]
    return values


@st.composite
def _tables(draw: st.DrawFn) -> tuple[str, list[str], list[str], list[list[Any]]]:
    """A table name, column names and kinds, and rows of values of those kinds."""
    kinds = draw(st.lists(st.sampled_from(sorted(_COLUMN_KINDS)), min_size=1, max_size=6))
    name = draw(_NAME.filter(lambda n: not _fold(n).startswith("sqlite_")))
    names = draw(st.lists(_NAME.filter(lambda n: _fold(n) != "id"), min_size=len(kinds),
                          max_size=len(kinds), unique_by=_fold))
    table = draw(st.lists(st.tuples(*(st.one_of(st.none(), _COLUMN_KINDS[k]) for k in kinds)),
                          max_size=25))
    return name, names, kinds, [list(row) for row in table]


_TIMEISH = r"[0-2][0-9]:[0-6][0-9](:[0-6][0-9](\.[0-9]{1,9})?)?"
_DATEISH = (r"([0-9]{4}|\u0660{4})-[01][0-9]-[0-3][0-9]"
            rf"([Tt ]{_TIMEISH}[ \t]?([Zz]|[+-][01][0-9](:?[0-6][0-9])?)?)?|{_TIMEISH}"
            r"|\{?[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\}?")


@pytest.fixture(scope="module")
def utc_conn() -> Iterator[psycopg.Connection[Any]]:
    _server_or_skip()
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        yield conn


@settings(max_examples=300, deadline=None)
@given(text=st.from_regex(_DATEISH, fullmatch=True))
def test_text_handed_to_copy_reads_in_postgresql_as_it_was_checked(
        utc_conn: psycopg.Connection[Any], text: str) -> None:
    """Dates, times and UUIDs found to fit go to COPY as text: PostgreSQL must read each
    as the check did (or the whole conversion would fail at the COPY)."""
    conn = utc_conn
    for check, pg in [(convert._to_date, "date"), (convert._to_timestamp, "timestamp"),
                      (convert._to_timestamptz, "timestamptz"), (convert._to_time, "time"),
                      (convert._to_uuid, "uuid")]:
        try:
            expected = check(text)
        except convert._Unfit:
            continue
        got = conn.execute(sql.SQL("SELECT %s::text::{}").format(sql.SQL(pg)), (text,)).fetchone()
        assert got == (expected,), (pg, text)


@pytest.fixture(scope="module")
def roundtrip_db() -> Iterator[str]:
    _server_or_skip()
    name = "convert_rt_" + secrets.token_hex(6)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} STRATEGY FILE_COPY").format(sql.Identifier(name)))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(table=_tables())
def test_random_typed_values_round_trip(roundtrip_db: str, tmp_path_factory: pytest.TempPathFactory,
                                        table: tuple[str, list[str], list[str], list[list[Any]]]
                                        ) -> None:
    name, names, kinds, values = table
    path = tmp_path_factory.mktemp("rt") / "r.sqlite"
    quoted = ['"' + n.replace('"', '""') + '"' for n in [name, *names]]
    script = f"CREATE TABLE {quoted[0]} (id INTEGER PRIMARY KEY, " + ", ".join(
        f"{n} {k}" for n, k in zip(quoted[1:], kinds, strict=True)) + ");"
    stored = [tuple([i + 1] + [None if v is None else _stored(k, v) for k, v in zip(kinds, row, strict=True)])
              for i, row in enumerate(values)]
    sqlite_file(path, script, (f"INSERT INTO {quoted[0]} VALUES ({', '.join('?' * (len(kinds) + 1))})",
                               stored))
    with psycopg.connect(roundtrip_db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        report = convert_sqlite(path, conn)
        got = rows(conn, name)
        assert list(columns(conn, name)) == ["id", *names]
    assert report.tables[0].target_rows == len(values)
    columns_got = list(zip(*got, strict=True)) if got else [() for _ in range(len(kinds) + 1)]
    for number, kind in enumerate(kinds):
        expected = _expected(kind, [row[number] for row in values])
        assert list(columns_got[number + 1]) == expected, (kind, report.tables[0].columns[number + 1])
