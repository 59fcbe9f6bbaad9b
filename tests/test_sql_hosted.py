"""The hosted-SQL domain in-process on a real runtime of each backend: catalogue and
grants, typed values, PostgreSQL transaction semantics, limits (time, rows, bytes,
size), isolation denials, and what a deleted user leaves behind."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings, strategies as st

from agora import config as configuration
from agora.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from agora.core.runtime import Runtime
from agora.server import attach_services
from agora.sql.errors import SQLError
from agora.sql.hosted import hosted_sql
from conftest import create_pg_database, drop_pg_database

SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


@pytest.fixture
def open_runtime(tmp_path, backend):
    urls: list[str] = []

    async def make(**flags: str) -> Runtime:
        values = {"data_dir": str(tmp_path / "data"), "identity.argon2_time_cost": "1",
                  "identity.argon2_memory_kib": "64", **flags}
        if backend == "postgresql":
            if not urls:
                urls.append(create_pg_database())
            values["database.url"] = urls[0]
        runtime = await Runtime.open(configuration.load(values, environ={}))
        attach_services(runtime)
        return runtime

    yield make
    for url in urls:
        drop_pg_database(url)


def run(coro):
    return asyncio.run(coro)


async def _users(runtime: Runtime, *names: str):
    return [await runtime.identity.create_user(name, "password-123") for name in names]


def test_create_query_typed_values_and_catalogue(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        hosted = hosted_sql(runtime)
        try:
            ann, bob = await _users(runtime, "ann", "bob")
            info = await hosted.create(ann, "shop")
            assert (info.owner, info.name, info.access, info.ref) == ("ann", "shop", "owner", "ann/shop")
            assert (runtime.data_dir / "sql" / "ann" / "shop.sqlite").exists()
            with pytest.raises(Conflict):
                await hosted.create(ann, "shop")
            for bad in ("", "Shop", "../x", "a/b", "x" * 64, "-x"):
                with pytest.raises(InvalidInput):
                    await hosted.create(ann, bad)
            session = await hosted.connect(ann, "shop")
            try:
                r = await session.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                                          "price NUMERIC(10,2), data BLOB, ok BOOLEAN)")
                assert r.command_tag == "CREATE TABLE"
                r = await session.execute("INSERT INTO items (name, price, data, ok) VALUES ($1, $2, $3, $4), ($5, NULL, NULL, 0)",
                                          ["apple", 1.5, b"\x00\xff", 1, "pear"])
                assert (r.command_tag, r.rows_affected) == ("INSERT 0 2", 2)
                r = await session.execute("SELECT id, name, price, data, ok, $1::int + 1 AS n FROM items ORDER BY id", [41])
                assert r.command_tag == "SELECT 2" and not r.truncated
                assert r.rows == [(1, "apple", 1.5, b"\x00\xff", 1, 42), (2, "pear", None, None, 0, 42)]
                assert [c.name for c in r.columns] == ["id", "name", "price", "data", "ok", "n"]
                assert [c.decltype for c in r.columns] == ["INTEGER", "TEXT", "NUMERIC(10,2)", "BLOB", "BOOLEAN", None]
                assert r.columns[5].type == "INTEGER"
                r = await session.execute("SELECT $2 AS b, $1 AS a", ["one", "two"])
                assert r.rows == [("two", "one")]
                assert await session.describe("SELECT name, price FROM items WHERE id = $1") == (
                    1, [type(r.columns[0])("name", "TEXT"), type(r.columns[0])("price", "NUMERIC(10,2)")])
                r = await session.execute("UPDATE items SET price = 2 WHERE id = ?", [1])
                assert r.command_tag == "UPDATE 1"
                r = await session.execute("DELETE FROM items WHERE id = 2")
                assert r.command_tag == "DELETE 1"
                with pytest.raises(SQLError) as e:
                    await session.execute("SELECT * FROM nowhere")
                assert e.value.sqlstate == "42P01"
                with pytest.raises(SQLError) as e:
                    await session.execute("SELEC 1")
                assert e.value.sqlstate == "42601"
                with pytest.raises(SQLError) as e:
                    await session.execute("INSERT INTO items (id, name) VALUES (1, 'dup')")
                assert e.value.sqlstate == "23505"
                with pytest.raises(SQLError) as e:
                    await session.execute("INSERT INTO items (name) VALUES (NULL)")
                assert e.value.sqlstate == "23502"
                with pytest.raises(SQLError) as e:
                    await session.execute("SELECT 1; SELECT 2")
                assert e.value.sqlstate == "42601"
                assert (await session.execute("  -- nothing\n")).command_tag == ""
            finally:
                await session.close()
            listed = await hosted.list(ann)
            assert [d.ref for d in listed] == ["ann/shop"] and listed[0].size > 0
            await hosted.drop(ann, "shop")
            assert await hosted.list(ann) == []
            assert not (runtime.data_dir / "sql" / "ann" / "shop.sqlite").exists()
        finally:
            await hosted.close()
            await runtime.close()

    run(scenario())


def test_transactions_follow_postgresql(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        hosted = hosted_sql(runtime)
        try:
            (ann,) = await _users(runtime, "ann")
            await hosted.create(ann, "tx")
            one, two = await hosted.connect(ann, "tx"), await hosted.connect(ann, "tx")
            await one.execute("CREATE TABLE t (x INTEGER UNIQUE)")
            assert (await one.execute("START TRANSACTION ISOLATION LEVEL READ COMMITTED")).command_tag == "BEGIN"
            assert one.in_transaction
            await one.execute("INSERT INTO t VALUES (1)")
            assert (await two.execute("SELECT count(*) FROM t")).rows == [(0,)]
            assert (await one.execute("COMMIT")).command_tag == "COMMIT"
            assert not one.in_transaction
            assert (await two.execute("SELECT count(*) FROM t")).rows == [(1,)]
            await one.execute("BEGIN")
            await one.execute("INSERT INTO t VALUES (2)")
            with pytest.raises(SQLError):
                await one.execute("INSERT INTO t VALUES (1)")
            assert one.failed and one.in_transaction
            with pytest.raises(SQLError) as e:
                await one.execute("SELECT 1")
            assert e.value.sqlstate == "25P02"
            assert (await one.execute("COMMIT")).command_tag == "ROLLBACK"
            assert not one.failed and not one.in_transaction
            assert (await two.execute("SELECT x FROM t ORDER BY x")).rows == [(1,)]
            r = await one.execute("ROLLBACK")
            assert r.command_tag == "ROLLBACK" and r.notice
            # A read too long for the event loop moves to the session's thread, and the
            # transaction around it is intact.
            await one.execute("BEGIN")
            await one.execute("INSERT INTO t VALUES (3)")
            r = await one.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200000) "
                                  "SELECT count(*) FROM c")
            assert r.rows == [(200000,)] and one.in_transaction and not one.failed
            await one.execute("COMMIT")
            assert (await two.execute("SELECT x FROM t ORDER BY x")).rows == [(1,), (3,)]
            await one.execute("DELETE FROM t WHERE x = 3")
            results = await one.execute_batch([("INSERT INTO t VALUES (?)", [5]), ("INSERT INTO t VALUES (?)", [6])])
            assert [r.command_tag for r in results] == ["INSERT 0 1", "INSERT 0 1"]
            with pytest.raises(SQLError) as e:
                await one.execute_batch([("INSERT INTO t VALUES (7)", []), ("INSERT INTO t VALUES (5)", [])])
            assert e.value.index == 1 and e.value.sqlstate == "23505"
            assert (await two.execute("SELECT x FROM t ORDER BY x")).rows == [(1,), (5,), (6,)]
            await one.close()
            await two.close()
        finally:
            await hosted.close()
            await runtime.close()

    run(scenario())


def test_limits_time_rows_bytes_and_size(open_runtime):
    async def scenario():
        runtime = await open_runtime(**{"sql.query_timeout": "0.5", "sql.max_rows": "3",
                                        "sql.max_result_bytes": "100", "sql.max_database_size": "256K"})
        hosted = hosted_sql(runtime)
        try:
            (ann,) = await _users(runtime, "ann")
            await hosted.create(ann, "lim")
            session = await hosted.connect(ann, "lim")
            started = time.monotonic()
            with pytest.raises(SQLError) as e:
                await session.execute(SLOW)
            assert e.value.sqlstate == "57014" and time.monotonic() - started < 10
            assert (await session.execute("SELECT 1")).rows == [(1,)]  # the session survives
            # cancel() from the event loop while the statement runs in the session's thread
            task = asyncio.ensure_future(session.execute(SLOW))
            await asyncio.sleep(0.1)
            session.cancel()
            with pytest.raises(SQLError) as e:
                await task
            assert e.value.sqlstate == "57014" and "user request" in e.value.detail
            r = await session.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10) SELECT x FROM c")
            assert r.rows == [(1,), (2,), (3,)] and r.truncated
            r = await session.execute("SELECT ?", ["x" * 60])
            assert not r.truncated
            r = await session.execute("VALUES (?), (?)", ["x" * 60, "y" * 60])
            assert r.rows == [("x" * 60,)] and r.truncated
            chunks = [rows async for _, rows in session.stream("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 2500) SELECT x FROM c")]
            assert sum(map(len, chunks)) == 2500
            await session.execute("CREATE TABLE big (b BLOB)")
            with pytest.raises(SQLError) as e:
                for _ in range(100):
                    await session.execute("INSERT INTO big VALUES (randomblob(10000))")
            assert e.value.sqlstate == "53100"
            assert (await session.execute("SELECT count(*) > 0 FROM big")).rows == [(1,)]
            await session.execute("CREATE TEMP TABLE scratch (b BLOB)")
            with pytest.raises(SQLError) as e:
                await session.execute("INSERT INTO scratch SELECT randomblob(300000)")
            assert e.value.sqlstate == "53100"
            await session.close()
        finally:
            await hosted.close()
            await runtime.close()

    run(scenario())


def test_isolation_denials(open_runtime, tmp_path):
    async def scenario():
        runtime = await open_runtime()
        hosted = hosted_sql(runtime)
        try:
            ann, bob = await _users(runtime, "ann", "bob")
            await hosted.create(ann, "a")
            await hosted.create(bob, "b")
            other = runtime.data_dir / "sql" / "bob" / "b.sqlite"
            session = await hosted.connect(ann, "a")
            await session.execute("CREATE TABLE t (x)")
            denied = [
                f"ATTACH DATABASE '{other}' AS b",
                f"ATTACH DATABASE '{tmp_path}/new.sqlite' AS n",
                "DETACH DATABASE main",
                "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libsqlite3.so')",
                f"VACUUM INTO '{tmp_path}/copy.sqlite'",
                "PRAGMA writable_schema = 1",
                "PRAGMA journal_mode = DELETE",
                "PRAGMA synchronous = OFF",
                "PRAGMA mmap_size = 0",
                "PRAGMA max_page_count = 999999999",
                "PRAGMA query_only = 0",
                "PRAGMA temp_store_directory = '/tmp'",
                "PRAGMA database_list",
                "SELECT * FROM pragma_database_list",
                "SELECT * FROM dbstat",
            ]
            for sql in denied:
                with pytest.raises(SQLError) as e:
                    await session.execute(sql)
                assert e.value.sqlstate in ("42501", "42P01"), (sql, e.value.sqlstate, e.value.detail)
            assert not (tmp_path / "new.sqlite").exists() and not (tmp_path / "copy.sqlite").exists()
            assert (await session.execute("PRAGMA table_info(t)")).rows[0][1] == "x"
            assert (await session.execute("PRAGMA integrity_check")).rows == [("ok",)]
            await session.close()
            # B's database, by every spelling of its name
            for ref in ("bob/b", "b", "bob/../bob/b", "../bob/b"):
                with pytest.raises(NotFound):
                    await hosted.connect(ann, ref)
            # a read grant reads and cannot write; write can; revoke ends both
            await hosted.grant(bob, "b", "ann", "read")
            with pytest.raises(Forbidden):
                await hosted.grant(ann, "bob/b", "ann", "write")
            owner = await hosted.connect(bob, "b")
            await owner.execute("CREATE TABLE t (x)")
            await owner.execute("INSERT INTO t VALUES (1)")
            reader = await hosted.connect(ann, "bob/b")
            assert reader.access == "read"
            assert (await reader.execute("SELECT x FROM t")).rows == [(1,)]
            for sql in ("INSERT INTO t VALUES (2)", "DELETE FROM t", "CREATE TABLE u (y)", "DROP TABLE t",
                        "CREATE TEMP TABLE tt (z)", "PRAGMA user_version = 3"):
                with pytest.raises(SQLError) as e:
                    await reader.execute(sql)
                assert e.value.sqlstate == "42501", sql
            assert [d.ref for d in await hosted.list(ann)] == ["ann/a", "bob/b"]
            await hosted.grant(bob, "b", "ann", "write")
            writer = await hosted.connect(ann, "bob/b")
            await writer.execute("INSERT INTO t VALUES (2)")
            await hosted.revoke(bob, "b", "ann")
            with pytest.raises(SQLError) as e:
                await writer.execute("SELECT 1")
            assert e.value.sqlstate == "42501"
            with pytest.raises(NotFound):
                await hosted.connect(ann, "bob/b")
            for s in (owner, reader, writer):
                await s.close()
        finally:
            await hosted.close()
            await runtime.close()

    run(scenario())


def test_databases_are_read_through_a_memory_map_of_the_configured_size(tmp_path):
    """sql.mmap_size reaches every connection (reads then make no pread); 0 turns it off."""
    from agora.sql.guard import open_database

    options = dict(max_bytes=1 << 30, lock_timeout=1.0, max_value=1 << 20, max_sql=1 << 20)
    for size in (64 << 20, 0):
        conn = open_database(tmp_path / "m.sqlite", read_only=False, create=True, mmap_size=size, **options)
        conn.authorizer = None  # users may not ask (see test_isolation_denials); the server may
        assert conn.execute("PRAGMA mmap_size").fetchall() == [(size,)]
        conn.close()


def test_deleting_a_user_deletes_their_databases_and_grants(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        hosted = hosted_sql(runtime)
        try:
            ann, bob = await _users(runtime, "ann", "bob")
            await hosted.create(ann, "a")
            await hosted.create(bob, "b")
            await hosted.grant(ann, "a", "bob", "write")
            await hosted.grant(bob, "b", "ann", "read")
            await runtime.identity.delete_user("ann", actor="admin")
            assert not (runtime.data_dir / "sql" / "ann").exists()
            assert [d.ref for d in await hosted.list(bob)] == ["bob/b"]
            assert (await hosted.list(bob))[0].grants == ()
            ann = await runtime.identity.create_user("ann", "password-123")
            assert await hosted.list(ann) == []
            await hosted.create(ann, "a")  # a new account of the same name starts empty
            async with hosted.session(ann, "a") as session:
                assert (await session.execute("SELECT count(*) FROM sqlite_schema")).rows == [(0,)]
        finally:
            await hosted.close()
            await runtime.close()

    run(scenario())


@given(st.text(alphabet=st.sampled_from(list("ab $1?:;'\"-/*\n()[]`x")), max_size=60))
@settings(max_examples=300, deadline=None)
def test_statement_splitting_never_fails_and_keeps_literals(text):
    from agora.sql.statements import split_statements

    for statement in split_statements(text):
        assert statement.sql.strip() and statement.keywords
    literal = text.replace("'", "")
    (only,) = split_statements(f"SELECT '{literal}'")
    assert only.sql == f"SELECT '{literal}'"


def test_pool_reuses_connections_rolls_back_and_stays_bounded(open_runtime):
    async def scenario():
        runtime = await open_runtime(**{"sql.pool_size": "2", "sql.max_idle_connections": "1"})
        hosted = hosted_sql(runtime)
        try:
            (ann,) = await _users(runtime, "ann")
            await hosted.create(ann, "p")
            async with hosted.session(ann, "p") as first:
                await first.execute("CREATE TABLE t (x)")
                await first.execute("BEGIN")
                await first.execute("INSERT INTO t VALUES (1)")  # left open: rolled back on release
                async with hosted.session(ann, "p") as second:
                    assert second is not first
            async with hosted.session(ann, "p") as again:
                assert again is first and not again.in_transaction
                assert (await again.execute("SELECT count(*) FROM t")).rows == [(0,)]
            assert sum(len(idle) for idle in hosted._pool.values()) == 1
            assert second.closed
        finally:
            await hosted.close()
            await runtime.close()

    run(scenario())


def test_a_grant_withdrawn_elsewhere_ends_a_connection_at_the_next_check(open_runtime):
    async def scenario():
        runtime = await open_runtime(**{"sql.recheck_interval": "0"})
        hosted = hosted_sql(runtime)
        try:
            ann, bob = await _users(runtime, "ann", "bob")
            await hosted.create(ann, "a")
            await hosted.grant(ann, "a", "bob", "write")
            session = await hosted.connect(bob, "ann/a")
            assert (await session.execute("SELECT 1")).rows == [(1,)]
            # As another node would: the catalogue changes, this node's sessions are not told.
            from sqlalchemy import delete

            from agora.sql.tables import sql_grants
            async with runtime.db.write() as conn:
                await conn.execute(delete(sql_grants))
            with pytest.raises(SQLError) as e:
                await session.execute("SELECT 1")
            assert e.value.sqlstate == "42501" and "withdrawn" in e.value.detail
            await session.close()
        finally:
            await hosted.close()
            await runtime.close()

    run(scenario())
