"""Connections cannot be hoarded (issue 14, item 4): thousands of silent or trickling
connections from one address leave the others served and are closed at their deadline;
a trickled SMTP body and silent mail clients are cut off at theirs; a burst of 3,000
connects to each listener is answered, none left to time out; running out of file
descriptors is logged and the listeners go on; a failed TLS handshake is one INFO line.

One server for the module, with short deadlines. "Another address" is 127.0.0.2: on
Linux the whole of 127/8 is local, so a client bound to it reaches the server on
127.0.0.1 as a different peer. Thousands of sockets are driven by asyncio in this
process (non-blocking), not by threads.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from conftest import AgoraServer

# One worker runs them all: one server for the module, and no two floods at once.
pytestmark = pytest.mark.xdist_group("connection-limits")

HEADER_TIMEOUT = 8.0
COMMAND_TIMEOUT = 2.0
LOGIN_TIMEOUT = 3.0
BURST = 3000
SLOWLORIS = 2100
CONNECT_TIMEOUT = 15.0  # generous: the point is that none is left unanswered
ANSWER_TIMEOUT = 15.0
OTHER = "127.0.0.2"


def _raise_own_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs an open-files hard limit of {need} (ulimit -Hn is {hard})")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgoraServer]:
    _raise_own_fd_limit(BURST + SLOWLORIS + 1024)
    server = AgoraServer(tmp_path_factory.mktemp("connlimits") / "data", env={
        "AGORA_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "AGORA_MAIL_COMMAND_TIMEOUT": str(COMMAND_TIMEOUT),
        "AGORA_MAIL_LOGIN_TIMEOUT": str(LOGIN_TIMEOUT),
        "AGORA_HTTP_ACCESS_LOG": "false",
    }).start()
    yield server
    server.stop()


async def _connect(port: int, source: str | None = None) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    try:
        if source:
            sock.bind((source, 0))
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)),
                               CONNECT_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect_many(count: int, port: int, source: str | None = None) -> list[socket.socket]:
    results = await asyncio.gather(*(_connect(port, source) for _ in range(count)), return_exceptions=True)
    sockets = [r for r in results if isinstance(r, socket.socket)]
    failures = [r for r in results if not isinstance(r, socket.socket)]
    if failures:
        for sock in sockets:
            sock.close()
    assert not failures, f"{len(failures)} of {count} connects failed, e.g. {failures[0]!r}"
    return sockets


async def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server says until it closes the connection (within ``timeout``)."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(sock, 4096):
            data += chunk
    return data


async def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    said = b""
    while marker not in said:
        chunk = await _first_answer(sock)
        assert chunk, said
        said += chunk
    return said


async def _first_answer(sock: socket.socket) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 512), ANSWER_TIMEOUT)


def _healthz_from_other_address(server: AgoraServer) -> float:
    started = time.monotonic()
    with server.client(local_address=OTHER) as http:
        response = http.get("/healthz", timeout=5)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


# Another client, in a process of its own (so that this one's thousands of sockets do
# not slow it): once warmed up it says "ready", then asks GET /healthz from another
# address on a new connection every 0.1 s, one line "started status seconds" each
# (time.monotonic() is the same clock in every process), until its stdin is closed.
PROBE = """
import select, sys, time, httpx
url, address = sys.argv[1], sys.argv[2]
with httpx.Client(transport=httpx.HTTPTransport(local_address=address)) as http:
    http.get(url, timeout=10)
    print("ready", flush=True)
    while True:
        started = time.monotonic()
        status = http.get(url, headers={"Connection": "close"}, timeout=10).status_code
        print(started, status, time.monotonic() - started, flush=True)
        if select.select([sys.stdin], [], [], 0.1)[0]:
            break
"""


class Probe:
    """Another client asking /healthz from another address over and over meanwhile."""

    async def __aenter__(self) -> "Probe":
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROBE, self.url, OTHER,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        assert await asyncio.wait_for(self.process.stdout.readline(), 30) == b"ready\n"
        return self

    def __init__(self, server: AgoraServer):
        self.url = server.url + "/healthz"
        self.answers: list[tuple[float, int, float]] = []  # (started, status, seconds)

    async def __aexit__(self, *_: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        output, _ = await self.process.communicate()
        self.answers = [(float(started), int(status), float(seconds))
                        for started, status, seconds in (line.split() for line in output.decode().splitlines())]


def test_silent_and_trickling_http_connections_neither_starve_others_nor_stay(server: AgoraServer) -> None:
    port = server.ports["http"]

    async def connect(source: str | None) -> tuple[socket.socket, bytes | None]:
        """A connection, and the 503 it is told at once if it is over the per-address
        limit; None if it is admitted (b"" if, this process being slow to look, it has
        been held and cut off at the deadline already)."""
        sock = await _connect(port, source)
        try:
            return sock, await asyncio.wait_for(_read_until_closed(sock, ANSWER_TIMEOUT), 1.0)
        except TimeoutError:
            return sock, None

    async def trickle(sock: socket.socket) -> bytes:
        """A head begun, then a byte every half second: never complete, each byte on time."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while True:
            try:
                await loop.sock_sendall(sock, b"a")
                return await asyncio.wait_for(_read_until_closed(sock, ANSWER_TIMEOUT), 0.5)
            except TimeoutError:
                continue
            except OSError:
                return await _read_until_closed(sock, ANSWER_TIMEOUT)

    async def attack() -> tuple[Probe, float, list[socket.socket], set[socket.socket], list[object]]:
        async with Probe(server) as probe:
            opened = await asyncio.gather(*(connect(None) for _ in range(BURST)),
                                          *(connect("127.0.0.3") for _ in range(SLOWLORIS)),
                                          return_exceptions=True)
            connections = [o for o in opened if not isinstance(o, BaseException)]
            try:
                failed = [o for o in opened if isinstance(o, BaseException)]
                assert not failed, f"{len(failed)} connects failed, e.g. {failed[0]!r}"
                # Those over the per-address limit are told 503 at once; the others are held.
                first = [answer for _, answer in connections]
                refused = sum(answer is not None and answer.startswith(b"HTTP/1.1 503 ") for answer in first)
                assert refused > 0
                assert refused + first.count(None) + first.count(b"") == BURST + SLOWLORIS, set(first) - {None}
                settled = time.monotonic()
                held = [sock for sock, answer in connections if answer is None]
                held_slow = set(held) & {sock for sock, _ in connections[BURST:]}
                # Held until each is cut off at the header deadline: silently where
                # nothing was sent, with 408 after some of a head.
                answers = await asyncio.gather(*(
                    trickle(sock) if sock in held_slow else _read_until_closed(sock, 2 * HEADER_TIMEOUT + 10)
                    for sock in held), return_exceptions=True)
            finally:
                for sock, _ in connections:
                    sock.close()
        return probe, settled, held, held_slow, answers

    probe, settled, held, held_slow, answers = asyncio.run(attack())
    errors = [a for a in answers if isinstance(a, BaseException)]
    assert not errors, f"{len(errors)} of {len(held)} held connections were not closed: {errors[0]!r}"
    timed_out = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    # (A trickler this process was too slow to start is cut off before it said anything.)
    assert all(answer in ((timed_out, b"") if sock in held_slow else (b"",)) for sock, answer in zip(held, answers))
    assert timed_out in answers
    # Another address was served throughout; promptly while the connections were held
    # (during the burst of connects its own waits in the same accept queue).
    assert probe.answers and all(status == 200 for _, status, _ in probe.answers), probe.answers
    while_held = [seconds for started, _, seconds in probe.answers if started >= settled]
    assert while_held and max(while_held) < 0.5, probe.answers



def test_a_trickled_smtp_message_is_dropped_at_its_deadline(server: AgoraServer) -> None:
    async def trickle() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        sock = await _connect(server.ports["smtp"])
        try:
            assert (await _first_answer(sock)).startswith(b"220")
            await loop.sock_sendall(sock, b"EHLO client.example\r\n")
            await _read_until(sock, b"250 ")
            await loop.sock_sendall(sock, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<admin@localhost>\r\nDATA\r\n")
            await _read_until(sock, b"354 ")
            started = time.monotonic()
            while True:  # a byte every half second, far below mail.min_data_rate
                try:
                    await loop.sock_sendall(sock, b"x")
                    return await asyncio.wait_for(_read_until_closed(sock, 60), 0.5), time.monotonic() - started
                except TimeoutError:
                    assert time.monotonic() - started < COMMAND_TIMEOUT + 10, "the body was never cut off"
                except OSError:
                    return await _read_until_closed(sock, ANSWER_TIMEOUT), time.monotonic() - started
        finally:
            sock.close()

    said, lasted = asyncio.run(trickle())
    assert said.startswith(b"421 4.4.2"), said
    assert lasted >= COMMAND_TIMEOUT - 0.1


def test_connections_that_never_log_in_are_closed_at_the_login_timeout(server: AgoraServer) -> None:
    async def silent(name: str) -> tuple[bytes, bytes]:
        sock = await _connect(server.ports[name])
        try:
            greeting = await _first_answer(sock)
            return greeting, await _read_until_closed(sock, LOGIN_TIMEOUT + 10)
        finally:
            sock.close()

    async def silent_in_handshake(name: str) -> bytes:
        sock = await _connect(server.ports[name])
        try:
            return await _read_until_closed(sock, LOGIN_TIMEOUT + 10)
        finally:
            sock.close()

    async def all_of_them() -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        return await asyncio.gather(
            asyncio.gather(*(silent(name) for name in ("imap", "pop3", "smtp", "submission"))),
            asyncio.gather(*(silent_in_handshake(name) for name in ("imaps", "pop3s"))))

    started = time.monotonic()
    (imap, pop3, smtp, submission), implicit_tls = asyncio.run(all_of_them())
    assert time.monotonic() - started >= LOGIN_TIMEOUT - 0.1
    assert implicit_tls == [b"", b""]  # closed within the handshake's time (the login timeout at most)
    assert imap[0].startswith(b"* OK") and imap[1].startswith(b"* BYE")
    assert pop3[0].startswith(b"+OK") and pop3[1].startswith(b"-ERR")
    for greeting, goodbye in (smtp, submission):
        assert greeting.startswith(b"220") and goodbye.startswith(b"421")


def _startup_packet() -> bytes:
    body = struct.pack("!i", 196608) + b"user\0nobody\0database\0nothing\0\0"
    return struct.pack("!i", len(body) + 4) + body


# Listener -> (what a client sends first, if anything; how an answer or a refusal starts).
BURST_ANSWERS: dict[str, tuple[bytes, tuple[bytes, ...]]] = {
    "imap": (b"", (b"* OK", b"* BYE")),
    "pop3": (b"", (b"+OK", b"-ERR")),
    "smtp": (b"", (b"220", b"421")),
    "ftp": (b"", (b"220", b"421")),
    "postgres": (_startup_packet(), (b"R", b"E")),
}


async def _burst(port: int, hello: bytes, answers: tuple[bytes, ...]) -> None:
    loop = asyncio.get_running_loop()
    sockets = await _connect_many(BURST, port)
    try:
        if hello:
            await asyncio.gather(*(loop.sock_sendall(sock, hello) for sock in sockets))
        said = await asyncio.gather(*(_first_answer(sock) for sock in sockets), return_exceptions=True)
    finally:
        for sock in sockets:
            sock.close()
    unanswered = [s for s in said if isinstance(s, BaseException) or not s.startswith(answers)]
    assert not unanswered, f"{len(unanswered)} of {BURST} unanswered, e.g. {unanswered[0]!r}"


async def _http_burst(port: int) -> None:
    """HTTP has no greeting: a connection over the per-address limit is told 503 at
    once; each of the others then asks for /healthz (only then, so that no request
    meets a connection already closed)."""
    loop = asyncio.get_running_loop()

    async def answer(sock: socket.socket) -> bytes:
        try:
            return await asyncio.wait_for(loop.sock_recv(sock, 512), 0.5)
        except TimeoutError:
            await loop.sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return await _first_answer(sock)

    async def connect_and_ask() -> bytes:
        sock = await _connect(port)
        try:
            return await answer(sock)
        finally:
            sock.close()

    said = await asyncio.gather(*(connect_and_ask() for _ in range(BURST)), return_exceptions=True)
    unanswered = [s for s in said if isinstance(s, BaseException) or not s.startswith(b"HTTP/1.1 ")]
    assert not unanswered, f"{len(unanswered)} of {BURST} unanswered, e.g. {unanswered[0]!r}"
    assert sum(s.startswith(b"HTTP/1.1 200 ") for s in said) >= 1  # type: ignore[union-attr]


@pytest.mark.parametrize("listener", ["http", *BURST_ANSWERS])
def test_a_burst_of_connects_is_answered_on_every_listener(server: AgoraServer, listener: str) -> None:
    port = server.ports[listener]
    if listener == "http":
        asyncio.run(_http_burst(port))
    else:
        hello, answers = BURST_ANSWERS[listener]
        asyncio.run(_burst(port, hello, answers))
    # Served again once the burst is gone (nothing was left stuck).
    assert _healthz_from_other_address(server) < 5


def test_failed_tls_handshakes_are_one_info_line_each(server: AgoraServer) -> None:
    def starttls_then_garbage(name: str, greeting: bytes, ask: bytes) -> None:
        with socket.create_connection(("127.0.0.1", server.ports[name]), timeout=10) as sock:
            assert sock.recv(512).startswith(greeting)
            if name == "smtp":
                sock.sendall(b"EHLO client.example\r\n")
                while b"250 " not in sock.recv(4096):
                    pass
            sock.sendall(ask)
            assert sock.recv(512)[:1] in (b"+", b"a", b"2")  # go ahead with TLS
            sock.sendall(b"this is not a TLS ClientHello\r\n" * 4)
            while sock.recv(512):
                pass

    starttls_then_garbage("imap", b"* OK", b"a STARTTLS\r\n")
    starttls_then_garbage("pop3", b"+OK", b"STLS\r\n")
    starttls_then_garbage("smtp", b"220", b"STARTTLS\r\n")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for name in ("imaps", "pop3s"):  # implicit TLS, a client that gives up on the certificate
        with socket.create_connection(("127.0.0.1", server.ports[name]), timeout=10) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            while raw.recv(512):
                pass
    log = _wait_for_log(server, lambda text: text.count("TLS handshake failed") >= 3)
    failed = [line for line in log.splitlines() if "TLS handshake failed" in line]
    assert len(failed) == 3 and all(" INFO " in line for line in failed), failed
    assert "Traceback" not in log


def _wait_for_log(server: AgoraServer, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate(server.log()):
        time.sleep(0.05)
    return server.log()



class LowFdServer(AgoraServer):
    """A server whose hard open-files limit is small, so that it runs out."""

    LIMIT = 400

    def command(self) -> list[str]:
        start = ("import resource, runpy, sys; "
                 f"resource.setrlimit(resource.RLIMIT_NOFILE, ({self.LIMIT}, {self.LIMIT})); "
                 "sys.argv[0] = 'agora'; runpy.run_module('agora', run_name='__main__')")
        return [sys.executable, "-c", start, *super().command()[3:]]


def test_running_out_of_descriptors_is_logged_and_the_listeners_go_on(tmp_path) -> None:
    server = LowFdServer(tmp_path / "data", env={
        "AGORA_HTTP_MAX_CONNECTIONS_PER_IP": "100000", "AGORA_HTTP_ACCESS_LOG": "false"}).start()
    try:
        assert "open-files limit is 400" in server.log()  # said at start: too low for the limits

        async def exhaust() -> None:
            # More connections than the server has descriptors: they are accepted (the
            # kernel's queue), some by the server, the rest closed unanswered.
            sockets = await _connect_many(LowFdServer.LIMIT + 100, server.ports["http"])
            try:
                await asyncio.to_thread(_wait_for_log, server, lambda text: "out of file descriptors" in text)
            finally:
                for sock in sockets:
                    sock.close()

        asyncio.run(exhaust())
        lines = [line for line in server.log().splitlines() if "out of file descriptors" in line]
        assert len(lines) == 1 and " WARNING " in lines[0], lines  # once, not per connection
        # Once the connections are gone, every listener serves again.
        assert _healthz_from_other_address(server) < 5
        with socket.create_connection(("127.0.0.1", server.ports["ftp"]), timeout=10) as ftp:
            assert ftp.recv(512).startswith(b"220")
        with socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=10) as imap:
            assert imap.recv(512).startswith(b"* OK")
        assert "Traceback" not in server.log()
    finally:
        server.stop()
