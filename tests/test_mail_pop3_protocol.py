"""The POP3 state machine (agora.mail.pop3.protocol) without a network: every command,
the states, bad input, line limits, and hypothesis over random input and partial reads.
The same over sockets, with poplib and curl, is in test_mail_pop3_server.py."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agora.mail.pop3.protocol import (FLUSH_AT, POP3, Close, Entry, Flush, Login, MessageEncoder, Retrieve,
                                      StartTLS, Update)

MESSAGES = {
    7: b"From: a@b\r\nSubject: one\r\n\r\nfirst line\r\n.dotted\r\nlast\r\n",
    8: b"From: c@d\nSubject: bare LF\n\nbody 1\nbody 2\n.\nbody 4",
    9: b"Subject: headers only\r\n",
}
ENTRIES = [Entry(uid, f"1700000000.{uid}", len(raw)) for uid, raw in MESSAGES.items()]


class Driver:
    """Answers the machine's events as a session would, synchronously."""

    def __init__(self, chunk: int = 7, **options):
        self.proto = POP3(**options)
        self.proto.greeting()
        self.out = bytearray(self.proto.data_to_send())
        self.chunk = chunk
        self.closed = False
        self.updates: list[Update] = []
        self.logins: list[Login] = []
        self.flushes = 0

    def feed(self, data: bytes) -> bytes:
        start = len(self.out)
        self.proto.receive_data(data)
        self.run()
        return bytes(self.out[start:])

    def run(self) -> None:
        while not self.closed and (event := self.proto.next_event()) is not None:
            if isinstance(event, Close):
                self.closed = True
            elif isinstance(event, Flush):
                self.flushes += 1
            elif isinstance(event, Login):
                self.logins.append(event)
                if (event.name, event.password) == ("alice", "secret pw"):
                    self.proto.logged_in(ENTRIES)
                else:
                    self.proto.login_failed("Authentication failed")
            elif isinstance(event, Retrieve):
                self.out += self.proto.data_to_send()
                raw = MESSAGES[event.uid]
                self.proto.start_retrieve()
                encoder = MessageEncoder(event.lines)
                self.out += self.proto.data_to_send()
                for i in range(0, len(raw), self.chunk):
                    self.out += encoder.feed(raw[i:i + self.chunk])
                self.out += encoder.finish()
                self.proto.retrieve_done()
            elif isinstance(event, StartTLS):
                self.proto.tls_started()
            elif isinstance(event, Update):
                self.updates.append(event)
                self.proto.updated(True, "bye")
            self.out += self.proto.data_to_send()
        self.out += self.proto.data_to_send()

    def command(self, line: str | bytes) -> bytes:
        return self.feed((line.encode() if isinstance(line, str) else line) + b"\r\n")

    def login(self) -> None:
        assert self.command("USER alice").startswith(b"+OK")
        assert self.command("PASS secret pw").startswith(b"+OK maildrop has 3 messages")


def multiline(reply: bytes) -> list[bytes]:
    """The lines of a multi-line reply, dot-stuffing undone (asserts it is complete)."""
    assert reply.startswith(b"+OK") and reply.endswith(b"\r\n.\r\n"), reply
    lines = reply.split(b"\r\n")[1:-2]
    return [line[1:] if line.startswith(b".") else line for line in lines]


def test_greeting_capa_and_quit():
    d = Driver(stls=True)
    assert d.out.startswith(b"+OK ")
    caps = multiline(d.command("CAPA"))
    for cap in (b"TOP", b"UIDL", b"USER", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"STLS",
                b"SASL PLAIN", b"IMPLEMENTATION Agora"):
        assert cap in caps
    assert d.command("capa x").startswith(b"-ERR")
    assert d.command("QUIT").startswith(b"+OK") and d.closed and not d.updates


def test_capa_without_plaintext_login_offers_stls_only():
    d = Driver(stls=True, login_allowed=False)
    caps = multiline(d.command("CAPA"))
    assert b"STLS" in caps and b"USER" not in caps and b"SASL PLAIN" not in caps
    assert d.command("USER alice").startswith(b"-ERR [AUTH]") and b"STLS" in d.out.splitlines()[-1]
    assert d.command("AUTH PLAIN AGFsaWNlAHNlY3JldCBwdw==").startswith(b"-ERR [AUTH]")
    assert not d.logins
    # After STLS: TLS, login allowed, STLS no longer offered; pipelined plain text is dropped.
    assert d.feed(b"STLS\r\nUSER alice\r\n") == b"+OK Begin TLS negotiation now\r\n"
    caps = multiline(d.command("CAPA"))
    assert b"STLS" not in caps and b"USER" in caps
    assert d.command("STLS").startswith(b"-ERR")
    d.login()


def test_stls_unavailable_without_a_certificate():
    d = Driver(stls=False)
    assert b"STLS" not in multiline(d.command("CAPA"))
    assert d.command("STLS").startswith(b"-ERR")


def test_user_pass_wrong_password_and_order():
    d = Driver()
    assert d.command("PASS secret pw").startswith(b"-ERR")          # no USER yet
    assert d.command("USER").startswith(b"-ERR")
    assert d.command("USER alice").startswith(b"+OK")
    assert d.command("PASS wrong").startswith(b"-ERR [AUTH] ")
    assert d.command("PASS secret pw").startswith(b"-ERR")          # USER is spent
    assert d.command("USER nobody").startswith(b"+OK")              # same answer for anyone
    d.command("PASS x")
    d.login()
    assert d.logins[-1] == Login("alice", "secret pw")              # spaces kept in PASS
    for line in ("USER alice", "PASS x", "AUTH PLAIN", "STLS"):
        assert d.command(line).startswith(b"-ERR")


def test_auth_plain():
    token = base64.b64encode(b"\0alice\0secret pw")
    d = Driver()
    assert multiline(d.command("AUTH")) == [b"PLAIN"]
    assert d.command("AUTH CRAM-MD5").startswith(b"-ERR")
    assert d.command("AUTH PLAIN") == b"+ \r\n"
    assert d.command("*").startswith(b"-ERR")
    assert d.command("AUTH PLAIN") == b"+ \r\n"
    assert d.command("not base64!").startswith(b"-ERR [AUTH]")
    assert d.command(b"AUTH PLAIN " + base64.b64encode(b"bob\0alice\0secret pw")).startswith(b"-ERR [AUTH]")
    assert d.command(b"AUTH PLAIN " + base64.b64encode(b"alice\0secret pw")).startswith(b"-ERR [AUTH]")
    assert d.command("AUTH PLAIN =").startswith(b"-ERR [AUTH]")
    assert d.command(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong")).startswith(b"-ERR [AUTH]")
    d.command("AUTH PLAIN")
    assert d.command(token).startswith(b"+OK maildrop has 3 messages")
    d2 = Driver()
    assert d2.command(b"auth plain " + base64.b64encode(b"alice\0alice\0secret pw")).startswith(b"+OK")


def test_transaction_commands():
    d = Driver()
    assert d.command("STAT").startswith(b"-ERR")  # not yet
    d.login()
    sizes = [len(raw) for raw in MESSAGES.values()]
    assert d.command("STAT") == f"+OK 3 {sum(sizes)}\r\n".encode()
    assert multiline(d.command("LIST")) == [f"{n} {s}".encode() for n, s in enumerate(sizes, 1)]
    assert d.command("LIST 2") == f"+OK 2 {sizes[1]}\r\n".encode()
    assert multiline(d.command("UIDL")) == [b"1 1700000000.7", b"2 1700000000.8", b"3 1700000000.9"]
    assert d.command("UIDL 3") == b"+OK 3 1700000000.9\r\n"
    for bad in ("LIST 0", "LIST 4", "LIST x", "LIST -1", "LIST 99999999999999999999", "UIDL ²",
                "RETR", "TOP 1", "TOP 1 x", "TOP x 1", "DELE", "STAT 1", "NOOP x", "RSET 1"):
        assert d.command(bad).startswith(b"-ERR"), bad
    assert d.command("NOOP") == b"+OK\r\n"
    assert d.command("DELE 2") == b"+OK message 2 deleted\r\n"
    assert d.command("DELE 2").startswith(b"-ERR")
    assert d.command("RETR 2").startswith(b"-ERR") and d.command("LIST 2").startswith(b"-ERR")
    assert multiline(d.command("LIST")) == [f"1 {sizes[0]}".encode(), f"3 {sizes[2]}".encode()]
    assert d.command("STAT") == f"+OK 2 {sizes[0] + sizes[2]}\r\n".encode()
    assert d.command("RSET").startswith(b"+OK maildrop has 3 messages")
    assert d.command("STAT") == f"+OK 3 {sum(sizes)}\r\n".encode()
    d.command("RETR 1")
    d.command("TOP 3 0")
    d.command("DELE 3")
    d.command("DELE 1")
    assert d.command("QUIT") == b"+OK bye\r\n" and d.closed
    # Deleted: 1 and 3; read (RETR, not TOP) and kept: none, since 1 went too.
    assert d.updates == [Update(deleted=(7, 9), seen=())]


def test_retrieved_messages_are_reported_seen_at_quit():
    d = Driver()
    d.login()
    d.command("RETR 2")
    d.command("TOP 1 5")
    d.command("QUIT")
    assert d.updates == [Update(deleted=(), seen=(8,))]


def test_retr_and_top_encode_the_message():
    d = Driver()
    d.login()
    reply = d.command("RETR 1")
    assert reply.startswith(f"+OK {len(MESSAGES[7])} octets\r\n".encode())
    assert b"\r\n..dotted\r\n" in reply
    assert multiline(reply) == MESSAGES[7].split(b"\r\n")[:-1]
    reply = d.command("RETR 2")
    assert reply.split(b"\r\n", 1)[1] == (b"From: c@d\r\nSubject: bare LF\r\n\r\nbody 1\r\nbody 2\r\n..\r\n"
                                          b"body 4\r\n.\r\n")
    assert multiline(d.command("TOP 2 0")) == [b"From: c@d", b"Subject: bare LF", b""]
    assert multiline(d.command("TOP 2 3")) == [b"From: c@d", b"Subject: bare LF", b"", b"body 1", b"body 2", b"."]
    assert multiline(d.command("TOP 2 1000")) == multiline(d.command("RETR 2"))
    assert multiline(d.command("TOP 3 2")) == [b"Subject: headers only"]


def test_wrong_state_unknown_and_malformed_commands_get_err_and_the_session_goes_on():
    d = Driver()
    for line in (b"", b"   ", b"FOO", b"APOP alice 0123456789abcdef", b"LAST", b"RETR 1", b"DELE 1",
                 b"\xff\xfe", b"USER \xc3", b"12345", b"STAT\x00", b"LIST 1", b"\tCAPA"):
        reply = d.command(line)
        assert reply.startswith(b"-ERR ") and reply.count(b"\r\n") == 1, (line, reply)
    d.login()
    assert d.command("STAT").startswith(b"+OK")


def test_pipelined_commands_are_answered_in_order():
    d = Driver()
    out = d.feed(b"USER alice\r\nPASS secret pw\r\nSTAT\r\nLIST 1\nNOOP\r\nQUIT\r\nNOOP\r\n")
    replies = out.split(b"\r\n")
    assert [r.split(b" ")[0] for r in replies[:-1]] == [b"+OK"] * 6
    assert replies[2].startswith(b"+OK 3 ") and replies[3].startswith(b"+OK 1 ")
    assert d.closed


def test_many_pipelined_commands_are_answered_a_buffer_at_a_time():
    d = Driver()
    d.login()
    out = d.feed(b"LIST\r\n" * 10_000)
    assert out.count(b"\r\n.\r\n") == 10_000
    assert d.flushes >= len(out) // FLUSH_AT - 1


def test_long_lines_get_err_and_the_session_goes_on():
    d = Driver(max_line=100)
    assert d.command(b"NOOP " + b"x" * 200).startswith(b"-ERR line too long")
    # Unterminated: answered as soon as it is too long; the rest of it is dropped.
    assert d.feed(b"USER " + b"y" * 150).startswith(b"-ERR line too long")
    assert d.feed(b"z" * 10_000) == b""
    assert d.feed(b"zz\r\nCAPA\r\n").startswith(b"+OK")
    assert d.command(b"USER " + b"a" * 95).startswith(b"+OK")  # exactly max_line
    d.login()


def test_eof_without_quit_deletes_nothing():
    d = Driver()
    d.login()
    d.command("DELE 1")
    d.feed(b"STAT\r\nNOO")  # the complete line is still answered; the partial one is not
    assert d.feed(b"") == b"" and d.closed and not d.updates
    assert d.out.endswith(b"+OK 2 " + str(len(MESSAGES[8]) + len(MESSAGES[9])).encode() + b"\r\n")


def test_abort_says_err_and_closes():
    d = Driver()
    d.login()
    d.command("DELE 1")
    d.proto.abort("Autologout; idle for too long")
    d.run()
    assert d.out.endswith(b"-ERR Autologout; idle for too long\r\n") and d.closed and not d.updates
    assert d.feed(b"QUIT\r\n") == b""


def test_answers_out_of_turn_are_refused():
    proto = POP3()
    with pytest.raises(RuntimeError):
        proto.logged_in([])
    proto.receive_data(b"USER a\r\nPASS b\r\nNOOP\r\n")
    assert isinstance(proto.next_event(), Login)
    assert proto.next_event() is None and proto.waiting  # nothing until it is answered
    with pytest.raises(RuntimeError):
        proto.updated(True, "x")
    proto.login_failed("no")
    assert proto.next_event() is None
    assert proto.data_to_send().endswith(
        b"-ERR [AUTH] no\r\n-ERR NOOP is not valid in the authorization state\r\n")


# -- hypothesis ---------------------------------------------------------------------------

WORDS = ["USER alice", "PASS secret pw", "PASS x", "USER", "CAPA", "STAT", "LIST", "LIST 1", "LIST 9",
         "UIDL", "UIDL 2", "RETR 1", "RETR 2", "RETR 3", "TOP 1 0", "TOP 2 2", "TOP 3 x", "DELE 1",
         "DELE 2", "RSET", "NOOP", "AUTH", "AUTH PLAIN", "AUTH PLAIN AGFsaWNlAHNlY3JldCBwdw==",
         "STLS", "QUIT", "*", "APOP a b", "", " ", "LIST 0", "TOP 1 99999999999"]


def well_formed(out: bytes) -> None:
    """Every line is a status line (+OK, -ERR, or a SASL "+ ") or inside a multi-line
    reply that a "." line ends, with its dot-lines stuffed."""
    assert not out or out.endswith(b"\r\n")
    may_open = in_multi = False
    for line in out.split(b"\r\n")[:-1]:
        assert b"\n" not in line
        if not in_multi:
            if line.startswith((b"+OK", b"-ERR", b"+ ")):
                may_open = line.startswith(b"+OK")
                continue
            assert may_open, out
            in_multi, may_open = True, False
        if line == b".":
            in_multi = False
        else:
            assert not line.startswith(b".") or line.startswith(b".."), line
    assert not in_multi


endings = st.sampled_from([b"\r\n", b"\n", b"\r\n", b""])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.tuples(st.one_of(st.sampled_from(WORDS).map(str.encode), st.binary(max_size=40)),
                                endings), max_size=30),
       stls=st.booleans(), allowed=st.booleans())
def test_random_input_whole_or_byte_by_byte(lines, stls, allowed):
    data = b"".join(line + end for line, end in lines)
    whole = Driver(max_line=64, stls=stls, login_allowed=allowed)
    whole.feed(data)
    bytewise = Driver(max_line=64, stls=stls, login_allowed=allowed)
    for i in range(len(data)):
        bytewise.feed(data[i:i + 1])
    well_formed(bytes(whole.out))
    well_formed(bytes(bytewise.out))
    if b"Begin TLS" not in whole.out:  # after STLS, what was pipelined is dropped: that differs
        assert bytes(bytewise.out) == bytes(whole.out)
    whole.feed(b"")
    well_formed(bytes(whole.out))
    assert whole.closed


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000))
def test_random_bytes(data):
    d = Driver(max_line=128)
    d.feed(data)
    d.feed(b"\r\n")
    d.feed(b"")
    well_formed(bytes(d.out))
    assert d.closed


# -- the message encoder --------------------------------------------------------------------


def normalised(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def encode(raw: bytes, cuts: list[int], lines: int | None = None) -> bytes:
    encoder = MessageEncoder(lines)
    out = b""
    start = 0
    for cut in sorted(set(c % (len(raw) + 1) for c in cuts)) + [len(raw)]:
        out += encoder.feed(raw[start:cut])
        start = cut
    return out + encoder.finish()


def decode(out: bytes) -> bytes:
    assert out.endswith(b".\r\n")
    body = out[:-3]
    assert not body or body.endswith(b"\r\n")
    lines = body.split(b"\r\n")[:-1] if body else []
    assert b"." not in lines  # only the terminator is a lone dot
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


def whole_lines(text: bytes) -> bytes:
    return text if not text or text.endswith(b"\r\n") else text + b"\r\n"


message_bytes = st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"x: y", b"\xff"]),
                         max_size=60).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(raw=st.one_of(message_bytes, st.binary(max_size=300)), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_encoder_round_trips_in_any_chunks(raw, cuts):
    out = encode(raw, cuts)
    assert out == encode(raw, [])
    assert decode(out) == whole_lines(normalised(raw))


@settings(max_examples=500, deadline=None)
@given(raw=message_bytes, cuts=st.lists(st.integers(0, 100), max_size=6), n=st.integers(0, 5))
def test_top_sends_the_header_and_n_body_lines(raw, cuts, n):
    text = normalised(raw)
    parts = re.findall(rb"[^\n]*\n|[^\n]+$", text)
    expected, in_body, left = b"", False, n
    for part in parts:
        if in_body:
            if left == 0:
                break
            left -= 1
        elif part == b"\r\n":
            in_body = True
        expected += part
        if in_body and left == 0:
            break
    out = encode(raw, cuts, n)
    assert out == encode(raw, [], n)
    assert decode(out) == whole_lines(expected)
