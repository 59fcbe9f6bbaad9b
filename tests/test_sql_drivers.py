"""Drivers over the postgres listener: psycopg 3 (parameters, server-side prepared
statements, transactions), asyncpg, SQLAlchemy Core on psycopg; the query time limit,
CancelRequest, and the denials (wrong password, another user's database, read grant)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from conftest import ServerFactory
from pgwire_support import QUERY_TIMEOUT, account, provision, server_env

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is a test dependency (pip install -e '.[test]')")
asyncpg = pytest.importorskip("asyncpg")

pytestmark = pytest.mark.xdist_group("sql-drivers")

SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory, backend):
    factory = ServerFactory(tmp_path_factory.mktemp(f"pgdrivers-{backend}"), backend)
    yield factory(env=server_env())
    factory.close()


def test_psycopg_parameters_prepared_statements_and_transactions(pg_server):
    ann = account(pg_server, "shop")
    with psycopg.connect(ann.dsn("shop")) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, data BLOB, "
                     "ok BOOLEAN, amount NUMERIC)")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (%s, %s, %s, %s, %s, %s)", (1, "apple", 1.5, b"\x00\xff", True, 12))
            for i in range(2, 12):
                cur.execute("INSERT INTO items (id, name, price) VALUES (%s, %s, %s)", (i, f"n{i}", i / 4),
                            prepare=True)
        conn.commit()
        row = conn.execute("SELECT id, name, price, data, ok FROM items WHERE id = %s", (1,)).fetchone()
        assert row == (1, "apple", 1.5, b"\x00\xff", True)
        assert conn.execute("SELECT count(*), sum(price) FROM items").fetchone() == (11, 1.5 + sum(i / 4 for i in range(2, 12)))
        for i in (3, 4, 5, 6, 7, 8):  # enough executions for psycopg to prepare on the server
            assert conn.execute("SELECT name FROM items WHERE id = %s", (i,), prepare=True).fetchone() == (f"n{i}",)
        assert conn.execute("SELECT %s || %s, %s + 1", ("a", "b", 41)).fetchone() == ("ab", 42)
        assert conn.execute("SELECT name FROM items WHERE name LIKE %s ORDER BY id", ("n1%",)).fetchall() == \
            [("n10",), ("n11",)]
        # commit and rollback as PostgreSQL's
        with conn.transaction():
            conn.execute("UPDATE items SET name = 'kept' WHERE id = 1")
        with pytest.raises(RuntimeError):
            with conn.transaction():
                conn.execute("UPDATE items SET name = 'undone' WHERE id = 2")
                raise RuntimeError
        assert conn.execute("SELECT name FROM items WHERE id IN (1, 2) ORDER BY id").fetchall() == [("kept",), ("n2",)]
        conn.commit()  # the blocks above were savepoints in psycopg's implicit transaction
        # an error inside a transaction fails it until rollback
        conn.execute("INSERT INTO items (id) VALUES (50)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO items (id) VALUES (1)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM items WHERE id = 50").fetchone() == (0,)
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM nosuch")
        conn.rollback()
    # another connection sees what was committed
    with psycopg.connect(ann.dsn("shop"), autocommit=True) as other:
        assert other.execute("SELECT name FROM items WHERE id = 1").fetchone() == ("kept",)


def test_asyncpg_parameters_and_transactions(pg_server):
    ann = account(pg_server, "ledger")

    async def scenario():
        conn = await asyncpg.connect(host="127.0.0.1", port=ann.port, user=ann.name, password=ann.password,
                                     database="ledger", ssl="require")
        try:
            await conn.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, who TEXT, amount REAL)")
            await conn.executemany("INSERT INTO entries (id, who, amount) VALUES ($1, $2, $3)",
                                   [(1, "ann", 10.0), (2, "bob", 2.5), (3, "ann", 1.25)])
            rows = await conn.fetch("SELECT id, who, amount FROM entries WHERE who = $1 ORDER BY id", "ann")
            assert [tuple(r) for r in rows] == [(1, "ann", 10.0), (3, "ann", 1.25)]
            assert await conn.fetchval("SELECT count(*) FROM entries WHERE amount > $1", 2.0) == 2
            statement = await conn.prepare("SELECT who FROM entries WHERE id = $1")
            assert [await statement.fetchval(i) for i in (1, 2)] == ["ann", "bob"]
            async with conn.transaction():
                await conn.execute("INSERT INTO entries VALUES ($1, $2, $3)", 4, "cy", 4.0)
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO entries VALUES ($1, $2, $3)", 5, "dan", 5.0)
                    raise RuntimeError
            assert await conn.fetchval("SELECT group_concat(id) FROM (SELECT id FROM entries ORDER BY id)") == "1,2,3,4"
            with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                await conn.execute("INSERT INTO entries (id) VALUES ($1)", 1)
            # cursors: named portals, Execute with a row limit and PortalSuspended
            async with conn.transaction():
                cursor = await conn.cursor("SELECT id FROM entries WHERE id <= $1 ORDER BY id", 4)
                assert [r["id"] for r in await cursor.fetch(3)] == [1, 2, 3]
                assert [r["id"] for r in await cursor.fetch(3)] == [4]
                assert [r["id"] async for r in conn.cursor("SELECT id FROM entries ORDER BY id", prefetch=2)] == \
                    [1, 2, 3, 4]
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_sqlalchemy_core_on_psycopg(pg_server):
    sa = pytest.importorskip("sqlalchemy")
    ann = account(pg_server, "app")
    engine = sa.create_engine(f"postgresql+psycopg://{ann.name}:{ann.password}@127.0.0.1:{ann.port}/app?sslmode=require")
    try:
        metadata = sa.MetaData()
        people = sa.Table("people", metadata, sa.Column("id", sa.Integer, primary_key=True),
                          sa.Column("name", sa.String(50)))
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE people (id INTEGER PRIMARY KEY, name VARCHAR(50))"))
            conn.execute(people.insert(), [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}])
        with engine.connect() as conn:
            assert conn.execute(sa.select(people.c.name).where(people.c.id == 2)).scalar_one() == "bob"
            assert conn.execute(sa.select(sa.func.count()).select_from(people)).scalar_one() == 2
            assert conn.execute(sa.text("SELECT name FROM people WHERE id = :id"), {"id": 1}).scalar_one() == "ann"
            conn.execute(people.update().where(people.c.id == 1).values(name="anna"))
            conn.rollback()
            assert conn.execute(sa.select(people.c.name).where(people.c.id == 1)).scalar_one() == "ann"
    finally:
        engine.dispose()


def test_time_limit_and_cancel_keep_the_connection(pg_server):
    ann = account(pg_server, "slow")
    with psycopg.connect(ann.dsn("slow"), autocommit=True) as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as stopped:
            conn.execute(SLOW)
        assert "statement timeout" in str(stopped.value)
        assert QUERY_TIMEOUT * 0.8 < time.monotonic() - started < QUERY_TIMEOUT + 10
        assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        # CancelRequest from another thread, on a new connection with the key data
        threading.Timer(0.3, conn.cancel).start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as cancelled:
            conn.execute(SLOW)
        assert "user request" in str(cancelled.value)
        assert time.monotonic() - started < QUERY_TIMEOUT
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)
        # libpq 17's cancel connection goes over TLS too (SSLRequest, then CancelRequest)
        if hasattr(conn, "cancel_safe"):
            threading.Timer(0.3, conn.cancel_safe).start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(SLOW)
            assert conn.execute("SELECT 3").fetchone() == (3,)


def test_denials(pg_server):
    ann = account(pg_server, "mine")
    bob = account(pg_server, "bobs")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(ann.dsn("mine", password="wrong-password"))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(ann.dsn("mine").replace(f"user={ann.name}", "user=nosuchuser"))
    # B's database is not A's, whether it exists or not, on every spelling of its name
    for name in (f"{bob.name}/bobs", f"{bob.name}/nosuch"):
        with pytest.raises(psycopg.OperationalError, match="does not exist"):
            psycopg.connect(ann.dsn(name))
    with psycopg.connect(bob.dsn("bobs"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
    provision(pg_server, grants=[(bob.name, "bobs", ann.name, "read")])
    with psycopg.connect(ann.dsn(f"{bob.name}/bobs"), autocommit=True) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO t VALUES (2)")
    # nothing outside the database, whatever the grant: the owner is refused too
    with psycopg.connect(bob.dsn("bobs"), autocommit=True) as conn:
        for escape in ("ATTACH DATABASE '/tmp/agora-escape.sqlite' AS x", "SELECT load_extension('/tmp/x.so')",
                       "VACUUM INTO '/tmp/agora-escape.sqlite'", "PRAGMA writable_schema = ON"):
            with pytest.raises(psycopg.Error) as denied:
                conn.execute(escape)
            assert denied.value.sqlstate in ("42501", "42883"), (escape, denied.value.sqlstate, str(denied.value))
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    # plaintext passwords without TLS are fine from loopback, as elsewhere in Agora; SCRAM
    # never sends the password at all
    with psycopg.connect(ann.dsn("mine", sslmode="disable"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_asyncpg_types_binary_and_expressions(pg_server):
    import datetime
    import decimal

    ann = account(pg_server, "types")

    async def scenario():
        conn = await asyncpg.connect(host="127.0.0.1", port=ann.port, user=ann.name, password=ann.password,
                                     database="types", ssl="require")
        try:
            await conn.execute("CREATE TABLE ty (i INTEGER, r REAL, t TEXT, b BLOB, ok BOOLEAN, n NUMERIC(10,2), "
                               "ts TIMESTAMP)")
            row = (5, 2.5, "x", b"\x01\x00", True, decimal.Decimal("12.34"), datetime.datetime(2024, 1, 2, 3, 4, 5))
            await conn.execute("INSERT INTO ty VALUES ($1, $2, $3, $4, $5, $6, $7)", *row)
            await conn.execute("INSERT INTO ty VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
            rows = await conn.fetch("SELECT * FROM ty ORDER BY i NULLS LAST")
            assert tuple(rows[0]) == row and tuple(rows[1]) == (None,) * 7
            record = await conn.fetchrow("SELECT count(*) AS c, $1::int AS n, 1.5 AS f, upper(t) AS u FROM ty "
                                         "WHERE i = 5", 3)
            assert tuple(record) == (1, 3, 1.5, "X")
        finally:
            await conn.close()

    asyncio.run(scenario())
