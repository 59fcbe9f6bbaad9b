"""`agora serve` as a process: first start, ready, ports.json, shutdown, bad settings."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ADMIN_PASSWORD, AgoraServer, clean_env

MAIL_LISTENERS = {"smtp", "submission", "imap", "imaps", "pop3", "pop3s"}


def run_agora(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agora", *args], env=clean_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_first_start_creates_the_data_dir(make_server):
    server = make_server(start=False)
    server.env.pop("AGORA_ADMIN_PASSWORD")
    server.start()
    data = server.data_dir
    assert (data / "tls" / "cert.pem").is_file() and (data / "tls" / "key.pem").is_file()
    assert oct((data / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    if not server.database_url:
        assert (data / "agora.db").is_file()
    assert set(server.ports) == {"http", "https", "ftp", "ftps", *MAIL_LISTENERS, "postgres"}
    # The generated admin password is printed once (stdout) and works.
    server.stop()
    output = server.log()
    line = next(line for line in output.splitlines() if "admin account created" in line)
    password = line.rsplit("password ", 1)[1].split()[0]
    assert output.count(password) == 1
    server.start()
    assert server.login("admin", password)
    server.stop()
    assert server.log().count(password) == 1, "the password must never be printed or logged again"


def test_ready_line_ports_file_and_sigterm(make_server):
    server = make_server()
    assert "ready" in server.log()
    ports_file = server.data_dir / "run" / "ports.json"
    assert json.loads(ports_file.read_text()) == server.ports
    for name, port in server.ports.items():
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    assert server.stop(signal.SIGTERM, timeout=15) == 0
    assert not ports_file.exists()
    assert "stopped" in server.log()


def test_sigint_also_stops_cleanly(make_server):
    server = make_server()
    assert server.stop(signal.SIGINT, timeout=15) == 0
    assert not (server.data_dir / "run" / "ports.json").exists()


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_startup_under_two_seconds_on_a_warm_venv(make_server, backend):
    server = make_server()  # first start: creates database, certificate, admin
    server.stop()
    best_wall = best_cpu = float("inf")
    for _ in range(3):  # best of three: the machine is shared with other tests
        started = time.monotonic()
        server.start()
        best_wall = min(best_wall, time.monotonic() - started)
        best_cpu = min(best_cpu, _cpu_seconds(server.proc.pid))
        assert server.stop() == 0
    # Start-up is one thread's work (imports, app, database): the CPU it took is what a
    # quiet machine's wall clock shows, while the wall clock here also counts the other
    # test worker's turns on the two cores. With all five services and Agora's modules
    # compiled ahead (the Makefile does it) a quiet start takes about 1.0 s on either
    # backend.
    limit = 2.0
    assert best_cpu < limit, f"start-up to ready used {best_cpu:.2f} s of CPU ({best_wall:.2f} s wall)"
    assert best_wall < 2 * limit, f"start-up to ready took {best_wall:.2f} s"


def test_in_flight_request_finishes_during_shutdown(make_server):
    server = make_server(env={"AGORA_SHUTDOWN_TIMEOUT": "10"})
    body = json.dumps({"username": "admin", "password": ADMIN_PASSWORD, "name": "slow"}).encode()
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=15) as sock:
        sock.sendall(b"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # Stopped accepting: a new connection is refused while the old one is served.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=2).close()
        sock.sendall(body[10:])
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 201"), response[:200]
    assert server.proc.wait(15) == 0


def test_shutdown_timeout_bounds_a_stuck_client(make_server):
    server = make_server(env={"AGORA_SHUTDOWN_TIMEOUT": "1"})
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=15) as sock:
        # A request whose body never comes.
        sock.sendall(b"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        time.sleep(0.3)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
        assert time.monotonic() - started < 6
    assert not (server.data_dir / "run" / "ports.json").exists()


def test_json_logs(make_server):
    server = make_server(args=("--log-format", "json"))
    with server.client() as http:
        http.get("/healthz")
    server.stop()
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert any("ready" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_port_off_disables_a_listener(make_server):
    server = make_server(args=("--https-port", "off"))
    assert set(server.ports) == {"http", "ftp", "ftps", *MAIL_LISTENERS, "postgres"}


def test_binds_loopback_by_default(make_server):
    import shutil

    if not shutil.which("ss"):
        pytest.skip("ss (iproute2) is not installed: cannot list listening sockets")
    server = make_server()
    for port in server.ports.values():
        output = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        local = [line.split()[3] for line in output.splitlines() if line.strip()]
        assert local == [f"127.0.0.1:{port}"], output


def test_https_serves_the_data_dir_certificate(make_server):
    server = make_server()
    cert = server.data_dir / "tls" / "cert.pem"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as http:
        # The self-signed certificate names 127.0.0.1, so it verifies as-is.
        response = http.get(f"{server.https_url}/healthz")
    assert response.status_code == 200


# -- settings that stop start-up: exit 2 and one line naming the key -------------------


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_value_exits_2(tmp_path):
    line = _one_error_line(run_agora("serve", "--data-dir", str(tmp_path / "d"), "--http-port", "http"))
    assert "http.port" in line
    line = _one_error_line(run_agora("serve", "--data-dir", str(tmp_path / "d"),
                                     env={"AGORA_LOG_FORMAT": "xml"}))
    assert "log_format" in line and "AGORA_LOG_FORMAT" in line
    assert not (tmp_path / "d").exists(), "nothing is written when the settings are bad"


def test_unknown_key_exits_2(tmp_path):
    config = tmp_path / "agora.toml"
    config.write_text("[http]\nport = 0\nmax_body = 3\n")
    line = _one_error_line(run_agora("serve", "--config", str(config), "--data-dir", str(tmp_path / "d")))
    assert "http.max_body" in line and "unknown" in line
    result = run_agora("serve", "--no-such-flag", "1")
    assert result.returncode == 2


def test_port_in_use_exits_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_agora("serve", "--data-dir", str(tmp_path / "d"), "--http-port", str(port),
                           "--https-port", "0")
    line = _one_error_line(result)
    assert "http" in line and str(port) in line and "in use" in line
    # Nothing was created, so the admin password of a later first start is not lost.
    assert not (tmp_path / "d" / "agora.db").exists()


# One branch's head (there is one row per service branch) becomes a revision we lack.
ONE_HEAD_FROM_THE_FUTURE = ("UPDATE alembic_version SET version_num = '9999_future' "
                            "WHERE version_num = (SELECT min(version_num) FROM alembic_version)")


def test_schema_newer_than_the_code_stops_startup(make_server):
    server = make_server()
    server.stop()
    if server.database_url:
        from conftest import _pg
        _pg(server.database_url, ONE_HEAD_FROM_THE_FUTURE)
    else:
        with sqlite3.connect(server.data_dir / "agora.db") as db:
            db.execute(ONE_HEAD_FROM_THE_FUTURE)
    with pytest.raises(RuntimeError) as error:
        server.start()
    assert server.proc.returncode == 2
    assert "9999_future" in str(error.value) and "newer" in str(error.value)


def test_healthz_and_metrics(server: AgoraServer):
    with server.client() as http:
        health = http.get("/healthz")
        assert health.status_code == 200 and health.json()["checks"]["database"] == "ok"
        http.post("/api/v1/tokens", json={"username": "nobody", "password": "wrong-password", "name": "x"})
        metrics = http.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert 'agora_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "agora_http_request_duration_seconds_bucket" in text
    assert 'agora_connections{listener="http"}' in text
    assert 'agora_logins_total{outcome="failed",protocol="http"}' in text


def test_a_service_can_be_disabled(make_server):
    server = make_server(args=("--files-enabled", "false", "--mail-enabled", "false", "--sql-enabled", "false"))
    assert set(server.ports) == {"http", "https"}
    with server.client() as http:
        assert http.get("/api/v1/files/usage").status_code == 404
        assert http.get("/api/v1/mail/folders").status_code == 404
    assert server.stop() == 0
    server = make_server(args=("--web-enabled", "false", "--files-enabled", "false", "--mail-enabled", "false",
                               "--sql-enabled", "false"))
    assert server.ports == {}
    assert "no listeners" in server.log()
    assert server.stop() == 0
