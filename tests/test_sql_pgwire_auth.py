"""How the postgres listener checks passwords: SCRAM-SHA-256 (with channel binding on
TLS), the cleartext fallback that gives users from before SCRAM verifiers existed a
verifier at their first login, disabled accounts, and what happens without TLS."""

from __future__ import annotations

import asyncio
import re
import secrets
import select
import socket
import struct

import pytest

from conftest import ServerFactory
from pgwire_support import Account, account, provision, server_env

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is a test dependency (pip install -e '.[test]')")

pytestmark = pytest.mark.xdist_group("sql-pgwire-auth")


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory, backend):
    factory = ServerFactory(tmp_path_factory.mktemp(f"pgauth-{backend}"), backend)
    yield factory(env=server_env())
    factory.close()


def connect(dsn: str, **extra: str):
    return psycopg.connect(dsn + "".join(f" {k}={v}" for k, v in extra.items()), autocommit=True)


def test_scram_with_and_without_channel_binding(pg_server):
    ann = account(pg_server, "db")
    with connect(ann.dsn("db"), channel_binding="require", require_auth="scram-sha-256") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with connect(ann.dsn("db", sslmode="disable"), require_auth="scram-sha-256") as conn:
        # PostgreSQL's own (the engine's), as the user's role
        assert re.match(r"\d+\.\d+", conn.info.parameter_status("server_version"))
        assert conn.info.parameter_status("session_authorization").endswith("_" + ann.name)
        assert conn.info.parameter_status("standard_conforming_strings") == "on"
    with pytest.raises(psycopg.OperationalError, match="SASL"):
        connect(ann.dsn("db"), require_auth="password")
    # an unknown name goes through the same SCRAM exchange, and fails only at its end
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "nosuchuser"'):
        connect(ann.dsn("db").replace(f"user={ann.name}", "user=nosuchuser"), require_auth="scram-sha-256")


def _server_first(port: int, user: str) -> str:
    """The SCRAM server-first-message the postgres port sends ``user``."""
    def message(sock: socket.socket) -> tuple[bytes, bytes]:
        head = b""
        while len(head) < 5:
            head += sock.recv(5 - len(head))
        body = b""
        while len(body) < struct.unpack("!I", head[1:])[0] - 4:
            body += sock.recv(65536)
        return head[:1], body

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        startup = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0db\0\0"
        sock.sendall(struct.pack("!I", len(startup) + 4) + startup)
        kind, body = message(sock)
        assert kind == b"R" and struct.unpack("!I", body[:4])[0] == 10, (kind, body)  # AuthenticationSASL
        first = b"n,,n=,r=0123456789abcdef"
        initial = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first
        sock.sendall(b"p" + struct.pack("!I", len(initial) + 4) + initial)
        kind, body = message(sock)
        assert kind == b"R" and struct.unpack("!I", body[:4])[0] == 11, (kind, body)  # SASLContinue
        return body[4:].decode()


def test_scram_iterations_are_the_configured_count_for_known_and_unknown_names(pg_server):
    """identity.scram_iterations (32768 by default, PostgreSQL's is 4096); a name without
    an account is offered the same count, or the count would tell who exists."""
    name, _ = pg_server.create_user()
    for user in (name, "nosuchuser" + secrets.token_hex(3)):
        fields = dict(part.split("=", 1) for part in _server_first(pg_server.ports["postgres"], user).split(","))
        assert fields["i"] == "32768", (user, fields)


def test_passwords_are_saslprepped_as_libpq_and_asyncpg_do(pg_server):
    """A password with a no-break space, a ligature and a soft hyphen: the clients hash
    its SASLprep form (RFC 4013), so the server's verifier must be made of the same."""
    password = "caf\u00e9\u00a0\ufb01n-de-si\u00adecle"
    name, _ = pg_server.create_user("pg" + secrets.token_hex(4), password)
    provision(pg_server, databases=[(name, "db")])
    ann = Account(pg_server, name, password)
    with connect(ann.dsn("db", sslmode="disable"), require_auth="scram-sha-256") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is a dependency (PostgreSQL backend)")

    async def with_asyncpg() -> int:
        conn = await asyncpg.connect(host="127.0.0.1", port=ann.port, user=name, password=password,
                                     database="db", ssl=False)
        try:
            return await conn.fetchval("SELECT 2")
        finally:
            await conn.close()

    assert asyncio.run(with_asyncpg()) == 2
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(ann.dsn("db", password=password.replace("\u00a0", "\u2003\u2003"), sslmode="disable"),
                require_auth="scram-sha-256")


def test_users_without_a_verifier_get_one_at_their_next_login(pg_server):
    ann = account(pg_server, "db")
    provision(pg_server, forget_verifiers=[ann.name])
    with pytest.raises(psycopg.OperationalError):
        connect(ann.dsn("db"), require_auth="scram-sha-256")
    # asked for the password itself (over TLS), which makes the verifier...
    with connect(ann.dsn("db"), require_auth="password") as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    # ... so SCRAM works from then on
    with connect(ann.dsn("db"), require_auth="scram-sha-256") as conn:
        assert conn.execute("SELECT 3").fetchone() == (3,)
    provision(pg_server, forget_verifiers=[ann.name])
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(ann.dsn("db", password="wrong-password"), require_auth="password")
    # a login through any other protocol makes the verifier too
    pg_server.login(ann.name, ann.password)
    with connect(ann.dsn("db"), require_auth="scram-sha-256") as conn:
        assert conn.execute("SELECT 4").fetchone() == (4,)


def test_disabled_users_are_refused(pg_server):
    ann = account(pg_server, "db")
    provision(pg_server, disable=[ann.name])
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(ann.dsn("db"))


def test_ssl_and_gssenc_requests_are_answered(pg_server):
    port = pg_server.ports["postgres"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877104))  # GSSENCRequest
        assert sock.recv(1) == b"N"
        sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
        assert sock.recv(1) == b"S"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # a startup packet without a user name is refused with FATAL 28000
        body = struct.pack("!i", 3 << 16) + b"database\x00x\x00\x00"
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        reply = sock.recv(4096)
        assert reply[:1] == b"E" and b"C28000" in reply and b"SFATAL" in reply


def test_connection_limits_and_idle_timeout(make_server):
    server = make_server(env={**server_env(), "AGORA_POSTGRES_MAX_CONNECTIONS_PER_IP": "2",
                              "AGORA_POSTGRES_IDLE_TIMEOUT": "1.5", "AGORA_IDENTITY_LOGIN_FREE_FAILURES": "2",
                              "AGORA_POSTGRES_PASSWORD_METHOD": "password"})
    ann = account(server, "db")
    first, second = connect(ann.dsn("db")), connect(ann.dsn("db"))
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections from your address"):
            connect(ann.dsn("db"))
    finally:
        first.close()
    # the idle one is closed with 57P05 after postgres.idle_timeout: its socket turns
    # readable (the error, then the end) without a word from the client
    readable, _, _ = select.select([second.fileno()], [], [], 30)
    assert readable, "the idle connection was not closed"
    with pytest.raises(psycopg.OperationalError):
        second.execute("SELECT 1")
    second.close()
    with connect(ann.dsn("db")) as conn:  # the address has its slots back
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # postgres.password_method = password: the password in clear (here from loopback),
    # and an API token of the user serves as one
    token = server.login(ann.name, ann.password, label="pg")
    with connect(ann.dsn("db", password=token), require_auth="password") as conn:
        assert conn.execute("SELECT 5").fetchone() == (5,)
    other = account(server)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(other.dsn(f"{ann.name}/db", password=token))
    # wrong passwords count as on every other protocol: after the free ones, backoff
    errors = []
    for _ in range(4):
        with pytest.raises(psycopg.OperationalError) as failed:
            connect(ann.dsn("db", password="wrong-password"))
        errors.append(str(failed.value))
    assert "password authentication failed" in errors[0]
    assert any("too many failed attempts" in e for e in errors[2:]), errors


def _messages(sock: socket.socket, until: bytes) -> list[tuple[bytes, bytes]]:
    """Backend messages up to and including the first of type ``until``."""
    buffer, out = b"", []
    while True:
        while len(buffer) >= 5 and len(buffer) >= 1 + struct.unpack("!i", buffer[1:5])[0]:
            size = struct.unpack("!i", buffer[1:5])[0]
            out.append((buffer[:1], buffer[5:1 + size]))
            buffer = buffer[1 + size:]
            if out[-1][0] == until:
                return out
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; got {out}"
        buffer += chunk


def _cleartext_session(ann: Account, database: str) -> socket.socket:
    """A raw connection logged in with the password in clear (the user must have no
    SCRAM verifier), ready for queries."""
    sock = socket.create_connection(("127.0.0.1", ann.port), timeout=10)
    body = struct.pack("!i", 3 << 16) + f"user\0{ann.name}\0database\0{database}\0\0".encode()
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    assert _messages(sock, b"R")[-1] == (b"R", struct.pack("!i", 3))
    password = ann.password.encode() + b"\0"
    sock.sendall(b"p" + struct.pack("!i", len(password) + 4) + password)
    assert _messages(sock, b"Z")[-1] == (b"Z", b"I")
    return sock


def _typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _answers(sock: socket.socket, count: int) -> list[list[bytes]]:
    """The kinds of the backend messages answering ``count`` Syncs, one list per
    ReadyForQuery."""
    answers: list[list[bytes]] = [[]]
    buffer = b""
    while len(answers) <= count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; got {answers}"
        buffer += chunk
        while len(buffer) >= 5 and len(buffer) >= 1 + struct.unpack("!i", buffer[1:5])[0]:
            size = struct.unpack("!i", buffer[1:5])[0]
            answers[-1].append(buffer[:1])
            buffer = buffer[1 + size:]
            if answers[-1][-1] == b"Z":
                answers.append([])
    return answers[:-1]


def test_after_login_bytes_are_relayed_to_postgresql_in_order(make_server):
    """Raw protocol over the cleartext login: after ReadyForQuery the engine answers
    everything itself, pipelined messages in order, its own idle-session timeout too."""
    server = make_server(env={**server_env(), "AGORA_POSTGRES_IDLE_TIMEOUT": "1.5"})
    ann = account(server, "db")
    provision(server, forget_verifiers=[ann.name])
    with _cleartext_session(ann, "db") as sock:
        sock.sendall(_typed(b"Q", b"CREATE TABLE kv (id serial PRIMARY KEY, v text); "
                                  b"INSERT INTO kv (v) VALUES ('one'), ('two')\0"))
        assert _messages(sock, b"Z")[-1] == (b"Z", b"I")
        parse = _typed(b"P", b"get\0SELECT v FROM kv WHERE id = $1\0" + struct.pack("!h", 0))
        bind = lambda value: _typed(b"B", b"\0get\0" + struct.pack("!hhi", 0, 1, len(value)) + value  # noqa: E731
                                   + struct.pack("!h", 0))
        execute = _typed(b"E", b"\0" + struct.pack("!i", 0)) + _typed(b"S", b"")
        sock.sendall(parse + _typed(b"S", b"") + bind(b"1") + execute + bind(b"x") + execute + bind(b"2") + execute)
        replies = _answers(sock, 4)
        assert replies[0] == [b"1", b"Z"]
        assert replies[1] == [b"2", b"D", b"C", b"Z"] and replies[3] == [b"2", b"D", b"C", b"Z"]
        assert replies[2] == [b"E", b"Z"]  # 'x' is no integer: PostgreSQL's own 22P02
        # then silence: PostgreSQL ends the session with 57P05
        replies = _messages(sock, b"E")
        assert b"C57P05" in replies[-1][1] and b"SFATAL" in replies[-1][1]
        assert sock.recv(10) == b""
