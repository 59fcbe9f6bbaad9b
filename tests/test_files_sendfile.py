"""Large file bodies sent with sendfile(2) (agora.web.sendfile): users' sites and the
files API, byte for byte, with ranges, HEAD, keep-alive and pipelining after a
sendfile, clients that go away mid-download, TLS (no sendfile there) and the graceful
shutdown; and, in-process on both event loops, that the bytes really went by sendfile."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import AgoraServer

MIB = 1024**2


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(size: int) -> bytes:
    """``size`` bytes where a misplaced offset shows (a repeated random block would hide it)."""
    block = os.urandom(MIB)
    return b"".join(hashlib.sha256(block + i.to_bytes(4, "big")).digest() * (MIB // 32)
                    for i in range(size // MIB + 1))[:size]


@dataclass
class BigFile:
    server: AgoraServer
    name: str
    token: str
    data: bytes
    path: Path

    @property
    def site(self) -> str:
        return f"/~{self.name}/big.bin"

    api = "/api/v1/files/content/public/big.bin"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def targets(self) -> list[tuple[str, dict[str, str]]]:
        return [(self.site, {}), (self.api, self.auth)]


def big_file(server: AgoraServer, size: int) -> BigFile:
    name, password = server.create_user()
    token = server.login(name, password)
    public = server.data_dir / "files" / name / "public"
    public.mkdir(parents=True)
    data = pattern(size)
    path = public / "big.bin"
    path.write_bytes(data)
    return BigFile(server, name, token, data, path)


@pytest.fixture
def big(server: AgoraServer) -> BigFile:
    return big_file(server, 8 * MIB + 4321)


# -- raw HTTP/1.1 on one connection -----------------------------------------------------


class Connection:
    """One keep-alive connection, requests written as given, answers read exactly."""

    def __init__(self, port: int, **options: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        for option, value in options.items():
            self.sock.setsockopt(socket.SOL_SOCKET, getattr(socket, option), value)
        self.buffer = b""

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    @staticmethod
    def request(method: str, target: str, headers: dict[str, str] | None = None) -> bytes:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        return f"{method} {target} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()

    def send(self, *requests: bytes) -> None:
        self.sock.sendall(b"".join(requests))

    def _fill(self) -> None:
        chunk = self.sock.recv(4 * MIB)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def answer(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def quiet(self, seconds: float = 0.3) -> bytes:
        """Whatever else arrives within ``seconds`` (nothing, when the answers were exact)."""
        self.sock.settimeout(seconds)
        try:
            self._fill()
        except (TimeoutError, socket.timeout):
            pass
        finally:
            self.sock.settimeout(30)
        extra, self.buffer = self.buffer, b""
        return extra


# -- over a real server -----------------------------------------------------------------


def test_a_large_file_downloads_byte_for_byte(big: BigFile):
    with big.server.client() as http:
        for target, headers in big.targets():
            for _ in range(2):
                response = http.get(target, headers=headers)
                assert response.status_code == 200, response.text
                assert response.headers["content-length"] == str(len(big.data))
                assert sha(response.content) == sha(big.data)
    curl = shutil.which("curl")
    if curl:
        for target, headers in big.targets():
            args = [curl, "-sf", "-o", "-", big.server.url + target]
            for name, value in headers.items():
                args += ["-H", f"{name}: {value}"]
            out = subprocess.run(args, capture_output=True, timeout=60, check=True).stdout
            assert sha(out) == sha(big.data)


def test_ranges_of_a_large_file(big: BigFile):
    size = len(big.data)
    spans = {"bytes=1048570-5242890": (1048570, 5242890),
             "bytes=3000000-3000099": (3000000, 3000099),
             f"bytes={size - 2 * MIB}-": (size - 2 * MIB, size - 1),
             "bytes=-1500000": (size - 1500000, size - 1)}
    with big.server.client() as http:
        for target, headers in big.targets():
            for wanted, (first, last) in spans.items():
                response = http.get(target, headers={**headers, "Range": wanted})
                assert response.status_code == 206, (target, wanted)
                assert response.headers["content-range"] == f"bytes {first}-{last}/{size}"
                assert response.content == big.data[first:last + 1], (target, wanted)
            assert http.get(target, headers={**headers, "Range": f"bytes={size}-"}).status_code == 416


def test_keep_alive_and_pipelining_after_a_sendfile(big: BigFile):
    for target, headers in big.targets():
        get = Connection.request("GET", target, headers)
        ranged = Connection.request("GET", target, {**headers, "Range": "bytes=100000-2200000"})
        health = Connection.request("GET", "/healthz")
        with Connection(big.server.ports["http"]) as conn:
            # One after the other on the same connection.
            for _ in range(2):
                conn.send(get)
                status, _, body = conn.answer()
                assert status == 200 and sha(body) == sha(big.data)
            conn.send(health)
            status, _, body = conn.answer()
            assert status == 200 and b'"ok"' in body
            # Pipelined, in one write: answered in order, each body exactly once.
            conn.send(get, ranged, health, get)
            answers = [conn.answer() for _ in range(4)]
            assert [status for status, _, _ in answers] == [200, 206, 200, 200]
            assert sha(answers[0][2]) == sha(big.data) == sha(answers[3][2])
            assert answers[1][2] == big.data[100000:2200001]
            assert b'"ok"' in answers[2][2]
            assert conn.quiet() == b""


def test_head_sends_no_body(big: BigFile):
    for target, headers in big.targets():
        with Connection(big.server.ports["http"]) as conn:
            conn.send(Connection.request("HEAD", target, headers))
            status, head, _ = conn.answer(head_only=True)
            assert status == 200 and head["content-length"] == str(len(big.data))
            # Had any body bytes been sent, this answer would not start where it does.
            conn.send(Connection.request("GET", target, {**headers, "Range": "bytes=0-9"}))
            status, _, body = conn.answer()
            assert status == 206 and body == big.data[:10]
            assert conn.quiet() == b""


def test_over_https_the_bytes_are_the_same(big: BigFile):
    with big.server.client(https=True) as http:
        for target, headers in big.targets():
            response = http.get(target, headers=headers)
            assert response.status_code == 200 and sha(response.content) == sha(big.data)
            ranged = http.get(target, headers={**headers, "Range": "bytes=1000000-3000000"})
            assert ranged.status_code == 206 and ranged.content == big.data[1000000:3000001]


def _open_files(pid: int, path: Path) -> int:
    """How many descriptors of process ``pid`` have ``path`` open."""
    count = 0
    for entry in os.scandir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(entry.path) == str(path):
                count += 1
        except OSError:
            pass
    return count


def test_clients_that_go_away_mid_download(make_server):
    server = make_server()
    big = big_file(server, 64 * MIB)
    for target, headers in big.targets():
        for reset, pipelined in ((False, False), (True, False), (False, True), (True, True)):
            # A small receive buffer: the server is surely still sending when it goes.
            with Connection(server.ports["http"], SO_RCVBUF=64 * 1024) as conn:
                conn.send(Connection.request("GET", target, headers),
                          *[Connection.request("GET", "/healthz")] * pipelined)
                status, _, _ = conn.answer(head_only=True)
                assert status == 200
                conn._fill()
                if reset:  # an abortive close: the server's next write fails with ECONNRESET
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert server.proc is not None
    deadline = time.monotonic() + 10
    while _open_files(server.proc.pid, big.path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_files(server.proc.pid, big.path) == 0, "a download's file was left open"
    with server.client() as http:
        for target, headers in big.targets():
            response = http.get(target, headers={**headers, "Range": "bytes=5000000-6999999"})
            assert response.status_code == 206 and response.content == big.data[5000000:7000000]
        assert http.get("/healthz").status_code == 200
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


def test_a_download_in_flight_finishes_on_shutdown(make_server):
    server = make_server()
    big = big_file(server, 32 * MIB)
    for target, headers in big.targets():
        if server.proc is None or server.proc.poll() is not None:
            server.start()
        with Connection(server.ports["http"], SO_RCVBUF=64 * 1024) as conn:
            conn.send(Connection.request("GET", target, headers))
            status, head, _ = conn.answer(head_only=True)
            assert status == 200
            received = bytearray(conn.buffer)
            conn.buffer = b""
            # Read slowly at first, so that SIGTERM comes while the body is being sent.
            while len(received) < 2 * MIB:
                received += conn.sock.recv(64 * 1024)
                time.sleep(0.002)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            while len(received) < len(big.data):
                chunk = conn.sock.recv(4 * MIB)
                if not chunk:
                    break
                received += chunk
            assert sha(bytes(received)) == sha(big.data)
            conn.sock.settimeout(10)
            assert conn.sock.recv(1) == b""  # then the connection is closed
        assert server.proc.wait(30) == 0
        assert "Traceback" not in server.log()


# -- in-process: the bytes go by sendfile, on uvloop and on asyncio's own loop ----------


def run_on(loop: str, scenario) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(60):  # a server that stalls fails the test, soon
            await scenario()

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(bounded())
    else:
        asyncio.run(bounded())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_large_bodies_are_sent_with_sendfile(tmp_path: Path, loop: str):
    """Drive uvicorn with the web service's protocol on a socket, as web/service.py does."""
    import uvicorn

    from agora import config as configuration
    from agora.core.runtime import Runtime
    from agora.files.sites import SitesFastPath
    from agora.web.app import create_app

    data = pattern(5 * MIB + 17)

    async def scenario() -> None:
        runtime = await Runtime.open(configuration.load({"data_dir": str(tmp_path / "data")}, environ={}))
        app = SitesFastPath(create_app(runtime), runtime)
        protocol = app.http_protocol
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # the server waits for room
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = uvicorn.Server(uvicorn.Config(app, http=protocol, lifespan="off", log_config=None,
                                               access_log=False, timeout_graceful_shutdown=2))
        server.config.load()
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup(sockets=[sock])
        try:
            user = await runtime.identity.create_user("carol", "password-123")
            _, token = await runtime.identity.create_token(user, "t")
            public = tmp_path / "data" / "files" / "carol" / "public"
            public.mkdir(parents=True)
            (public / "big.bin").write_bytes(data)
            (public / "mid.bin").write_bytes(data[:MIB])  # kept in memory, written through the transport
            client = socket.socket()
            # A client that reads little ahead (a small buffer here, and the stream stops
            # reading at 128 KiB): while the test waits, the server's writes queue up.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            client.connect(sock.getsockname())
            client.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=client, limit=64 * 1024)

            async def exchange(*requests: bytes, pause: float = 0.0) -> list[tuple[bytes, bytes]]:
                writer.write(b"".join(requests))
                await asyncio.sleep(pause)
                answers = []
                for _ in requests:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = re.search(rb"content-length: (\d+)", head)
                    answers.append((head, await reader.readexactly(int(length.group(1))) if length else b""))
                return answers

            site = b"GET /~carol/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
            mid = b"GET /~carol/mid.bin HTTP/1.1\r\nHost: x\r\n\r\n"
            api = (b"GET /api/v1/files/content/public/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                   + token.encode() + b"\r\n\r\n")
            ranged = site.replace(b"\r\n\r\n", b"\r\nRange: bytes=10-70010\r\n\r\n")
            small_range = api.replace(b"\r\n\r\n", b"\r\nRange: bytes=7-106\r\n\r\n")
            health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            [(_, body)] = await exchange(mid)
            assert body == data[:MIB]
            before = protocol.files_sent
            # Pipelined, written at once and read only later: answers through the transport
            # and by sendfile, each after the other.
            answers = await exchange(mid, site, api, ranged, small_range, health, site, pause=0.3)
            assert [head.split(b" ")[1] for head, _ in answers] == [b"200", b"200", b"200", b"206", b"206", b"200",
                                                                    b"200"]
            assert answers[0][1] == data[:MIB]
            for index in (1, 2, 6):
                assert sha(answers[index][1]) == sha(data)
            assert answers[3][1] == data[10:70011]
            assert answers[4][1] == data[7:107]
            assert b'"ok"' in answers[5][1]
            assert protocol.files_sent == before + 5
            # HEAD: headers only, and the connection goes on.
            writer.write(site.replace(b"GET", b"HEAD", 1))
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: %d" % len(data) in head
            [(head, body)] = await exchange(health)
            assert head.startswith(b"HTTP/1.1 200") and b'"ok"' in body
            assert protocol.files_sent == before + 5
            writer.close()
        finally:
            await server.shutdown()
            await runtime.close()

    run_on(loop, scenario)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_extensions_in_a_bare_app(tmp_path: Path, loop: str):
    """Both extensions as any ASGI app may use them: pieces of a file around bytes of
    the app's own in one response, a path (Starlette's FileResponse), and a response
    without Content-Length (chunked: copied, framed as chunks)."""
    import uvicorn
    from starlette.responses import FileResponse

    from agora.web.sendfile import PATHSEND, ZEROCOPY, sendfile_protocol

    data = pattern(MIB + 5)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    first, middle = 256 * 1024, os.urandom(200 * 1024)
    seen: dict[str, object] = {}

    async def app(scope, receive, send) -> None:
        seen["extensions"] = set(scope.get("extensions", ()))
        if scope["path"] == "/path":
            await FileResponse(path)(scope, receive, send)
            return
        chunked = scope["path"] == "/chunked"
        length = [] if chunked else [(b"content-length", b"%d" % (len(data) + len(middle)))]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        with open(path, "rb") as file:
            await send({"type": ZEROCOPY, "file": file, "offset": 0, "count": first, "more_body": True})
            await send({"type": "http.response.body", "body": middle, "more_body": True})
            seen["middle sent"].set()
            file.seek(first)  # no offset: from the file's position, to its end
            await send({"type": ZEROCOPY, "file": file})

    async def scenario() -> None:
        seen["middle sent"] = asyncio.Event()
        protocol = sendfile_protocol()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = uvicorn.Server(uvicorn.Config(app, http=protocol, lifespan="off", log_config=None,
                                               access_log=False, timeout_graceful_shutdown=2))
        server.config.load()
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup(sockets=[sock])
        try:
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(sock.getsockname())
            client.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=client, limit=16 * 1024)
            before = protocol.files_sent
            writer.write(b"GET /mixed HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(first) == data[:first]
            # Not reading now: the app's own bytes fill the socket and wait in the
            # transport, and the rest of the file must not overtake them.
            await seen["middle sent"].wait()
            await asyncio.sleep(0.1)
            assert await reader.readexactly(len(middle)) == middle
            assert sha(await reader.readexactly(len(data) - first)) == sha(data[first:])
            assert seen["extensions"] == {ZEROCOPY, PATHSEND}
            assert protocol.files_sent == before + 2
            writer.write(b"GET /path HTTP/1.1\r\nHost: x\r\n\r\nGET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head).group(1))
            assert sha(await reader.readexactly(length)) == sha(data)
            assert protocol.files_sent == before + 3
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"transfer-encoding: chunked" in head
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                body += (await reader.readexactly(size + 2))[:-2]
                if not size:
                    break
            assert sha(body) == sha(data[:first] + middle + data[first:])
            assert protocol.files_sent == before + 3  # chunks are copied
            writer.close()
        finally:
            await server.shutdown()

    run_on(loop, scenario)
