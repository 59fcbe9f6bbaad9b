"""The IMAP command reader, without a network: grammar, limits, and fuzzing (hypothesis)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agora.mail.imap import mutf7, responses
from agora.mail.imap.grammar import FetchAtt
from agora.mail.imap.parser import Command, Continue, Error, Line, Parser
from agora.mail.imap.sequence import STAR, compress, parse_sequence_set

RESPONSE_LINE = re.compile(rb"(\*|[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+) (BAD|NO) (\[[A-Z-]+\] )?[\x20-\x7e]*\r\n")


def events(data: bytes, parser: Parser | None = None, *, bytewise: bool = False) -> list:
    parser = parser or Parser(max_line=1000, max_literal=5000)
    out = []
    chunks = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        parser.feed(chunk)
        while (event := parser.next_event()) is not None:
            out.append(event)
    return out


def one(line: bytes) -> Command:
    [event] = [e for e in events(line) if not isinstance(e, Continue)]
    assert isinstance(event, Command), event
    return event


def error(line: bytes) -> Error:
    [event] = [e for e in events(line) if not isinstance(e, Continue)]
    assert isinstance(event, Error), event
    return event


def well_formed(event) -> bytes:
    """What a session answers to an event, checked to be one well-formed line."""
    if isinstance(event, Error):
        line = responses.tagged(event.tag or "*", event.status, event.text, event.code)
        assert RESPONSE_LINE.fullmatch(line), line
        return line
    if isinstance(event, Continue):
        return responses.continuation()
    assert isinstance(event, (Command, Line)), event
    return b""


# -- grammar ----------------------------------------------------------------------------


def test_simple_commands_and_case():
    for name in ("CAPABILITY", "noop", "Logout", "STARTTLS", "CHECK", "CLOSE", "UNSELECT",
                 "EXPUNGE", "IDLE", "NAMESPACE"):
        command = one(b"a1 " + name.encode() + b"\r\n")
        assert (command.tag, command.name, command.args, command.uid) == ("a1", name.upper(), (), False)


def test_login_strings_quoted_atoms_and_literals():
    assert one(b'x LOGIN alice "pa ss\\"w\\\\d"\r\n').args == ("alice", 'pa ss"w\\d')
    parsed = events(b"x LOGIN {5}\r\nalice {4+}\r\np\r\nw\r\n")
    assert isinstance(parsed[0], Continue)
    assert parsed[1].args == ("alice", "p\r\nw")
    assert error(b"x LOGIN alice\r\n").tag == "x"
    assert error(b'x LOGIN "alice pw\r\n').text == "unterminated quoted string"


def test_authenticate_with_and_without_initial_response():
    assert one(b"a AUTHENTICATE PLAIN\r\n").args == ("PLAIN", None)
    assert one(b"a AUTHENTICATE plain AGFsaWNlAHB3\r\n").args == ("PLAIN", b"\0alice\0pw")
    assert one(b"a AUTHENTICATE PLAIN =\r\n").args == ("PLAIN", b"")
    assert error(b"a AUTHENTICATE PLAIN !!!\r\n").tag == "a"


def test_mailbox_names_modified_utf7_and_inbox():
    assert one(b"a SELECT inbox\r\n").args == ("INBOX",)
    assert one(b'a SELECT "Inbox.Sub"\r\n').args == ("INBOX.Sub",)
    assert one(b"a CREATE Entw&APw-rfe\r\n").args == ("Entwürfe",)
    assert one(b'a RENAME "A B" {4+}\r\nC&-D\r\n').args == ("A B", "C&D")
    assert error(b"a CREATE &Jjo\r\n").tag == "a"
    assert one(b'a LIST "" "*"\r\n').args == ("", ["*"], [], [])
    assert one(b"a LIST (SPECIAL-USE) \"\" % RETURN (CHILDREN)\r\n").args == ("", ["%"], ["SPECIAL-USE"], ["CHILDREN"])
    assert one(b'a LSUB "" "Arch%"\r\n').args == ("", ["Arch%"])
    assert one(b"a STATUS INBOX (MESSAGES UIDNEXT unseen)\r\n").args == ("INBOX", ["MESSAGES", "UIDNEXT", "UNSEEN"])
    assert error(b"a STATUS INBOX (BOGUS)\r\n").text.startswith("unknown STATUS item")


def test_mutf7_round_trip_examples():
    assert mutf7.encode("~peter/mail/台北/日本語") == b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert mutf7.decode(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    for bad in (b"&", b"&U,BTF", b"&AGE-", b"\xc3\xa9"):
        with pytest.raises(ValueError):
            mutf7.decode(bad)


@given(st.text())
def test_mutf7_round_trip(name):
    assert mutf7.decode(mutf7.encode(name)) == name


def test_sequence_sets():
    s = parse_sequence_set("1,3:5,7:*")
    assert s.ranges == ((1, 1), (3, 5), (7, STAR))
    assert s.sequence_numbers(8) == [1, 3, 4, 5, 7, 8]
    assert parse_sequence_set("*:4").sequence_numbers(6) == [4, 5, 6]
    with pytest.raises(ValueError):
        parse_sequence_set("1:3").sequence_numbers(2)
    assert parse_sequence_set("1:*").sequence_numbers(0) == []
    assert parse_sequence_set("559:*").select_uids([3, 9, 20]) == [20]
    assert parse_sequence_set("2:10,1").select_uids([1, 5, 11]) == [1, 5]
    for bad in ("0", "1:", ":", "1,,2", "01", "a", "99999999999"):
        with pytest.raises(ValueError):
            parse_sequence_set(bad)
    assert compress([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"


def test_fetch_attributes_macros_sections_partials():
    command = one(b"t FETCH 1:* ALL\r\n")
    assert [a.name for a in command.args[1]] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    assert [a.name for a in one(b"t FETCH 1 fast\r\n").args[1]] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert [a.name for a in one(b"t FETCH 1 FULL\r\n").args[1]][-1] == "BODY"
    command = one(b"t UID FETCH 1:3,5 (UID FLAGS BODY.PEEK[HEADER.FIELDS (From \"To\")]<0.100> "
                  b"BODY[] BODY[1.2.MIME] body[text]<5.10> RFC822.HEADER BODYSTRUCTURE)\r\n")
    assert command.uid and command.name == "FETCH"
    atts = command.args[1]
    assert atts[2] == FetchAtt("BODY", "HEADER.FIELDS (FROM TO)", (0, 100), peek=True)
    assert atts[2].label == b"BODY[HEADER.FIELDS (FROM TO)]<0>"
    assert atts[3] == FetchAtt("BODY", "")
    assert atts[4].section == "1.2.MIME"
    assert atts[5] == FetchAtt("BODY", "TEXT", (5, 10))
    assert atts[6].name == "RFC822.HEADER"
    for bad in (b"t FETCH 1 (FLAGS\r\n", b"t FETCH 1 BOGUS\r\n", b"t FETCH 1 BODY[MIME]\r\n",
                b"t FETCH 1 BODY[1.]\r\n", b"t FETCH 1 BODY[HEADER.FIELDS]\r\n",
                b"t FETCH 1 BODY[]<1.0>\r\n", b"t FETCH x FLAGS\r\n", b"t FETCH 1 ()\r\n",
                b"t FETCH 1 FLAGS extra\r\n", b"t FETCH 1 (ALL)\r\n"):
        assert error(bad).tag == "t", bad


def test_search_keys():
    charset, key = one(b"s SEARCH CHARSET UTF-8 FROM {5+}\r\nJos\xc3\xa9 UNSEEN\r\n").args
    assert charset == "UTF-8"
    assert key == ("AND", [("HEADER", "FROM", "José"), ("FLAG", "\\Seen", False)])
    _, key = one(b"s UID SEARCH OR (SINCE 1-Feb-2024 LARGER 10) NOT KEYWORD $Junk 2:4 UID 9:*\r\n").args
    assert key[0] == "AND"
    assert key[1][0] == ("OR", ("AND", [("DATE", "SINCE", date(2024, 2, 1)), ("SIZE", "LARGER", 10)]),
                         ("NOT", ("FLAG", "$Junk", True)))
    assert key[1][1][0] == "SEQ" and key[1][2][0] == "UID"
    _, key = one(b'x SEARCH HEADER X-Spam "yes" SENTON "3-Mar-2023" BODY x TEXT y NEW OLD RECENT\r\n').args
    assert key[1][:3] == [("HEADER", "X-SPAM", "yes"), ("SENT", "ON", date(2023, 3, 3)), ("BODY", "x")]
    for bad in (b"s SEARCH\r\n", b"s SEARCH FROM\r\n", b"s SEARCH SINCE 31-Feb-2024\r\n",
                b"s SEARCH BOGUS\r\n", b"s SEARCH ()\r\n", b"s SEARCH OR SEEN\r\n",
                b"s SEARCH " + b"(" * 200 + b"ALL" + b")" * 200 + b"\r\n",
                b"s SEARCH " + b"NOT " * 300 + b"ALL\r\n"):
        assert error(bad).tag == "s", bad


def test_store_copy_move_expunge_append():
    assert one(b"s STORE 1:2 +FLAGS.SILENT (\\Seen \\deleted $Label1)\r\n").args[1:] == (
        "add", True, ["\\Seen", "\\Deleted", "$Label1"])
    assert one(b"s UID STORE 5 -FLAGS \\Flagged\r\n").args[1:] == ("remove", False, ["\\Flagged"])
    assert one(b"s STORE 1 FLAGS ()\r\n").args[1:] == ("set", False, [])
    assert error(b"s STORE 1 +LABELS (x)\r\n").tag == "s"
    assert one(b"c UID COPY 1:3 Trash\r\n").args[1] == "Trash"
    assert one(b"c MOVE 1 \"Sent\"\r\n").name == "MOVE"
    assert one(b"c UID EXPUNGE 4:5\r\n").args[0].ranges == ((4, 5),)
    assert error(b"c EXPUNGE 4:5\r\n").tag == "c"
    parsed = events(b'a APPEND Drafts (\\Draft) "25-Nov-2026 02:59:02 -0500" {12+}\r\nhello\r\nworld\r\n')
    [command] = parsed
    mailbox, flags, when, message = command.args
    assert (mailbox, flags, message) == ("Drafts", ["\\Draft"], b"hello\r\nworld")
    assert when == datetime(2026, 11, 25, 2, 59, 2, tzinfo=timezone(-timedelta(hours=5)))
    assert one(b"a APPEND INBOX {0+}\r\n\r\n").args == ("INBOX", [], None, b"")
    assert error(b'a APPEND INBOX "not a literal"\r\n').tag == "a"


def test_id_enable_and_uid_errors():
    assert one(b"i ID NIL\r\n").args == (None,)
    assert one(b'i ID ("name" "mutt" "version" NIL)\r\n').args == ({"name": "mutt", "version": None},)
    assert one(b"e ENABLE UTF8=ACCEPT condstore\r\n").args == ("UTF8=ACCEPT", "CONDSTORE")
    assert error(b"e ENABLE\r\n").tag == "e"
    assert error(b"u UID LOGIN a b\r\n").text == "UID LOGIN is not a command"


def test_tags():
    assert error(b"bogus\r\n").tag == "bogus"
    assert error(b"+ NOOP\r\n").tag is None
    assert error(b"a{b NOOP\r\n").tag is None
    assert error(b"* NOOP\r\n").tag is None
    assert one(b"A]1 NOOP\r\n").tag == "A]1"
    assert events(b"\r\n\r\n") == []
    assert one(b"a NOOP\n").name == "NOOP"  # a bare LF ends a line too


# -- limits and modes ----------------------------------------------------------------------


def test_overlong_line_is_refused_and_the_session_reads_on():
    parser = Parser(max_line=100, max_literal=1000)
    got = events(b"a1 NOOP " + b"x" * 500 + b"\r\na2 NOOP\r\n", parser)
    assert isinstance(got[0], Error) and got[0].tag == "a1" and got[0].code == "TOOBIG" and not got[0].fatal
    assert got[1].name == "NOOP" and got[1].tag == "a2"
    # In pieces, the line still too long before its end has come.
    got = events(b"b1 SEARCH " + b"y" * 300, parser) + events(b"z" * 300 + b"\r\nb2 NOOP\r\n", parser)
    assert [type(e) for e in got] == [Error, Command] and got[0].tag == "b1" and got[1].tag == "b2"
    # An overlong line announcing a non-synchronising literal: the literal goes too.
    got = events(b"c1 APPEND INBOX " + b"q" * 200 + b" {9+}\r\nc2 NOOP\r\n\r\nc3 NOOP\r\n", parser)
    assert [(type(e), getattr(e, "tag", None)) for e in got] == [(Error, "c1"), (Command, "c3")]


def test_literal_limits():
    parser = Parser(max_line=1000, max_literal=10)
    [refusal] = events(b"a APPEND INBOX {11}\r\n", parser)
    assert (refusal.tag, refusal.status, refusal.code, refusal.fatal) == ("a", "NO", "TOOBIG", False)
    assert events(b"b NOOP\r\n", parser)[0].tag == "b"
    [fatal] = events(b"c APPEND INBOX {11+}\r\n", parser)
    assert fatal.fatal and fatal.code == "TOOBIG" and fatal.tag == "c"
    # The literals of one command count together.
    parser = Parser(max_line=1000, max_literal=10)
    got = events(b"d LOGIN {6}\r\n", parser) + events(b"abcdef {6}\r\n", parser)
    assert isinstance(got[0], Continue) and got[1].code == "TOOBIG"


def test_pending_and_reset():
    parser = Parser()
    assert not parser.pending
    parser.feed(b"a NO")
    assert parser.next_event() is None and parser.pending
    parser.reset()
    assert not parser.pending
    parser.feed(b"a STARTTLS\r\nb LOGIN x y\r\n")
    assert parser.next_event().name == "STARTTLS"
    parser.reset()  # what was sent before TLS began is never run
    assert parser.next_event() is None


def test_line_mode_for_idle_and_sasl():
    parser = Parser()
    parser.feed(b"a IDLE\r\nDONE\r\nb NOOP\r\n")
    assert parser.next_event().name == "IDLE"
    parser.expect_line()
    assert parser.next_event() == Line(b"DONE")
    assert parser.next_event().name == "NOOP"


def test_byte_by_byte_gives_the_same_events():
    data = (b'a LOGIN {5}\r\nalice "pw"\r\nb SELECT INBOX\r\nc FETCH 1:* (FLAGS BODY[HEADER])\r\n'
            b"d APPEND x {3+}\r\nabc\r\ne BAD COMMAND\r\n")
    assert events(data, bytewise=True) == events(data)


# -- fuzzing ---------------------------------------------------------------------------

SAMPLES = [
    b"a1 LOGIN alice secret\r\n", b'a2 SELECT "INBOX"\r\n', b"a3 FETCH 1:* (FLAGS ENVELOPE)\r\n",
    b"a4 UID FETCH 1,3:5 (BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10>)\r\n",
    b"a5 SEARCH CHARSET UTF-8 OR FROM x NOT (SEEN SINCE 1-Jan-2024) UID 1:*\r\n",
    b"a6 APPEND INBOX (\\Seen) \"01-Jan-2024 00:00:00 +0000\" {5}\r\nhello\r\n",
    b"a7 STORE 1 +FLAGS.SILENT (\\Deleted)\r\n", b"a8 LIST \"\" \"*\"\r\n", b"a9 IDLE\r\nDONE\r\n",
    b"b1 APPEND INBOX {3+}\r\nabc\r\n", b"b2 STATUS INBOX (MESSAGES UNSEEN)\r\n",
    b"b3 AUTHENTICATE PLAIN AGEAYg==\r\n", b'b4 ID ("a" "b")\r\n', b"b5 UID MOVE 1:* Trash\r\n",
]


def check_stream(chunks: list[bytes], max_line: int = 200, max_literal: int = 300) -> None:
    parser = Parser(max_line=max_line, max_literal=max_literal)
    for chunk in chunks:
        parser.feed(chunk)
        for _ in range(10_000):  # bounded: the parser never loops without progress
            event = parser.next_event()
            if event is None:
                break
            well_formed(event)
            if isinstance(event, Command) and event.name in ("IDLE", "AUTHENTICATE"):
                parser.expect_line()
            if isinstance(event, Error) and event.fatal:
                return
        else:
            raise AssertionError("parser does not make progress")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(1, 50))
def test_fuzz_random_bytes(data, step):
    check_stream([data[i:i + step] for i in range(0, len(data), step)])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(SAMPLES), min_size=1, max_size=6), st.data())
def test_fuzz_mutated_commands(lines, data):
    stream = bytearray(b"".join(lines))
    for _ in range(data.draw(st.integers(0, 8))):
        position = data.draw(st.integers(0, len(stream)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.sampled_from([b"{", b"}", b"+", b"(", b")", b'"', b"\\", b" ", b"\r", b"\n",
                                          b"*", b"9", b"[", b"]", b"<", b"~", b"\x00", b"\xff", b"a"]))
        if action == "insert":
            stream[position:position] = byte
        elif action == "delete":
            del stream[position:position + 1]
        else:
            stream[position:position + 1] = byte
    step = data.draw(st.integers(1, 40))
    check_stream([bytes(stream[i:i + step]) for i in range(0, len(stream), step)])


@settings(max_examples=200)
@given(st.lists(st.sampled_from([s for s in SAMPLES if b"IDLE" not in s]), min_size=1, max_size=5))
def test_fuzz_valid_commands_parse_the_same_in_any_pieces(lines):
    data = b"".join(lines)
    whole = events(data, Parser())
    assert all(not isinstance(e, Error) for e in whole)
    assert events(data, Parser(), bytewise=True) == whole
