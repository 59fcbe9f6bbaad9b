"""Hostile names (NUL, control characters, lone surrogates, mixed Unicode normalisation,
'..', overlong) through every entry point that takes a user, mailbox, path, account or
database name: each answers with its protocol's own error (4xx, NO/BAD, -ERR, 5xx SMTP
codes, a PostgreSQL ErrorResponse), never a 500, a dropped connection or a traceback in
the server's log. On both metadata backends: PostgreSQL refuses NUL in text, SQLite
does not, so the same input used to give a 500 on one and a 404 on the other."""

from __future__ import annotations

import base64
import json
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator
from urllib.parse import quote

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import AgoraServer, ServerFactory

TIMEOUT = 15
# Cheap hashes, and a login limiter that lets every example through: the same name is
# tried on every protocol, and what is tested is the answer, not the backoff.
SERVER_ENV = {"AGORA_IDENTITY_ARGON2_TIME_COST": "1", "AGORA_IDENTITY_ARGON2_MEMORY_KIB": "1024",
              "AGORA_IDENTITY_LOGIN_FREE_FAILURES": "1000", "AGORA_IDENTITY_LOGIN_FREE_FAILURES_PER_ADDRESS": "1000000"}

_BAD = st.sampled_from([
    "\x00", "a\x00b", "\x00" * 40, "..", "../..", "a/../../b", "/..", "e\u0301", "\u00e9", "\ufb01", "\u212b",
    "\udcff", "\ud800x", "&AAA-", "&2D0-", "&-&", "\u202e", "\ufeff", "\x7f", "\x1b[0m", " ", "%00", "\\", "*", "%", "\"",
])
_CONTROL = st.text(st.characters(categories=["Cc", "Cs", "Co", "Cf"]), min_size=1, max_size=4)
_OVERLONG = st.integers(64, 3000).map(lambda n: "a" * n)
HOSTILE = st.builds(lambda head, bad, tail: head + bad + tail, st.text("ab.", max_size=3),
                    _BAD | _CONTROL | _OVERLONG, st.text(max_size=4))


def wire(text: str) -> bytes:
    """A name as a client would put it on the wire: UTF-8, lone surrogates as they are."""
    return text.encode("utf-8", "surrogatepass")


def line_safe(text: str) -> bytes:
    """For line protocols: CR and LF end the line, so they cannot be part of a name."""
    return wire(text).replace(b"\r", b"").replace(b"\n", b"")


def url_part(text: str) -> str:
    # Dots too: a client would resolve a bare '..' segment before sending it.
    return quote(wire(text), safe="").replace(".", "%2E")


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[AgoraServer]:
    factory = ServerFactory(tmp_path_factory.mktemp(f"hostile-{backend}"), backend)
    yield factory(env=SERVER_ENV)
    factory.close()


class Lines:
    """A line-protocol client that sends raw bytes and reads raw lines."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")

    def read(self) -> bytes:
        line = self.file.readline()
        assert line, "the server dropped the connection"
        return line

    def send(self, data: bytes) -> bytes:
        self.sock.sendall(data + b"\r\n")
        return self.read()

    def tagged(self, tag: bytes, data: bytes) -> bytes:
        """An IMAP command: its tagged reply (continuations for literals answered)."""
        self.sock.sendall(tag + b" " + data + b"\r\n")
        while True:
            line = self.read()
            if line.startswith(tag + b" ") or line.startswith(b"* BYE"):
                return line
            if line.startswith(b"+"):
                self.sock.sendall(b"*\r\n")  # cancels an AUTHENTICATE exchange

    def smtp(self, data: bytes) -> bytes:
        line = self.send(data)
        while line[3:4] == b"-":
            line = self.read()
        return line

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def imap_quoted(text: str) -> bytes:
    return b'"' + line_safe(text).replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(b"\x00" + wire(user) + b"\x00" + wire(password))


def assert_refused_http(response: httpx.Response, *also: int) -> None:
    assert 400 <= response.status_code < 500 or response.status_code in (*also, 307, 308), (
        response.request.method, response.request.url, response.status_code, response.text[:300])


def assert_answered_http(response: httpx.Response) -> None:
    """A file or folder of an odd but valid name may exist (an earlier example made it)."""
    assert_refused_http(response, 200, 201, 204, 207)


def check_http(server: AgoraServer, name: str, user: tuple[str, str], token: str) -> None:
    with server.client() as http:
        assert_refused_http(http.post("/api/v1/tokens", content=json.dumps(
            {"username": name, "password": "password-123", "name": "t"}).encode(),
            headers={"content-type": "application/json"}))
        basic = base64.b64encode(wire(name) + b":password-123").decode()
        assert_refused_http(http.get("/api/v1/files/list", headers={"Authorization": f"Basic {basic}"}))
        assert_refused_http(http.get("/dav/", headers={"Authorization": f"Basic {basic}"}))
        bearer = "agora_" + url_part(name)
        assert_refused_http(http.get("/api/v1/files/list", headers={"Authorization": f"Bearer {bearer}"}))
    with server.client(token) as http:
        part = url_part(name)
        for path in (f"/api/v1/sql/databases/{part}", f"/api/v1/bank/accounts/{part}", f"/api/v1/users/{part}"):
            assert_refused_http(http.get(path))
        for path in (f"/api/v1/files/stat/{part}", f"/api/v1/files/content/{part}", f"/api/v1/files/list/{part}",
                     f"/api/v1/mail/folders/{part}/messages"):
            assert_answered_http(http.get(path))
        assert_answered_http(http.put(f"/api/v1/files/content/{part}", content=b"x"))
        for path, body in (("/api/v1/sql/databases", {"name": name}), ("/api/v1/users", {"name": name, "password": "password-123"})):
            assert_refused_http(http.post(path, content=json.dumps(body).encode(),
                                          headers={"content-type": "application/json"}))
        for path, body in (("/api/v1/files/mkdir", {"path": name}),
                           ("/api/v1/files/move", {"source": name, "destination": name + "x"}),
                           ("/api/v1/mail/folders", {"name": name}),
                           ("/api/v1/bank/accounts", {"currency": "TST", "name": name}),
                           ("/api/v1/bank/accounts", {"currency": name}),
                           ("/api/v1/bank/transfers", {"id": name, "debit": name, "credit": name, "amount": 1,
                                                       "memo": name})):
            assert_answered_http(http.post(path, content=json.dumps(body).encode(),
                                           headers={"content-type": "application/json"}))
    with httpx.Client(base_url=server.url, auth=user, timeout=TIMEOUT) as dav:
        for method in ("PROPFIND", "MKCOL", "GET", "DELETE"):
            assert_answered_http(dav.request(method, f"/dav/{url_part(name)}", headers={"Depth": "0"}))


def check_imap(server: AgoraServer, name: str, user: tuple[str, str]) -> None:
    imap = Lines(server.ports["imap"])
    try:
        imap.read()
        reply = imap.tagged(b"a1", b"LOGIN " + imap_quoted(name) + b' "password-123"')
        assert reply.startswith((b"a1 NO", b"a1 BAD", b"* BYE")) and b"SERVERBUG" not in reply, reply
        reply = imap.tagged(b"a2", b"AUTHENTICATE PLAIN " + plain(name, "password-123"))
        assert reply.startswith((b"a2 NO", b"a2 BAD", b"* BYE")) and b"SERVERBUG" not in reply, reply
        literal = wire(name)  # as a literal: CR, LF and NUL included
        imap.sock.sendall(b"a5 LOGIN {%d}\r\n" % len(literal))
        reply = imap.read()
        if reply.startswith(b"+"):
            imap.sock.sendall(literal + b' "password-123"\r\n')
            reply = imap.read()
            while not reply.startswith((b"a5 ", b"* BYE")):
                reply = imap.read()
        assert reply.startswith((b"a5 NO", b"a5 BAD", b"* BYE")) and b"SERVERBUG" not in reply, reply
        if reply.startswith(b"* BYE"):
            imap.close()
            imap = Lines(server.ports["imap"])
            imap.read()
        reply = imap.tagged(b"a3", b"LOGIN " + imap_quoted(user[0]) + b" " + imap_quoted(user[1]))
        assert reply.startswith(b"a3 OK"), reply
        for command in (b"SELECT ", b"STATUS ", b"CREATE ", b"DELETE "):
            argument = imap_quoted(name) + (b" (MESSAGES)" if command == b"STATUS " else b"")
            reply = imap.tagged(b"a4", command + argument)
            assert reply.startswith((b"a4 NO", b"a4 BAD", b"a4 OK")) and b"SERVERBUG" not in reply, reply
    finally:
        imap.close()


def check_pop3(server: AgoraServer, name: str) -> None:
    pop = Lines(server.ports["pop3"])
    try:
        pop.read()
        reply = pop.send(b"USER " + line_safe(name))
        assert reply.startswith((b"+OK", b"-ERR")), reply
        reply = pop.send(b"PASS password-123")
        assert reply.startswith(b"-ERR"), reply
        assert pop.send(b"NOOP").startswith((b"+OK", b"-ERR"))  # still there
    finally:
        pop.close()


def check_smtp(server: AgoraServer, name: str) -> None:
    for listener in ("submission", "smtp"):
        smtp = Lines(server.ports[listener])
        try:
            smtp.read()
            assert smtp.smtp(b"EHLO tests").startswith(b"250")
            if listener == "submission":
                reply = smtp.smtp(b"AUTH PLAIN " + plain(name, "password-123"))
            else:
                assert smtp.smtp(b"MAIL FROM:<someone@example.org>").startswith(b"250")
                reply = smtp.smtp(b"RCPT TO:<" + line_safe(name) + b"@localhost>")
            assert reply[:1] in (b"4", b"5") and not reply.startswith(b"421"), reply
        finally:
            smtp.close()


def check_ftp_login(server: AgoraServer, name: str) -> None:
    ftp = Lines(server.ports["ftp"])
    try:
        ftp.read()
        reply = ftp.smtp(b"USER " + line_safe(name))
        if reply.startswith(b"331"):
            reply = ftp.smtp(b"PASS password-123")
        assert reply.startswith((b"4", b"5")) and not reply.startswith(b"421"), reply
    finally:
        ftp.close()


def check_ftp_paths(server: AgoraServer, name: str, user: tuple[str, str]) -> None:
    # A fresh connection for each hostile line: one too long is answered, and what
    # follows it on that line as well, so replies would no longer pair with commands.
    for command in (b"CWD ", b"SIZE ", b"MKD ", b"DELE ", b"RNFR "):
        ftp = Lines(server.ports["ftp"])
        try:
            ftp.read()
            assert ftp.smtp(b"USER " + wire(user[0])).startswith(b"331")
            assert ftp.smtp(b"PASS " + wire(user[1])).startswith(b"230")
            reply = ftp.smtp(command + line_safe(name))
            assert reply[:1] in (b"2", b"3", b"4", b"5") and not reply.startswith(b"421"), (command, reply)
        finally:
            ftp.close()


def check_postgres(server: AgoraServer, name: str, user: tuple[str, str]) -> None:
    port = server.ports["postgres"]
    raw_name = wire(name).replace(b"\x00", b"")  # a NUL would end the field itself
    for params in ((b"user", raw_name, b"database", b"postgres"), (b"user", wire(name), b"database", wire(name))):
        body = struct.pack("!I", 196608) + b"".join(p + b"\x00" for p in params) + b"\x00"
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(struct.pack("!I", len(body) + 4) + body)
            kind = sock.recv(1)
            assert kind in (b"E", b"R"), kind  # an error, or the start of authentication
    try:
        database = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        return  # libpq sends names only as text
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(host="127.0.0.1", port=port, user=user[0], password=user[1], dbname=database,
                        sslmode="disable", connect_timeout=TIMEOUT).close()
    assert "server closed the connection unexpectedly" not in str(refused.value)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(name=HOSTILE)
@example(name="\x00" * 40)  # the ones that broke PostgreSQL, always tried
@example(name="a\x00/../\udcff&AAA-e\u0301")
def test_hostile_names_get_protocol_errors_everywhere(hostile_server: AgoraServer, name: str):
    server = hostile_server
    user = _user(server)
    # FTP answers a failed login after a second: that one runs beside the rest, which
    # run one after the other (they make and remove files and folders of this name).
    with ThreadPoolExecutor(1) as pool:
        ftp_login = pool.submit(check_ftp_login, server, name)
        check_http(server, name, user, _token(server, user))
        check_imap(server, name, user)
        check_pop3(server, name)
        check_smtp(server, name)
        check_ftp_paths(server, name, user)
        check_postgres(server, name, user)
        ftp_login.result()
    log = server.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:4000]
    assert "audit entry not written" not in log  # the failed logins are on record, whatever the name


_USERS: dict[int, tuple[str, str, str]] = {}


def _user(server: AgoraServer) -> tuple[str, str]:
    if id(server) not in _USERS:
        with server.admin() as admin:  # a currency, so that account names reach the ledger
            assert admin.post("/api/v1/bank/currencies", json={"code": "TST", "exponent": 2}).status_code == 201
        name, password = server.create_user()
        _USERS[id(server)] = (name, password, server.login(name, password))
    return _USERS[id(server)][:2]


def _token(server: AgoraServer, user: tuple[str, str]) -> str:
    return _USERS[id(server)][2]
