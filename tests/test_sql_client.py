"""agora.client's sql sub-API, blocking and asyncio, against a real server: typed
values both ways (bytes, None, int, bool), batches, streaming rows, CSV, errors as the
client's exception classes with the SQLSTATE in ``problem``."""

from __future__ import annotations

import asyncio

import pytest

from agora.client import AsyncClient, Client, Conflict, Forbidden, InvalidRequest, NotFound


def test_sync_client_round_trip(server):
    name, password = server.create_user()
    other, other_password = server.create_user()
    with Client(server.url) as client, Client(server.url) as friend:
        client.login(name, password)
        friend.login(other, other_password)
        made = client.sql.create("c")
        assert (made.ref, made.access) == (f"{name}/c", "owner")
        with pytest.raises(Conflict):
            client.sql.create("c")
        client.sql.query("c", "CREATE TABLE t (id serial PRIMARY KEY, s text, b bytea)")
        r = client.sql.query("c", "INSERT INTO t (s, b) VALUES ($1, $2)", ["x", b"\x00\x01\xff"])
        assert r.rows_affected == 1 and r.command == "INSERT 0 1"
        r = client.sql.query("c", "SELECT id, s, b, NULL AS n, $1 AS yes FROM t", [True])
        assert r.rows == [[1, "x", b"\x00\x01\xff", None, True]] and r.columns == ["id", "s", "b", "n", "yes"]
        assert r.types == ["int4", "text", "bytea", "text", "bool"]
        results = client.sql.batch("c", ["INSERT INTO t (s) VALUES ('y')", ("INSERT INTO t (s) VALUES ($1)", ["z"])])
        assert [x.rows_affected for x in results] == [1, 1]
        with pytest.raises(InvalidRequest) as e:
            client.sql.batch("c", ["INSERT INTO t (s) VALUES ('w')", "INSERT INTO t (id) VALUES (1)"])
        assert e.value.problem["sqlstate"] == "23505" and e.value.problem["statement"] == 1
        assert [row[1] for row in client.sql.rows("c", "SELECT id, s FROM t ORDER BY id")] == ["x", "y", "z"]
        assert b"".join(client.sql.export("c", "SELECT s FROM t ORDER BY id")) == b"s\r\nx\r\ny\r\nz\r\n"
        with pytest.raises(NotFound):
            friend.sql.query(f"{name}/c", "SELECT 1")
        client.sql.grant("c", other, "read")
        assert friend.sql.query(f"{name}/c", "SELECT count(*) FROM t").rows == [[3]]
        with pytest.raises(Forbidden) as e:
            friend.sql.query(f"{name}/c", "DELETE FROM t")
        assert e.value.problem["sqlstate"] == "42501"
        assert [d.ref for d in friend.sql.databases()] == [f"{name}/c"]
        assert client.sql.get("c").grants[0].user == other
        client.sql.revoke("c", other)
        with pytest.raises(NotFound):
            friend.sql.get(f"{name}/c")
        info = client.sql.info()
        if info["postgres_port"]:
            assert client.sql.url("c", name).startswith(f"postgresql://{name}@")
        else:
            with pytest.raises(ValueError):
                client.sql.url("c", name)
        client.sql.drop("c")
        assert client.sql.databases() == []


def test_async_client_round_trip(server):
    name, password = server.create_user()

    async def scenario() -> None:
        async with AsyncClient(server.url) as client:
            await client.login(name, password)
            await client.sql.create("a")
            await client.sql.query("a", "CREATE TABLE t (x integer)")
            await client.sql.batch("a", [("INSERT INTO t VALUES ($1)", [i]) for i in range(5)])
            r = await client.sql.query("a", "SELECT sum(x) AS s FROM t")
            assert r.rows == [[10]]
            assert [row async for row in client.sql.rows("a", "SELECT x FROM t ORDER BY x")] == [[i] for i in range(5)]
            assert [d.name for d in await client.sql.databases()] == ["a"]
            await client.sql.drop("a")

    asyncio.run(scenario())
