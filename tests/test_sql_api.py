"""The hosted-SQL HTTP API (/api/v1/sql) against a real server on both backends:
databases and grants, typed values, SQL errors as problems with SQLSTATE, the time
limit, truncation, batches (all or nothing), NDJSON and CSV, isolation and access."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Iterator

import httpx
import pytest

from conftest import AgoraServer, ServerFactory

API = "/api/v1/sql"
PROBLEM = "application/problem+json"
SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


@pytest.fixture(scope="module")
def sql_server(tmp_path_factory, backend) -> Iterator[AgoraServer]:
    factory = ServerFactory(tmp_path_factory.mktemp(f"sql-{backend}"), backend)
    yield factory(env={"AGORA_SQL_QUERY_TIMEOUT": "1", "AGORA_SQL_MAX_ROWS": "50",
                       "AGORA_SQL_MAX_DATABASE_SIZE": "512K", "AGORA_SQL_MAX_DATABASES": "5"})
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


def test_crud_typed_values_and_errors(ann, sql_server):
    made = ann.create("shop")
    assert (made["name"], made["owner"], made["access"], made["grants"]) == ("shop", ann.name, "owner", [])
    assert (sql_server.data_dir / "sql" / ann.name / "shop.sqlite").exists()
    assert ann.http.post(f"{API}/databases", json={"name": "shop"}).status_code == 409
    assert ann.http.post(f"{API}/databases", json={"name": "Bad/Name"}).status_code == 422
    r = ann.query("shop", "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, data BLOB)")
    assert r["command"] == "CREATE TABLE"
    r = ann.query("shop", "INSERT INTO items (name, price, data) VALUES ($1, $2, $3), ($4, NULL, NULL)",
                  ["apple", 1.5, {"$base64": "AP8="}, "pear"])
    assert (r["rows_affected"], r["command"]) == (2, "INSERT 0 2")
    r = ann.query("shop", "SELECT id, name, price, data, 2 * id AS twice FROM items ORDER BY id")
    assert r["columns"] == ["id", "name", "price", "data", "twice"]
    assert r["types"] == ["INTEGER", "TEXT", "REAL", "BLOB", "INTEGER"]
    assert r["rows"] == [[1, "apple", 1.5, {"$base64": "AP8="}, 2], [2, "pear", None, None, 4]]
    assert r["rows_affected"] == 2 and r["truncated"] is False
    assert isinstance(r["rows"][0][0], int)
    for sql, state, status in (("SELECT * FROM nope", "42P01", 400), ("SELEC 1", "42601", 400),
                               ("INSERT INTO items (id) VALUES (1)", "23505", 400)):
        body = ann.query("shop", sql, status=status)
        assert body["sqlstate"] == state and body["detail"]
    listed = ann.http.get(f"{API}/databases").json()
    assert [d["ref"] for d in listed] == [f"{ann.name}/shop"] and listed[0]["size"] > 0
    assert ann.http.get(f"{API}/databases/shop").json()["name"] == "shop"
    assert ann.http.delete(f"{API}/databases/shop").status_code == 204
    assert ann.http.post(f"{API}/shop/query", json={"sql": "SELECT 1"}).status_code == 404
    assert not (sql_server.data_dir / "sql" / ann.name / "shop.sqlite").exists()
    for i in range(5):
        ann.create(f"d{i}")
    assert ann.http.post(f"{API}/databases", json={"name": "d5"}).status_code == 413


def test_time_limit_truncation_and_the_next_request_works(ann):
    ann.create("t")
    started = time.monotonic()
    body = ann.query("t", SLOW, status=400)
    assert body["sqlstate"] == "57014" and time.monotonic() - started < 15
    assert ann.query("t", "SELECT 1 AS one")["rows"] == [[1]]
    r = ann.query("t", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 80) SELECT x FROM c")
    assert len(r["rows"]) == 50 and r["truncated"] is True


def test_batch_is_all_or_nothing(ann):
    ann.create("b")
    ann.query("b", "CREATE TABLE t (x INTEGER PRIMARY KEY)")
    ok = ann.http.post(f"{API}/b/batch", json={"statements": [
        {"sql": "INSERT INTO t VALUES (?)", "params": [1]}, {"sql": "INSERT INTO t VALUES (2)"},
        {"sql": "SELECT count(*) AS n FROM t"}]})
    assert ok.status_code == 200, ok.text
    assert [r["command"] for r in ok.json()["results"]] == ["INSERT 0 1", "INSERT 0 1", "SELECT 1"]
    assert ok.json()["results"][2]["rows"] == [[2]]
    bad = ann.http.post(f"{API}/b/batch", json={"statements": [
        {"sql": "INSERT INTO t VALUES (3)"}, {"sql": "INSERT INTO t VALUES (1)"}]})
    assert bad.status_code == 400 and bad.json()["statement"] == 1 and bad.json()["sqlstate"] == "23505"
    assert ann.query("b", "SELECT x FROM t ORDER BY x")["rows"] == [[1], [2]]


def test_ndjson_stream_and_csv_export_are_not_truncated(ann):
    ann.create("s")
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 3000) SELECT x, 'v' || x AS v, x'00ff' AS b FROM c"
    response = ann.http.post(f"{API}/s/stream", json={"sql": sql})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[0] == {"columns": ["x", "v", "b"], "types": ["INTEGER", "TEXT", "BLOB"]}
    assert lines[1] == [1, "v1", {"$base64": "AP8="}] and lines[-2][0] == 3000
    assert lines[-1] == {"rows": 3000} and len(lines) == 3002
    response = ann.http.post(f"{API}/s/export", json={"sql": sql})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["x", "v", "b"] and rows[1] == ["1", "v1", "AP8="] and len(rows) == 3001
    bad = ann.http.post(f"{API}/s/stream", json={"sql": "SELECT * FROM nope"})
    assert bad.status_code == 400 and bad.json()["sqlstate"] == "42P01"
    assert ann.http.post(f"{API}/s/export", json={"sql": "CREATE TABLE z (a)"}).status_code == 400


def test_isolation_quota_and_access(ann, bob, sql_server, tmp_path):
    ann.create("a")
    bob.create("b")
    other = sql_server.data_dir / "sql" / bob.name / "b.sqlite"
    for sql in (f"ATTACH DATABASE '{other}' AS o", f"ATTACH '{tmp_path}/x.db' AS x", "SELECT load_extension('x')",
                f"VACUUM INTO '{tmp_path}/copy.db'", "PRAGMA writable_schema = ON", "PRAGMA journal_mode = OFF"):
        assert ann.query("a", sql, status=403)["sqlstate"] == "42501", sql
    assert not list(tmp_path.iterdir())
    # quota: sql.max_database_size is 512K here
    ann.query("a", "CREATE TABLE big (b BLOB)")
    for _ in range(60):
        response = ann.http.post(f"{API}/a/query", json={"sql": "INSERT INTO big VALUES (randomblob(20000))"})
        if response.status_code != 200:
            break
    assert response.status_code == 507 and response.json()["sqlstate"] == "53100"
    # bob's database is out of reach unless granted, by any name
    for ref in (f"{bob.name}:b", "b"):
        assert ann.http.post(f"{API}/{ref}/query", json={"sql": "SELECT 1"}).status_code == 404
        assert ann.http.get(f"{API}/databases/{ref}").status_code == 404
    assert ann.http.delete(f"{API}/databases/{bob.name}:b").status_code == 404
    bob.query("b", "CREATE TABLE t (x)")
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


def test_info_and_bad_requests(ann):
    info = ann.http.get(f"{API}/info").json()
    assert info["max_rows"] == 50 and "postgres_port" in info
    ann.create("x")
    assert ann.http.post(f"{API}/x/query", json={"sql": "SELECT ?", "params": [[1]]}).status_code == 422
    assert ann.http.post(f"{API}/x/query", json={"sql": "SELECT ?", "params": [{"$base64": "!!"}]}).status_code == 422
    assert ann.http.post(f"{API}/x/query", json={"nosql": 1}).status_code == 422
    assert ann.query("x", "SELECT ?", [True])["rows"] == [[1]]
    assert httpx.post(f"{ann.http.base_url}{API}/x/query", json={"sql": "SELECT 1"}).status_code == 401


def test_sql_enabled_false_serves_no_sql(make_server):
    server = make_server(env={"AGORA_SQL_ENABLED": "false"})
    assert "postgres" not in server.ports
    with server.admin() as http:
        assert http.get(f"{API}/databases").status_code == 404
        assert http.get("/sql", headers={"Accept": "text/html"}).status_code == 404
