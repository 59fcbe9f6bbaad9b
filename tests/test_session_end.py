"""Sessions end when the account does: deleting, disabling a user or changing their
password ends their open IMAP, POP3, FTP, SMTP submission, PostgreSQL and WebDAV
sessions within identity.session_recheck, made on the same node, by another process (the
CLI) or on another node; a re-created account of the same name starts empty."""

from __future__ import annotations

import asyncio
import ftplib
import imaplib
import poplib
import secrets
import smtplib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import pytest

from agora import config as configuration
from agora.core.identity import ClientInfo
from agora.core.errors import NotFound
from agora.core.runtime import Runtime
from agora.files.store import FileStore
from conftest import AgoraServer, ServerFactory
from mail_support import message, send_smtp
from pgwire_support import server_env

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is a test dependency (pip install -e '.[test]')")

RECHECK = 1.0
# Generous on purpose (a loaded CI machine): the interval itself, plus start-up of the
# client's next round trip. Changes on the session's own node end it at once.
DEADLINE = RECHECK + 4.0
TIMEOUT = 10


def env() -> dict[str, str]:
    return {**server_env(), "AGORA_IDENTITY_SESSION_RECHECK": str(RECHECK), "AGORA_MAIL_DOMAINS": "a.test"}


@pytest.fixture(scope="module")
def node(tmp_path_factory, backend) -> Any:
    factory = ServerFactory(tmp_path_factory.mktemp(f"session-end-{backend}"), backend)
    yield factory(env=env())
    factory.close()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, backend, node) -> Any:
    """``node`` and a second node on its database (and hosted-SQL names)."""
    if backend != "postgresql":
        pytest.skip("scale-out needs the PostgreSQL backend (SQLite is one node's own file)")
    factory = ServerFactory(tmp_path_factory.mktemp("session-end-nodes"), backend)
    shared = {k: v for k, v in node.env.items() if k.startswith("AGORA_SQL_")}
    # A recheck far beyond the deadline: only the PostgreSQL notice can end them in time.
    other = factory(database_url=node.database_url,
                    env={**env(), **shared, "AGORA_IDENTITY_SESSION_RECHECK": "60"})
    yield node, other
    factory.close()


@dataclass
class Open:
    """One user's open sessions on a server, each with a probe that is True once the
    session has been ended by the server."""

    name: str
    password: str
    ended: dict[str, Callable[[], bool]] = field(default_factory=dict)
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def still_open(self) -> list[str]:
        return [protocol for protocol, ended in self.ended.items() if not ended()]

    def close(self) -> None:
        for close in self.closers:
            try:
                close()
            except Exception:
                pass


def _gone(call: Callable[[], Any], *errors: type[BaseException]) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            call()
        except (OSError, EOFError, *errors):
            return True
        return False
    return probe


def open_sessions(server: AgoraServer, name: str, password: str, *, database: str) -> Open:
    """IMAP (selected), POP3, FTP, SMTP submission, PostgreSQL and WebDAV, all logged in."""
    ports = server.ports
    sessions = Open(name, password)

    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=TIMEOUT)
    imap.login(name, password)
    imap.select("INBOX")
    sessions.closers.append(imap.shutdown)
    sessions.ended["imap"] = _gone(imap.noop, imaplib.IMAP4.abort, imaplib.IMAP4.error)

    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=TIMEOUT)
    pop.user(name)
    pop.pass_(password)
    sessions.closers.append(pop.close)
    sessions.ended["pop3"] = _gone(pop.noop, poplib.error_proto)

    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect("127.0.0.1", ports["ftp"])
    ftp.login(name, password)
    sessions.closers.append(ftp.close)
    sessions.ended["ftp"] = _gone(lambda: ftp.voidcmd("NOOP"), ftplib.Error)

    smtp = smtplib.SMTP("127.0.0.1", ports["submission"], timeout=TIMEOUT)
    smtp.login(name, password)
    sessions.closers.append(smtp.close)
    sessions.ended["smtp"] = _gone(lambda: _smtp_ok(smtp), smtplib.SMTPException)

    pg = psycopg.connect(f"host=127.0.0.1 port={ports['postgres']} user={name} dbname={database} "
                         f"password={password} sslmode=require connect_timeout={TIMEOUT}", autocommit=True)
    assert pg.execute("SELECT 1").fetchone() == (1,)
    sessions.closers.append(pg.close)
    sessions.ended["postgres"] = _gone(lambda: pg.execute("SELECT 1"), psycopg.Error)

    dav = httpx.Client(base_url=server.url + "/dav", auth=(name, password), timeout=TIMEOUT)
    assert dav.request("PROPFIND", "/", headers={"Depth": "0"}).status_code == 207
    sessions.closers.append(dav.close)
    sessions.ended["dav"] = lambda: dav.request("PROPFIND", "/", headers={"Depth": "0"}).status_code == 401

    assert sessions.still_open() == list(sessions.ended)
    return sessions


def _smtp_ok(smtp: smtplib.SMTP) -> None:
    code, reply = smtp.noop()
    if code != 250:
        raise smtplib.SMTPResponseException(code, reply)


def user_with_everything(server: AgoraServer) -> tuple[str, str, str]:
    """A user with a file, a message and a hosted database; their API token."""
    name, password = server.create_user("se" + secrets.token_hex(4))
    token = server.login(name, password)
    with server.client(token) as http:
        assert http.put("/api/v1/files/content/notes.txt", content=b"mine").status_code in (200, 201)
        created = http.post("/api/v1/sql/databases", json={"name": "db"})
        assert created.status_code == 201, created.text
    send_smtp(server, name, message("hello"))
    return name, password, token


def wait_until_ended(sessions: Open) -> list[str]:
    deadline = time.monotonic() + DEADLINE
    left = sessions.still_open()
    while left and time.monotonic() < deadline:
        left = [protocol for protocol in left if not sessions.ended[protocol]()]
    return left


def change(server: AgoraServer, how: str, name: str) -> None:
    if how == "disable":
        # by another process on the data dir (the CLI): the recheck or the notice finds it
        done = server.cli("user", "disable", name)
        assert done.returncode == 0, done.stderr
        return
    with server.admin() as http:
        if how == "delete":
            response = http.delete(f"/api/v1/users/{name}")
        else:
            response = http.patch(f"/api/v1/users/{name}", json={"password": "pw-" + secrets.token_hex(8)})
    assert response.status_code in (200, 204), response.text


def assert_starts_empty(server: AgoraServer, name: str) -> None:
    """The same name again: no files, no mail, no databases of the old account."""
    _, password = server.create_user(name)
    token = server.login(name, password)
    with server.client(token) as http:
        assert http.get("/api/v1/files/list").json()["entries"] == []
        assert http.get("/api/v1/sql/databases").json() == []
    imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=TIMEOUT)
    try:
        imap.login(name, password)
        assert imap.select("INBOX") == ("OK", [b"0"])
    finally:
        imap.logout()


@pytest.mark.parametrize("how", ["delete", "disable", "password"])
def test_every_session_ends_with_the_account(node, how):
    name, password, _ = user_with_everything(node)
    sessions = open_sessions(node, name, password, database="db")
    # Another user's sessions go on (shown once: the delete, which ends sessions itself).
    bystander = open_sessions(node, *user_with_everything(node)[:2], database="db") if how == "delete" else None
    try:
        change(node, how, name)
        assert wait_until_ended(sessions) == [], node.log()[-3000:]
        if bystander is not None:
            assert bystander.still_open() == list(bystander.ended)
            assert_starts_empty(node, name)
    finally:
        sessions.close()
        if bystander is not None:
            bystander.close()


def test_an_upload_in_flight_is_cut_off_and_leaves_nothing(node):
    name, password, _ = user_with_everything(node)
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect("127.0.0.1", node.ports["ftp"])
    ftp.login(name, password)
    data = ftp.transfercmd("STOR late.bin")
    try:
        data.sendall(b"x" * 65536)
        change(node, "delete", name)
        # the data connection is closed by the server: what the client sends then fails
        deadline = time.monotonic() + DEADLINE
        with pytest.raises(OSError):
            while time.monotonic() < deadline:
                data.sendall(b"x" * 65536)
        reply = ftp.getline()
        assert reply.startswith(("426", "421")), reply
    finally:
        data.close()
        ftp.close()
    assert_starts_empty(node, name)


@pytest.mark.parametrize("how", ["delete", "disable", "password"])
def test_sessions_on_another_node_end_too(two_nodes, how):
    here, there = two_nodes
    name, password, _ = user_with_everything(here)
    sessions = open_sessions(there, name, password, database="db")
    try:
        change(here, how, name)
        assert wait_until_ended(sessions) == [], there.log()[-3000:]
    finally:
        sessions.close()


def test_a_revoked_token_ends_the_session_it_opened(node):
    """In process, on the node's data dir and database: a session logged in with a token
    ends when the token is revoked, one logged in with the password does not."""
    values = {"data_dir": str(node.data_dir), "identity.session_recheck": str(RECHECK),
              "identity.argon2_time_cost": "1", "identity.argon2_memory_kib": "1024",
              **({"database.url": node.database_url} if node.database_url else {})}

    async def scenario() -> None:
        runtime = await Runtime.open(configuration.load(values, environ={}))
        registry = runtime.identity.sessions
        await registry.start()
        try:
            user = await runtime.identity.create_user("t" + secrets.token_hex(4), "password-123")
            token, secret = await runtime.identity.create_token(user, "t")
            ended: dict[str, asyncio.Future[str]] = {
                kind: asyncio.get_running_loop().create_future() for kind in ("token", "password")}
            by_token = await runtime.identity.user_for_token(secret)
            local = ClientInfo("127.0.0.1", "test")
            by_password = await runtime.identity.authenticate(user.name, "password-123", local)
            registry.open(by_token, "test", ended["token"].set_result)
            registry.open(by_password, "test", ended["password"].set_result)
            await runtime.identity.revoke_token(user, token.id)
            assert "revoked" in await asyncio.wait_for(ended["token"], DEADLINE)
            await registry.check()
            assert not ended["password"].done() and registry.open_count(user.id) == 2
        finally:
            await registry.stop()
            await runtime.close()

    asyncio.run(scenario())


def test_a_view_from_before_a_deletion_cannot_make_the_home_again(tmp_path):
    """A request in flight when its user was deleted (its view of the files made before)
    finds nothing and creates nothing; the next account of that name starts empty."""
    store = FileStore(tmp_path / "files")
    old = store.for_user("ann", 10**6)
    old.write_bytes("/a.txt", b"old")
    store.remove_user("ann")
    with pytest.raises(NotFound):
        old.write_bytes("/b.txt", b"late")
    assert not (tmp_path / "files" / "ann").exists()
    new = store.for_user("ann", 10**6)
    assert new.list("/") == []
    new.write_bytes("/c.txt", b"new")
    assert [entry.name for entry in new.list("/")] == ["c.txt"]


def test_a_deletion_waits_until_other_nodes_have_ended_their_sessions(node):
    """Two processes' worth of watchers on the node's database, in process: the other
    one rechecks only every RECHECK (no notice on SQLite); delete_user here returns
    only once the session over there has been ended and has gone."""
    values = {"data_dir": str(node.data_dir), "identity.session_recheck": str(RECHECK),
              "identity.argon2_time_cost": "1", "identity.argon2_memory_kib": "1024",
              **({"database.url": node.database_url} if node.database_url else {})}

    async def scenario() -> None:
        here = await Runtime.open(configuration.load(values, environ={}))
        there = await Runtime.open(configuration.load(values, environ={}))
        await here.identity.sessions.start()
        await there.identity.sessions.start()
        try:
            user = await here.identity.create_user("w" + secrets.token_hex(4), "password-123")
            ended: list[str] = []

            def end(reason: str) -> None:  # as a session does: goes once told
                ended.append(reason)
                asyncio.get_running_loop().call_later(0.2, login.close)

            login = there.identity.sessions.open(user, "test", end)
            await here.identity.delete_user(user.name)
            assert ended and there.identity.sessions.open_count(user.id) == 0
        finally:
            await there.identity.sessions.stop()
            await here.identity.sessions.stop()
            await there.close()
            await here.close()

    asyncio.run(scenario())
