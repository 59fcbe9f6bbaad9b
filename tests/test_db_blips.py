"""Blips of the metadata database: a PostgreSQL of the test's own is restarted
(``pg_ctl restart -m fast``) and has its backends terminated under bank load driven
through ``agora.client``. No client ever sees a 500, every call completes (the client
retries idempotent calls on 503, honouring Retry-After; transfers keep their id), every
acknowledged transfer is in the ledger exactly once, and the balances add up.

Never the system's PostgreSQL: this one lives in a temporary directory on a free port.
"""

from __future__ import annotations

import asyncio
import collections
import ftplib
import imaplib
import os
import poplib
import pwd
import secrets
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Iterator

import asyncpg
import httpx
import psycopg
import pytest

from agora.client import Client
from agora.core.database import unavailable
from agora.sql.engine import bundled_bin
from conftest import AgoraServer, wait_for
from mail_support import SERVER_ENV

USERS = 4
FUNDS = 1_000_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivatePostgres:
    """A throw-away cluster; as root it runs as the engine's unprivileged user (initdb
    and postgres refuse root), like the embedded engine does."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="agora-blips-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.account: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.account = pwd.getpwnam("agora-postgres")
            except KeyError:
                pytest.skip("running as root needs the system user agora-postgres (made by the SQL engine's first start)")
            os.chown(self.root, self.account.pw_uid, self.account.pw_gid)
        self.options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                        "-c fsync=off -c max_connections=60")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/agora"

    def _run(self, tool: str, *args: str) -> None:
        account = self.account

        def as_account() -> None:
            if account is not None:
                os.setgroups([])
                os.setgid(account.pw_gid)
                os.setuid(account.pw_uid)

        done = subprocess.run([str(bundled_bin() / tool), *args], capture_output=True, text=True, timeout=60,
                              preexec_fn=as_account, cwd=self.root, start_new_session=True)
        assert done.returncode == 0, f"{tool} {args}: {done.stdout}\n{done.stderr}"

    def start(self) -> "PrivatePostgres":
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale",
                  "--no-sync", "--no-instructions")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o", self.options, "start")
        with self.connect("postgres") as conn:
            conn.execute("CREATE DATABASE agora")
        return self

    def connect(self, database: str = "agora") -> psycopg.Connection:
        return psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/{database}", autocommit=True)

    def restart(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-m", "fast", "-o",
                  self.options, "restart")

    def stop_for_a_while(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def start_again(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o", self.options, "start")

    def terminate_backends(self) -> int:
        with self.connect() as conn:
            rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = 'agora' AND pid <> pg_backend_pid()").fetchall()
        return len(rows)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres().start()
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def blip_server(private_pg: PrivatePostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgoraServer]:
    # (With http.hsts empty, as a server behind a proxy that sets it would run.)
    server = AgoraServer(tmp_path_factory.mktemp("blips") / "data", database_url=private_pg.url,
                         env={**SERVER_ENV, "AGORA_HTTP_HSTS": ""})
    server.start()
    yield server
    server.kill()


def test_unavailable_names_the_blips_and_nothing_else():
    """The one classifier every protocol asks: blips yes, faults of the request or the
    code no."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError

    assert unavailable(asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"))
    assert unavailable(asyncpg.exceptions.CannotConnectNowError("the database system is starting up"))
    assert unavailable(ConnectionRefusedError(111, "Connection refused"))
    assert unavailable(OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked")))
    assert unavailable(OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full")))
    wrapped = DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert unavailable(wrapped)
    assert not unavailable(IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")))
    assert not unavailable(ProgrammingError("SELECT", {}, asyncpg.exceptions.UndefinedTableError("no table")))
    assert not unavailable(ValueError("a bug"))


def test_postgresql_restart_under_bank_load(private_pg: PrivatePostgres, blip_server: AgoraServer):
    server = blip_server
    statuses: collections.Counter[int] = collections.Counter()

    def record(response: httpx.Response) -> None:
        statuses[response.status_code] += 1

    admin = Client(server.url, server.admin_token)
    admin.bank.add_currency("EUR", 2)
    clients, numbers = [], []
    for _ in range(USERS):
        name, password = server.create_user()
        # More attempts than the default 5 (4 s at Retry-After: 1): a restart on a busy
        # machine may take longer, and every call must complete.
        client = Client(server.url, retries=10)
        client.login(name, password)
        client._transport.http.event_hooks["response"].append(record)
        account = client.bank.open("EUR")
        admin.bank.issue(account.number, FUNDS)
        clients.append(client)
        numbers.append(account.number)

    acknowledged: list[tuple[str, int, int, int]] = []  # (id, from, to, amount)
    failures: list[BaseException] = []
    stop = threading.Event()

    def pay(n: int) -> None:
        to = (n + 1) % USERS
        while not stop.is_set():
            amount = 1 + secrets.randbelow(100)
            try:
                sent = clients[n].bank.transfer(numbers[n], numbers[to], amount, "EUR", id=str(uuid.uuid4()))
            except BaseException as error:  # every call must complete: any failure is the test's
                failures.append(error)
                return
            acknowledged.append((sent.id, n, to, amount))

    threads = [threading.Thread(target=pay, args=(n,), daemon=True) for n in range(USERS)]
    for thread in threads:
        thread.start()
    try:
        def more(than: int) -> bool:
            return len(acknowledged) >= than + 50 or bool(failures)

        assert wait_for(lambda: more(0), timeout=30)
        assert private_pg.terminate_backends() >= 1
        mark = len(acknowledged)
        assert wait_for(lambda: more(mark), timeout=30), failures
        private_pg.restart()
        mark = len(acknowledged)
        # Served again after the restart: the pool replaced its dead connections.
        assert wait_for(lambda: more(mark), timeout=30), failures
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not failures, failures
    assert statuses[500] == 0, statuses
    assert statuses[503] >= 1, statuses  # the blips were met (and retried through)

    ids = [item[0] for item in acknowledged]
    with private_pg.connect() as conn:
        stored = conn.execute("SELECT id, count(*) FROM bank_transfers WHERE id = ANY(%s) GROUP BY id",
                              (ids,)).fetchall()
    assert len(stored) == len(set(ids)) == len(ids) and all(count == 1 for _, count in stored)

    expected = [FUNDS] * USERS
    for _, source, target, amount in acknowledged:
        expected[source] -= amount
        expected[target] += amount
    assert [client.bank.account(number).posted for client, number in zip(clients, numbers)] == expected
    assert admin.bank.check().ok
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
    for client in (admin, *clients):
        client.close()


def test_every_protocol_answers_a_database_outage_with_its_temporary_failure(private_pg: PrivatePostgres,
                                                                           blip_server: AgoraServer):
    server = blip_server
    name, password = server.create_user()
    ports = server.ports
    private_pg.stop_for_a_while()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            response = http.post("/api/v1/tokens", json={"username": name, "password": password, "name": "t"})
            assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            # WebDAV (an app of its own, mounted) and users' sites (answered before the app).
            dav = http.request("PROPFIND", "/dav/", auth=(name, password), headers={"Depth": "0"})
            site = http.get(f"/~{name}/")
            for response in (dav, site):
                assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
        imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=10)
        with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
            imap.login(name, password)
        imap.logout()
        pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=10)
        pop.user(name)
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
            pop.pass_(password)
        pop.quit()
        with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=10) as smtp:
            smtp.ehlo()
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                smtp.login(name, password)
            assert refused.value.smtp_code == 454
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", ports["ftp"], timeout=10)
        with pytest.raises(ftplib.error_temp, match="^421"):
            ftp.login(name, password)
        ftp.close()
        with pytest.raises(asyncpg.exceptions.CannotConnectNowError):  # SQLSTATE 57P03
            asyncio.run(asyncpg.connect(host="127.0.0.1", port=ports["postgres"], user=name, password=password,
                                        database="x", ssl=False, timeout=10))
    finally:
        private_pg.start_again()
    # Back: the pool replaced its dead connections.
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.post("/api/v1/tokens", json={"username": name, "password": password,
                                                 "name": "t"}).status_code == 201
    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=10)
    assert imap.login(name, password)[0] == "OK"
    imap.logout()
    log = server.log()
    assert "Traceback" not in log, log[-4000:]


def test_sqlite_locked_past_busy_timeout_is_503(tmp_path):
    """Another process holding SQLite's write lock longer than database.busy_timeout:
    writes are answered 503 with Retry-After (reads go on, WAL), and work again once
    the lock is released."""
    import sqlite3

    server = AgoraServer(tmp_path / "data", env={"AGORA_DATABASE_BUSY_TIMEOUT": "0.2", **SERVER_ENV}).start()
    try:
        admin = server.admin()
        locker = sqlite3.connect(server.data_dir / "agora.db", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            refused = admin.post("/api/v1/bank/currencies", json={"code": "EUR", "exponent": 2})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
            assert admin.get("/api/v1/bank/currencies").status_code == 200
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert admin.post("/api/v1/bank/currencies", json={"code": "EUR", "exponent": 2}).status_code == 201
        admin.close()
        assert "Traceback" not in server.log(), server.log()[-4000:]
    finally:
        server.kill()


class Flaky(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Answers 503 (Retry-After: 2) to the first ``failures`` requests, then 200/201."""

    def __init__(self, failures: int):
        self.failures = failures
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return self.handle_request(request)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) <= self.failures:
            return httpx.Response(503, headers={"Retry-After": "2", "Content-Type": "application/problem+json"},
                                  json={"type": "urn:agora:problem:unavailable", "title": "Service unavailable",
                                        "status": 503})
        if request.url.path.endswith("/currencies"):
            return httpx.Response(200, json={"currencies": []})
        body = __import__("json").loads(request.content)
        return httpx.Response(201, json={**body, "kind": "transfer", "currency": "EUR", "memo": "",
                                         "pending": False, "timeout": None, "pending_id": None,
                                         "timestamp": "2026-01-01T00:00:00+00:00"})


def test_the_client_retries_what_is_safe_to_repeat_as_the_server_asks(monkeypatch):
    from agora.client import ServerError
    from agora.client import _http

    pauses: list[float] = []
    monkeypatch.setattr(_http.time, "sleep", pauses.append)
    # A GET: sent again after the pause Retry-After asks (give or take the jitter).
    flaky = Flaky(failures=2)
    with Client("http://agora.test", "token", transport=flaky) as client:
        assert client.bank.currencies() == []
    assert len(flaky.requests) == 3 and len(pauses) == 2 and all(1.5 <= pause <= 2.5 for pause in pauses)
    # A transfer: its id makes it safe; every attempt carries the same one.
    flaky = Flaky(failures=1)
    with Client("http://agora.test", "token", transport=flaky) as client:
        sent = client.bank.transfer("A", "B", 5, "EUR", id=str(uuid.uuid4()))
    assert [request.content for request in flaky.requests] == [flaky.requests[0].content] * 2
    assert sent.created
    # Opening an account is not idempotent: one attempt, and the 503 is the caller's.
    flaky = Flaky(failures=1)
    with Client("http://agora.test", "token", transport=flaky) as client:
        with pytest.raises(ServerError):
            client.bank.open("EUR")
    assert len(flaky.requests) == 1
    # Bounded: after ``retries`` attempts the 503 shows.
    flaky = Flaky(failures=100)
    with Client("http://agora.test", "token", transport=flaky, retries=3) as client:
        with pytest.raises(ServerError):
            client.bank.currencies()
    assert len(flaky.requests) == 3


def test_the_async_client_retries_the_same(monkeypatch):
    from agora.client import AsyncClient, ServerError
    from agora.client import _http

    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(_http.asyncio, "sleep", pause)

    async def run() -> None:
        flaky = Flaky(failures=1)
        async with AsyncClient("http://agora.test", "token", transport=flaky) as client:
            sent = await client.bank.transfer("A", "B", 5, "EUR", id=str(uuid.uuid4()))
            assert sent.created and len(flaky.requests) == 2
            flaky.failures = 10
            with pytest.raises(ServerError):
                await client.bank.open("EUR")
            assert len(flaky.requests) == 3

    asyncio.run(run())
    assert len(pauses) == 1 and 1.5 <= pauses[0] <= 2.5


def test_an_empty_hsts_setting_sends_none(blip_server: AgoraServer):
    with blip_server.client(https=True) as https:
        assert "strict-transport-security" not in https.get("/healthz").headers
