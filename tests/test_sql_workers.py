"""postgres.workers: connections answered by worker processes. They share the hosted
databases (what one connection writes, the others read), a CancelRequest reaches a
session whichever worker its connection was dealt to, a worker that dies is replaced,
and the server's stop stops them all."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for
from pgwire_support import account, server_env

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is a test dependency (pip install -e '.[test]')")

# A query that runs for minutes unless stopped.
SLOW = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"


def workers_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` and that run a PostgreSQL worker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"agora.sql.pgwire.workers" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def test_workers_share_databases_cancels_and_lifecycle(make_server):
    server = make_server(env={**server_env(), "AGORA_POSTGRES_WORKERS": "2"})
    assert server.proc is not None
    first = workers_of(server.proc.pid)
    assert len(first) == 2, first
    ann = account(server, "shared")
    # Connections are dealt in turn: these three go to workers 0, 1, 0.
    conns = [psycopg.connect(ann.dsn("shared"), autocommit=True) for _ in range(3)]
    try:
        # The server's /metrics counts the workers' connections and logins.
        assert wait_for(lambda: metric(server, 'agora_connections{listener="postgres"}') == 3), \
            metric(server, 'agora_connections{listener="postgres"}')
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(ann.dsn("shared").replace(ann.password, "wrong-password"))
        assert wait_for(lambda: metric(server, 'agora_logins_total{outcome="failed",protocol="postgres"}') == 1)
        assert metric(server, 'agora_logins_total{outcome="ok",protocol="postgres"}') == 3
        conns[0].execute("CREATE TABLE t (id serial PRIMARY KEY, who integer)")
        for i, conn in enumerate(conns):
            conn.execute("INSERT INTO t (who) VALUES (%s)", (i,))
        for conn in conns:
            assert conn.execute("SELECT count(*), sum(who) FROM t").fetchone() == (3, 3)
        # One worker's open transaction is not seen by the other's session until it commits.
        with conns[0].transaction():
            conns[0].execute("INSERT INTO t (who) VALUES (10)")
            assert conns[1].execute("SELECT count(*) FROM t").fetchone() == (3,)
        assert conns[1].execute("SELECT count(*) FROM t").fetchone() == (4,)
        # Cancels come on connections of their own, dealt in turn too: those for the
        # sessions on workers 0 and 1 go to workers 1 and 0, the ones that do not hold
        # them, which pass them on through the server; the last one is direct.
        for conn in (conns[0], conns[1], conns[2]):
            threading.Timer(0.3, conn.cancel).start()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled, match="user request"):
                conn.execute(SLOW)
            assert time.monotonic() - started < 10
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()
    assert wait_for(lambda: metric(server, 'agora_connections{listener="postgres"}') == 0)
    # A worker killed is replaced, and new connections are answered on both again.
    os.kill(first[0], signal.SIGKILL)
    replaced = wait_for(lambda: (w := workers_of(server.proc.pid)) and len(w) == 2 and first[0] not in w and w,
                        timeout=30.0)
    assert replaced, workers_of(server.proc.pid)
    time.sleep(0.5)
    for _ in range(4):
        with psycopg.connect(ann.dsn("shared"), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (4,)
    # The server's stop stops its workers.
    assert server.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in replaced)
    assert "worker" in server.log() and "starting it again" in server.log()


def metric(server, sample: str) -> float | None:
    """The value of one sample of the server's /metrics, None if it has none."""
    with server.client() as http:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    return None


def allowed_cpus(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


def test_worker_cpu_affinity_binds_each_worker_to_a_cpu_of_its_own(make_server):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip(f"this machine lets the tests use {len(cpus)} CPU: nothing to tell workers apart by")
    server = make_server(env={**server_env(), "AGORA_POSTGRES_WORKERS": "2",
                              "AGORA_POSTGRES_WORKER_CPU_AFFINITY": "true"})
    assert server.proc is not None
    workers = workers_of(server.proc.pid)
    assert len(workers) == 2
    # Worker i runs on the i-th CPU of those the server may use (the order of the pids
    # is not the order of the workers), and the server itself is left alone.
    assert sorted(allowed_cpus(pid) for pid in workers) == [str(cpus[0]), str(cpus[1])]
    assert allowed_cpus(server.proc.pid) != allowed_cpus(workers[0])
    ann = account(server, "pinned")
    with psycopg.connect(ann.dsn("pinned"), autocommit=True) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
