"""SMTP receipt (2525) and submission (2587) against a real server, with real clients:
smtplib, curl and swaks. What arrives is read back from the recipient's Maildir files
(the store's own format on disk), byte for byte.
"""

from __future__ import annotations

import email
import email.policy
import secrets
import smtplib
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import AgoraServer, wait_for
from mail_support import DOMAIN, SERVER_ENV, TIMEOUT, local_address, module_server, unverified

MAX_MESSAGE = 256 * 1024
QUOTA = 200 * 1024
SERVER_ARGS = ("--mail-domains", f"{DOMAIN},localhost", "--mail-max-message", str(MAX_MESSAGE),
               "--mail-quota", str(QUOTA), "--mail-max-recipients", "5")
LIMITS_ARGS = ("--mail-domains", DOMAIN, "--mail-max-connections-per-ip", "3",
               "--mail-idle-timeout", "3", "--mail-command-timeout", "1", "--mail-max-line", "1000")


@pytest.fixture(scope="module")
def smtp_server(tmp_path_factory, backend) -> Iterator[AgoraServer]:
    with module_server(tmp_path_factory, backend, "smtp", SERVER_ARGS) as server:
        yield server


@pytest.fixture
def user(smtp_server) -> tuple[str, str]:
    return smtp_server.create_user()


# -- helpers ----------------------------------------------------------------------------


def receipt(server: AgoraServer) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=TIMEOUT)
    client.ehlo("client.example")
    return client


def submission(server: AgoraServer, name: str | None = None, password: str | None = None, *,
               tls: bool = True) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=TIMEOUT)
    client.ehlo("client.example")
    if tls:
        client.starttls(context=unverified())
        client.ehlo("client.example")
    if name:
        client.login(name, password)
    return client


def message(subject: str = "hello", body: bytes = b"Hi there.\r\n", *, sender: str = f"someone@{DOMAIN}",
            **headers: str) -> tuple[str, bytes]:
    """A message written by ``sender`` (submission takes only the user's own From:)."""
    message_id = f"<{secrets.token_hex(8)}@test>"
    lines = [f"From: {sender}", f"Subject: {subject}", f"Message-ID: {message_id}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return message_id, "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def maildir(server: AgoraServer, user: str, folder: str = "") -> list[Path]:
    root = server.data_dir / "mail" / user / (f".{folder}" if folder else "")
    return sorted(p for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir())


def stored(server: AgoraServer, user: str, folder: str = "", count: int = 1) -> list[bytes]:
    files = wait_for(lambda: len(maildir(server, user, folder)) >= count and maildir(server, user, folder))
    return [path.read_bytes() for path in files or []]


def reply(client: smtplib.SMTP, line: str) -> tuple[int, str]:
    code, text = client.docmd(line)
    return code, text.decode()


# -- receipt ----------------------------------------------------------------------------


def test_receipt_delivers_byte_for_byte(smtp_server, user):
    name, _ = user
    body = ("Grüße aus Köln — 8-bit text.\r\n.a line starting with a dot\r\n..two dots\r\n"
            + "x" * 990 + "\r\n\r\nlast line\r\n").encode()
    message_id, raw = message("receipt", body, Content_Type="text/plain; charset=utf-8",
                              Content_Transfer_Encoding="8bit")
    with receipt(smtp_server) as client:
        assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
        assert client.has_extn("pipelining") and client.has_extn("starttls")
        assert int(client.esmtp_features["size"]) == MAX_MESSAGE
        assert not client.has_extn("auth")  # receipt takes no passwords
        refused = client.sendmail("sender@elsewhere.example", [f"{name}@{DOMAIN}"], raw,
                                  mail_options=["BODY=8BITMIME"])
    assert refused == {}
    [got] = stored(smtp_server, name)
    assert got.endswith(b"\r\n" + raw)
    head = got[:len(got) - len(raw)].decode()
    assert head.startswith("Return-Path: <sender@elsewhere.example>\r\nReceived: from client.example ([127.0.0.1])")
    assert "with ESMTP id " in head and f"for <{name}@{DOMAIN}>;" in head
    parsed = email.message_from_bytes(got, policy=email.policy.default)
    assert parsed["Message-ID"] == message_id


def test_receipt_over_starttls_and_aliases_of_the_domain(smtp_server, user):
    name, _ = user
    _, raw = message("tls")
    with receipt(smtp_server) as client:
        client.starttls(context=unverified())
        client.ehlo("client.example")
        assert not client.has_extn("starttls")
        client.sendmail("", [f"{name.upper()}@LOCALHOST", f"{name}+tag@{DOMAIN}"], raw)
    [got] = stored(smtp_server, name)  # two addresses of one user: one copy
    assert got.startswith(b"Return-Path: <>\r\n") and b"with ESMTPS id" in got
    assert got.endswith(raw)


def test_unknown_recipient_is_550_and_the_others_still_get_it(smtp_server, user):
    name, _ = user
    _, raw = message()
    with receipt(smtp_server) as client:
        client.mail("x@elsewhere.example")
        code, text = client.rcpt(f"nobody-{secrets.token_hex(3)}@{DOMAIN}")
        assert code == 550 and text.startswith(b"5.1.1")
        assert client.rcpt(f"{name}@{DOMAIN}")[0] == 250
        assert client.data(raw)[0] == 250
    assert len(stored(smtp_server, name)) == 1


@pytest.mark.parametrize("port", ["smtp", "submission"])
def test_unauthenticated_relay_is_refused(smtp_server, user, port):
    name, _ = user
    with smtplib.SMTP("127.0.0.1", smtp_server.ports[port], timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        code, text = client.mail(f"{name}@{DOMAIN}")
        if port == "submission":
            assert (code, text[:5]) == (530, b"5.7.0")  # nothing without AUTH
            assert client.rcpt("victim@elsewhere.example")[0] == 530
        else:
            assert code == 250
            code, text = client.rcpt("victim@elsewhere.example")
            assert code in (550, 554) and text.startswith(b"5.7.1")
        assert client.noop()[0] == 250


def test_oversize_message_is_552_and_nothing_is_stored(smtp_server, user):
    name, _ = user
    _, raw = message("big", b"y" * 998 + b"\r\n")
    raw = raw + (b"z" * 998 + b"\r\n") * (MAX_MESSAGE // 1000 + 10)
    with receipt(smtp_server) as client:
        code, text = client.mail("x@elsewhere.example", [f"SIZE={len(raw)}"])
        assert (code, text[:5]) == (552, b"5.3.4")  # refused up front when SIZE tells
        client.rset()
        client.mail("x@elsewhere.example")  # and at the end of DATA when it does not
        assert client.rcpt(f"{name}@{DOMAIN}")[0] == 250
        code, text = client.data(raw)
        assert (code, text[:5]) == (552, b"5.3.4")
        assert client.noop()[0] == 250  # the session goes on
        _, small = message()
        assert client.sendmail("x@elsewhere.example", [f"{name}@{DOMAIN}"], small) == {}
    [got] = stored(smtp_server, name)
    assert got.endswith(small)


def test_quota_is_checked_at_rcpt(smtp_server, user):
    name, _ = user
    with receipt(smtp_server) as client:
        client.mail("x@elsewhere.example", [f"SIZE={QUOTA + 1}"])
        code, text = client.rcpt(f"{name}@{DOMAIN}")
        assert (code, text[:5]) == (552, b"5.2.2")  # can never fit
        client.rset()
        _, filler = message("filler", b"f" * 900 + b"\r\n" * 1)
        filler += (b"f" * 998 + b"\r\n") * (QUOTA * 3 // 4 // 1000)
        assert client.sendmail("x@elsewhere.example", [f"{name}@{DOMAIN}"], filler) == {}
        client.mail("x@elsewhere.example", [f"SIZE={QUOTA // 2}"])
        code, text = client.rcpt(f"{name}@{DOMAIN}")
        assert (code, text[:5]) == (452, b"4.2.2")  # full for now


def test_too_many_recipients_is_452(smtp_server):
    names = [smtp_server.create_user()[0] for _ in range(6)]
    with receipt(smtp_server) as client:
        client.mail("x@elsewhere.example")
        for name in names[:5]:
            assert client.rcpt(f"{name}@{DOMAIN}")[0] == 250
        code, text = client.rcpt(f"{names[5]}@{DOMAIN}")
        assert (code, text[:5]) == (452, b"4.5.3")
        assert client.data(message()[1])[0] == 250
    for name in names[:5]:
        assert len(stored(smtp_server, name)) == 1
    assert maildir(smtp_server, names[5]) == []


def test_malformed_commands_get_5xx_and_the_session_goes_on(smtp_server, user):
    name, _ = user
    with socket.create_connection(("127.0.0.1", smtp_server.ports["smtp"]), timeout=TIMEOUT) as sock:
        stream = sock.makefile("rwb")

        def send(line: bytes) -> bytes:
            stream.write(line + b"\r\n")
            stream.flush()
            lines = [stream.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(stream.readline())
            return lines[-1]

        assert stream.readline().startswith(b"220 ")
        assert send(b"MAIL FROM:<a@b.example>").startswith(b"503")  # no EHLO yet
        assert send(b"EHLO").startswith(b"501")
        assert send(b"EHLO client.example").startswith(b"250 ")
        for line in (b"", b"FOO bar", b"BAR", b"BAZ 1", b"QUX", b"ZAP", b"\xff\xfe", b"MAIL", b"MAIL FROM:", b"MAIL FROM:<a@b",
                     b"MAIL FROM:x@", b"MAIL FROM:x@[", b"MAIL FROM:<@",
                     b"MAIL FROM:<a@b.example> BODY=9BIT", b"MAIL FROM:<a@b.example> SIZE=abc",
                     b"RCPT TO:<x@a.test>", b"DATA", b"MAIL FROM:<a@b.example> NOPE=1",
                     b"STARTTLS now", b"RSET please", b"AUTH PLAIN", b"X" * 70000):
            answer = send(line)
            assert answer[:1] == b"5", (line[:40], answer)
        assert send(b"MAIL FROM:<not an address>")[:1] == b"5"
        assert send(b"MAIL FROM:<a@b.example>").startswith(b"250 2.1.0")
        assert send(b"MAIL FROM:<a@b.example>").startswith(b"503")  # nested
        assert send(b"RCPT TO:<>")[:1] == b"5"
        assert send(b"RCPT TO:<" + b"q" * 400 + b"@a.test>")[:1] == b"5"
        assert send(f"RCPT TO:<{name}@{DOMAIN}>".encode()).startswith(b"250")
        assert send(b"DATA").startswith(b"354")
        assert send(b"Subject: after errors\r\n\r\nstill here\r\n.").startswith(b"250 2.0.0")
        assert send(b"QUIT").startswith(b"221")
    assert stored(smtp_server, name)[0].endswith(b"Subject: after errors\r\n\r\nstill here\r\n")


def test_message_bodies_in_pieces_dots_and_pipelined_commands(smtp_server, user):
    """The body arrives in odd pieces (the end marker split over three writes), with
    stuffed dots, followed at once by QUIT; a line over mail.max_line is 500 and the
    session carries on."""
    name, _ = user
    with socket.create_connection(("127.0.0.1", smtp_server.ports["smtp"]), timeout=TIMEOUT) as sock:
        stream = sock.makefile("rwb")

        def answer() -> bytes:
            lines = [stream.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(stream.readline())
            return lines[-1]

        def send(*pieces: bytes) -> None:
            for piece in pieces:
                stream.write(piece)
                stream.flush()
                time.sleep(0.05)

        def envelope() -> None:
            send(b"MAIL FROM:<a@b.example>\r\n")
            assert answer().startswith(b"250")
            send(f"RCPT TO:<{name}@{DOMAIN}>\r\n".encode())
            assert answer().startswith(b"250")
            send(b"DATA\r\n")
            assert answer().startswith(b"354")

        assert answer().startswith(b"220")
        send(b"EHLO client.example\r\n")
        assert answer().startswith(b"250 ")
        envelope()
        send(b"Subject: too long\r\n\r\n", b"x" * (70 * 1024), b"\r\nshort\r\n.\r\n")
        assert answer().startswith(b"500")
        envelope()
        send(b"Subject: dots\r\n\r\n..first\r\n", b"...two\r\n.", b".\r\nend", b"\r\n", b".", b"\r\nQUIT\r\n")
        assert answer().startswith(b"250 2.0.0")
        assert answer().startswith(b"221")
    [raw] = stored(smtp_server, name)
    assert raw.endswith(b"Subject: dots\r\n\r\n.first\r\n..two\r\n.\r\nend\r\n")


def test_pipelined_replies_come_in_order_and_none_waits_for_more_input(smtp_server, user):
    """RFC 2920: replies to a pipelined group may be written together, but every reply
    is sent once the client's input is used up; an error in the middle of a group is
    answered in its place."""
    name, _ = user
    with socket.create_connection(("127.0.0.1", smtp_server.ports["smtp"]), timeout=TIMEOUT) as sock:
        stream = sock.makefile("rwb")

        def answers(count: int) -> list[bytes]:
            return [stream.readline()[:3] for _ in range(count)]

        def send(data: bytes) -> None:
            stream.write(data)
            stream.flush()

        assert answers(1) == [b"220"]
        send(b"EHLO client.example\r\n")
        while stream.readline()[3:4] == b"-":
            pass
        # One group: RSET, MAIL, a bad RCPT, a good RCPT, DATA.
        send(b"RSET\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<nobody@" + DOMAIN.encode() + b">\r\n"
             b"RCPT TO:<" + f"{name}@{DOMAIN}".encode() + b">\r\nDATA\r\n")
        assert answers(5) == [b"250", b"250", b"550", b"250", b"354"]
        send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\n")
        assert answers(1) == [b"250"]
        # A lone command's 250 is not held back waiting for another command, nor is
        # the last of a group whose next command has only partly arrived.
        send(b"MAIL FROM:<a@b.example>\r\n")
        assert answers(1) == [b"250"]
        send(b"RSET\r\nRCPT TO:<" + f"{name}@{DOMAIN}".encode())
        assert answers(1) == [b"250"]
        send(b">\r\n")
        assert answers(1) == [b"503"]  # RCPT after RSET needs MAIL first
        send(b"NOOP\r\nNOOP\r\nQUIT\r\n")
        assert answers(3) == [b"250", b"250", b"221"]
    [raw] = stored(smtp_server, name)
    assert b"Subject: pipelined" in raw


def test_a_retried_transaction_is_not_delivered_twice(smtp_server, user):
    # What a client does after a lost reply or a 451: the same envelope and data again.
    name, _ = user
    _, raw = message("retry")
    for _ in range(2):
        with receipt(smtp_server) as client:
            assert client.sendmail("x@elsewhere.example", [f"{name}@{DOMAIN}"], raw) == {}
    time.sleep(0.3)
    assert len(stored(smtp_server, name)) == 1


def test_storage_failure_is_451_nothing_is_kept_and_the_retry_delivers_once(smtp_server):
    broken, _ = smtp_server.create_user()
    fine, _ = smtp_server.create_user()
    recipients = [f"{fine}@{DOMAIN}", f"{broken}@{DOMAIN}"]
    with receipt(smtp_server) as client:  # both mailboxes exist now
        client.sendmail("x@elsewhere.example", recipients, message("first")[1])
    new = smtp_server.data_dir / "mail" / broken / "new"
    first = stored(smtp_server, broken)
    for path in new.iterdir():
        path.unlink()
    new.rmdir()
    new.write_bytes(b"")  # a file where the directory was: every write there fails
    _, raw = message("second")
    try:
        with receipt(smtp_server) as client:
            with pytest.raises(smtplib.SMTPDataError) as failed:
                client.sendmail("x@elsewhere.example", recipients, raw)
            assert failed.value.smtp_code == 451 and failed.value.smtp_error.startswith(b"4.3.0")
            assert client.noop()[0] == 250
        assert [p.read_bytes() for p in maildir(smtp_server, fine) if p.read_bytes().endswith(raw)] == []
    finally:
        new.unlink()
        new.mkdir(mode=0o700)
    with receipt(smtp_server) as client:  # the client's retry: all of it, once
        assert client.sendmail("x@elsewhere.example", recipients, raw) == {}
    for name in (fine, broken):
        copies = [p for p in maildir(smtp_server, name) if p.read_bytes().endswith(raw)]
        assert len(copies) == 1, name
    assert first


# -- submission -------------------------------------------------------------------------


def test_submission_with_starttls_and_auth(smtp_server, user):
    name, password = user
    other, _ = smtp_server.create_user()
    with submission(smtp_server, tls=False) as client:
        # On loopback AUTH is offered before TLS too (identity takes the password there).
        assert client.has_extn("starttls") and "PLAIN" in client.esmtp_features["auth"]
    message_id, raw = message("submitted", b"Sent with STARTTLS and AUTH.\r\n", sender=f"{name}@{DOMAIN}")
    with submission(smtp_server, name, password) as client:
        assert "LOGIN" in client.esmtp_features["auth"]
        assert client.sendmail(f"{name}@{DOMAIN}", [f"{other}@{DOMAIN}"], raw) == {}
    [got] = stored(smtp_server, other)
    assert got.endswith(raw) and b"with ESMTPSA id" in got.split(b"\r\n\r\n")[0]
    [sent] = stored(smtp_server, name, "Sent")
    assert sent.endswith(raw)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_wrong_password_is_535(smtp_server, user, mechanism):
    name, password = user
    with submission(smtp_server) as client:
        client.user, client.password = name, password + "x"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert refused.value.smtp_code == 535 and refused.value.smtp_error.startswith(b"5.7.8")
        client.user, client.password = name, password
        assert client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))[0] == 235
        assert reply(client, "AUTH PLAIN")[0] == 503  # once is enough


def test_user_cannot_send_as_someone_else(smtp_server, user):
    name, password = user
    other, _ = smtp_server.create_user()
    with submission(smtp_server, name, password) as client:
        for address in (f"{other}@{DOMAIN}", f"{other}@localhost", "someone@elsewhere.example", "<>"):
            code, text = reply(client, f"MAIL FROM:<{address.strip('<>')}>")
            assert (code, text[:5]) == (553, "5.7.1"), address
        assert client.mail(f"{name}+news@localhost")[0] == 250  # their own, any local domain


def test_submission_rejects_unknown_local_recipients_and_takes_remote_ones(smtp_server, user):
    name, password = user
    with submission(smtp_server, name, password) as client:
        client.mail(f"{name}@{DOMAIN}")
        code, text = client.rcpt(f"nobody-{secrets.token_hex(3)}@{DOMAIN}")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt("friend@elsewhere.example")[0] == 250  # relaying after AUTH


def test_remote_clients_authenticate_only_after_starttls(make_server):
    address = local_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")
    server = make_server(env=SERVER_ENV, args=("--mail-domains", DOMAIN, "--bind", "0.0.0.0"))
    name, password = server.create_user()
    with smtplib.SMTP(address, server.ports["submission"], timeout=TIMEOUT) as client:
        client.ehlo("remote.example")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert reply(client, "AUTH PLAIN " + "AGFubgBwYXNzd29yZA==")[0] == 538
        assert reply(client, f"MAIL FROM:<{name}@{DOMAIN}>")[0] == 530
        client.starttls(context=unverified())
        client.ehlo("remote.example")
        assert "PLAIN" in client.esmtp_features["auth"]
        client.login(name, password)
        _, raw = message("from afar", sender=f"{name}@{DOMAIN}")
        assert client.sendmail(f"{name}@{DOMAIN}", [f"{name}@{DOMAIN}"], raw) == {}
    assert stored(server, name)[0].endswith(raw)
    assert f"([{address}])".encode() in stored(server, name)[0]


# -- other clients ----------------------------------------------------------------------


def test_curl_smtp_with_ssl_reqd(smtp_server, user, tmp_path):
    name, password = user
    other, _ = smtp_server.create_user()
    sent = []
    for port, auth in (("submission", ["-u", f"{name}:{password}"]), ("smtp", [])):
        _, raw = message(f"curl via {port}", b"Sent by curl.\r\n", sender=f"{name}@{DOMAIN}")
        sent.append(raw)
        upload = tmp_path / f"{port}.eml"
        upload.write_bytes(raw)
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "30", "--ssl-reqd", "-k",
             f"smtp://127.0.0.1:{smtp_server.ports[port]}", "--mail-from", f"{name}@{DOMAIN}",
             "--mail-rcpt", f"{other}@{DOMAIN}", "-T", str(upload), *auth],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    got = stored(smtp_server, other, count=2)
    assert sorted(raw for raw in sent if any(copy.endswith(raw) for copy in got)) == sorted(sent)


def test_swaks_auth_login_over_tls(smtp_server, user):
    name, password = user
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{smtp_server.ports['submission']}", "--tls",
         "--auth", "LOGIN", "--auth-user", name, "--auth-password", password,
         "--from", f"{name}@{DOMAIN}", "--to", f"{name}@{DOMAIN}", "--header", "Subject: swaks",
         "--body", "from swaks", "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    [got] = stored(smtp_server, name)
    assert b"Subject: swaks" in got and b"from swaks" in got


# -- limits -----------------------------------------------------------------------------


def test_connection_limits_and_timeouts(make_server):
    server = make_server(env=SERVER_ENV, args=LIMITS_ARGS)
    name, _ = server.create_user()
    port = server.ports["smtp"]
    held = [smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) for _ in range(3)]
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
    assert refused.value.smtp_code == 421 and refused.value.smtp_error.startswith(b"4.7.0")
    for client in held:
        client.close()
    time.sleep(0.2)
    # A command line longer than mail.max_line: 500, and the session goes on.
    with receipt(server) as client:
        assert reply(client, "NOOP " + "n" * 2000)[0] == 500
        assert client.noop()[0] == 250
    # Idle for longer than mail.idle_timeout: the server says so and hangs up.
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        stream = sock.makefile("rb")
        stream.readline()
        started = time.monotonic()
        assert stream.readline().startswith(b"421 4.4.2")
        assert stream.read() == b""
        assert 2.5 < time.monotonic() - started < 15
    # A body that stops arriving for longer than mail.command_timeout: dropped, not stored.
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        stream = sock.makefile("rwb")
        stream.readline()
        stream.write(f"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<{name}@{DOMAIN}>\r\nDATA\r\n"
                     "Subject: half\r\n\r\nhalf a body".encode())
        stream.flush()
        started = time.monotonic()
        rest = stream.read()
        assert b"354" in rest and b"250 2.0.0" not in rest
        assert time.monotonic() - started < 2.8  # before the idle timeout
    assert maildir(server, name) == []


def test_stop_lets_a_message_finish_and_says_421(make_server):
    server = make_server(env=SERVER_ENV, args=("--mail-domains", DOMAIN))
    name, _ = server.create_user()
    idle = receipt(server)
    busy = receipt(server)
    busy.mail("x@elsewhere.example")
    busy.rcpt(f"{name}@{DOMAIN}")
    busy.putcmd("data")
    assert busy.getreply()[0] == 354
    busy.send(b"Subject: in flight\r\n\r\npart one\r\n")
    server.proc.send_signal(15)
    time.sleep(0.5)
    busy.send(b"part two\r\n.\r\n")
    assert busy.getreply()[0] == 250  # the message being received when told to stop
    assert server.proc.wait(20) == 0
    assert idle.getreply()[0] == 421
    assert maildir(server, name)[0].read_bytes().endswith(b"part one\r\npart two\r\n")


def test_imap_reads_back_what_smtp_delivered(smtp_server, user):
    import imaplib

    name, password = user
    _, raw = message("for imap", "Ünïcödé body, 8-bit.\r\n.dot line\r\n".encode())
    with receipt(smtp_server) as client:
        client.sendmail("x@elsewhere.example", [f"{name}@{DOMAIN}"], raw)
    [on_disk] = stored(smtp_server, name)
    try:
        imap = imaplib.IMAP4("127.0.0.1", smtp_server.ports["imap"], timeout=5)
    except OSError as error:
        pytest.skip(f"IMAP is not answering: {error}")
    with imap:
        imap.login(name, password)
        imap.select("INBOX", readonly=True)
        status, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert status == "OK"
        assert data[0][1] == on_disk and on_disk.endswith(raw)
