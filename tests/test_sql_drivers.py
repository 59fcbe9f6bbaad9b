"""Drivers over Agora's PostgreSQL port (real PostgreSQL behind it): psycopg 3, asyncpg
(pools, types, COPY, savepoints, cursors), psycopg2 (named cursors, copy_expert); two
connections side by side (an idle transaction blocks no one, LISTEN/NOTIFY); the query
time limit and CancelRequest; and isolation: who may connect, what a grant allows, and
nothing beyond the user's own role (no role switching, no server files, no untrusted
extensions)."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import io
import json
import threading
import uuid

import pytest

from conftest import ServerFactory
from pgwire_support import Account, provision, server_env
from sql_tools.accounts import accounts

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is a dependency (pip install -e '.[test]')")
asyncpg = pytest.importorskip("asyncpg")

pytestmark = pytest.mark.xdist_group("sql-drivers")


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory, backend):
    factory = ServerFactory(tmp_path_factory.mktemp(f"pgdrivers-{backend}"), backend)
    yield factory(env=server_env())
    factory.close()


# Each test's own user, with the databases it owns.
USERS = {
    "shop": ("shop",),
    "ledger": ("ledger",),
    "pooled": ("pooled",),
    "types": ("types",),
    "bulk": ("bulk",),
    "legacy": ("legacy",),
    "together": ("together",),
    "chat": ("chat",),
    "slow": ("slow",),
    "alice": ("mine",),
    "bob": ("bobs",),
    "owner": ("granted",),
    "reader": (),
    "writer": (),
    "fortress": ("fortress",),
    "other": ("other",),
}


@pytest.fixture(scope="module")
def users(pg_server) -> dict[str, Account]:
    """The module's users, each owning the databases USERS names, made in one go."""
    return accounts(pg_server, USERS)


def connect_asyncpg(acct: Account, database: str, **kwargs):
    return asyncpg.connect(host="127.0.0.1", port=acct.port, user=acct.name, password=acct.password,
                           database=database, ssl="require", **kwargs)


def sqlstate_of(conn, statement: str) -> str | None:
    """The SQLSTATE ``statement`` fails with on ``conn`` (autocommit), or None."""
    try:
        conn.execute(statement)
    except psycopg.Error as error:
        return error.sqlstate
    return None


# -- psycopg 3 -----------------------------------------------------------------------------


def test_psycopg_parameters_prepared_statements_transactions_and_copy(users):
    ann = users["shop"]
    with psycopg.connect(ann.dsn("shop")) as conn:
        conn.execute("CREATE TABLE items (id serial PRIMARY KEY, name text, price real, data bytea, "
                     "ok boolean, amount numeric)")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items (name, price, data, ok, amount) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                        ("apple", 1.5, b"\x00\xff", True, decimal.Decimal("12.5")))
            assert cur.fetchone() == (1,)
            for i in range(2, 12):
                cur.execute("INSERT INTO items (name, price) VALUES (%s, %s)", (f"n{i}", i / 4), prepare=True)
        conn.commit()
        row = conn.execute("SELECT id, name, price, data, ok, amount FROM items WHERE id = %s", (1,)).fetchone()
        assert row == (1, "apple", 1.5, b"\x00\xff", True, decimal.Decimal("12.5"))
        assert conn.execute("SELECT count(*), sum(price) FROM items").fetchone() == \
            (11, 1.5 + sum(i / 4 for i in range(2, 12)))
        for i in (3, 4, 5, 6, 7, 8):  # enough executions for psycopg to prepare on the server
            assert conn.execute("SELECT name FROM items WHERE id = %s", (i,), prepare=True).fetchone() == (f"n{i}",)
        assert conn.execute("SELECT %s::text || %s::text, %s + 1", ("a", "b", 41)).fetchone() == ("ab", 42)
        assert conn.execute("SELECT name FROM items WHERE name LIKE %s ORDER BY id", ("n1%",)).fetchall() == \
            [("n10",), ("n11",)]
        with conn.transaction():
            conn.execute("UPDATE items SET name = 'kept' WHERE id = 1")
        with pytest.raises(RuntimeError):
            with conn.transaction():
                conn.execute("UPDATE items SET name = 'undone' WHERE id = 2")
                raise RuntimeError
        assert conn.execute("SELECT name FROM items WHERE id IN (1, 2) ORDER BY id").fetchall() == [("kept",), ("n2",)]
        conn.commit()
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
        # COPY both ways, in psycopg 3's API
        with conn.cursor() as cur:
            with cur.copy("COPY items (name, price) FROM STDIN") as copy:
                for i in range(100):
                    copy.write_row((f"copied{i}", i))
            out = io.BytesIO()
            with cur.copy("COPY (SELECT name FROM items WHERE name LIKE 'copied%' ORDER BY price) TO STDOUT") as copy:
                for chunk in copy:
                    out.write(chunk)
        conn.commit()
        assert out.getvalue().decode().splitlines() == [f"copied{i}" for i in range(100)]
    with psycopg.connect(ann.dsn("shop"), autocommit=True) as other:
        assert other.execute("SELECT name FROM items WHERE id = 1").fetchone() == ("kept",)
        assert other.execute("SELECT count(*) FROM items").fetchone() == (111,)


# -- asyncpg --------------------------------------------------------------------------------


def test_asyncpg_parameters_statements_transactions_and_cursors(users):
    ann = users["ledger"]

    async def scenario():
        conn = await connect_asyncpg(ann, "ledger")
        try:
            await conn.execute("CREATE TABLE entries (id integer PRIMARY KEY, who text, amount real)")
            await conn.executemany("INSERT INTO entries (id, who, amount) VALUES ($1, $2, $3)",
                                   [(1, "ann", 10.0), (2, "bob", 2.5), (3, "ann", 1.25)])
            rows = await conn.fetch("SELECT id, who, amount FROM entries WHERE who = $1 ORDER BY id", "ann")
            assert [tuple(r) for r in rows] == [(1, "ann", 10.0), (3, "ann", 1.25)]
            assert await conn.fetchval("SELECT count(*) FROM entries WHERE amount > $1", 2.0) == 2
            statement = await conn.prepare("SELECT who FROM entries WHERE id = $1")
            assert [await statement.fetchval(i) for i in (1, 2)] == ["ann", "bob"]
            assert [a.name for a in statement.get_attributes()] == ["who"]
            with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                await conn.execute("INSERT INTO entries (id) VALUES ($1)", 1)
            async with conn.transaction():
                cursor = await conn.cursor("SELECT id FROM entries WHERE id <= $1 ORDER BY id", 3)
                assert [r["id"] for r in await cursor.fetch(2)] == [1, 2]
                assert [r["id"] for r in await cursor.fetch(2)] == [3]
                assert [r["id"] async for r in conn.cursor("SELECT id FROM entries ORDER BY id", prefetch=2)] == \
                    [1, 2, 3]
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_asyncpg_pool_acquired_and_released_many_times(users):
    ann = users["pooled"]

    async def scenario():
        pool = await asyncpg.create_pool(host="127.0.0.1", port=ann.port, user=ann.name, password=ann.password,
                                         database="pooled", ssl="require", min_size=2, max_size=4)
        try:
            await pool.execute("CREATE TABLE hits (n integer)")
            for n in range(40):
                async with pool.acquire() as conn:
                    # what one borrower leaves behind, the pool's reset (RESET ALL, UNLISTEN,
                    # advisory unlocks, CLOSE ALL) clears before the next
                    assert await conn.fetchval("SELECT current_setting('application_name')") != "dirty"
                    assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                               "AND pid = pg_backend_pid()") == 0
                    await conn.execute("SET application_name = 'dirty'")
                    await conn.execute("SELECT pg_advisory_lock($1)", n)
                    await conn.execute("LISTEN somewhere")
                    await conn.execute("INSERT INTO hits VALUES ($1)", n)

            async def one(n: int) -> int:
                async with pool.acquire() as conn:
                    async with conn.transaction():
                        await conn.execute("INSERT INTO hits VALUES ($1)", n)
                        await asyncio.sleep(0.01)
                        return await conn.fetchval("SELECT $1::int * 2", n)

            assert await asyncio.gather(*(one(n) for n in range(40, 100))) == [n * 2 for n in range(40, 100)]
            assert await pool.fetchval("SELECT count(DISTINCT n) FROM hits") == 100
            assert pool.get_size() <= 4
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_asyncpg_types_round_trip(users):
    ann = users["types"]
    values = {
        "d": datetime.date(2024, 2, 29),
        "t": datetime.time(13, 14, 15, 161718),
        "ts": datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
        "tz": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "iv": datetime.timedelta(days=3, hours=4, microseconds=5),
        "ints": [1, 2, None, 4],
        "texts": ["a", "b,c", 'd"e', ""],
        "j": {"k": [1, 2.5, None, True], "s": "ü"},
        "n": decimal.Decimal("12345.6789"),
        "b": b"\x00\x01\xff",
        "ok": False,
    }
    types = {"d": "date", "t": "time", "ts": "timestamp", "tz": "timestamptz", "u": "uuid", "iv": "interval",
             "ints": "integer[]", "texts": "text[]", "j": "jsonb", "n": "numeric(12,4)", "b": "bytea",
             "ok": "boolean"}

    async def scenario():
        conn = await connect_asyncpg(ann, "types")
        try:
            await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
            columns = ", ".join(f"{name} {kind}" for name, kind in types.items())
            await conn.execute(f"CREATE TABLE ty (id serial PRIMARY KEY, {columns})")
            names = list(types)
            placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
            await conn.execute(f"INSERT INTO ty ({', '.join(names)}) VALUES ({placeholders})",
                               *(values[n] for n in names))
            await conn.execute(f"INSERT INTO ty ({names[0]}) VALUES (NULL)")
            rows = await conn.fetch(f"SELECT {', '.join(names)} FROM ty ORDER BY id")
            assert dict(rows[0]) == values
            assert tuple(rows[1]) == (None,) * len(names)
            # parameters are typed by the server from their context
            assert await conn.fetchval("SELECT $1::date + $2::interval", values["d"], datetime.timedelta(days=1)) == \
                datetime.datetime(2024, 3, 1)
            assert await conn.fetchval("SELECT count(*) FROM ty WHERE u = $1 AND $2 = ANY(ints) AND j @> $3",
                                       values["u"], 4, {"s": "ü"}) == 1
            assert await conn.fetchval("SELECT j -> 'k' ->> 1 FROM ty WHERE id = 1") == "2.5"
            assert await conn.fetchval("SELECT array_length($1::text[], 1)", ["x", "y"]) == 2
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_asyncpg_copy_and_nested_transactions(users):
    ann = users["bulk"]

    async def scenario():
        conn = await connect_asyncpg(ann, "bulk")
        try:
            await conn.execute("CREATE TABLE m (id integer PRIMARY KEY, at timestamptz, tag text, v double precision)")
            start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
            records = [(i, start + datetime.timedelta(minutes=i), f"t{i % 7}", i / 8) for i in range(5000)]
            assert await conn.copy_records_to_table("m", records=records) == "COPY 5000"
            assert await conn.fetchval("SELECT count(*) FROM m") == 5000
            assert tuple(await conn.fetchrow("SELECT * FROM m WHERE id = 4999")) == records[4999]
            out = io.BytesIO()
            await conn.copy_from_query("SELECT id, tag FROM m WHERE id < $1 ORDER BY id", 3, output=out,
                                       format="csv")
            assert out.getvalue().decode().splitlines() == ["0,t0", "1,t1", "2,t2"]
            # nested transactions are savepoints: an inner failure undoes only the inner work
            async with conn.transaction():
                await conn.execute("INSERT INTO m (id, tag) VALUES (-1, 'outer')")
                with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                    async with conn.transaction():
                        await conn.execute("INSERT INTO m (id, tag) VALUES (-2, 'inner')")
                        await conn.execute("INSERT INTO m (id, tag) VALUES (0, 'duplicate')")
                async with conn.transaction():
                    await conn.execute("INSERT INTO m (id, tag) VALUES (-3, 'inner kept')")
                    with pytest.raises(ZeroDivisionError):
                        async with conn.transaction():
                            await conn.execute("INSERT INTO m (id, tag) VALUES (-4, 'innermost')")
                            raise ZeroDivisionError
            assert [r["tag"] for r in await conn.fetch("SELECT tag FROM m WHERE id < 0 ORDER BY id DESC")] == \
                ["outer", "inner kept"]
            tr = conn.transaction()
            await tr.start()
            await conn.execute("DELETE FROM m")
            await tr.rollback()
            assert await conn.fetchval("SELECT count(*) FROM m") == 5002
        finally:
            await conn.close()

    asyncio.run(scenario())


# -- psycopg2 -------------------------------------------------------------------------------


def test_psycopg2_named_cursors_and_copy_expert(users):
    psycopg2 = pytest.importorskip("psycopg2")
    ann = users["legacy"]
    conn = psycopg2.connect(ann.dsn("legacy"))
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE big (id integer PRIMARY KEY, label text, score numeric)")
            cur.execute("INSERT INTO big SELECT g, 'row ' || g, g / 10.0 FROM generate_series(1, 5000) g")
        conn.commit()
        # a named cursor is a server-side cursor: rows come in batches of itersize
        with conn.cursor(name="walk") as cur:
            cur.itersize = 700
            cur.execute("SELECT id, label FROM big WHERE id > %s ORDER BY id", (10,))
            first = cur.fetchmany(5)
            assert first == [(i, f"row {i}") for i in range(11, 16)]
            assert sum(1 for _ in cur) == 4985
        conn.commit()
        with conn.cursor(name="held", withhold=True) as cur:
            cur.execute("SELECT id FROM big ORDER BY id DESC")
            conn.commit()  # WITH HOLD: the cursor outlives its transaction
            assert cur.fetchone() == (5000,)
            cur.scroll(9, mode="relative")
            assert cur.fetchone() == (4990,)
        conn.commit()
        with conn.cursor() as cur:
            cur.copy_expert("COPY big (id, label, score) FROM STDIN WITH (FORMAT csv, HEADER)",
                            io.StringIO("id,label,score\n6001,\"quoted, label\",1.5\n6002,,\n"))
            out = io.StringIO()
            cur.copy_expert("COPY (SELECT id, label, score FROM big WHERE id > 6000 ORDER BY id) TO STDOUT "
                            "WITH (FORMAT csv, HEADER)", out)
            assert out.getvalue().splitlines() == ["id,label,score", '6001,"quoted, label",1.5', "6002,,"]
            with pytest.raises(psycopg2.errors.UniqueViolation):
                cur.copy_expert("COPY big (id) FROM STDIN", io.StringIO("1\n"))
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM big")
            assert cur.fetchone() == (5000,)
    finally:
        conn.close()


# -- two connections ----------------------------------------------------------------------------


def test_an_idle_transaction_blocks_no_other_connection(users):
    ann = users["together"]
    with psycopg.connect(ann.dsn("together"), autocommit=True) as setup:
        setup.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
        setup.execute("INSERT INTO t VALUES (1, 'one')")
    with psycopg.connect(ann.dsn("together"), autocommit=True) as idle, \
            psycopg.connect(ann.dsn("together")) as busy:
        idle.execute("BEGIN")
        assert idle.execute("SELECT 1").fetchone() == (1,)
        assert idle.execute("SELECT v FROM t WHERE id = 1").fetchone() == ("one",)
        # (were they blocked, the statement time limit would end them with an error)
        busy.execute("INSERT INTO t VALUES (2, 'two')")
        busy.execute("UPDATE t SET v = 'uno' WHERE id = 1")
        busy.commit()
        # under READ COMMITTED the open transaction sees the other's committed rows
        assert idle.execute("SELECT count(*) FROM t").fetchone() == (2,)
        idle.execute("COMMIT")
    with psycopg.connect(ann.dsn("together"), autocommit=True) as snap, \
            psycopg.connect(ann.dsn("together"), autocommit=True) as other:
        snap.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert snap.execute("SELECT count(*) FROM t").fetchone() == (2,)
        other.execute("INSERT INTO t VALUES (3, 'three')")
        assert snap.execute("SELECT count(*) FROM t").fetchone() == (2,)  # its snapshot
        snap.execute("COMMIT")
        assert snap.execute("SELECT count(*) FROM t").fetchone() == (3,)


def test_listen_notify_between_two_connections(users):
    ann = users["chat"]
    with psycopg.connect(ann.dsn("chat"), autocommit=True) as listener, \
            psycopg.connect(ann.dsn("chat"), autocommit=True) as talker:
        listener.execute("LISTEN news")
        talker.execute("NOTIFY news, 'first'")
        talker.execute("SELECT pg_notify('news', 'second')")
        with talker.transaction():
            talker.execute("NOTIFY news, 'after commit'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=3)]
        assert got == [("news", "first"), ("news", "second"), ("news", "after commit")]
        listener.execute("UNLISTEN news")
        talker.execute("NOTIFY news, 'unheard'")
        assert list(listener.notifies(timeout=0.5)) == []

    async def over_asyncpg():
        received: asyncio.Queue = asyncio.Queue()
        listener = await connect_asyncpg(ann, "chat")
        talker = await connect_asyncpg(ann, "chat")
        try:
            await listener.add_listener("jobs", lambda conn, pid, channel, payload: received.put_nowait(payload))
            await talker.execute("SELECT pg_notify('jobs', $1)", "job 1")
            assert await asyncio.wait_for(received.get(), 10) == "job 1"
        finally:
            await listener.close()
            await talker.close()

    asyncio.run(over_asyncpg())


def test_listen_notify_between_two_nodes(make_server, backend):
    if backend != "postgresql":
        pytest.skip("two nodes share a PostgreSQL metadata database and engine: the postgresql backend")
    a, b = make_server.nodes(2)
    on_a = accounts(a, {"ann": ("wire",)})["ann"]
    on_b = Account(b, on_a.name, on_a.password)
    with psycopg.connect(on_a.dsn("wire"), autocommit=True) as listener, \
            psycopg.connect(on_b.dsn("wire"), autocommit=True) as talker:
        listener.execute("LISTEN across")
        talker.execute("CREATE TABLE t (x integer)")
        with talker.transaction():
            talker.execute("INSERT INTO t VALUES (1)")
            talker.execute("NOTIFY across, 'from b'")
        assert [(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=1)] == [("across", "from b")]
        assert listener.execute("SELECT x FROM t").fetchall() == [(1,)]


# -- limits and cancel ------------------------------------------------------------------------


def test_time_limit_and_cancel_keep_the_connection(users):
    ann = users["slow"]
    with psycopg.connect(ann.dsn("slow"), autocommit=True) as conn:
        for runaway in ("SELECT pg_sleep(60)", "DO $$ BEGIN LOOP END LOOP; END $$"):
            with pytest.raises(psycopg.errors.QueryCanceled) as stopped:
                conn.execute(runaway)
            assert stopped.value.sqlstate == "57014" and "statement timeout" in str(stopped.value)
            assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        # CancelRequest from another thread, on a new connection with the key data Agora sent
        threading.Timer(0.3, conn.cancel).start()
        with pytest.raises(psycopg.errors.QueryCanceled) as cancelled:
            conn.execute("SELECT pg_sleep(60)")
        assert "user request" in str(cancelled.value)  # not the time limit
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)
        # libpq 17's cancel connection goes over TLS too (SSLRequest, then CancelRequest)
        if hasattr(conn, "cancel_safe"):
            threading.Timer(0.3, conn.cancel_safe).start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(60)")
            assert conn.execute("SELECT 3").fetchone() == (3,)

    async def over_asyncpg():
        conn = await connect_asyncpg(ann, "slow")
        try:
            task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(60)"))
            await asyncio.sleep(0.3)
            task.cancel()  # asyncpg sends a CancelRequest
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await conn.fetchval("SELECT 4") == 4
        finally:
            await conn.close()

    asyncio.run(over_asyncpg())


# -- isolation --------------------------------------------------------------------------------


def test_authentication_and_who_may_connect(pg_server, users):
    alice = users["alice"]
    bob = users["bob"]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(alice.dsn("mine", password="wrong-password"))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(alice.dsn("mine").replace(f"user={alice.name}", "user=nosuchuser"))
    # bob's database is not alice's, whether it exists or not
    for name in (f"{bob.name}/bobs", f"{bob.name}/nosuch", "bobs", "postgres", "template1"):
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(alice.dsn(name))
        assert "does not exist" in str(refused.value) or "permission denied" in str(refused.value), str(refused.value)
    with psycopg.connect(bob.dsn("bobs"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x integer)")
        conn.execute("INSERT INTO t VALUES (1)")
    provision(pg_server, grants=[(bob.name, "bobs", alice.name, "read")])
    with psycopg.connect(alice.dsn(f"{bob.name}/bobs"), autocommit=True) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    # plaintext passwords without TLS are fine from loopback, as elsewhere in Agora
    with psycopg.connect(alice.dsn("mine", sslmode="disable"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_read_and_write_grants(pg_server, users):
    owner = users["owner"]
    reader = users["reader"]
    writer = users["writer"]
    with psycopg.connect(owner.dsn("granted"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id serial PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t (v) VALUES ('a')")
    provision(pg_server, grants=[(owner.name, "granted", reader.name, "read"),
                                 (owner.name, "granted", writer.name, "write")])
    with psycopg.connect(owner.dsn("granted"), autocommit=True) as conn:
        conn.execute("CREATE TABLE later (id integer)")  # tables made after the grant follow it
        conn.execute("INSERT INTO later VALUES (7)")
    ref = f"{owner.name}/granted"
    with psycopg.connect(reader.dsn(ref), autocommit=True) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("a",)]
        assert conn.execute("SELECT id FROM later").fetchall() == [(7,)]
        for write in ("INSERT INTO t (v) VALUES ('b')", "UPDATE t SET v = 'b'", "DELETE FROM t", "TRUNCATE t",
                      "CREATE TABLE mine (x integer)", "DROP TABLE t", "ALTER TABLE t ADD COLUMN w text",
                      "SELECT nextval('t_id_seq')"):
            assert sqlstate_of(conn, write) == "42501", write
    with psycopg.connect(writer.dsn(ref), autocommit=True) as conn:
        conn.execute("INSERT INTO t (v) VALUES ('b')")
        conn.execute("UPDATE later SET id = 8")
        assert conn.execute("SELECT v FROM t ORDER BY id").fetchall() == [("a",), ("b",)]
        assert sqlstate_of(conn, "DROP TABLE t") == "42501"  # only its owner drops a table
        conn.execute("CREATE TABLE made_by_writer (x integer)")
        conn.execute("INSERT INTO made_by_writer VALUES (1)")
    # a table a write grantee makes belongs to the database: its owner and readers see it
    with psycopg.connect(owner.dsn("granted"), autocommit=True) as conn:
        assert conn.execute("SELECT x FROM made_by_writer").fetchall() == [(1,)]
    with psycopg.connect(reader.dsn(ref), autocommit=True) as conn:
        assert conn.execute("SELECT x FROM made_by_writer").fetchall() == [(1,)]


def test_nothing_beyond_the_users_own_role(users):
    alice = users["fortress"]
    bob = users["other"]
    with psycopg.connect(bob.dsn("other"), autocommit=True) as conn:
        bob_role = conn.execute("SELECT current_user").fetchone()[0]
    with psycopg.connect(alice.dsn("fortress"), autocommit=True) as conn:
        role, session_role = conn.execute("SELECT current_user, session_user").fetchone()
        assert role == session_role
        assert conn.execute("SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls FROM pg_roles "
                            "WHERE rolname = current_user").fetchone() == (False,)
        conn.execute("CREATE TABLE t (x integer)")
        conn.execute("INSERT INTO t VALUES (1)")
        superusers = [r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolsuper")]
        # RESET ROLE goes back to the session's role, which is the user's own
        conn.execute("RESET ROLE")
        assert conn.execute("SELECT current_user, session_user").fetchone() == (role, role)
        for target in ["postgres", *superusers, bob_role, "pg_read_server_files", "pg_execute_server_program"]:
            assert sqlstate_of(conn, f'SET ROLE "{target}"') in ("42501", "42704"), target
            assert sqlstate_of(conn, f'SET SESSION AUTHORIZATION "{target}"') in ("42501", "42704"), target
        assert conn.execute("SELECT current_user, session_user").fetchone() == (role, role)
        escapes = [
            "COPY t TO '/tmp/agora-escape'",
            "COPY t FROM '/etc/passwd'",
            "COPY t TO PROGRAM 'touch /tmp/agora-escape'",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT pg_read_binary_file('/etc/passwd')",
            "SELECT pg_ls_dir('.')",
            "SELECT lo_import('/etc/passwd')",
            "SELECT lo_export(lo_create(0), '/tmp/agora-escape')",
            "CREATE EXTENSION dblink",
            "CREATE EXTENSION file_fdw",
            "CREATE FUNCTION escape() RETURNS int LANGUAGE c AS '/lib/x86_64-linux-gnu/libc.so.6', 'getpid'",
            "ALTER SYSTEM SET statement_timeout = 0",
            "CREATE ROLE sneaky",
            "CREATE DATABASE sneaky",
        ]
        for escape in escapes:
            assert sqlstate_of(conn, escape) == "42501", escape
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        # trusted extensions the engine ships may be created by the database's owner
        available = {name for (name,) in conn.execute("SELECT name FROM pg_available_extensions")}
        assert "citext" in available
        conn.execute("CREATE EXTENSION citext")
        assert conn.execute("SELECT 'ABC'::citext = 'abc'::citext").fetchone() == (True,)
        if "pgcrypto" in available:  # the embedded engine's wheel is built without OpenSSL
            conn.execute("CREATE EXTENSION pgcrypto")
            assert conn.execute("SELECT length(digest('x', 'sha256'))").fetchone() == (32,)
    # bob, with no grant, cannot read alice's rows through any name for them
    with psycopg.connect(bob.dsn("other"), autocommit=True) as conn:
        assert sqlstate_of(conn, f'SELECT * FROM "{alice.name}/fortress".public.t') == "0A000"
