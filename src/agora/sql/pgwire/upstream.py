"""The engine's side of a relayed PostgreSQL connection.

``open_upstream`` connects to the engine (its Unix socket, or TCP with TLS where the
engine's URL asks for it), sends a startup packet as the user's own role and answers the
engine's authentication (SCRAM-SHA-256 with the role's derived password), up to
ReadyForQuery. From then on :class:`Upstream` only moves bytes: whatever the engine sends
goes to the client unparsed, and the client's bytes come to the engine the same way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import socket
import ssl
import struct
from functools import lru_cache
from typing import Any, Callable

from agora.core.scram import saslprep

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
CANCEL_REQUEST = 80877102
# What a client may set at startup besides user and database; anything else is refused
# by the engine itself or is not the client's to choose (replication).
NOT_FORWARDED = {"user", "database", "replication"}


class UpstreamError(Exception):
    """The engine refused or failed: ``error`` holds its ErrorResponse message (raw)
    when it sent one, to be passed to the client as it is."""

    def __init__(self, message: str, error: bytes | None = None, sqlstate: str = "08006"):
        super().__init__(message)
        self.error = error
        self.sqlstate = sqlstate


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


@lru_cache(maxsize=1024)
def _salted(password: str, salt: bytes, iterations: int) -> bytes:
    # The slow part of SCRAM (4096 rounds of PBKDF2), the same for every login of a role:
    # done once per process.
    return hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False
        self.relay: Callable[[bytes], None] | None = None   # client's transport.write, once relaying
        self.on_lost: Callable[[], None] | None = None
        self.on_pause: Callable[[bool], None] | None = None  # the engine's side cannot take more: pause the client

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay(data)
            return
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._wake()
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        if self.on_pause is not None:
            self.on_pause(True)

    def resume_writing(self) -> None:
        if self.on_pause is not None:
            self.on_pause(False)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the start-up dialogue --------------------------------------------------------

    async def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            if self._lost:
                raise UpstreamError("the SQL engine closed the connection")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def message(self) -> tuple[bytes, bytes]:
        head = await self._read(5)
        (length,) = struct.unpack("!i", head[1:])
        return head[:1], await self._read(length - 4)

    def start_relay(self, write: Callable[[bytes], None]) -> bytes:
        """From now on the engine's bytes go to ``write``; returns what came already."""
        self.relay = write
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def _connect(address: tuple[str, int], sslmode: str, factory: Callable[[], Upstream]) -> Upstream:
    loop = asyncio.get_running_loop()
    host, port = address
    if host.startswith("/"):
        _, upstream = await loop.create_unix_connection(factory, f"{host}/.s.PGSQL.{port}")
        return upstream
    transport, upstream = await loop.create_connection(factory, host, port)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if sslmode in ("disable", "allow", "prefer"):
        return upstream
    upstream.send(struct.pack("!ii", 8, SSL_REQUEST))
    answer = await upstream._read(1)
    if answer != b"S":
        transport.close()
        raise UpstreamError("the SQL engine does not offer TLS (sql.engine_url asks for it)")
    context = ssl.create_default_context()
    if sslmode in ("require",):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    tls = await loop.start_tls(transport, upstream, context, server_hostname=host)
    upstream.transport = tls
    return upstream


async def open_upstream(address: tuple[str, int], sslmode: str, role: str, password: str, dbname: str,
                        client_params: dict[str, str], extra: dict[str, str],
                        timeout: float) -> tuple[Upstream, list[bytes], tuple[int, int], bytes]:
    """Connected and authenticated: (upstream, the engine's ParameterStatus messages,
    its (process id, secret key), its ReadyForQuery message)."""
    async with asyncio.timeout(timeout):
        try:
            upstream = await _connect(address, sslmode, Upstream)
        except OSError as error:
            raise UpstreamError(f"the SQL engine is not reachable: {error.strerror or error}", sqlstate="57P03") from None
        try:
            return await _start(upstream, role, password, dbname, client_params, extra)
        except BaseException:
            upstream.close()
            raise


async def _start(upstream: Upstream, role: str, password: str, dbname: str, client_params: dict[str, str],
                 extra: dict[str, str]) -> tuple[Upstream, list[bytes], tuple[int, int], bytes]:
    params = {k: v for k, v in client_params.items() if k not in NOT_FORWARDED and not k.startswith("_pq_.")}
    params.update(extra)
    params.update(user=role, database=dbname)
    body = struct.pack("!i", PROTOCOL_3_0) + b"".join(
        k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in params.items()) + b"\x00"
    upstream.send(struct.pack("!i", len(body) + 4) + body)
    statuses: list[bytes] = []
    key = (0, 0)
    scram: _ScramClient | None = None
    while True:
        kind, payload = await upstream.message()
        raw = _msg(kind, payload)
        if kind == b"E":
            raise UpstreamError("the SQL engine refused the connection", raw)
        if kind == b"R":
            (code,) = struct.unpack_from("!i", payload)
            if code == 0:
                continue
            if code == 3:  # cleartext (an external engine configured so)
                upstream.send(_msg(b"p", password.encode() + b"\x00"))
            elif code == 5:
                inner = hashlib.md5((password + role).encode()).hexdigest()
                upstream.send(_msg(b"p", b"md5" + hashlib.md5(inner.encode() + payload[4:8]).hexdigest().encode() + b"\x00"))
            elif code == 10:
                mechanisms = payload[4:].split(b"\x00")
                if b"SCRAM-SHA-256" not in mechanisms:
                    raise UpstreamError("the SQL engine offers no SASL mechanism Agora speaks")
                scram = _ScramClient(password)
                first = scram.first()
                upstream.send(_msg(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
            elif code == 11 and scram is not None:
                upstream.send(_msg(b"p", scram.final(payload[4:])))
            elif code == 12 and scram is not None:
                if not scram.verify(payload[4:]):
                    raise UpstreamError("the SQL engine's SCRAM signature is wrong")
            else:
                raise UpstreamError(f"the SQL engine asks for authentication method {code}")
        elif kind == b"S":
            statuses.append(raw)
        elif kind == b"K":
            key = struct.unpack_from("!ii", payload)
        elif kind == b"Z":
            return upstream, statuses, key, raw
        elif kind == b"N":
            continue
        else:
            raise UpstreamError(f"unexpected message {kind!r} from the SQL engine during start-up")


class _ScramClient:
    def __init__(self, password: str):
        self.password = password
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.bare = f"n=,r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return f"n,,{self.bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attributes = dict(part.split("=", 1) for part in text.split(","))
        nonce, salt, iterations = attributes["r"], base64.b64decode(attributes["s"]), int(attributes["i"])
        if not nonce.startswith(self.nonce):
            raise UpstreamError("the SQL engine's SCRAM nonce does not match")
        salted = _salted(self.password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.bare},{text},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> bool:
        text = server_final.decode()
        return text.startswith("v=") and hmac.compare_digest(base64.b64decode(text[2:]), self.server_signature)


async def send_cancel(address: tuple[str, int], key: tuple[int, int]) -> None:
    """A CancelRequest for the engine's backend ``key`` (on a connection of its own)."""
    loop = asyncio.get_running_loop()
    host, port = address
    try:
        if host.startswith("/"):
            transport, _ = await loop.create_unix_connection(asyncio.Protocol, f"{host}/.s.PGSQL.{port}")
        else:
            transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
    except OSError:
        return
    transport.write(struct.pack("!iiii", 16, CANCEL_REQUEST, key[0], key[1]))
    transport.close()
