"""kill -9 during concurrent inserts over HTTP: after a restart every row whose INSERT
was answered 200 is in the database, and PRAGMA integrity_check says ok."""

from __future__ import annotations

import threading

import apsw
import httpx
import pytest

from conftest import kill_mid_load

WRITERS = 12


@pytest.mark.slow
def test_kill_9_under_insert_load_loses_no_acknowledged_row(make_server):
    server = make_server()
    name, password = server.create_user()
    token = server.login(name, password)
    with server.client(token) as http:
        assert http.post("/api/v1/sql/databases", json={"name": "load"}).status_code == 201
        assert http.post("/api/v1/sql/load/query", json={
            "sql": "CREATE TABLE rows (writer INTEGER, n INTEGER, pad TEXT, PRIMARY KEY (writer, n))"}).status_code == 200
    acknowledged: set[tuple[int, int]] = set()
    lock = threading.Lock()

    def write(writer: int, stop: threading.Event) -> None:
        n = 0
        try:
            with server.client(token) as http:
                while not stop.is_set():
                    response = http.post("/api/v1/sql/load/query", json={
                        "sql": "INSERT INTO rows VALUES (?, ?, ?)", "params": [writer, n, "x" * (n % 5000)]})
                    if response.status_code == 200:
                        with lock:
                            acknowledged.add((writer, n))
                    n += 1
        except httpx.HTTPError:
            pass  # the server is gone

    kill_mid_load(server, write, WRITERS, acknowledged, 400)

    server.start()
    with server.client(token) as http:
        response = http.post("/api/v1/sql/load/stream", json={"sql": "SELECT writer, n FROM rows"})
        assert response.status_code == 200, response.text
        lines = response.text.splitlines()[1:-1]
        present = {tuple(map(int, line.strip("[]").split(","))) for line in lines}
        check = http.post("/api/v1/sql/load/query", json={"sql": "PRAGMA integrity_check"}).json()
    missing = acknowledged - present
    assert not missing, f"{len(missing)} acknowledged rows lost, e.g. {sorted(missing)[:3]}"
    assert check["rows"] == [["ok"]]
    # and read straight from the file, as another SQLite program would
    conn = apsw.Connection(str(server.data_dir / "sql" / name / "load.sqlite"))
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("SELECT count(*) FROM rows").fetchall()[0][0] >= len(acknowledged)
    conn.close()
