"""kill -9 of Agora during concurrent inserts through its PostgreSQL port: the engine
dies with it (immediate shutdown), and after a restart every row whose INSERT was
acknowledged is there (PostgreSQL's own crash recovery)."""

from __future__ import annotations

import threading

import psycopg
import pytest
from conftest import kill_mid_load
from pgwire_support import account, server_env

WRITERS = 8


@pytest.mark.slow
def test_kill_9_under_insert_load_loses_no_acknowledged_row(make_server):
    server = make_server(env=server_env())
    alice = account(server, "load")
    with psycopg.connect(alice.dsn("load"), autocommit=True) as conn:
        conn.execute("CREATE TABLE rows (writer int, n int, pad text, PRIMARY KEY (writer, n))")
    acknowledged: set[tuple[int, int]] = set()
    lock = threading.Lock()

    def write(writer: int, stop: threading.Event) -> None:
        n = 0
        try:
            with psycopg.connect(alice.dsn("load"), autocommit=True) as conn:
                while not stop.is_set():
                    conn.execute("INSERT INTO rows VALUES (%s, %s, %s)", (writer, n, "x" * (n % 5000)))
                    with lock:
                        acknowledged.add((writer, n))
                    n += 1
        except psycopg.Error:
            pass  # the server is gone

    kill_mid_load(server, write, WRITERS, acknowledged, 400)
    server.start()
    with psycopg.connect(alice.dsn("load"), autocommit=True) as conn:
        present = set(conn.execute("SELECT writer, n FROM rows").fetchall())
    missing = acknowledged - present
    assert not missing, f"{len(missing)} acknowledged rows lost, e.g. {sorted(missing)[:3]}"
