"""IMAP sessions against a listener in this process (over a real store and TLS), with
imaplib and a line-level client: every command, the untagged updates between
sessions, limits and bad input. The same things against `agora serve` are in
test_mail_imap_server.py."""

from __future__ import annotations

import asyncio
import imaplib
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from test_mail_imap_support import IMAPHarness, RawClient

MESSAGE = (b"From: Bob Example <bob@example.org>\r\nTo: Alice <alice@localhost>\r\nCc: carol@example.net\r\n"
           b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from Bob\r\nDate: Mon, 1 Jan 2024 10:00:00 +0100\r\n"
           b"Message-ID: <m1@example.org>\r\nX-Tag: blue\r\n\r\nHello Alice,\r\nthe zebra is here.\r\n")
MULTIPART = (b"From: carol@example.net\r\nTo: alice@localhost\r\nSubject: parts\r\n"
             b"Date: Sun, 3 Mar 2024 08:00:00 +0000\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=XX\r\n\r\npreamble\r\n--XX\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\n\r\nfirst part\r\n--XX\r\n"
             b"Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
             b"<p>second=20part</p>\r\n--XX--\r\n")


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> IMAPHarness:
    h = IMAPHarness(tmp_path_factory.mktemp("imap") / "data",
                    env={"AGORA_MAIL_MAX_MESSAGE": "100K", "AGORA_MAIL_MAX_LINE": "2K",
                         "AGORA_MAIL_MAX_CONNECTIONS_PER_IP": "12"})
    yield h
    h.close()


@pytest.fixture
def alice(harness) -> tuple[str, str]:
    """A fresh user with two messages in INBOX."""
    name, password = harness.user()
    harness.deliver(name, MESSAGE)
    harness.deliver(name, MULTIPART)
    return name, password


def fetch_dict(client: imaplib.IMAP4, spec: str, items: str, uid: bool = False) -> list[bytes]:
    status, data = client.uid("FETCH", spec, items) if uid else client.fetch(spec, items)
    assert status == "OK", data
    return data


# -- not authenticated ---------------------------------------------------------------------


def test_greeting_capability_login_logout(harness, alice):
    client = harness.imap()
    assert b"IMAP4rev1" in client.welcome and b"STARTTLS" in client.welcome
    caps = client.capabilities
    for cap in ("IMAP4REV1", "STARTTLS", "AUTH=PLAIN", "LITERAL+", "IDLE", "UIDPLUS", "MOVE", "NAMESPACE",
                "ID", "ENABLE", "UNSELECT", "SASL-IR", "SPECIAL-USE"):
        assert cap in caps
    typ, data = client.login(*alice)
    assert typ == "OK" and b"CAPABILITY" in data[0]
    assert client.noop()[0] == "OK"
    caps = client.capability()[1][-1]
    assert b"STARTTLS" not in caps and b"AUTH=" not in caps
    assert client.logout()[0] == "BYE"


def test_wrong_password_is_no_and_the_session_continues(harness, alice):
    client = harness.imap()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login(alice[0], "wrong-password")
    with pytest.raises(imaplib.IMAP4.error):
        client.login("nobody", "whatever-password")
    client.login(*alice)
    client.logout()


def test_authenticate_plain_with_and_without_initial_response(harness, alice):
    name, password = alice
    client = harness.imap()
    client.authenticate("PLAIN", lambda _: f"\0{name}\0{password}".encode())
    assert client.state == "AUTH"
    client.logout()
    raw = RawClient(harness.ports["imap"])
    import base64
    token = base64.b64encode(f"\0{name}\0{password}".encode())
    assert raw.command(b"a", b"AUTHENTICATE PLAIN " + token)[-1].startswith(b"a OK")
    raw.close()
    raw = RawClient(harness.ports["imap"])
    raw.send(b"b AUTHENTICATE PLAIN\r\n")
    assert raw.line() == b"+ \r\n"
    raw.send(b"*\r\n")
    assert raw.line().startswith(b"b BAD")
    raw.send(b"c AUTHENTICATE PLAIN\r\n")
    raw.line()
    raw.send(base64.b64encode(f"\0{name}\0nope".encode()) + b"\r\n")
    assert raw.line().startswith(b"c NO [AUTHENTICATIONFAILED]")
    assert raw.command(b"d", b"AUTHENTICATE CRAM-MD5")[-1].startswith(b"d NO")
    raw.close()


def test_commands_in_the_wrong_state_are_bad(harness, alice):
    raw = RawClient(harness.ports["imap"])
    assert raw.command(b"a", b"SELECT INBOX")[-1].startswith(b"a BAD")
    assert raw.command(b"b", b"FETCH 1 FLAGS")[-1].startswith(b"b BAD")
    raw.login(*alice)
    assert raw.command(b"c", b"FETCH 1 FLAGS")[-1].startswith(b"c BAD")
    assert raw.command(b"d", b"LOGIN x y")[-1].startswith(b"d BAD")
    raw.close()


def test_bad_commands_get_bad_and_the_session_continues(harness, alice):
    raw = RawClient(harness.ports["imap"])
    raw.login(*alice)
    for line in (b"x1 FOO", b"x2 FETCH", b"x3 SELECT", b'x4 LOGIN "unterminated', b"x5 SEARCH BOGUS",
                 b"x6 STORE 1 +FLAGS (\\Seen", b"x7 UID NOOP", b"x8 FETCH 1 BODY[1.]"):
        reply = raw.command(line.split()[0], line[len(line.split()[0]) + 1:])
        assert reply[-1].startswith(line.split()[0] + b" BAD"), (line, reply)
    raw.send(b"\x00\xff garbage\r\n")
    assert raw.line().startswith(b"* BAD")
    assert raw.command(b"ok", b"NOOP")[-1].startswith(b"ok OK")
    raw.close()


def test_overlong_line_and_oversize_literals(harness, alice):
    raw = RawClient(harness.ports["imap"])
    # Before login, a literal is at most a line's length (mail.max_line, 2K here).
    raw.send(b"p LOGIN {5000}\r\n")
    assert raw.line().startswith(b"p NO [TOOBIG]")
    raw.login(*alice)
    assert raw.command(b"l1", b"NOOP " + b"x" * 5000)[-1].startswith(b"l1 BAD [TOOBIG]")
    raw.send(b"l2 APPEND INBOX {200000}\r\n")
    assert raw.line().startswith(b"l2 NO [TOOBIG]")
    assert raw.command(b"l3", b"NOOP")[-1].startswith(b"l3 OK")
    raw.send(b"l4 APPEND INBOX {200000+}\r\n" + b"x" * 1000)
    lines = [raw.line(), raw.line()]
    assert lines[0].startswith(b"l4 BAD [TOOBIG]") and lines[1].startswith(b"* BYE")
    with pytest.raises((EOFError, ConnectionError)):
        raw.line()
    raw.close()


def test_starttls_and_implicit_tls(harness, alice):
    context = ssl.create_default_context(cafile=str(harness.cert))
    client = harness.imap()
    client.starttls(ssl_context=context)
    assert "STARTTLS" not in client.capabilities
    client.login(*alice)
    assert client.select("INBOX")[1] == [b"2"]
    client.logout()
    client = harness.imaps()
    assert "STARTTLS" not in client.capabilities
    client.login(*alice)
    assert client.select("INBOX")[1] == [b"2"]
    assert client.fetch("1", "(BODY.PEEK[])")[1][0][1] == MESSAGE
    client.logout()


def test_commands_sent_in_plain_text_after_starttls_are_not_run(harness, alice):
    sock = socket.create_connection(("127.0.0.1", harness.ports["imap"]), timeout=10)
    sock.recv(1000)
    # Injected after STARTTLS in the same packet: must be dropped, not run over TLS.
    sock.sendall(f"s STARTTLS\r\nx LOGIN {alice[0]} {alice[1]}\r\n".encode())
    assert sock.recv(1000).startswith(b"s OK")
    context = ssl.create_default_context(cafile=str(harness.cert))
    tls = context.wrap_socket(sock, server_hostname="localhost")
    tls.sendall(b"c CAPABILITY\r\n")
    reply = b""
    while b"c OK" not in reply:
        reply += tls.recv(1000)
    assert b"AUTH=PLAIN" in reply  # still not logged in
    tls.close()


# -- mailboxes -----------------------------------------------------------------------------


def test_list_create_rename_delete_subscribe_status(harness, alice):
    client = harness.imap(*alice)
    typ, boxes = client.list()
    text = b"\n".join(boxes)
    assert b'(\\HasNoChildren) "." "INBOX"' in text
    for special in (b"Sent", b"Drafts", b"Trash", b"Junk"):
        assert b"\\" + special in text
    assert client.create("Archive")[0] == "OK"
    assert client.create("Archive.2024")[0] == "OK"
    assert client.create("Entw&APw-rfe")[0] == "OK"
    assert client.create("Archive")[0] == "NO"
    typ, boxes = client.list('""', "%")
    text = b"\n".join(boxes)
    assert b'(\\HasChildren) "." "Archive"' in text and b"2024" not in text
    assert b'"Entw&APw-rfe"' in text
    typ, boxes = client.list("Archive.", "*")
    assert boxes == [b'(\\HasNoChildren) "." "Archive.2024"']
    assert client.list('""', '""')[1] == [b'(\\Noselect) "." ""']
    assert client.rename("Archive", "Old")[0] == "OK"
    assert b"Old.2024" in b"\n".join(client.list()[1])
    assert client.rename("Nothing", "Else")[0] == "NO"
    assert client.unsubscribe("Old")[0] == "OK"
    lsub = b"\n".join(client.lsub()[1])
    assert b'"INBOX"' in lsub and b'"Old"' not in lsub and b'"Old.2024"' in lsub
    assert client.subscribe("Nope")[0] == "NO"
    typ, [status] = client.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
    assert re.match(rb'"INBOX" \(MESSAGES 2 RECENT 0 UIDNEXT 3 UIDVALIDITY \d+ UNSEEN 2\)', status), status
    assert client.status("Nope", "(MESSAGES)")[0] == "NO"
    assert client.delete("Old")[0] == "NO"  # has a child
    assert client.delete("Old.2024")[0] == "OK"
    assert client.delete("Old")[0] == "OK"
    assert client.delete("INBOX")[0] == "NO"
    assert client.delete("Trash")[0] == "NO"
    typ, data = client._simple_command("NAMESPACE")
    assert client._untagged_response(typ, data, "NAMESPACE")[1] == [b'(("" ".")) NIL NIL']
    typ, data = client.xatom("ID", '("name" "test")')
    assert typ == "OK"
    client.logout()


def test_select_and_examine_responses(harness, alice):
    client = harness.imap(*alice)
    typ, data = client.select("inbox")
    assert data == [b"2"]
    assert client.untagged_responses["FLAGS"][0].startswith(b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft")
    assert client.untagged_responses["RECENT"] == [b"0"]
    assert client.untagged_responses["UIDNEXT"] == [b"3"]
    assert int(client.untagged_responses["UIDVALIDITY"][0]) > 0
    assert client.untagged_responses["UNSEEN"] == [b"1"]
    assert "READ-WRITE" in client.untagged_responses
    typ, data = client.select("INBOX", readonly=True)
    assert typ == "OK" and "READ-ONLY" in client.untagged_responses
    assert client.store("1", "+FLAGS", "\\Seen")[0] == "NO"
    assert client.expunge()[0] == "NO"
    client.fetch("1", "(BODY[])")  # EXAMINE: does not set \Seen
    assert fetch_dict(client, "1", "(FLAGS)") == [b"1 (FLAGS ())"]
    assert client.select("Nope")[0] == "NO"
    assert client.state == "AUTH"
    client.logout()


def test_append_literal_and_literal_plus(harness, alice):
    client = harness.imap(*alice)
    typ, data = client.append("Drafts", "(\\Draft $Label)", imaplib.Time2Internaldate(1700000000), MESSAGE)
    assert typ == "OK" and re.match(rb"\[APPENDUID \d+ 1\]", data[0])
    client.select("Drafts")
    typ, data = client.fetch("1", "(FLAGS INTERNALDATE BODY.PEEK[])")
    assert b"\\Draft" in data[0][0] and b"$Label" in data[0][0]
    assert data[0][1] == MESSAGE
    assert client.append("Nope", None, None, MESSAGE)[1][0].startswith(b"[TRYCREATE]")
    client.logout()
    raw = RawClient(harness.ports["imap"])
    raw.login(*alice)
    reply = raw.command(b"a", b"APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE)
    assert reply[-1].startswith(b"a OK [APPENDUID")
    reply = raw.command(b"b", b"APPEND INBOX (\\Seen) {0+}\r\n")
    assert reply[-1].startswith(b"b OK")
    raw.close()


def test_fetch_items_and_partials(harness, alice):
    client = harness.imap(*alice)
    client.select("INBOX")
    [data] = fetch_dict(client, "1", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    assert re.match(rb'1 \(UID 1 FLAGS \(\) RFC822.SIZE %d INTERNALDATE "[ \d]\d-\w{3}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}" '
                    rb'ENVELOPE \("Mon, 1 Jan 2024 10:00:00 \+0100" "=\?utf-8\?q\?Gr=C3=BC=C3=9Fe\?= from Bob" '
                    rb'\(\("Bob Example" NIL "bob" "example.org"\)\)' % len(MESSAGE), data), data
    [data] = fetch_dict(client, "2", "(BODYSTRUCTURE)")
    assert data.startswith(b'2 (BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8")')
    assert b'"MIXED" ("BOUNDARY" "XX")' in data
    [data] = fetch_dict(client, "2", "(BODY)")
    assert data.startswith(b'2 (BODY (("TEXT" "PLAIN"') and b"BOUNDARY" not in data
    data = fetch_dict(client, "2", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (Subject)])")
    assert data[0][1] == b"first part" and b"text/html" in data[1][1] and data[2][1] == b"Subject: parts\r\n\r\n"
    data = fetch_dict(client, "1", "(BODY.PEEK[]<0.4> BODY.PEEK[TEXT]<6.5> BODY.PEEK[]<99999.10>)")
    assert data[0][1] == MESSAGE[:4] and data[1][1] == b"Alice"
    assert data[0][0].endswith(b"BODY[]<0> {4}") and b"BODY[TEXT]<6>" in data[1][0]
    assert data[2] == (b" BODY[]<99999> {0}", b"")
    data = fetch_dict(client, "1", "(RFC822.HEADER)")
    assert data[0][1] == MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    data = fetch_dict(client, "1", "(BODY.PEEK[HEADER.FIELDS.NOT (To Cc From Date Message-ID Subject)])")
    assert data[0][1] == b"X-Tag: blue\r\n\r\n"
    assert fetch_dict(client, "1:*", "(FLAGS)") == [b"1 (FLAGS ())", b"2 (FLAGS ())"]
    # BODY[] without PEEK, RFC822, RFC822.TEXT set \Seen (and say so).
    data = fetch_dict(client, "1", "(BODY[])")
    assert data[0][1] == MESSAGE and b"FLAGS (\\Seen)" in data[1]
    data = fetch_dict(client, "2", "(RFC822.TEXT)")
    assert b"FLAGS (\\Seen)" in data[1]
    assert fetch_dict(client, "1:2", "FLAGS") == [b"1 (FLAGS (\\Seen))", b"2 (FLAGS (\\Seen))"]
    data = fetch_dict(client, "1", "(RFC822)")
    assert data[0][1] == MESSAGE
    for macro, names in (("ALL", b"ENVELOPE"), ("FAST", b"RFC822.SIZE"), ("FULL", b"BODY (")):
        assert names in fetch_dict(client, "1", macro)[0]
    [data] = fetch_dict(client, "2", "(FLAGS)", uid=True)
    assert data == b"2 (UID 2 FLAGS (\\Seen))"
    assert fetch_dict(client, "99", "(FLAGS)", uid=True) == [None]
    with pytest.raises(imaplib.IMAP4.error, match="no such message"):
        client.fetch("3", "(FLAGS)")
    client.logout()


def test_search_keys(harness):
    name, password = harness.user()
    harness.deliver(name, MESSAGE)
    harness.deliver(name, MULTIPART)
    harness.deliver(name, b"From: dave@example.com\r\nSubject: big\r\nDate: Fri, 5 Apr 2024 12:00:00 -0700\r\n\r\n"
                    + b"z" * 5000 + b"\r\n")
    client = harness.imap(name, password)
    client.select("INBOX")
    client.store("1", "+FLAGS", "(\\Seen \\Flagged)")
    client.store("2", "+FLAGS", "(\\Answered $Work)")
    client.store("3", "+FLAGS", "(\\Deleted \\Draft)")

    def search(*criteria: str, uid: bool = False) -> list[int]:
        typ, data = client.uid("SEARCH", *criteria) if uid else client.search(None, *criteria)
        assert typ == "OK", (criteria, data)
        return [int(n) for n in data[0].split()]

    assert search("ALL") == [1, 2, 3]
    assert search("SEEN") == [1] and search("UNSEEN") == [2, 3]
    assert search("FLAGGED") == [1] and search("UNFLAGGED") == [2, 3]
    assert search("ANSWERED") == [2] and search("UNANSWERED") == [1, 3]
    assert search("DELETED") == [3] and search("UNDELETED") == [1, 2]
    assert search("DRAFT") == [3] and search("UNDRAFT") == [1, 2]
    assert search("KEYWORD", "$work") == [2] and search("UNKEYWORD", "$Work") == [1, 3]
    assert search("FROM", "bob") == [1] and search("FROM", "EXAMPLE.NET") == [2]
    assert search("TO", "alice") == [1, 2] and search("CC", "carol") == [1] and search("BCC", "x") == []
    raw = RawClient(harness.ports["imap"])
    raw.login(name, password)
    raw.command(b"s", b"SELECT INBOX")
    needle = "GRÜSSE".encode()
    reply = raw.command(b"c", b"SEARCH CHARSET UTF-8 SUBJECT {%d+}\r\n%s" % (len(needle), needle))
    assert reply[0] == b"* SEARCH 1\r\n"  # decoded, and case-folded: "GRÜSSE" finds "Grüße"
    needle = "grüße".encode()
    reply = raw.command(b"c", b"SEARCH CHARSET UTF-8 SUBJECT {%d+}\r\n%s" % (len(needle), needle))
    assert reply[0] == b"* SEARCH 1\r\n"
    raw.close()
    assert search("SUBJECT", '"from bob"') == [1]
    assert search("BODY", "zebra") == [1] and search("BODY", '"second part"') == [2]
    assert search("BODY", "x-tag") == [] and search("TEXT", "X-TAG") == [1] and search("TEXT", "zebra") == [1]
    assert search("HEADER", "X-Tag", "blue") == [1] and search("HEADER", "X-Tag", '""') == [1]
    assert search("LARGER", "4000") == [3] and search("SMALLER", "300") == [1]
    today = time.strftime("%d-%b-%Y", time.gmtime())
    assert search("SINCE", today) == [1, 2, 3] and search("BEFORE", today) == [] and search("ON", today) == [1, 2, 3]
    assert search("SENTON", "1-Jan-2024") == [1] and search("SENTBEFORE", "2-Mar-2024") == [1]
    assert search("SENTSINCE", "3-Mar-2024") == [2, 3]
    assert search("2:3") == [2, 3] and search("UID", "2,3") == [2, 3] and search("*") == [3]
    assert search("NOT", "SEEN") == [2, 3] and search("OR", "FLAGGED", "DRAFT") == [1, 3]
    assert search("(OR SEEN ANSWERED)", "NOT", "FROM", "bob") == [2]
    assert search("UNSEEN", "BODY", "second") == [2]
    assert search("NEW") == [] and search("OLD") == [1, 2, 3] and search("RECENT") == []
    assert search("UNSEEN", uid=True) == [2, 3] and search("UID", "2:*", uid=True) == [2, 3]
    assert client.search("ISO-8859-99", "ALL")[0] == "NO"
    client.logout()


def test_store_flags_silent_and_uid(harness, alice):
    client = harness.imap(*alice)
    client.select("INBOX")
    assert client.store("1:2", "+FLAGS", "(\\Flagged $Todo)")[1] == [
        b"1 (FLAGS (\\Flagged $Todo))", b"2 (FLAGS (\\Flagged $Todo))"]
    assert client.store("1", "-FLAGS", "($Todo)")[1] == [b"1 (FLAGS (\\Flagged))"]
    assert client.store("2", "FLAGS", "(\\Seen)")[1] == [b"2 (FLAGS (\\Seen))"]
    assert client.store("1", "+FLAGS.SILENT", "(\\Answered)")[1] == [None]
    assert client.uid("STORE", "2", "+FLAGS", "(\\Draft)")[1] == [b"2 (UID 2 FLAGS (\\Draft \\Seen))"]
    assert fetch_dict(client, "1:*", "FLAGS") == [b"1 (FLAGS (\\Answered \\Flagged))",
                                                   b"2 (FLAGS (\\Draft \\Seen))"]
    client.logout()


def test_copy_move_expunge_with_uidplus(harness, alice):
    client = harness.imap(*alice)
    client.create("Archive")
    client.select("INBOX")
    typ, data = client.copy("1:2", "Archive")
    assert typ == "OK" and re.match(rb"\[COPYUID \d+ 1:2 1:2\]", data[0])
    assert client.copy("1", "Nope")[1][0].startswith(b"[TRYCREATE]")
    typ, data = client._simple_command("UID", "COPY", "2", "Archive")
    assert re.match(rb"\[COPYUID \d+ 2 3\]", data[0])
    typ, data = client._simple_command("UID", "MOVE", "1", "Archive")
    assert typ == "OK"
    assert re.match(rb"\[COPYUID \d+ 1 4\]", client.untagged_responses["OK"][-1]), client.untagged_responses
    assert client.untagged_responses["EXPUNGE"] == [b"1"]
    client.untagged_responses.clear()
    assert fetch_dict(client, "1:*", "UID") == [b"1 (UID 2)"]
    client.select("Archive")
    assert client.store("1,3", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
    typ, data = client.expunge()
    assert data == [b"1", b"2"], data  # each number as it is at that moment
    assert fetch_dict(client, "1:*", "UID") == [b"1 (UID 2)", b"2 (UID 4)"]
    client.store("1:2", "+FLAGS.SILENT", "(\\Deleted)")
    typ, data = client.uid("EXPUNGE", "4")
    assert typ == "OK"
    assert fetch_dict(client, "1:*", "UID") == [b"1 (UID 2)"]
    # CLOSE expunges silently; UNSELECT does not.
    client.close()
    client.select("Archive")
    assert fetch_dict(client, "1:*", "UID") == [None]
    client.logout()


def test_untagged_updates_between_sessions(harness, alice):
    one = harness.imap(*alice)
    two = harness.imap(*alice)
    one.select("INBOX")
    two.select("INBOX")
    one.untagged_responses.clear()
    two.store("1", "+FLAGS", "(\\Flagged)")
    two.append("INBOX", None, None, MESSAGE)
    typ, _ = one.noop()
    assert one.untagged_responses.get("EXISTS") == [b"3"]
    assert b"1 (UID 1 FLAGS (\\Flagged))" in one.untagged_responses.get("FETCH", [])
    one.untagged_responses.clear()
    two.store("2", "+FLAGS", "(\\Deleted)")
    two.expunge()
    # During FETCH the numbers hold still: no EXPUNGE yet...
    status, data = one.fetch("3", "(UID)")
    assert b"3 (UID 3)" in data and "EXPUNGE" not in one.untagged_responses
    # ...and the next command that may, reports it.
    one.noop()
    assert one.untagged_responses.get("EXPUNGE") == [b"2"]
    assert fetch_dict(one, "1:*", "UID") == [b"1 (UID 1)", b"2 (UID 3)"]
    one.logout()
    two.logout()


def test_idle_sees_an_append_from_another_connection_within_a_second(harness, alice):
    raw = RawClient(harness.ports["imap"])
    raw.login(*alice)
    raw.command(b"s", b"SELECT INBOX")
    raw.send(b"i IDLE\r\n")
    assert raw.line().startswith(b"+ ")
    other = harness.imap(*alice)
    started = time.monotonic()
    other.append("INBOX", None, None, MESSAGE)
    line = raw.line()
    assert line == b"* 3 EXISTS\r\n" and time.monotonic() - started < 1.0
    assert raw.line() == b"* 1 RECENT\r\n"
    # A delivery (as SMTP makes it) and a flag change reach it too.
    threading.Thread(target=harness.deliver, args=(alice[0], MULTIPART)).start()
    assert raw.line() == b"* 4 EXISTS\r\n"
    raw.line()
    other.select("INBOX")
    other.store("1", "+FLAGS", "(\\Seen)")
    assert raw.line() == b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n"
    other.store("1", "+FLAGS", "(\\Deleted)")
    raw.line()
    other.expunge()
    assert raw.line() == b"* 1 EXPUNGE\r\n"
    raw.send(b"DONE\r\n")
    assert raw.line().startswith(b"i OK")
    assert raw.command(b"f", b"FETCH 3 (FLAGS)")[0] == b"* 3 FETCH (FLAGS (\\Recent))\r\n"
    other.logout()
    raw.close()


def test_users_cannot_reach_each_others_mail(harness):
    a = harness.user()
    b = harness.user()
    harness.deliver(a[0], MESSAGE)
    harness.deliver(b[0], MULTIPART)
    bob = harness.imap(*b)
    bob.create("Secret")
    bob.logout()
    alice = harness.imap(*a)
    boxes = b"\n".join(alice.list()[1])
    assert b"Secret" not in boxes
    assert alice.select("Secret")[0] == "NO"
    assert alice.select(f"{b[0]}.INBOX")[0] == "NO"
    assert alice.select("INBOX")[1] == [b"1"]
    assert fetch_dict(alice, "1", "(BODY.PEEK[])")[0][1] == MESSAGE
    assert alice.status("Secret", "(MESSAGES)")[0] == "NO"
    alice.logout()


def test_connections_per_address_are_limited(harness, alice):
    clients = [RawClient(harness.ports["imap"]) for _ in range(12)]
    sock = socket.create_connection(("127.0.0.1", harness.ports["imap"]), timeout=10)
    assert sock.recv(1000).startswith(b"* BYE Too many connections")
    sock.close()
    for client in clients:
        client.close()
    time.sleep(0.3)
    RawClient(harness.ports["imap"]).close()


def test_idle_and_command_timeouts(tmp_path):
    h = IMAPHarness(tmp_path / "data", env={"AGORA_MAIL_IDLE_TIMEOUT": "1", "AGORA_MAIL_COMMAND_TIMEOUT": "1"})
    try:
        raw = RawClient(h.ports["imap"])
        started = time.monotonic()
        assert raw.line().startswith(b"* BYE Autologout")
        assert time.monotonic() - started < 3
        raw = RawClient(h.ports["imap"])
        raw.send(b"a LOGIN {5}\r\n")
        assert raw.line().startswith(b"+")
        assert raw.line().startswith(b"* BYE Command not completed")
        # A command trickling in a byte at a time has the same time in all.
        raw = RawClient(h.ports["imap"])
        started = time.monotonic()
        with pytest.raises((EOFError, ConnectionError)):
            for byte in b"b NOOP" + b"x" * 20:
                raw.send(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - started > 3:
                    break
        assert time.monotonic() - started < 3
    finally:
        h.close()


def test_uids_and_uidvalidity_survive_a_restart(tmp_path):
    h = IMAPHarness(tmp_path / "data")
    try:
        name, password = h.user("carol")
        for _ in range(3):
            h.deliver(name, MESSAGE)
        client = h.imap(name, password)
        client.select("INBOX")
        client.store("2", "+FLAGS", "(\\Deleted)")
        client.expunge()
        validity = client.untagged_responses["UIDVALIDITY"]
        client.logout()
    finally:
        h.close()
    h = IMAPHarness(tmp_path / "data")
    try:
        client = h.imap(name, password)
        client.select("INBOX")
        assert client.untagged_responses["UIDVALIDITY"] == validity
        assert fetch_dict(client, "1:*", "UID") == [b"1 (UID 1)", b"2 (UID 3)"]
        client.logout()
    finally:
        h.close()


def test_server_stop_says_bye(tmp_path):
    h = IMAPHarness(tmp_path / "data")
    raw = RawClient(h.ports["imap"])
    h.close()
    assert raw.line().startswith(b"* BYE")


def test_cert_path_exists(harness):
    assert Path(harness.cert).is_file()


# -- fuzzing the whole session -------------------------------------------------------------


class FakeConnection:
    """A connection that hands the session prepared chunks, then the end, and keeps
    what the session writes."""

    def __init__(self, chunks: list[bytes]):
        self.chunks = list(chunks)
        self.peer = "127.0.0.1"
        self.secure = False
        self.written = bytearray()

    async def read(self) -> bytes | None:
        return self.chunks.pop(0) if self.chunks else b""

    def interrupt(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        pass

    async def start_tls(self) -> None:
        raise OSError("no TLS here")

    def close(self) -> None:
        pass


RESPONSE = re.compile(rb"(\* |\+ |[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+ (OK|NO|BAD) )")


def responses_of(stream: bytes) -> list[bytes]:
    """Split what a server sent into responses, literals included; AssertionError
    unless each is well-formed (a known start, CRLF-terminated, literals whole)."""
    out = []
    pos = 0
    while pos < len(stream):
        start = pos
        while True:
            end = stream.find(b"\r\n", pos)
            assert end >= 0, stream[start:start + 200]
            literal = re.search(rb"\{(\d+)\}$", stream[pos:end])
            pos = end + 2
            if not literal:
                break
            pos += int(literal.group(1))
            assert pos <= len(stream), "literal cut short"
        response = stream[start:pos]
        assert RESPONSE.match(response), response[:200]
        assert b"\n" not in response[:-2].replace(b"\r\n", b"") or b"{" in response, response[:200]
        out.append(response)
    return out


FUZZ_SAMPLES = [
    b"c1 FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE)\r\n", b"c2 UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM)]<0.10>)\r\n",
    b"c3 SEARCH OR FROM bob NOT (SEEN SINCE 1-Jan-2024) UID 1:*\r\n", b"c4 STORE 1 +FLAGS (\\Flagged)\r\n",
    b"c5 APPEND INBOX (\\Seen) {12+}\r\nSubject: x\r\n\r\n", b"c6 LIST \"\" *\r\n", b"c7 IDLE\r\nDONE\r\n",
    b"c8 STATUS INBOX (MESSAGES UNSEEN)\r\n", b"c9 COPY 1 Trash\r\n", b"d1 UID MOVE 2 Junk\r\n",
    b"d2 EXPUNGE\r\n", b"d3 CREATE Fuzz\r\n", b"d4 FETCH 1 (BODY[1] RFC822.HEADER)\r\n", b"d5 NOOP\r\n",
    b"d6 AUTHENTICATE PLAIN\r\n*\r\n", b"d7 SELECT Trash\r\n", b"d8 EXAMINE INBOX\r\n", b"d9 CLOSE\r\n",
]


def test_fuzz_the_session_every_response_is_well_formed(harness, alice):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from agora.mail.imap.session import Session

    name, password = alice
    prefix = f"a LOGIN {name} {password}\r\nb SELECT INBOX\r\n".encode()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.sampled_from(FUZZ_SAMPLES), min_size=1, max_size=5), st.data())
    def run(lines, data):
        stream = bytearray(b"".join(lines))
        for _ in range(data.draw(st.integers(0, 6))):
            position = data.draw(st.integers(0, len(stream)))
            byte = data.draw(st.sampled_from([b"{", b"}", b"+", b"(", b")", b'"', b"\\", b" ", b"\r\n", b"*",
                                              b"9", b"[", b"]", b"<", b"\x00", b"\xff", b"1:*"]))
            if data.draw(st.booleans()):
                stream[position:position] = byte
            else:
                del stream[position:position + 1]
        step = data.draw(st.integers(1, 64))
        body = prefix + bytes(stream)
        conn = FakeConnection([body[i:i + step] for i in range(0, len(body), step)])
        session = Session(harness.runtime, harness.store, conn, starttls=True)
        harness.call(asyncio.wait_for(session.run(), 20))
        answers = responses_of(bytes(conn.written))
        assert answers[0].startswith(b"* OK")

    run()


def test_an_overlong_line_during_idle_ends_it(harness, alice):
    raw = RawClient(harness.ports["imap"])
    raw.login(*alice)
    raw.command(b"s", b"SELECT INBOX")
    raw.send(b"i IDLE\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"x" * 5000 + b"\r\n")
    assert raw.line().startswith(b"* BAD [TOOBIG]")
    assert raw.line().startswith(b"i BAD")
    assert raw.command(b"n", b"NOOP")[-1].startswith(b"n OK")
    raw.close()


def test_a_client_that_does_not_read_blocks_nobody(harness):
    name, password = harness.user()
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 90
    for _ in range(100):
        harness.deliver(name, big)
    stuck = RawClient(harness.ports["imap"])
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.login(name, password)
    stuck.command(b"s", b"SELECT INBOX")
    stuck.send(b"f FETCH 1:* (BODY.PEEK[])\r\n")  # 9 MB of answer, never read
    time.sleep(0.5)
    other = RawClient(harness.ports["imap"])
    started = time.monotonic()
    other.login(name, password)
    assert other.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    assert other.command(b"n", b"FETCH 100 (FLAGS)")[-1].startswith(b"n OK")
    assert time.monotonic() - started < 2
    other.close()
    stuck.close()
