"""The hosted-SQL HTTP API (/api/v1/sql) against a real server on both backends, its
databases on the server's PostgreSQL: databases and grants, PostgreSQL's types as JSON,
SQL errors as problems with SQLSTATE, the time limit, results bounded in rows and in
bytes as sent, batches (all or nothing), NDJSON and CSV (chunked, given up midway
without leaving the connection busy), isolation, access and the quota."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from datetime import datetime, timezone
from typing import Iterator

import httpx
import pytest

from conftest import AgoraServer, ServerFactory, wait_for

API = "/api/v1/sql"
PROBLEM = "application/problem+json"
MAX_BYTES = 64 * 1024
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def sql_server(tmp_path_factory, backend) -> Iterator[AgoraServer]:
    factory = ServerFactory(tmp_path_factory.mktemp(f"sql-{backend}"), backend)
    yield factory(env={"AGORA_SQL_QUERY_TIMEOUT": "1", "AGORA_SQL_MAX_ROWS": "50",
                       "AGORA_SQL_MAX_RESULT_BYTES": str(MAX_BYTES), "AGORA_SQL_STREAM_CHUNK": str(CHUNK),
                       "AGORA_SQL_MAX_DATABASE_SIZE": "24M", "AGORA_SQL_QUOTA_INTERVAL": "0.5",
                       "AGORA_SQL_MAX_DATABASES": "5", "AGORA_SQL_ENGINE_START": "background"})
    factory.close()


class SQLUser:
    def __init__(self, server: AgoraServer):
        self.name, self.password = server.create_user()
        self.http = server.client(server.login(self.name, self.password))

    def create(self, name: str) -> dict:
        response = self.http.post(f"{API}/databases", json={"name": name})
        assert response.status_code == 201, response.text
        return response.json()

    def query(self, db: str, sql: str, params: list | None = None, status: int = 200) -> dict:
        response = self.http.post(f"{API}/{db}/query", json={"sql": sql, "params": params or []})
        assert response.status_code == status, response.text
        if status != 200:
            assert response.headers["content-type"].startswith(PROBLEM)
        return response.json()


@pytest.fixture
def ann(sql_server) -> Iterator[SQLUser]:
    user = SQLUser(sql_server)
    yield user
    user.http.close()


@pytest.fixture
def bob(sql_server) -> Iterator[SQLUser]:
    user = SQLUser(sql_server)
    yield user
    user.http.close()


def test_crud_typed_values_and_errors(ann):
    made = ann.create("shop")
    assert (made["name"], made["owner"], made["access"], made["grants"]) == ("shop", ann.name, "owner", [])
    assert ann.http.post(f"{API}/databases", json={"name": "shop"}).status_code == 409
    assert ann.http.post(f"{API}/databases", json={"name": "Bad/Name"}).status_code == 422
    r = ann.query("shop", "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(8, 2), "
                          "data bytea, seen timestamptz, tags text[], doc jsonb, ratio float8)")
    assert r["command"] == "CREATE TABLE"
    r = ann.query("shop", "INSERT INTO items (name, price, data, seen, tags, doc, ratio) "
                          "VALUES ($1, $2, $3, $4, '{a,b}', $5, $6), ($7, NULL, NULL, NULL, NULL, NULL, 'NaN')",
                  ["apple", "1.50", {"$base64": "AP8="}, "2024-05-01T10:00:00+02:00", '{"k": [1, 2.50]}', 0.25, "pear"])
    assert (r["rows_affected"], r["command"]) == (2, "INSERT 0 2")
    r = ann.query("shop", "SELECT id, name, price, data, seen, tags, doc, ratio, 2 * id AS twice FROM items ORDER BY id")
    assert r["columns"] == ["id", "name", "price", "data", "seen", "tags", "doc", "ratio", "twice"]
    assert r["types"] == ["int4", "text", "numeric", "bytea", "timestamptz", "_text", "jsonb", "float8", "int4"]
    first, second = r["rows"]
    assert first[:4] == [1, "apple", "1.50", {"$base64": "AP8="}]
    assert datetime.fromisoformat(first[4]) == datetime(2024, 5, 1, 8, tzinfo=timezone.utc)
    assert first[5:] == [["a", "b"], {"k": [1, 2.50]}, 0.25, 2]
    assert second == [2, "pear", None, None, None, None, None, "NaN", 4]
    assert r["rows_affected"] == 2 and r["truncated"] is False and r["command"] == "SELECT 2"
    for sql, state, status in (("SELECT * FROM nope", "42P01", 400), ("SELEC 1", "42601", 400),
                               ("INSERT INTO items (id, name) VALUES (1, 'x')", "23505", 400),
                               ("SELECT 1; SELECT 2", "42601", 400), ("SELECT pg_read_file('/etc/passwd')", "42501", 403),
                               ("SET ROLE postgres", "42501", 403)):
        body = ann.query("shop", sql, status=status)
        assert body["sqlstate"] == state and body["detail"], (sql, body)
    listed = ann.http.get(f"{API}/databases").json()
    assert [d["ref"] for d in listed] == [f"{ann.name}/shop"] and listed[0]["size"] > 0
    assert ann.http.get(f"{API}/databases/shop").json()["name"] == "shop"
    assert ann.http.delete(f"{API}/databases/shop").status_code == 204
    assert ann.http.post(f"{API}/shop/query", json={"sql": "SELECT 1"}).status_code == 404
    for i in range(5):
        ann.create(f"d{i}")
    assert ann.http.post(f"{API}/databases", json={"name": "d5"}).status_code == 413


def test_time_limit_and_bounded_results(ann):
    ann.create("t")
    started = time.monotonic()
    body = ann.query("t", "SELECT pg_sleep(30)", status=400)
    assert body["sqlstate"] == "57014" and time.monotonic() - started < 15
    assert ann.query("t", "SELECT 1 AS one")["rows"] == [[1]]
    # sql.max_rows (50): the statement runs to its end, 50 rows come back
    r = ann.query("t", "SELECT g FROM generate_series(1, 80) g")
    assert len(r["rows"]) == 50 and r["truncated"] is True and r["command"] == f"SELECT {r['rows_affected']}"
    # sql.max_result_bytes counts bytes as sent: one big value is not sent at all ...
    response = ann.http.post(f"{API}/t/query", json={"sql": "SELECT repeat('x', 1000000) AS big"})
    assert response.json()["rows"] == [] and response.json()["truncated"] is True
    assert len(response.content) < 1000
    # ... and rows stop before the answer passes the limit
    response = ann.http.post(f"{API}/t/query", json={"sql": "SELECT g, repeat('\"', 2000) FROM generate_series(1, 40) g"})
    r = response.json()
    assert r["truncated"] is True and 0 < len(r["rows"]) < 40 and len(response.content) <= MAX_BYTES + 500
    # what the truncated statement did is kept (it was not cancelled)
    ann.query("t", "CREATE TABLE w (x int)")
    r = ann.query("t", "INSERT INTO w SELECT g FROM generate_series(1, 70) g RETURNING x")
    assert r["truncated"] is True and r["rows_affected"] == 70
    assert ann.query("t", "SELECT count(*) FROM w")["rows"] == [[70]]


def test_batch_is_all_or_nothing(ann):
    ann.create("b")
    ann.query("b", "CREATE TABLE t (x integer PRIMARY KEY)")
    ok = ann.http.post(f"{API}/b/batch", json={"statements": [
        {"sql": "INSERT INTO t VALUES ($1)", "params": [1]}, {"sql": "INSERT INTO t VALUES (2)"},
        {"sql": "SELECT count(*) AS n FROM t"}]})
    assert ok.status_code == 200, ok.text
    assert [r["command"] for r in ok.json()["results"]] == ["INSERT 0 1", "INSERT 0 1", "SELECT 1"]
    assert ok.json()["results"][2]["rows"] == [[2]] and ok.json()["results"][2]["types"] == ["int8"]
    bad = ann.http.post(f"{API}/b/batch", json={"statements": [
        {"sql": "INSERT INTO t VALUES (3)"}, {"sql": "INSERT INTO t VALUES (1)"}]})
    assert bad.status_code == 400 and bad.json()["statement"] == 1 and bad.json()["sqlstate"] == "23505"
    assert ann.query("b", "SELECT x FROM t ORDER BY x")["rows"] == [[1], [2]]
    assert ann.http.post(f"{API}/b/batch", json={"statements": []}).status_code == 422


def test_a_lock_wait_that_times_out_is_409(ann):
    ann.create("l")
    ann.query("l", "CREATE TABLE t (x int)")
    hold = [{"sql": "LOCK TABLE t IN ACCESS EXCLUSIVE MODE"}] + [{"sql": "SELECT pg_sleep(0.9)"}] * 3
    holder = threading.Thread(target=lambda: ann.http.post(f"{API}/l/batch", json={"statements": hold}))
    holder.start()
    try:
        locked = "SELECT count(*) FROM pg_locks WHERE relation = 't'::regclass AND mode = 'AccessExclusiveLock'"
        assert wait_for(lambda: ann.query("l", locked)["rows"] == [[1]], timeout=2)
        response = ann.http.post(f"{API}/l/batch", json={"statements": [
            {"sql": "SET LOCAL lock_timeout = '100ms'"}, {"sql": "SELECT * FROM t"}]})
        assert response.status_code == 409, response.text
        assert response.json()["sqlstate"] == "55P03" and response.json()["statement"] == 1
    finally:
        holder.join()
    assert ann.query("l", "SELECT count(*) FROM t")["rows"] == [[0]]


def test_ndjson_stream_and_csv_export_are_not_truncated(ann):
    ann.create("s")
    sql = "SELECT x, 'v' || x AS v, '\\x00ff'::bytea AS b, x % 2 = 0 AS even FROM generate_series(1, 3000) x"
    response = ann.http.post(f"{API}/s/stream", json={"sql": sql})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[0] == {"columns": ["x", "v", "b", "even"], "types": ["int4", "text", "bytea", "bool"]}
    assert lines[1] == [1, "v1", {"$base64": "AP8="}, False] and lines[-2][0] == 3000
    assert lines[-1] == {"rows": 3000} and len(lines) == 3002
    response = ann.http.post(f"{API}/s/export", json={"sql": sql})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["x", "v", "b", "even"] and rows[1] == ["1", "v1", "AP8=", "f"] and len(rows) == 3001
    bad = ann.http.post(f"{API}/s/stream", json={"sql": "SELECT * FROM nope"})
    assert bad.status_code == 400 and bad.json()["sqlstate"] == "42P01"
    bad = ann.http.post(f"{API}/s/stream", json={"sql": "SELECT 1 / (x - 1) FROM generate_series(1, 3) x"})
    assert bad.status_code == 400 and bad.json()["sqlstate"] == "22012"  # in the first row: a proper error
    assert ann.http.post(f"{API}/s/export", json={"sql": "CREATE TABLE z (a int)"}).status_code == 400
    assert ann.query("s", "SELECT count(*) FROM pg_class WHERE relname = 'z'")["rows"] == [[0]]
    # an error midway ends the stream with a line that says so
    response = ann.http.post(f"{API}/s/stream", json={"sql": "SELECT 1 / (x - 5000) FROM generate_series(1, 6000) x"})
    last = json.loads(response.text.splitlines()[-1])
    assert response.status_code == 200 and last["error"]["sqlstate"] == "22012"
    # a row larger than sql.stream_chunk is an error, chunks stay under it
    response = ann.http.post(f"{API}/s/stream", json={"sql": "SELECT repeat('y', 100000) UNION ALL SELECT 'z'"})
    assert json.loads(response.text.splitlines()[-1])["error"]["sqlstate"] == "54000"
    with ann.http.stream("POST", f"{API}/s/stream", json={"sql": sql}) as response:
        assert all(len(chunk) <= CHUNK for chunk in response.iter_raw())


def test_a_stream_given_up_midway_leaves_no_busy_connection(ann, sql_server):
    ann.create("g")
    sql = "SELECT a, b, repeat('p', 500) FROM generate_series(1, 1000) a, generate_series(1, 100000) b"
    with ann.http.stream("POST", f"{API}/g/stream", json={"sql": sql}) as response:
        assert response.status_code == 200
        next(response.iter_bytes())
    # The server notices the client left, cancels the statement and gives the connection back.
    busy = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() " \
           "AND state <> 'idle'"
    assert wait_for(lambda: ann.query("g", busy)["rows"] == [[0]], timeout=10)
    assert ann.query("g", "SELECT 2")["rows"] == [[2]]


def test_heavy_results_leave_the_server_responsive(ann, sql_server):
    """Encoding rows happens in worker threads: while six large results are produced,
    /healthz still answers at once."""
    ann.create("h")
    rows = 1200  # each result about 0.6 MB, well within the module's 1 s time limit
    sql = f"SELECT g, repeat(md5(g::text), 16) FROM generate_series(1, {rows}) g"
    bodies: list[bytes] = []

    def fetch(path: str) -> None:
        with sql_server.client(ann.http.headers["Authorization"].split()[1]) as http:
            bodies.append(http.post(f"{API}/h/{path}", json={"sql": sql}).content)

    workers = [threading.Thread(target=fetch, args=("stream" if i % 2 else "export",)) for i in range(6)]
    for worker in workers:
        worker.start()
    slowest = 0.0
    with sql_server.client() as http:
        while any(worker.is_alive() for worker in workers):
            started = time.monotonic()
            assert http.get("/healthz").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
    for worker in workers:
        worker.join()
    streams = [body for body in bodies if body.startswith(b"{")]
    assert len(bodies) == 6 and len(streams) == 3
    assert all(body.endswith(b'{"rows":%d}\n' % rows) for body in streams)
    assert all(body.count(b"\r\n") == rows + 1 and b"# error" not in body for body in bodies if body not in streams)
    assert slowest < 0.5, slowest


def test_isolation_and_access(ann, bob):
    bob.create("b")
    # bob's database is out of reach unless granted, by any name
    for ref in (f"{bob.name}:b", "b"):
        assert ann.http.post(f"{API}/{ref}/query", json={"sql": "SELECT 1"}).status_code == 404
        assert ann.http.get(f"{API}/databases/{ref}").status_code == 404
    assert ann.http.delete(f"{API}/databases/{bob.name}:b").status_code == 404
    bob.query("b", "CREATE TABLE t (x int)")
    assert bob.http.put(f"{API}/databases/b/grants/{ann.name}", json={"access": "read"}).status_code == 200
    assert bob.http.get(f"{API}/databases/b").json()["grants"] == [{"user": ann.name, "access": "read"}]
    ref = f"{bob.name}:b"
    assert ann.query(ref, "SELECT count(*) FROM t")["rows"] == [[0]]
    assert ann.query(ref, "INSERT INTO t VALUES (1)", status=403)["sqlstate"] == "42501"
    assert ann.http.delete(f"{API}/databases/{ref}").status_code == 403
    assert ann.http.put(f"{API}/databases/{ref}/grants/{ann.name}", json={"access": "write"}).status_code == 403
    shared = [d for d in ann.http.get(f"{API}/databases").json() if d["owner"] == bob.name]
    assert [(d["name"], d["access"]) for d in shared] == [("b", "read")]
    assert bob.http.put(f"{API}/databases/b/grants/{ann.name}", json={"access": "write"}).status_code == 200
    assert ann.query(ref, "INSERT INTO t VALUES (1)")["rows_affected"] == 1
    assert bob.http.delete(f"{API}/databases/b/grants/{ann.name}").status_code == 204
    assert ann.http.post(f"{API}/{ref}/query", json={"sql": "SELECT 1"}).status_code == 404


def test_a_full_database_refuses_writes_with_507(ann):
    # sql.max_database_size (24M) is watched; past it, writes get 53100, as 507
    ann.create("a")
    ann.query("a", "CREATE TABLE big (x int, s text)")
    fill = "INSERT INTO big SELECT g, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, 50000) g"
    for _ in range(6):  # each well within the time limit
        response = ann.http.post(f"{API}/a/query", json={"sql": fill})
        if response.status_code == 507:
            break  # the quota was already seen
        assert response.status_code == 200, response.text

    def refused() -> dict | None:
        response = ann.http.post(f"{API}/a/query", json={"sql": "INSERT INTO big VALUES (0, 'x')"})
        return response.json() if response.status_code == 507 else None

    full = wait_for(refused, timeout=20, interval=0.3)
    assert full and full["sqlstate"] == "53100", full
    assert ann.query("a", "SELECT count(*) > 0 FROM big")["rows"] == [[True]]


def test_info_and_bad_requests(ann):
    info = ann.http.get(f"{API}/info").json()
    assert info["max_rows"] == 50 and "postgres_port" in info
    ann.create("x")
    assert ann.http.post(f"{API}/x/query", json={"sql": "SELECT $1", "params": [[1]]}).status_code == 422
    assert ann.http.post(f"{API}/x/query", json={"sql": "SELECT $1", "params": [{"$base64": "!!"}]}).status_code == 422
    assert ann.http.post(f"{API}/x/query", json={"nosql": 1}).status_code == 422
    assert ann.query("x", "SELECT $1 AS b, $2::int + 1 AS n, $3::date AS d", [True, 41, "2024-02-29"])["rows"] == \
        [[True, 42, "2024-02-29"]]
    assert ann.query("x", "SELECT $1, $2", [1], status=400)["sqlstate"] == "08P01"
    assert ann.query("x", "SELECT $1::text", ["a\x00b"], status=400)["sqlstate"] == "22021"
    assert httpx.post(f"{ann.http.base_url}{API}/x/query", json={"sql": "SELECT 1"}).status_code == 401


def test_sql_enabled_false_serves_no_sql(make_server):
    server = make_server(env={"AGORA_SQL_ENABLED": "false"})
    assert "postgres" not in server.ports
    with server.admin() as http:
        assert http.get(f"{API}/databases").status_code == 404
        assert http.get("/sql", headers={"Accept": "text/html"}).status_code == 404
