"""SMTP receipt (``smtp``, 2525) and submission (``submission``, 2587) with aiosmtpd.

aiosmtpd's protocol class runs on our event loop over the socket server.py bound;
this module adds what aiosmtpd leaves to its user: STARTTLS through the loop's own
``start_tls`` (so it works on uvloop too), AUTH through ``core.identity``, connection
limits, the null sender ``<>``, enhanced status codes on aiosmtpd's own replies, and
the timeouts of ``mail.*``. The handler (``smtp_handler.py``) decides what is accepted
and hands the message to the store or to ``sending.send``.

Receipt takes mail for local domains from anyone and relays nothing; submission needs
AUTH (after STARTTLS unless the client is on loopback) and sends anywhere as the user.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import re
import socket
import time
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session, TLSSetupException

from agora.core import descriptors, looplag
from agora.core.database import unavailable
from agora.core.errors import AuthenticationFailed, EncryptionRequired, RateLimited
from agora.core.identity import ClientInfo
from agora.core.runtime import Runtime
from agora.core.tls import server_context
from agora.mail.smtp_handler import NULL_SENDER, Handler

log = logging.getLogger("agora.mail")

IDENT = "Agora ESMTP"
UNKNOWN_COMMANDS = 20
DATA_CHUNK = 64 * 1024  # bytes of a message body read at a time
# aiosmtpd's own error replies carry no enhanced status code (RFC 3463); these are added.
ENHANCED = {"500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
            "530": "5.7.0", "538": "5.7.11", "552": "5.3.4", "553": "5.1.3", "554": "5.7.0",
            "555": "5.5.4", "454": "4.7.0", "451": "4.3.0", "421": "4.7.0"}
_PLAIN_REPLY = re.compile(r"(\d{3}) (?!\d\.\d{1,3}\.\d{1,3}\b)(?:Error: )?(.*)", re.S)
# <local@domain> with a dot-atom local part and a host name: nearly every MAIL and RCPT.
# The email package's parser (aiosmtpd's _getaddr) gives the same answer for these, at
# about a sixth of the event loop's time per message; anything else still goes to it.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"\s*<({_ATOM}(?:\.{_ATOM})*)@([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)>(.*)", re.S)


def _configure_library() -> None:
    # Unknown commands a session may send before it is dropped (aiosmtpd: 5; Postfix's
    # smtpd_hard_error_limit: 20): each gets its 500 and the session goes on till then.
    aiosmtpd.smtp.BOGUS_LIMIT = UNKNOWN_COMMANDS
    # aiosmtpd logs every command line at INFO and each unknown command as a warning,
    # under "mail.log": what matters reaches our own log lines.
    logging.getLogger("mail.log").setLevel(logging.ERROR)


class _Session(Session):
    # aiosmtpd's property logs a deprecation warning on every successful AUTH.
    login_data = None


class SMTPSession(SMTP):
    """One client connection (aiosmtpd's protocol, adapted as the module says)."""

    def __init__(self, listener: "SMTPListener"):
        config = listener.runtime.config.mail
        self.listener = listener
        # Read by SMTP.__init__: the stream limit, so also the longest line of a body.
        self.line_length_limit = config.max_line
        self.command_size_limit = config.max_line
        super().__init__(
            listener.handler, data_size_limit=config.max_message, enable_SMTPUTF8=True,
            decode_data=False, hostname=listener.hostname, ident=IDENT,
            tls_context=listener.ssl_context, timeout=config.idle_timeout,
            auth_required=listener.submission, auth_require_tls=True, loop=listener.loop)
        # The class-wide dict would be shared by every session (aiosmtpd grows it per EHLO).
        self.command_size_limits = collections.defaultdict(lambda: config.max_line)
        # A command line, and a message body, must arrive whole within this (a body: plus
        # its size at mail.min_data_rate), however its bytes trickle in.
        self.data_timeout = config.command_timeout
        self.min_data_rate = max(1, config.min_data_rate)
        self.idle_timeout = config.idle_timeout
        self.login_timeout = config.login_timeout
        self.in_command = False  # part of a command line has come: its deadline runs
        self.data_started = 0.0  # when the body being received began (loop time)
        self.data_bytes = 0      # and how much of it has come
        self.address = ""
        self.in_data = False  # receiving a message body: stop() waits for it
        self.refused = False
        self._released = False
        self._held: list[bytes] = []  # replies not yet written (see push)
        self.hold: Any = None  # the account's hold after AUTH (core/sessions.py)

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        refusal = self.listener.admit(self)
        if refusal:
            self.refused = True
            transport.write(refusal.encode() + b"\r\n")
            transport.close()
            return
        super().connection_made(transport)
        client = ClientInfo(self.address, "smtp")
        # AUTH without TLS only where identity would take the password anyway (loopback,
        # or identity.allow_plaintext_remote), so it is not offered where it would fail.
        self._auth_require_tls = not (
            client.loopback or self.listener.runtime.config.identity.allow_plaintext_remote)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        if self.hold is not None:
            self.hold.close()
        if not self._released:
            self._released = True
            self.listener.release(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self.refused:
            return False
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.in_data:
            self.data_bytes += len(data)
        elif b"\n" in data:
            if self.in_command:  # the line is whole: the wait for the next is idle time
                self.in_command = False
                self._reset_timeout()
        elif not self.in_command and not self._reader._buffer:  # type: ignore[attr-defined]
            # The first bytes of a command: the whole line has data_timeout to come.
            self.in_command = True
            self._reset_timeout(self.data_timeout)
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd re-arms its one timer (without a duration) after each command: the
        # wait for the next is the idle timeout once logged in, the login timeout before.
        if duration is None:
            authenticated = self.session is not None and self.session.authenticated
            duration = self.idle_timeout if authenticated else min(self.idle_timeout, self.login_timeout)
        super()._reset_timeout(duration)

    def end_account(self, reason: str) -> None:
        """The account was deleted, disabled or its password changed (core/sessions.py):
        a message still arriving is dropped unanswered."""
        self.close(f"421 4.7.0 Logged out: {reason}")

    def _timeout_cb(self) -> None:
        if self.in_data:
            # The body's deadline grows with what has come, at mail.min_data_rate.
            left = (self.data_started + self.data_timeout + self.data_bytes / self.min_data_rate
                    - self.loop.time())
            if left > 0:
                super()._reset_timeout(left)
                return
        self.close("421 4.4.2 Timeout: closing the connection")

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def close(self, reply: str | None = None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if reply:
                self.transport.write(b"".join(self._held) + reply.encode() + b"\r\n")
            self.transport.close()

    @property
    def secure(self) -> bool:
        return self._tls_protocol is not None

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # Logged in one line by smtp_STARTTLS; aiosmtpd then closes the connection
            # without a reply, so this is never said.
            return "421 4.7.0 TLS handshake failed"
        if unavailable(error):  # a blip of the database: the client may try again
            log.warning("smtp %s: the database is unavailable: %s", self.address, type(error).__name__)
            return "451 4.3.0 Temporarily unavailable; try again later"
        return await super().handle_exception(error)

    # -- replies -----------------------------------------------------------------------

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            match = _PLAIN_REPLY.fullmatch(status)
            if match and match.group(1) in ENHANCED:
                status = f"{match.group(1)} {ENHANCED[match.group(1)]} {match.group(2)}"
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        self._held.append(status + b"\r\n")
        # Replies to pipelined commands may go out together, as long as none is kept back
        # once the client's input is used up (RFC 2920 3.2): a 250 waits while a whole
        # further command is in the buffer, and goes out with the next reply. Anything
        # else (an error, a 354, the 220 before TLS, a 221 before closing) goes at once
        # with what waits: a pipelined RSET, MAIL, RCPT, DATA costs one write, not four.
        if status[:3] == b"250" and b"\n" in self._reader._buffer:  # type: ignore[attr-defined]
            return
        self._writer.write(b"".join(self._held))
        self._held.clear()
        await self._writer.drain()

    # -- commands aiosmtpd does differently from what we need -----------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # The null reverse-path of bounces, MAIL FROM:<> (RFC 5321 4.5.5).
        stripped = (arg or "").lstrip()
        if stripped.startswith("<>"):
            return NULL_SENDER, stripped[2:]
        if stripped.startswith("<") and ">" not in stripped:
            return None, None  # the email package's parser would forgive it
        simple = _SIMPLE_PATH.fullmatch(stripped)
        if simple and ".." not in simple.group(2) and not simple.group(3).lstrip(" \t").startswith("("):
            local, domain, rest = simple.groups()
            rest = rest.lstrip(" \t")  # as the email parser drops the space after ">"
            if self.local_part_limit and len(local) > self.local_part_limit:
                return None, None
            return f"{local}@{domain}", rest
        try:
            return super()._getaddr(arg)
        except Exception:
            # The email parser trips over some malformed paths ("x@" runs off the end,
            # "x@[" meets a defect with no value): a syntax error, not an internal one.
            return None, None

    @aiosmtpd.smtp.syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's DATA, with the body read in chunks (_read_body) rather than a line at
        # a time: awaiting each line of a 4 KiB message cost a third of a millisecond.
        user = self.session.auth_data if self.session is not None and self.session.authenticated else None
        looplag.begin(self.listener.name, "DATA", getattr(user, "name", None))
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.in_data = True
        self.data_started, self.data_bytes = self.loop.time(), len(self._reader._buffer)  # type: ignore[attr-defined]
        self._reset_timeout(self.data_timeout)
        try:
            body = await self._read_body()
        finally:
            self.in_data = False
            if self.transport is not None:
                self._reset_timeout()
        if body is None:
            return  # the client went away mid-message
        if isinstance(body, str):
            await self.push(body)
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = body
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_body(self) -> bytes | str | None:
        """The message up to the line holding a lone dot, dots unstuffed (RFC 5321
        4.5.2); the error reply when it is too big or has too long a line (said only
        once the whole message has arrived, RFC 5321 4.2.5); None if the client left."""
        reader = self._reader
        limit = self.data_size_limit
        data = bytearray()
        size = 0         # bytes of the message, stuffing included
        scanned = 0      # where to look for the end next time (the tail may hold "\r\n.")
        kept = True      # still keeping the bytes (False once past the size limit)
        while True:
            chunk = await reader.read(DATA_CHUNK)
            if not chunk:
                return None
            data += chunk
            end = 0 if size == 0 and data.startswith(b".\r\n") else data.find(b"\r\n.\r\n", scanned)
            if end >= 0:
                if end > 0:
                    end += 2  # the body keeps its last line's CRLF
                rest = data[end + 3:]
                size += end
                del data[end:]
                if rest:  # pipelined commands after the message
                    reader._buffer[:0] = rest  # type: ignore[attr-defined]
                break
            if kept and limit and size + len(data) > limit:
                kept = False
            if not kept:  # past the limit: count, keep only what may hold the end
                size += len(data) - 4
                del data[:-4]
                scanned = 0
            else:
                scanned = max(0, len(data) - 4)
        if not kept or (limit and size > limit):
            return "552 Error: Too much mail data"
        if max(map(len, data.split(b"\r\n"))) + 2 > self.line_length_limit:
            return "500 Line too long (see RFC5321 4.5.3.1.6)"
        if data.startswith(b"."):
            del data[0]
        return bytes(data.replace(b"\r\n.", b"\r\n"))

    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if self.tls_context is None:
            await self.push("454 4.7.0 TLS not available")
            return
        if self.secure:
            await self.push("503 5.5.1 TLS already active")
            return
        await self.push("220 2.0.0 Ready to start TLS")
        # Nothing sent before the handshake may be taken as a command after it (RFC 3207
        # 4.2, the STARTTLS command injection of CVE-2011-0411).
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        plain = self.transport
        try:
            await self._writer.start_tls(self.tls_context, ssl_handshake_timeout=self.data_timeout)
        except Exception as error:
            log.info("smtp %s: TLS handshake failed: %s", self.address, error)
            raise TLSSetupException() from error
        self._original_transport = plain
        self.transport = self._writer.transport
        self._reader._transport = self.transport  # type: ignore[attr-defined]
        self._tls_protocol = self.transport  # aiosmtpd tests this for "TLS is on"
        # RFC 3207 4.2: forget everything the client said before; it says EHLO again.
        self._set_rset_state()
        self.session = self._create_session()
        self.session.peer = self.transport.get_extra_info("peername")
        self.session.ssl = {"cipher": self.transport.get_extra_info("cipher")}
        self._reset_timeout()

    async def smtp_AUTH(self, arg: str) -> None:
        if not self.listener.submission:
            await self.push("502 5.5.1 AUTH is offered on the submission port, not here")
            return
        await super().smtp_AUTH(arg)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd calls this synchronously; the check itself is in _verify (async).
        return AuthResult(success=False, handled=False, auth_data=auth_data)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_LOGIN(_, args))

    async def _verify(self, result: AuthResult) -> AuthResult:
        credentials = result.auth_data
        if not isinstance(credentials, LoginPassword):
            return result  # malformed or aborted: aiosmtpd has replied already
        name = credentials.login.decode("utf-8", "replace")
        password = credentials.password.decode("utf-8", "replace")
        client = ClientInfo(self.address, "smtp", self.secure)
        try:
            user = await self.listener.runtime.identity.authenticate(name, password, client)
        except EncryptionRequired:
            return AuthResult(success=False, handled=False,
                              message="538 5.7.11 Encryption required: use STARTTLS first")
        except RateLimited as error:
            return AuthResult(success=False, handled=False, message=(
                f"454 4.7.0 Too many failed attempts; retry in {math.ceil(error.retry_after)} s"))
        except AuthenticationFailed:
            return AuthResult(success=False, handled=False,
                              message="535 5.7.8 Authentication credentials invalid")
        except Exception as error:
            if not unavailable(error):
                raise
            log.warning("smtp %s: AUTH: the database is unavailable: %s", self.address, type(error).__name__)
            return AuthResult(success=False, handled=False,
                              message="454 4.7.0 Temporary authentication failure; try again later")
        self.hold = self.listener.runtime.identity.sessions.open(user, "smtp", self.end_account)
        return AuthResult(success=True, auth_data=user)


class _Gate(asyncio.Protocol):
    """The first protocol of each connection: it turns away those the listener refuses
    before an aiosmtpd session is built for them (that costs about 0.3 ms, most of it
    aiosmtpd's look through its own methods: a burst of thousands of refused connects
    held the event loop for a second), and hands the others to a new session."""

    def __init__(self, listener: "SMTPListener"):
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        refusal = self.listener.refusal(str(peer[0]) if isinstance(peer, tuple) else "unknown")
        if refusal:
            transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
            transport.close()
            return
        session = SMTPSession(self.listener)
        transport.set_protocol(session)
        session.connection_made(transport)


class SMTPListener:
    """One listening socket: ``smtp`` (receipt) or ``submission``."""

    def __init__(self, runtime: Runtime, sock: socket.socket, name: str = "smtp"):
        self.runtime = runtime
        self.sock = sock
        self.name = name
        self.submission = name == "submission"
        config = runtime.config.mail
        self.max_connections = config.max_connections
        self.max_per_ip = config.max_connections_per_ip
        self.sessions: set[SMTPSession] = set()
        self.per_ip: collections.Counter[str] = collections.Counter()
        self.inflight: set[asyncio.Task[Any]] = set()  # deliveries being stored
        self.stopping = False
        self.server: asyncio.AbstractServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hostname = config.hostname
        self.ssl_context = None
        self.handler = Handler(self)

    async def start(self) -> None:
        _configure_library()
        self.loop = asyncio.get_running_loop()
        if not self.hostname:
            self.hostname = await asyncio.to_thread(socket.getfqdn)
        if self.runtime.tls is not None:
            self.ssl_context = server_context(self.runtime.tls)
        self.server = await self.loop.create_server(lambda: _Gate(self), sock=self.sock,
                                                    backlog=descriptors.backlog(self.runtime.config))

    def refusal(self, address: str) -> str | None:
        """The reply that turns away a new connection from ``address``, or None."""
        if self.stopping:
            return "421 4.3.2 Service shutting down"
        if len(self.sessions) >= self.max_connections:
            return "421 4.7.0 Too many connections; try again later"
        if self.per_ip[address] >= self.max_per_ip:
            return "421 4.7.0 Too many connections from your address; try again later"
        return None

    def admit(self, session: SMTPSession) -> str | None:
        """None to take a new connection, else the reply that refuses it."""
        refusal = self.refusal(session.address)
        if refusal:
            return refusal
        self.sessions.add(session)
        self.per_ip[session.address] += 1
        return None

    def release(self, session: SMTPSession) -> None:
        self.sessions.discard(session)
        self.per_ip[session.address] -= 1
        if self.per_ip[session.address] <= 0:
            del self.per_ip[session.address]

    def track(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        return task

    async def stop(self, timeout: float) -> None:
        """Stop accepting; let messages being received or stored finish (within
        ``timeout``); then close every session with 421."""
        self.stopping = True
        if self.server is not None:
            self.server.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (
                self.inflight or any(session.in_data for session in self.sessions)):
            await asyncio.sleep(0.05)
        if self.inflight:
            await asyncio.wait(set(self.inflight), timeout=max(0.0, deadline - time.monotonic()))
        for session in list(self.sessions):
            session.close("421 4.3.2 Service shutting down")
        await asyncio.sleep(0)
