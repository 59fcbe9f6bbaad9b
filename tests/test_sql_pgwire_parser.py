"""The PostgreSQL frontend-message parser (sans-IO), fuzzed: random bytes, valid
messages mutated, truncated frames and absurd lengths never crash it or make it loop;
each gives events, a Malformed (answered with an ErrorResponse) or a Fatal (error, then
close). Then the same against a live listener: garbage gets an ErrorResponse or a
clean close, never a hang."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agora.sql.pgwire import frames
from agora.sql.pgwire.frames import FrontendParser


def typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def startup(**params: str) -> bytes:
    body = struct.pack("!i", frames.PROTOCOL_3) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return struct.pack("!i", len(body) + 4) + body


names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
values = st.one_of(st.none(), st.binary(max_size=40))


@st.composite
def messages(draw) -> bytes:
    """Before the relay only password messages and Terminate are expected; anything
    else (a query sent too early) must come out Malformed, never crash or hang."""
    kind = draw(st.sampled_from("pXQPSB"))
    if kind == "p":
        return typed(b"p", draw(st.binary(max_size=60)))
    if kind == "X":
        return typed(b"X", b"")
    return typed(kind.encode(), draw(st.binary(max_size=30)))


def feed_all(parser: FrontendParser, data: bytes, cuts: list[int]) -> list[frames.Event]:
    """Feed in chunks; also drain what a Startup/Terminate left buffered."""
    events: list[frames.Event] = []
    positions = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in zip(positions, positions[1:]):
        events += parser.feed(data[a:b])
    for _ in range(len(data) + 2):  # at most one more event per byte: no endless loop
        more = parser.feed(b"")
        if not more:
            break
        events += more
    return events


def check(events: list[frames.Event], parser: FrontendParser) -> None:
    for i, event in enumerate(events):
        assert isinstance(event, frames.Event.__args__)  # type: ignore[attr-defined]
        if isinstance(event, frames.Fatal):
            assert i == len(events) - 1 and parser.dead
            assert len(event.sqlstate) == 5


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6), st.booleans())
def test_random_bytes(data, cuts, in_startup):
    parser = FrontendParser(max_message=4096)
    if not in_startup:
        parser.feed(startup(user="u"))
    check(feed_all(parser, data, cuts), parser)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=6), st.lists(st.integers(0, 2000), max_size=6))
def test_valid_messages_parse_whole_in_any_chunking(msgs, cuts):
    parser = FrontendParser()
    parser.feed(startup(user="u", database="d"))
    events = feed_all(parser, b"".join(msgs), cuts)
    check(events, parser)
    # every message is one event (Terminate stops the stream, bad bodies are Malformed)
    expected = 0
    for m in msgs:
        expected += 1
        if m[:1] == b"X":
            break
    assert len(events) == expected
    assert not any(isinstance(e, frames.Fatal) for e in events)


@settings(max_examples=400, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=4), st.data())
def test_mutated_and_truncated_messages(msgs, data):
    stream = bytearray(b"".join(msgs))
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(stream) - 1))
        action = data.draw(st.sampled_from(["flip", "length", "cut", "insert"]))
        if action == "flip":
            stream[at] = data.draw(st.integers(0, 255))
        elif action == "length" and at + 5 <= len(stream):
            stream[at + 1:at + 5] = struct.pack("!i", data.draw(st.sampled_from([-1, 0, 3, 2**31 - 1, 1 << 30, 5])))
        elif action == "cut":
            del stream[at:]
            if not stream:
                break
        else:
            stream[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    parser = FrontendParser(max_message=1 << 16)
    parser.feed(startup(user="u"))
    check(feed_all(parser, bytes(stream), data.draw(st.lists(st.integers(0, 500), max_size=4))), parser)


@pytest.mark.parametrize("length", [-1, 0, 3, 2**31 - 1, 1 << 30, 65537])
def test_absurd_lengths_are_fatal(length):
    parser = FrontendParser(max_message=65536)
    parser.feed(startup(user="u"))
    [event] = parser.feed(b"Q" + struct.pack("!i", length) + b"x" * 10)
    assert isinstance(event, frames.Fatal) and parser.dead
    assert parser.feed(typed(b"S", b"")) == []
    startup_parser = FrontendParser()
    [event] = startup_parser.feed(struct.pack("!i", length) + b"\x00" * 8)
    assert isinstance(event, frames.Fatal)


def test_truncated_frame_waits_for_the_rest():
    parser = FrontendParser()
    parser.feed(startup(user="u"))
    message = typed(b"p", cstr("secret"))
    assert parser.feed(message[:-3]) == []
    assert parser.feed(message[-3:]) == [frames.Password(cstr("secret"))]


def test_startup_packets():
    assert FrontendParser().feed(struct.pack("!ii", 8, frames.SSL_REQUEST)) == [frames.SSLRequest()]
    assert FrontendParser().feed(struct.pack("!ii", 8, frames.GSSENC_REQUEST)) == [frames.GSSENCRequest()]
    assert FrontendParser().feed(struct.pack("!iiii", 16, frames.CANCEL_REQUEST, 7, -2)) == [frames.CancelRequest(7, -2)]
    [event] = FrontendParser().feed(startup(user="ann", database="ann/shop", application_name="psql"))
    assert event == frames.Startup(frames.PROTOCOL_3, {"user": "ann", "database": "ann/shop", "application_name": "psql"})
    [event] = FrontendParser().feed(struct.pack("!ii", 8, 2 << 16))
    assert isinstance(event, frames.Fatal) and event.sqlstate == "0A000"


def test_other_messages_before_the_relay_are_malformed_not_fatal():
    parser = FrontendParser()
    parser.feed(startup(user="u"))
    events = parser.feed(typed(b"Q", cstr("SELECT 1")) + typed(b"p", b"pw\x00") + typed(b"X", b""))
    assert [type(e) for e in events] == [frames.Malformed, frames.Password, frames.Terminate]


# -- against a live listener -----------------------------------------------------------

@pytest.fixture(scope="module")
def postgres_port(server):
    return server.ports["postgres"]


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send, half-close, read until the server closes: (reply, closed in time)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                return reply, True
            if not chunk:
                return reply, True
            reply += chunk
        return reply, False


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(min_size=1, max_size=200),
                      st.lists(messages(), min_size=1, max_size=3).map(lambda m: startup(user="nobody") + b"".join(m)),
                      st.sampled_from([struct.pack("!i", 2**31 - 1) + b"x" * 20, b"Q\x7f\xff\xff\xff",
                                       struct.pack("!ii", 8, frames.SSL_REQUEST) + b"junk"])))
def test_live_listener_answers_garbage_with_an_error_or_a_close(postgres_port, data):
    reply, closed = exchange(postgres_port, data)
    assert closed, "the server kept a connection open after its client finished sending"
    # nothing, 'N'/'S' to an SSL/GSS request, an authentication request, or an ErrorResponse
    assert reply == b"" or reply[:1] in (b"E", b"N", b"S", b"R"), reply[:40]
    if reply[:1] == b"E":
        assert b"C" in reply and b"M" in reply


def test_live_listener_absurd_length_after_startup(postgres_port):
    reply, closed = exchange(postgres_port, struct.pack("!i", 2**31 - 1))
    assert closed and reply.startswith(b"E") and b"invalid length of startup packet" in reply
