"""IMAP (1143, STARTTLS) and IMAPS (1993) against `agora serve`, with imaplib and curl;
mail comes in by SMTP or IMAP APPEND. The session's details are in
test_mail_imap_session.py (a listener in the test process); here: the listeners as
the server runs them, TLS with its certificate, mail arriving by SMTP reaching an IDLE
client, restarts, and standard clients."""

from __future__ import annotations

import base64
import imaplib
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import AgoraServer
from mail_support import SERVER_ENV, TIMEOUT, local_address, message, module_server, send_smtp, unverified
from test_mail_imap_support import RawClient

SERVER_ARGS = ("--mail-domains", "a.test,localhost", "--mail-max-message", "1M")


@pytest.fixture(scope="module")
def imap_server(tmp_path_factory, backend) -> Iterator[AgoraServer]:
    with module_server(tmp_path_factory, backend, "imap", SERVER_ARGS) as server:
        yield server


@pytest.fixture
def user(imap_server) -> tuple[str, str]:
    return imap_server.create_user()


def cert(server: AgoraServer) -> Path:
    return server.data_dir / "tls" / "cert.pem"


def connect(server: AgoraServer, user: tuple[str, str] | None = None) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=TIMEOUT)
    if user:
        client.login(*user)
    return client


def test_login_list_select_append_fetch(imap_server, user):
    client = connect(imap_server)
    assert "STARTTLS" in client.capabilities and "IDLE" in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login(user[0], "not-the-password")
    client.login(*user)
    boxes = b"\n".join(client.list()[1])
    for name in (b'"INBOX"', b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk"):
        assert name in boxes
    raw = message("appended", "8-bit: grüße\r\n".encode())
    typ, data = client.append("INBOX", "(\\Flagged)", None, raw)
    assert typ == "OK" and re.match(rb"\[APPENDUID \d+ 1\]", data[0])
    assert client.select("INBOX")[1] == [b"1"]
    typ, data = client.fetch("1", "(FLAGS RFC822.SIZE BODY.PEEK[])")
    assert b"\\Flagged" in data[0][0] and b"RFC822.SIZE %d" % len(raw) in data[0][0]
    assert data[0][1] == raw
    client.logout()



def mime(subject: str, content_type: str, encoding: str, body: bytes) -> bytes:
    return message(subject, b"") [:-2] + (f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n"
                                          f"Content-Transfer-Encoding: {encoding}\r\n\r\n").encode() + body


ENCODED_BODIES = [
    # a soft line break inside the word
    mime("qp", "text/plain; charset=utf-8", "quoted-printable", b"The zephy=\r\nrine is here, Gr=C3=BC=C3=9Fe.\r\n"),
    # (a subject no hex digits can spell: the Message-IDs are random hex)
    mime("wombat", "text/plain; charset=utf-8", "base64", base64.encodebytes("A quokka says grüß dich".encode())),
    mime("latin1", "text/plain; charset=iso-8859-1", "8bit", "Straße in Köln\r\n".encode("latin-1")),
    mime("koi8", "text/plain; charset=koi8-r", "base64", base64.encodebytes("Привет из Москвы".encode("koi8-r"))),
    message("html", b"") [:-2] + (b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
                                  b"--b\r\nContent-Type: text/html; charset=windows-1252\r\n"
                                  b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                                  b"<p>Caf=E9 <b>menu</b> &amp; wine</p>\r\n--b--\r\n"),
]


def test_search_body_decodes_transfer_encodings_and_charsets(imap_server, user):
    client = connect(imap_server, user)
    for raw in ENCODED_BODIES:
        assert client.append("INBOX", None, None, raw)[0] == "OK"
    client.select("INBOX")

    def search(key: str, needle: str) -> list[int]:
        client.literal = needle.encode()  # sent as a literal: UTF-8 needles too
        typ, data = client.uid("SEARCH", "CHARSET", "UTF-8", key)
        assert typ == "OK", data
        return [int(n) for n in data[0].split()]

    for _ in range(2):  # the second time from the server's cache of body texts: the same answers
        assert search("BODY", "ZEPHYRINE") == [1] and search("BODY", "zephy=") == []
        assert search("BODY", "grüße") == [1] and search("BODY", "GRÜSSE") == [1]  # case-folded: ß is ss
        assert search("BODY", "quokka says") == [2] and search("BODY", "GRÜSS DICH") == [2]
        assert search("BODY", "straße in köln") == [3] and search("BODY", "STRASSE") == [3]
        assert search("BODY", "привет из москвы") == [4] and search("BODY", "ПРИВЕТ") == [4]
        assert search("BODY", "CAFÉ") == [5] and search("BODY", "& wine") == [5] and search("BODY", "<b>") == []
        assert search("BODY", "wombat") == [] and search("TEXT", "wombat") == [2]  # a header word: TEXT only
        assert search("TEXT", "köln") == [3] and search("TEXT", "subject: koi8") == [4]
    client.store("2", "+FLAGS", "\\Deleted")
    client.expunge()
    assert search("BODY", "quokka") == [] and search("BODY", "привет") == [4]  # UIDs: unchanged by the expunge
    client.logout()

def test_smtp_delivery_reaches_an_idle_client_within_a_second(imap_server, user):
    raw_client = RawClient(imap_server.ports["imap"])
    raw_client.login(*user)
    raw_client.command(b"s", b"SELECT INBOX")
    raw_client.send(b"i IDLE\r\n")
    assert raw_client.line().startswith(b"+ ")
    raw = message("by smtp")
    started = time.monotonic()
    send_smtp(imap_server, user[0], raw)
    sent = time.monotonic()
    assert raw_client.line() == b"* 1 EXISTS\r\n"
    assert time.monotonic() - sent < 1.0, time.monotonic() - started
    raw_client.send(b"DONE\r\n")
    assert raw_client.until(b"i")[-1].startswith(b"i OK")
    reply = raw_client.command(b"f", b"FETCH 1 (BODY.PEEK[TEXT])")
    assert reply[0].endswith(b"Hello from the tests.\r\n)\r\n")
    raw_client.close()


def test_starttls_and_implicit_tls_with_the_servers_certificate(imap_server, user):
    context = ssl.create_default_context(cafile=str(cert(imap_server)))
    client = connect(imap_server)
    client.starttls(ssl_context=context)
    client.login(*user)
    assert client.select("INBOX")[0] == "OK"
    client.logout()
    client = imaplib.IMAP4_SSL("127.0.0.1", imap_server.ports["imaps"], ssl_context=context, timeout=TIMEOUT)
    assert "STARTTLS" not in client.capabilities
    client.login(*user)
    assert client.noop()[0] == "OK"
    client.logout()


def test_bad_commands_and_oversize_literals(imap_server, user):
    raw = RawClient(imap_server.ports["imap"])
    raw.login(*user)
    assert raw.command(b"a", b"FROB")[-1].startswith(b"a BAD")
    assert raw.command(b"b", b"FETCH 1:* FLAGS")[-1].startswith(b"b BAD")  # nothing selected
    raw.send(b"c APPEND INBOX {2000000}\r\n")  # past mail.max_message (1M)
    assert raw.line().startswith(b"c NO [TOOBIG]")
    assert raw.command(b"d", b"NOOP")[-1].startswith(b"d OK")
    raw.close()


def test_users_see_only_their_own_mailboxes(imap_server):
    a = imap_server.create_user()
    b = imap_server.create_user()
    send_smtp(imap_server, b[0], message("for b only"))
    bob = connect(imap_server, b)
    bob.create("Private.Letters")
    bob.logout()
    alice = connect(imap_server, a)
    boxes = b"\n".join(alice.list('""', "*")[1])
    assert b"Private" not in boxes and b[0].encode() not in boxes
    assert alice.select("Private.Letters")[0] == "NO"
    assert alice.select("INBOX")[1] == [b"0"]
    assert alice.uid("SEARCH", "ALL")[1] == [b""]
    alice.logout()


def test_uids_and_uidvalidity_survive_a_restart(make_server):
    server = make_server(env=SERVER_ENV, args=SERVER_ARGS)
    user = server.create_user()
    client = connect(server, user)
    for i in range(4):
        client.append("INBOX", None, None, message(f"m{i}"))
    client.select("INBOX")
    client.store("2", "+FLAGS", "(\\Deleted \\Seen)")
    client.expunge()
    validity = client.untagged_responses["UIDVALIDITY"]
    client.logout()
    assert server.stop() == 0
    server.start()
    client = connect(server, user)
    client.select("INBOX")
    assert client.untagged_responses["UIDVALIDITY"] == validity
    assert client.untagged_responses["UIDNEXT"] == [b"5"]
    typ, data = client.fetch("1:*", "(UID FLAGS)")
    assert data == [b"1 (UID 1 FLAGS ())", b"2 (UID 3 FLAGS ())", b"3 (UID 4 FLAGS ())"]
    client.logout()


def test_stop_says_bye_to_idle_sessions(make_server):
    server = make_server(env=SERVER_ENV, args=SERVER_ARGS)
    user = server.create_user()
    raw = RawClient(server.ports["imap"])
    raw.login(*user)
    raw.command(b"s", b"SELECT INBOX")
    raw.send(b"i IDLE\r\n")
    raw.line()
    assert server.stop() == 0
    assert raw.line().startswith(b"* BYE")


def test_connection_limit_per_address(make_server):
    server = make_server(env=SERVER_ENV, args=(*SERVER_ARGS, "--mail-max-connections-per-ip", "3",
                                               "--mail-idle-timeout", "2"))
    clients = [RawClient(server.ports["imap"]) for _ in range(3)]
    with socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=TIMEOUT) as sock:
        assert sock.recv(200).startswith(b"* BYE Too many connections")
    # The idle timeout logs the three out, and their places are free again.
    for client in clients:
        assert client.line().startswith(b"* BYE Autologout")
        client.close()
    time.sleep(0.2)
    assert RawClient(server.ports["imap"]).greeting.startswith(b"* OK")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("scheme", ["imap", "imap-ssl-reqd", "imaps"])
def test_curl_fetches_a_message(imap_server, user, scheme):
    raw = message("for curl", b"curl reads this.\r\n")
    send_smtp(imap_server, user[0], raw)
    name, password = user
    if scheme == "imaps":
        url = f"imaps://127.0.0.1:{imap_server.ports['imaps']}/INBOX;UID=1"
    else:
        url = f"imap://127.0.0.1:{imap_server.ports['imap']}/INBOX;UID=1"
    args = ["curl", "-sS", "--max-time", "20", "--user", f"{name}:{password}", url]
    if scheme != "imap":
        args[1:1] = ["--cacert", str(cert(imap_server))]
    if scheme == "imap-ssl-reqd":
        args[1:1] = ["--ssl-reqd"]
    result = subprocess.run(args, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(raw)
    # And a listing of the mailboxes, as curl asks for it.
    listing = subprocess.run([*args[:-1], url.rsplit("/", 1)[0] + "/"], capture_output=True, timeout=60)
    assert listing.returncode == 0 and b'"INBOX"' in listing.stdout, listing


def test_remote_clients_log_in_only_after_starttls(make_server):
    address = local_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")
    server = make_server(env=SERVER_ENV, args=(*SERVER_ARGS, "--bind", "0.0.0.0"))
    user = server.create_user()
    client = imaplib.IMAP4(address, server.ports["imap"], timeout=TIMEOUT)
    assert "LOGINDISABLED" in client.capabilities and "AUTH=PLAIN" not in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login(*user)
    client.starttls(ssl_context=unverified())  # the certificate names localhost, not this address
    assert "AUTH=PLAIN" in client.capabilities
    client.login(*user)
    client.logout()
