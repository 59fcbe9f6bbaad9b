"""POP3 (1110, STLS) and POP3S (1995) against `agora serve`, with poplib, curl and a raw
socket. Mail comes in by SMTP (smtplib) or IMAP APPEND (which stores the exact bytes);
what POP3 does is checked through IMAP too, since both read the same store. The state
machine alone, fuzzed, is in test_mail_pop3_protocol.py; fetchmail in test_mail_clients.py.
"""

from __future__ import annotations

import hashlib
import imaplib
import poplib
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from typing import Iterator

import pytest

from conftest import AgoraServer
from mail_support import (DOMAIN, SERVER_ENV, TIMEOUT, local_address, message, module_server, send_smtp,
                          unverified)

SERVER_ARGS = ("--mail-domains", f"{DOMAIN},localhost", "--mail-max-line", "1000")
LIMITS_ARGS = ("--mail-domains", DOMAIN, "--mail-max-connections-per-ip", "3",
               "--mail-idle-timeout", "3", "--mail-command-timeout", "1", "--identity-login-free-failures", "2")


@pytest.fixture(scope="module")
def pop3_server(tmp_path_factory, backend) -> Iterator[AgoraServer]:
    with module_server(tmp_path_factory, backend, "pop3", SERVER_ARGS) as server:
        yield server


@pytest.fixture
def user(pop3_server) -> tuple[str, str]:
    return pop3_server.create_user()


# -- helpers ----------------------------------------------------------------------------


def imap(server: AgoraServer, user: tuple[str, str]) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=TIMEOUT)
    client.login(*user)
    return client


def append(server: AgoraServer, user: tuple[str, str], raw: bytes) -> None:
    """Into INBOX exactly as given (SMTP would add Received and Return-Path)."""
    client = imap(server, user)
    try:
        assert client.append("INBOX", None, None, raw)[0] == "OK"
    finally:
        client.logout()


def imap_inbox(server: AgoraServer, user: tuple[str, str]) -> tuple[int, dict[int, bytes]]:
    """INBOX through IMAP: (UIDVALIDITY, {uid: message})."""
    client = imap(server, user)
    try:
        client.select("INBOX", readonly=True)
        uidvalidity = int(client.response("UIDVALIDITY")[1][0])
        typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        messages = {}
        for item in data:
            if isinstance(item, tuple):
                messages[int(re.search(rb"UID (\d+)", item[0]).group(1))] = item[1]
        return uidvalidity, messages
    finally:
        client.logout()


def pop(server: AgoraServer, user: tuple[str, str] | None = None) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=TIMEOUT)
    if user:
        deadline = time.monotonic() + 5
        while True:
            client.user(user[0])
            try:
                client.pass_(user[1])
                break
            except poplib.error_proto as error:
                # A session the test dropped a moment ago may not have been noticed yet.
                if b"[IN-USE]" not in error.args[0] or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    return client


def retr(client: poplib.POP3, number: int) -> bytes:
    """A message as RETR sends it, dot-stuffing undone (poplib does that) and CRLF kept."""
    typ, lines, _ = client.retr(number)
    assert typ.startswith(b"+OK")
    return b"".join(line + b"\r\n" for line in lines)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Raw:
    """A line-level client, for what poplib will not send."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if context:
            self.sock = context.wrap_socket(self.sock)
        self.stream = self.sock.makefile("rb")

    def line(self) -> bytes:
        return self.stream.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.line()

    def multiline(self) -> list[bytes]:
        lines = []
        while (line := self.line()) != b".\r\n":
            assert line, "connection closed inside a multi-line reply"
            lines.append(line)
        return lines

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


# -- reading ----------------------------------------------------------------------------


def test_smtp_in_poplib_out_byte_for_byte(pop3_server, user):
    name, _ = user
    dotted = message("dots and 8 bit", ".leading dot\r\n..two dots\r\n.\r\nGrüße, ünïcödé\r\n".encode())
    send_smtp(pop3_server, name, dotted)
    plain = message("plain")
    send_smtp(pop3_server, name, plain)
    # Bigger than the server's read chunk, so it is streamed in pieces; appended so the
    # stored bytes are exactly these.
    line = b".x" + b"0123456789abcdef" * 60 + b"\r\n"
    big = message("big", line * 700 + b"\r\n.\r\nend\r\n")
    append(pop3_server, user, big)

    client = pop(pop3_server, user)
    count, total = client.stat()
    _, listing, _ = client.list()
    sizes = [int(entry.split()[1]) for entry in listing]
    assert count == 3 and len(sizes) == 3 and total == sum(sizes)
    got = [retr(client, n) for n in (1, 2, 3)]
    assert [len(raw) for raw in got] == sizes
    assert got[0].endswith(dotted) and got[1].endswith(plain)
    assert got[0].startswith(b"Return-Path: <sender@elsewhere.example>\r\n")
    assert sha(got[2]) == sha(big)
    # What IMAP reads from the same store is the same, byte for byte.
    _, stored = imap_inbox(pop3_server, user)
    assert [sha(raw) for raw in stored.values()] == [sha(raw) for raw in got]
    assert client.quit().startswith(b"+OK")


def test_uidl_is_stable_and_matches_imap(pop3_server, user):
    for i in range(3):
        append(pop3_server, user, message(f"uidl {i}"))
    uidvalidity, stored = imap_inbox(pop3_server, user)
    expected = [f"{n} {uidvalidity}.{uid}".encode() for n, uid in enumerate(sorted(stored), 1)]
    client = pop(pop3_server, user)
    assert client.uidl()[1] == expected
    assert client.uidl(2) == b"+OK " + expected[1]
    client.dele(1)
    client.quit()
    client = pop(pop3_server, user)
    # Message 1 is gone; the others keep their unique-ids under their new numbers.
    assert [entry.split()[1] for entry in client.uidl()[1]] == [e.split()[1] for e in expected[1:]]
    client.quit()


def test_top_sends_the_header_and_n_lines(pop3_server, user):
    raw = message("top", b"line 1\r\n.line 2\r\nline 3\r\nline 4\r\n")
    append(pop3_server, user, raw)
    header = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    client = pop(pop3_server, user)
    assert client.top(1, 0)[1] == header + [b""]
    assert client.top(1, 2)[1] == header + [b"", b"line 1", b".line 2"]
    assert client.top(1, 100)[1] == raw.split(b"\r\n")[:-1]
    client.quit()


def test_dele_is_applied_at_quit_only_and_imap_sees_it(pop3_server, user):
    for i in range(3):
        append(pop3_server, user, message(f"dele {i}"))
    _, before = imap_inbox(pop3_server, user)
    first = sorted(before)[0]
    # DELE then RSET: nothing goes.
    client = pop(pop3_server, user)
    client.dele(1)
    client.dele(2)
    assert client.stat()[0] == 1
    with pytest.raises(poplib.error_proto, match="-ERR"):
        client.retr(1)
    assert client.rset().startswith(b"+OK")
    assert client.stat()[0] == 3
    client.quit()
    assert imap_inbox(pop3_server, user)[1] == before
    # DELE then the connection drops without QUIT: nothing goes.
    client = pop(pop3_server, user)
    client.dele(1)
    client.close()
    time.sleep(0.2)
    assert imap_inbox(pop3_server, user)[1] == before
    # DELE then QUIT: it goes, for IMAP too.
    client = pop(pop3_server, user)
    client.dele(1)
    assert client.quit().startswith(b"+OK")
    _, after = imap_inbox(pop3_server, user)
    assert sorted(after) == sorted(before)[1:] and first not in after
    client = pop(pop3_server, user)
    assert client.stat()[0] == 2
    client.quit()


def test_retrieved_messages_are_seen_in_imap_after_quit(pop3_server, user):
    append(pop3_server, user, message("read me"))
    append(pop3_server, user, message("only the top"))
    client = pop(pop3_server, user)
    client.retr(1)
    client.top(2, 1)
    client.quit()
    mail = imap(pop3_server, user)
    mail.select("INBOX", readonly=True)
    assert mail.search(None, "SEEN")[1] == [b"1"]
    assert mail.search(None, "UNSEEN")[1] == [b"2"]
    mail.logout()


def test_a_session_sees_inbox_as_it_was_at_login(pop3_server, user):
    name, _ = user
    append(pop3_server, user, message("one"))
    append(pop3_server, user, message("two"))
    client = pop(pop3_server, user)
    assert client.stat()[0] == 2
    send_smtp(pop3_server, name, message("arrives meanwhile"))
    # Expunged through IMAP meanwhile: RETR says so, the session goes on.
    mail = imap(pop3_server, user)
    mail.select("INBOX")
    mail.store("1", "+FLAGS", "\\Deleted")
    mail.expunge()
    mail.logout()
    assert client.stat()[0] == 2
    with pytest.raises(poplib.error_proto, match="removed"):
        client.retr(1)
    assert b"Subject: two" in retr(client, 2)
    client.dele(1)  # already gone: QUIT still succeeds
    assert client.quit().startswith(b"+OK")
    client = pop(pop3_server, user)
    assert client.stat()[0] == 2
    assert b"arrives meanwhile" in retr(client, 2)
    client.quit()


# -- who may read what ------------------------------------------------------------------


def test_wrong_password_and_users_see_only_their_own_mail(pop3_server):
    alice, bob = pop3_server.create_user(), pop3_server.create_user()
    append(pop3_server, alice, message("for alice"))
    client = pop(pop3_server)
    client.user(alice[0])
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        client.pass_("not-the-password")
    client.user(alice[0])
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        client.pass_(bob[1])  # someone else's password
    client.user("nobody-" + secrets.token_hex(3))
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        client.pass_("whatever-password")
    client.user(bob[0])
    client.pass_(bob[1])
    assert client.stat() == (0, 0)
    with pytest.raises(poplib.error_proto):
        client.retr(1)
    client.quit()
    client = pop(pop3_server, alice)
    assert client.stat()[0] == 1
    client.quit()


def test_auth_plain(pop3_server, user):
    import base64
    raw = Raw(pop3_server.ports["pop3"])
    raw.line()
    token = base64.b64encode(f"\0{user[0]}\0{user[1]}".encode())
    assert raw.command(b"AUTH PLAIN") == b"+ \r\n"
    assert raw.command(base64.b64encode(f"\0{user[0]}\0wrong".encode())).startswith(b"-ERR [AUTH]")
    assert raw.command(b"AUTH PLAIN " + token).startswith(b"+OK")
    assert raw.command(b"QUIT").startswith(b"+OK")
    raw.close()


def test_a_second_session_finds_the_maildrop_in_use(pop3_server, user):
    first = pop(pop3_server, user)
    second = pop(pop3_server)
    second.user(user[0])
    with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
        second.pass_(user[1])
    # pop3s shares the lock.
    third = poplib.POP3_SSL("127.0.0.1", pop3_server.ports["pop3s"], timeout=TIMEOUT, context=unverified())
    third.user(user[0])
    with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
        third.pass_(user[1])
    first.quit()
    second.user(user[0])
    assert second.pass_(user[1]).startswith(b"+OK")
    second.quit()
    third.close()
    # A session that drops without QUIT releases the maildrop too.
    dropped = pop(pop3_server, user)
    dropped.close()
    time.sleep(0.3)
    pop(pop3_server, user).quit()


# -- TLS --------------------------------------------------------------------------------


def test_stls_and_pop3s(pop3_server, user):
    append(pop3_server, user, message("over tls"))
    client = pop(pop3_server)
    assert "STLS" in client.capa()
    client.stls(context=unverified())
    assert "STLS" not in client.capa()
    client.user(user[0])
    client.pass_(user[1])
    assert b"over tls" in retr(client, 1)
    client.quit()
    # pop3s, checking the server's certificate this time (made for 127.0.0.1 too).
    context = ssl.create_default_context(cafile=str(pop3_server.data_dir / "tls" / "cert.pem"))
    secure = poplib.POP3_SSL("127.0.0.1", pop3_server.ports["pop3s"], timeout=TIMEOUT, context=context)
    assert "STLS" not in secure.capa() and "USER" in secure.capa()
    secure.user(user[0])
    secure.pass_(user[1])
    assert b"over tls" in retr(secure, 1)
    secure.quit()
    unchecked = poplib.POP3_SSL("127.0.0.1", pop3_server.ports["pop3s"], timeout=TIMEOUT, context=unverified())
    unchecked.user(user[0])
    unchecked.pass_(user[1])
    assert unchecked.stat()[0] == 1
    unchecked.quit()


def test_plain_text_after_stls_is_not_taken_as_tls(pop3_server, user):
    raw = Raw(pop3_server.ports["pop3"])
    raw.line()
    raw.send(b"STLS\r\nUSER " + user[0].encode() + b"\r\n")  # the USER must be dropped
    assert raw.line().startswith(b"+OK")
    tls = unverified().wrap_socket(raw.sock)
    stream = tls.makefile("rb")
    tls.sendall(b"PASS " + user[1].encode() + b"\r\n")
    assert stream.readline().startswith(b"-ERR")  # no USER came over TLS
    tls.close()


def test_remote_clients_log_in_only_after_stls(make_server):
    address = local_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")
    server = make_server(env=SERVER_ENV, args=("--mail-domains", DOMAIN, "--bind", "0.0.0.0"))
    user = server.create_user()
    client = poplib.POP3(address, server.ports["pop3"], timeout=TIMEOUT)
    caps = client.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\].*STLS"):
        client.user(user[0])
    client.stls(context=unverified())
    assert "USER" in client.capa()
    client.user(user[0])
    assert client.pass_(user[1]).startswith(b"+OK")
    client.quit()


# -- bad input and limits ---------------------------------------------------------------


def test_bad_commands_get_err_and_the_session_continues(pop3_server, user):
    append(pop3_server, user, message("still here"))
    raw = Raw(pop3_server.ports["pop3"])
    assert raw.line().startswith(b"+OK")
    for line in (b"FOO", b"", b"STAT", b"RETR 1", b"APOP someone 0123456789abcdef", b"PASS x", b"\xff\xfe\x00",
                 b"USER a b", b"AUTH PLAIN !!!", b"AUTH XOAUTH2", b"NOOP " + b"n" * 2000):
        reply = raw.command(line)
        assert reply.startswith(b"-ERR "), (line, reply)
    raw.command(b"USER " + user[0].encode())
    assert raw.command(b"PASS " + user[1].encode()).startswith(b"+OK")
    for line in (b"LIST 0", b"LIST 2", b"LIST x", b"RETR", b"TOP 1", b"TOP 1 -1", b"DELE 99", b"STAT 1",
                 b"USER x", b"STLS", b"LAST", b"X" * 1500):
        reply = raw.command(line)
        assert reply.startswith(b"-ERR "), (line, reply)
    # Pipelined, with bare LF line ends: answered in order.
    raw.send(b"NOOP\nLIST 1\r\nUIDL 1\nCAPA\r\n")
    assert raw.line() == b"+OK\r\n"
    assert raw.line().startswith(b"+OK 1 ")
    assert raw.line().startswith(b"+OK 1 ")
    assert raw.line().startswith(b"+OK") and b"TOP\r\n" in raw.multiline()
    assert raw.command(b"STAT").startswith(b"+OK 1 ")
    assert raw.command(b"QUIT").startswith(b"+OK")
    assert raw.line() == b""
    raw.close()


def test_connection_limits_timeouts_and_stop(make_server):
    server = make_server(env=SERVER_ENV, args=LIMITS_ARGS)
    user = server.create_user()
    port = server.ports["pop3"]
    held = [Raw(port) for _ in range(3)]
    for raw in held:
        assert raw.line().startswith(b"+OK")
    refused = Raw(port)
    assert refused.line().startswith(b"-ERR [SYS/TEMP]")
    assert refused.line() == b""
    for raw in held:
        raw.close()
    time.sleep(0.2)
    # Silent for longer than mail.idle_timeout: -ERR, then the server hangs up; DELE undone.
    append(server, user, message("kept"))
    raw = Raw(port)
    raw.line()
    raw.command(b"USER " + user[0].encode())
    raw.command(b"PASS " + user[1].encode())
    assert raw.command(b"DELE 1").startswith(b"+OK")
    started = time.monotonic()
    assert raw.line().startswith(b"-ERR")
    assert raw.line() == b""
    assert 2.5 < time.monotonic() - started < 15
    raw.close()
    # Half a command, then nothing for longer than mail.command_timeout: dropped sooner.
    raw = Raw(port)
    raw.line()
    raw.send(b"US")
    started = time.monotonic()
    assert raw.line().startswith(b"-ERR")
    assert raw.line() == b""
    assert time.monotonic() - started < 2.8
    raw.close()
    client = pop(server, user)
    assert client.stat()[0] == 1
    # Wrong passwords beyond identity.login_free_failures: told to wait, even with the right one.
    other = server.create_user()
    raw = Raw(port)
    raw.line()
    replies = []
    for password in ("wrong-1", "wrong-2", "wrong-3", "wrong-4", other[1]):
        raw.command(b"USER " + other[0].encode())
        replies.append(raw.command(b"PASS " + password.encode()))
    assert [r[:11] for r in replies[:2]] == [b"-ERR [AUTH]"] * 2
    assert replies[3].startswith(b"-ERR [SYS/TEMP] Too many failed logins; try again in ")
    assert replies[4].startswith(b"-ERR [SYS/TEMP]")
    raw.close()
    # Stopping the server: a waiting session gets -ERR and the connection closes.
    waiting = Raw(port)
    waiting.line()
    client.quit()
    server.stop()
    assert waiting.line().startswith(b"-ERR [SYS/TEMP]")
    assert waiting.line() == b""
    waiting.close()


# -- curl -------------------------------------------------------------------------------


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, timeout=60)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_pop3_with_ssl_reqd_and_pop3s(pop3_server, user, tmp_path):
    name, password = user
    raw = message("for curl", b"first\r\n.dotted\r\n")
    append(pop3_server, user, raw)
    append(pop3_server, user, message("second"))
    port, secure = pop3_server.ports["pop3"], pop3_server.ports["pop3s"]
    listing = curl("-u", f"{name}:{password}", f"pop3://127.0.0.1:{port}/")
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [b"1", b"2"]
    for url, flags in ((f"pop3://127.0.0.1:{port}/1", ["--ssl-reqd", "-k"]),
                       (f"pop3s://127.0.0.1:{secure}/1", ["-k"])):
        result = curl(*flags, "-u", f"{name}:{password}", url)
        assert result.returncode == 0, result.stderr
        assert result.stdout == raw
    denied = curl("-u", f"{name}:wrong-password", f"pop3://127.0.0.1:{port}/1")
    assert denied.returncode == 67, denied.stderr  # CURLE_LOGIN_DENIED
    uidl = curl("-k", "-u", f"{name}:{password}", f"pop3s://127.0.0.1:{secure}/", "-X", "UIDL")
    assert uidl.returncode == 0 and len(uidl.stdout.splitlines()) == 2
