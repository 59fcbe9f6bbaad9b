"""A local TLS tunnel to a PostgreSQL server, for client tools built without SSL.

The PostgreSQL client tools bundled with the embedded engine (psql, pg_dump, pg_restore,
pgbench) cannot speak TLS. `agora sql shell/dump/restore` point them at a
:class:`Tunnel` on 127.0.0.1 instead (sslmode=disable): for each connection it accepts,
it connects to the server, asks for TLS with an SSLRequest as libpq does, and then
relays bytes both ways without looking at them. The tunnel runs an asyncio loop in a
background thread of the CLI process and lives as long as the tool it serves.

:func:`auth_request` asks a server which password exchange it wants from a user
(cleartext, which accepts an API token, or SCRAM, which needs the password) without
logging in.

Given the password (or API token), the tunnel logs in itself: it reads the tool's
startup packet, passes it on, answers the server's password request (cleartext, or
SCRAM-SHA-256-PLUS bound to the TLS channel, as libpq would over TLS), hands the tool
AuthenticationOk and from then on relays bytes. The tool is never asked for a password
and none is put in its environment. Without one, the tunnel relays from the start, and
takes SCRAM-SHA-256-PLUS out of the mechanisms the server offers, since libpq refuses
channel binding offered on a connection it sees without TLS (a sign of stripped TLS);
the tool then proves the password without binding.

Verification follows libpq's sslmode: with a CA certificate the server's chain is
checked against it (verify-ca); without one the connection is encrypted but the
certificate not checked (require), where channel binding still defeats a relay in the
middle.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import socket
import ssl
import struct
import sys
import threading
from typing import Callable

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST = struct.pack("!ii", 8, SSL_REQUEST_CODE)
PROTOCOL_3 = 196608
MAX_STARTUP = 10_000     # bytes of a startup packet, as PostgreSQL's limit
MAX_ITERATIONS = 10_000_000  # of a server's SCRAM salt: beyond, a way to make us spin
CHUNK = 256 * 1024
CONNECT_TIMEOUT = 10.0

# What the server's first authentication request asks for (AuthenticationRequest codes).
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12
SCRAM = "SCRAM-SHA-256"
SCRAM_PLUS = "SCRAM-SHA-256-PLUS"


class TunnelError(Exception):
    """The server cannot be reached, refuses TLS or refuses the start-up."""


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """TLS as libpq's ``sslmode=require`` (no ``cafile``) or ``verify-ca`` (``cafile``)."""
    if cafile:
        context = ssl.create_default_context(cafile=cafile)
        context.check_hostname = False
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _sni(host: str) -> str | None:
    """The name to send in the TLS handshake: none for an address literal."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return host
    return None


def startup_packet(user: str, database: str, application_name: str = "agora") -> bytes:
    body = struct.pack("!i", PROTOCOL_3)
    for key, value in (("user", user), ("database", database), ("application_name", application_name)):
        body += key.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return struct.pack("!i", len(body) + 4) + body


def _error_text(body: bytes) -> str:
    fields = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields.get("M", "error") + (f" (SQLSTATE {fields['C']})" if "C" in fields else "")


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise TunnelError("the server closed the connection during start-up")
        data += piece
    return data


def auth_request(host: str, port: int, user: str, database: str, context: ssl.SSLContext | None,
                 timeout: float = CONNECT_TIMEOUT) -> int:
    """The code of the server's first authentication request to ``user`` for
    ``database`` (AUTH_CLEARTEXT, AUTH_SASL, ...); the connection is closed before any
    password is sent. A refusal before that (no such database, too many connections)
    raises TunnelError with the server's message."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        raise TunnelError(f"cannot connect to {host}:{port}: {error.strerror or error}") from None
    try:
        if context is not None:
            sock.sendall(SSL_REQUEST)
            if _read_exactly(sock, 1) != b"S":
                raise TunnelError(f"{host}:{port} does not offer TLS")
            sock = context.wrap_socket(sock, server_hostname=_sni(host))
        sock.sendall(startup_packet(user, database, "agora-probe"))
        while True:
            kind, size = struct.unpack("!ci", _read_exactly(sock, 5))
            body = _read_exactly(sock, size - 4)
            if kind == b"R":
                return int(struct.unpack("!i", body[:4])[0])
            if kind == b"E":
                raise TunnelError(_error_text(body))
            if kind != b"v":  # NegotiateProtocolVersion comes first when it comes
                raise TunnelError(f"unexpected message {kind!r} from the server during start-up")
    except ssl.SSLError as error:
        raise TunnelError(f"TLS with {host}:{port} failed: {error.reason or error}") from None
    except OSError as error:
        raise TunnelError(f"{host}:{port}: {error.strerror or error}") from None
    finally:
        sock.close()


async def open_server(host: str, port: int, context: ssl.SSLContext | None,
                      timeout: float = CONNECT_TIMEOUT) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the server, in TLS after an SSLRequest when ``context`` is given."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    if context is None:
        return reader, writer
    try:
        writer.write(SSL_REQUEST)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readexactly(1), timeout)
        if answer != b"S":
            raise TunnelError(f"{host}:{port} does not offer TLS")
        await writer.start_tls(context, server_hostname=_sni(host), ssl_handshake_timeout=timeout)
    except BaseException:
        writer.close()
        raise
    return reader, writer


def without_channel_binding(message: bytes) -> bytes:
    """An AuthenticationSASL message without SCRAM-SHA-256-PLUS: the tool sees a
    connection without TLS, and libpq refuses a server that offers channel binding on
    one (as a sign that a proxy stripped TLS). SCRAM without binding still proves the
    password; the TLS of the tunnel's own connection is what protects the exchange."""
    mechanisms = [m for m in message[9:].split(b"\x00") if m and m != b"SCRAM-SHA-256-PLUS"]
    body = struct.pack("!i", AUTH_SASL) + b"".join(m + b"\x00" for m in mechanisms) + b"\x00"
    return b"R" + struct.pack("!i", len(body) + 4) + body


async def _authentication(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Relay the server's messages up to the end of authentication (AuthenticationOk or
    an error), taking SCRAM-SHA-256-PLUS out of the mechanisms offered."""
    while True:
        header = await reader.readexactly(5)
        kind, size = struct.unpack("!ci", header)
        if size < 4:
            raise TunnelError("malformed message from the server")
        message = header + await reader.readexactly(size - 4)
        code = struct.unpack("!i", message[5:9])[0] if kind == b"R" and size >= 8 else None
        if code == AUTH_SASL:
            message = without_channel_binding(message)
        writer.write(message)
        await writer.drain()
        if kind == b"E" or code == AUTH_OK:
            return


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def error_response(sqlstate: str, text: str) -> bytes:
    fields = [b"SFATAL", b"VFATAL", b"C" + sqlstate.encode(), b"M" + text.encode()]
    return message(b"E", b"\x00".join(fields) + b"\x00\x00")


def end_point_hash(certificate: bytes) -> bytes:
    """tls-server-end-point channel binding data (RFC 5929) of a DER certificate: its
    hash with the certificate's signature hash, SHA-256 where that is MD5 or SHA-1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_der_x509_certificate(certificate)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    return cert.fingerprint(algorithm)


class ScramClient:
    """The client's side of SCRAM-SHA-256 (RFC 5802/7677) as libpq runs it: an empty
    user name (the startup packet's counts), channel binding when ``binding`` is given."""

    def __init__(self, password: str, binding: bytes | None):
        from agora.core.scram import saslprep

        self.password = saslprep(password).encode("utf-8")
        self.binding = binding
        self.mechanism = SCRAM_PLUS if binding is not None else SCRAM
        self.gs2 = "p=tls-server-end-point,," if binding is not None else "n,,"
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        """The SASLInitialResponse's body."""
        data = (self.gs2 + self.first_bare).encode()
        return self.mechanism.encode() + b"\x00" + struct.pack("!i", len(data)) + data

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode("utf-8", "replace")
        attributes = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        try:
            nonce, salt, iterations = attributes["r"], base64.b64decode(attributes["s"]), int(attributes["i"])
        except (KeyError, ValueError):
            raise TunnelError("malformed SCRAM message from the server") from None
        if not nonce.startswith(self.nonce) or len(nonce) == len(self.nonce) or not 0 < iterations <= MAX_ITERATIONS:
            raise TunnelError("the server's SCRAM message is not a valid answer")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        binding = base64.b64encode(self.gs2.encode() + (self.binding or b"")).decode()
        without_proof = f"c={binding},r={nonce}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        """That the server knew the verifier: it is the server we meant."""
        text = server_final.decode("utf-8", "replace")
        try:
            signature = base64.b64decode(text[2:].split(",")[0], validate=True) if text.startswith("v=") else b""
        except ValueError:
            signature = b""
        if not hmac.compare_digest(signature, self.server_signature):
            raise TunnelError("the server's SCRAM signature does not match: not the server it claims to be")


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    """One startup-phase packet of a client (length-prefixed, no type byte)."""
    header = await reader.readexactly(4)
    size = struct.unpack("!i", header)[0]
    if not 8 <= size <= MAX_STARTUP:
        raise TunnelError("invalid startup packet length")
    return header + await reader.readexactly(size - 4)


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One server message: (type byte, whole message)."""
    header = await reader.readexactly(5)
    size = struct.unpack("!i", header[1:])[0]
    if size < 4:
        raise TunnelError("malformed message from the server")
    return header[:1], header + await reader.readexactly(size - 4)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass


class Tunnel:
    """Listens on 127.0.0.1 (an ephemeral port) and relays each connection to
    ``host:port`` in TLS. ``start()`` returns the local port; ``close()`` stops it.
    ``on_error`` hears why a connection could not be relayed (default: one line on
    stderr), since the tool at the other end only sees its connection closed."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None, password: str | None = None,
                 on_error: Callable[[str], None] | None = None):
        self.host = host
        self.port = port
        self.context = context
        self.password = password
        self.on_error = on_error or (lambda message: print(f"agora: {message}", file=sys.stderr))
        self.local_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None

    def __enter__(self) -> "Tunnel":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> int:
        self._thread = threading.Thread(target=self._run, name="agora-sql-tunnel", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise TunnelError(f"cannot listen on 127.0.0.1: {self._failure}")
        return self.local_port

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has just finished
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported by start(), or the loop ended
            self._failure = error
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.ensure_future(self._relay(reader, writer))
            connections.add(task)
            task.add_done_callback(connections.discard)

        server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        self.local_port = server.sockets[0].getsockname()[1]
        self._started.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(connections):
                task.cancel()
            if connections:
                await asyncio.wait(connections, timeout=2)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        first = b""
        if self.password is not None:
            try:
                first = await self._client_startup(client_reader, client_writer)
            except (OSError, asyncio.IncompleteReadError, TunnelError):
                client_writer.close()
                return
        try:
            server_reader, server_writer = await open_server(self.host, self.port, self.context)
        except (OSError, asyncio.TimeoutError, ssl.SSLError, TunnelError, asyncio.IncompleteReadError) as error:
            detail = (getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
                      or type(error).__name__)
            self.on_error(f"cannot reach the PostgreSQL port {self.host}:{self.port}: {detail}")
            client_writer.close()
            return
        try:
            if first:
                server_writer.write(first)
                await server_writer.drain()
                if struct.unpack("!i", first[4:8])[0] == CANCEL_REQUEST_CODE:
                    with contextlib.suppress(asyncio.TimeoutError):  # the server closes once it has it
                        await asyncio.wait_for(server_reader.read(1), CONNECT_TIMEOUT)
                    return
                if not await self._authenticate(server_reader, server_writer, client_writer):
                    return
                downstream = asyncio.ensure_future(_pipe(server_reader, client_writer))
            else:
                downstream = asyncio.ensure_future(self._downstream(server_reader, client_writer))
            upstream = asyncio.ensure_future(_pipe(client_reader, server_writer))
            # Either side ending ends the connection: PostgreSQL has no half-closed state.
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
            for task in (upstream, downstream):
                task.cancel()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            for writer in (server_writer, client_writer):
                writer.close()

    async def _client_startup(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        """The tool's startup (or cancel) packet; its requests for TLS or GSSAPI
        encryption are declined: the tunnel's own connection is the encrypted one."""
        while True:
            packet = await read_packet(reader)
            code = struct.unpack("!i", packet[4:8])[0]
            if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
                writer.write(b"N")
                continue
            return packet

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            client: asyncio.StreamWriter) -> bool:
        """Log in with the tunnel's password; True once the tool has AuthenticationOk,
        False when the server refused (its error went to the tool)."""
        password = self.password or ""
        scram: ScramClient | None = None
        try:
            while True:
                kind, data = await read_message(reader)
                if kind == b"E":
                    client.write(data)
                    await client.drain()
                    return False
                if kind != b"R":
                    if kind == b"v":  # NegotiateProtocolVersion: the tool's business
                        client.write(data)
                        continue
                    raise TunnelError(f"unexpected message {kind!r} from the server during authentication")
                code = struct.unpack("!i", data[5:9])[0]
                body = data[9:]
                if code == AUTH_OK:
                    client.write(data)
                    await client.drain()
                    return True
                if code == AUTH_CLEARTEXT:
                    writer.write(message(b"p", password.encode() + b"\x00"))
                elif code == AUTH_SASL:
                    offered = [m.decode("ascii", "replace") for m in body.split(b"\x00") if m]
                    ssl_object = writer.get_extra_info("ssl_object")
                    binding = None
                    if SCRAM_PLUS in offered and ssl_object is not None:
                        binding = end_point_hash(ssl_object.getpeercert(binary_form=True))
                    elif SCRAM not in offered:
                        raise TunnelError(f"the server offers no SASL mechanism the tunnel speaks ({offered})")
                    scram = ScramClient(password, binding)
                    writer.write(message(b"p", scram.first()))
                elif code == AUTH_SASL_CONTINUE and scram is not None:
                    writer.write(message(b"p", scram.final(body)))
                elif code == AUTH_SASL_FINAL and scram is not None:
                    scram.verify(body)
                else:
                    raise TunnelError(f"the server asks for an authentication the tunnel does not speak ({code})")
                await writer.drain()
        except TunnelError as error:
            client.write(error_response("08006", f"agora tunnel: {error}"))
            await client.drain()
            return False

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _authentication(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError, TunnelError):
            return  # a CancelRequest's connection, closed without a word, or a broken one
        await _pipe(reader, writer)
