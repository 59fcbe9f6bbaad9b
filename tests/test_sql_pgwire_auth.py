"""How the postgres listener checks passwords: SCRAM-SHA-256 (with channel binding on
TLS), the cleartext fallback that gives users from before SCRAM verifiers existed a
verifier at their first login, disabled accounts, and what happens without TLS."""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
import time

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
        assert conn.info.parameter_status("server_version").startswith("16.0")
        assert conn.info.parameter_status("session_authorization") == ann.name
        assert conn.info.parameter_status("standard_conforming_strings") == "on"
    with pytest.raises(psycopg.OperationalError, match="SASL"):
        connect(ann.dsn("db"), require_auth="password")
    # an unknown name goes through the same SCRAM exchange, and fails only at its end
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "nosuchuser"'):
        connect(ann.dsn("db").replace(f"user={ann.name}", "user=nosuchuser"), require_auth="scram-sha-256")


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
    # the idle one is closed with 57P05 after postgres.idle_timeout
    import time
    time.sleep(3)
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


def test_malformed_messages_after_login_get_errors_and_the_session_goes_on(pg_server):
    """Raw protocol over the cleartext login (a user without a verifier, from loopback)."""
    ann = account(pg_server, "db")
    provision(pg_server, forget_verifiers=[ann.name])
    with _cleartext_session(ann, "db") as sock:
        # a Query whose string is not terminated: an error, then ready again
        sock.sendall(b"Q" + struct.pack("!i", 8) + b"SELE")
        replies = _messages(sock, b"Z")
        assert [k for k, _ in replies] == [b"E", b"Z"] and b"C08P01" in replies[0][1]
        # extended protocol: after an error everything up to Sync is skipped
        parse = b"\0SELECT 1/0 + $1\0" + struct.pack("!h", 0)
        bad_bind = b"\0nosuch\0" + struct.pack("!hhh", 0, 0, 0)
        sock.sendall(b"P" + struct.pack("!i", len(parse) + 4) + parse
                     + b"B" + struct.pack("!i", len(bad_bind) + 4) + bad_bind
                     + b"E" + struct.pack("!i", 9) + b"\0" + struct.pack("!i", 0)
                     + b"S" + struct.pack("!i", 4))
        replies = _messages(sock, b"Z")
        assert [k for k, _ in replies] == [b"1", b"E", b"Z"] and b"C26000" in replies[1][1]
        # and the session still answers
        query = b"SELECT 40 + 2\0"
        sock.sendall(b"Q" + struct.pack("!i", len(query) + 4) + query)
        replies = _messages(sock, b"Z")
        assert [k for k, _ in replies] == [b"T", b"D", b"C", b"Z"] and replies[1][1].endswith(b"42")
        sock.sendall(b"X" + struct.pack("!i", 4))
        assert sock.recv(10) == b""


def _typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _execution(statement: bytes, *params: bytes) -> bytes:
    """One execution of a prepared statement, as libpq sends it: Bind, Describe and
    Execute of the unnamed portal, Sync."""
    bind = b"\0" + statement + b"\0" + struct.pack("!hh", 0, len(params))
    bind += b"".join(struct.pack("!i", len(p)) + p for p in params) + struct.pack("!h", 0)
    return (_typed(b"B", bind) + _typed(b"D", b"P\0") + _typed(b"E", b"\0" + struct.pack("!i", 0))
            + _typed(b"S", b""))


def _answers(sock: socket.socket, count: int) -> list[list[tuple[bytes, bytes]]]:
    """The backend messages answering ``count`` Syncs, one list per ReadyForQuery."""
    answers: list[list[tuple[bytes, bytes]]] = [[]]
    buffer = b""
    while len(answers) <= count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; got {answers}"
        buffer += chunk
        while len(buffer) >= 5 and len(buffer) >= 1 + struct.unpack("!i", buffer[1:5])[0]:
            size = struct.unpack("!i", buffer[1:5])[0]
            answers[-1].append((buffer[:1], buffer[5:1 + size]))
            buffer = buffer[1 + size:]
            if answers[-1][-1][0] == b"Z":
                answers.append([])
    assert not buffer and answers[-1] == []
    return answers[:-1]


def fused_error(sock: socket.socket, execution: bytes) -> bytes:
    """The ErrorResponse body an execution gets."""
    sock.sendall(execution)
    [answer] = _answers(sock, 1)
    return next(body for kind, body in answer if kind == b"E")


def test_a_quick_simple_query_is_answered_as_the_same_statement_in_a_script(pg_server):
    """A simple Query of one quick read is answered in the data callback; a script of
    several statements goes through the session's task. The first statement of a script
    must get the same replies, byte for byte, as the statement alone."""
    ann = account(pg_server, "db")
    provision(pg_server, forget_verifiers=[ann.name])
    with _cleartext_session(ann, "db") as sock:
        sock.sendall(_typed(b"Q", b"CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT, r REAL, b BLOB); "
                                  b"INSERT INTO kv VALUES (1, 'one', 1.5, x'00ff'), (2, NULL, NULL, NULL)\0"))
        assert _messages(sock, b"Z")[-1] == (b"Z", b"I")

        def replies(sql: str) -> list[tuple[bytes, bytes]]:
            sock.sendall(_typed(b"Q", sql.encode() + b"\0"))
            [answer] = _answers(sock, 1)
            return answer

        cases = ["SELECT v FROM kv WHERE id = 1", "SELECT v FROM kv WHERE id = 99;", "  select * from kv  ",
                 "SELECT id + 0.5 AS x, upper(v), 7 AS n, NULL AS z FROM kv ORDER BY id",
                 "SELECT count(*) FROM kv", "SELECT abs(-9223372036854775808)", "SELECT nosuch FROM kv"]

        def in_state(status: bytes, sql: str) -> list[tuple[bytes, bytes]]:
            """The replies to ``sql`` outside a transaction, in one, or in a failed one."""
            if status != b"I":
                assert replies("BEGIN")[-1] == (b"Z", b"T")
            if status == b"E":
                assert replies("SELECT abs(-9223372036854775808)")[-1] == (b"Z", b"E")
            answer = replies(sql)
            if status != b"I":
                assert replies("ROLLBACK")[-1] == (b"Z", b"I")
            return answer

        for status in (b"I", b"T", b"E"):
            for sql in cases:
                alone = in_state(status, sql)
                script = in_state(status, sql.rstrip().rstrip(";") + "; SELECT 'second'")
                assert alone[-1][0] == b"Z" and alone[-1] == script[-1], (status, sql, alone, script)
                assert alone[:-1] == script[:len(alone) - 1], (status, sql, alone, script)
                if status == b"E":
                    assert [k for k, _ in alone] == [b"E", b"Z"] and b"C25P02" in alone[0][1]


def test_pipelined_executions_are_answered_in_order_and_keep_the_session_alive(make_server):
    """Executions of a quick prepared read are answered as their bytes arrive (without
    waking the session's task); they must be answered in order, an error must stop only
    its own execution, and traffic answered that way counts against the idle timeout."""
    server = make_server(env={**server_env(), "AGORA_POSTGRES_IDLE_TIMEOUT": "1.5"})
    ann = account(server, "db")
    provision(server, forget_verifiers=[ann.name])
    with _cleartext_session(ann, "db") as sock:
        sock.sendall(_typed(b"Q", b"CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT); "
                                  b"INSERT INTO kv VALUES (1, 'one'), (2, 'two')\0"))
        assert _messages(sock, b"Z")[-1] == (b"Z", b"I")
        sock.sendall(_typed(b"P", b"get\0SELECT v FROM kv WHERE id = $1\0" + struct.pack("!h", 0))
                     + _typed(b"P", b"put\0INSERT INTO kv (v) VALUES ($1)\0" + struct.pack("!h", 0))
                     + _typed(b"S", b""))
        assert [k for k, _ in _messages(sock, b"Z")] == [b"1", b"1", b"Z"]
        # three executions in one write, the middle one wrong (two parameters for one)
        sock.sendall(_execution(b"get", b"1") + _execution(b"get", b"1", b"2") + _execution(b"get", b"2"))
        first, second, third = _answers(sock, 3)
        assert [k for k, _ in first] == [b"2", b"T", b"D", b"C", b"Z"] and first[2][1].endswith(b"one")
        assert [k for k, _ in second] == [b"E", b"Z"] and b"C08P01" in second[0][1]
        assert [k for k, _ in third] == [b"2", b"T", b"D", b"C", b"Z"] and third[2][1].endswith(b"two")
        assert first[3][1] == b"SELECT 1\0"
        # a write goes through the session's thread, between quick reads, in order
        sock.sendall(_execution(b"put", b"three") + _execution(b"get", b"3"))
        put, get = _answers(sock, 2)
        assert [k for k, _ in put] == [b"2", b"n", b"C", b"Z"] and put[2][1] == b"INSERT 0 1\0"
        assert get[2][1].endswith(b"three")
        # One execution alone in a read is answered in one go; with a Flush after its
        # Bind, message by message. The answers must be the same, byte for byte, for a
        # row, no row, a wrong Bind, a runtime error, a write, and in a transaction.
        sock.sendall(_typed(b"P", b"abs\0SELECT abs($1)\0" + struct.pack("!hI", 1, 20)) + _typed(b"S", b""))
        assert [k for k, _ in _messages(sock, b"Z")] == [b"1", b"Z"]
        flush = _typed(b"H", b"")
        cases = [(b"get", b"1"), (b"get", b"99"), (b"get", b"1", b"2"), (b"abs", b"-9223372036854775808"),
                 (b"abs", b"-5"), (b"put", b"four")]
        for case in cases:
            one_go = _execution(*case)
            bind_end = 1 + struct.unpack("!i", one_go[1:5])[0]
            sock.sendall(one_go)
            [fused] = _answers(sock, 1)
            sock.sendall(one_go[:bind_end] + flush + one_go[bind_end:])
            [stepwise] = _answers(sock, 1)
            assert fused == stepwise, case
        assert b"C22003" in fused_error(sock, _execution(b"abs", b"-9223372036854775808"))
        for with_flush in (False, True):
            sock.sendall(_typed(b"Q", b"BEGIN\0"))
            assert _messages(sock, b"Z")[-1] == (b"Z", b"T")
            one_go = _execution(b"abs", b"-9223372036854775808")
            bind_end = 1 + struct.unpack("!i", one_go[1:5])[0]
            sock.sendall(one_go[:bind_end] + flush + one_go[bind_end:] if with_flush else one_go)
            [answer] = _answers(sock, 1)
            assert [k for k, _ in answer] == [b"2", b"E", b"Z"] and answer[-1] == (b"Z", b"E"), answer
            # As in PostgreSQL, the Bind itself is refused (no BindComplete), and a
            # Parse of anything but the end of the transaction
            sock.sendall(_execution(b"get", b"1"))
            [refused] = _answers(sock, 1)
            assert [k for k, _ in refused] == [b"E", b"Z"] and b"C25P02" in refused[0][1], refused
            assert refused[-1] == (b"Z", b"E")
            sock.sendall(_typed(b"P", b"\0SELECT 1\0\0\0") + _typed(b"S", b""))
            [refused] = _answers(sock, 1)
            assert [k for k, _ in refused] == [b"E", b"Z"] and b"C25P02" in refused[0][1], refused
            sock.sendall(_typed(b"P", b"\0ROLLBACK\0\0\0") + _execution(b""))
            [ended] = _answers(sock, 1)
            assert [k for k, _ in ended] == [b"1", b"2", b"n", b"C", b"Z"] and ended[-1] == (b"Z", b"I"), ended
        # 3 s of quick reads, 0.2 s apart: longer than the idle timeout, never idle
        started = time.monotonic()
        while time.monotonic() - started < 3:
            sock.sendall(_execution(b"get", b"2"))
            assert _messages(sock, b"Z")[2][1].endswith(b"two")
            time.sleep(0.2)
        # then silence: closed with 57P05
        time.sleep(2.5)
        replies = _messages(sock, b"E")
        assert b"C57P05" in replies[-1][1] and b"SFATAL" in replies[-1][1]
        assert sock.recv(10) == b""
