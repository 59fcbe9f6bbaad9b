"""One PostgreSQL client connection: the asyncio side that feeds the sans-IO parser
(frames.py), answers startup and authentication, then hands queries to query.py.

Start-up: SSLRequest -> 'S' and TLS (or 'N' without a certificate), GSSENCRequest ->
'N', CancelRequest -> cancel and close. The startup packet names the user and the
database (a hosted database ``name`` of the user's own or ``owner/name``). Passwords:
SCRAM-SHA-256 (-PLUS on TLS) against core.identity's verifier; a user who has no
verifier yet (created before verifiers existed, not logged in since) is asked for the
password in clear where that is allowed (TLS or loopback, as everywhere in Agora), which
makes their verifier.

The session is the connection's asyncio protocol: bytes are parsed as they arrive, and
while the session's task waits for a message, those the query runner can answer at once
are answered in the callback itself (QueryRunner.now), the rest wake the task.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from agora.core.errors import AgoraError, AuthenticationFailed, EncryptionRequired, Forbidden, NotFound, RateLimited
from agora.core.identity import TOKEN_PREFIX, ClientInfo
from agora.core.streams import StreamProtocol
from agora.sql.pgwire import frames, messages
from agora.sql.pgwire.frames import FrontendParser
from agora.sql.pgwire.scram import MECHANISM, MECHANISM_PLUS, ScramError, ScramServer, fake_verifier, parse_initial_response

if TYPE_CHECKING:
    from agora.sql.pgwire.server import PGListener

SERVER_VERSION = "16.0 (Agora)"
READ_AHEAD = 256 * 1024  # bytes of messages a busy session holds before it stops reading


class Goodbye(Exception):
    """End the session after sending this FATAL error."""

    def __init__(self, sqlstate: str, message: str):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class PGSession(StreamProtocol):
    def __init__(self, listener: "PGListener"):
        super().__init__()
        self.listener = listener
        self.refusal: str | None = None
        self.runtime = listener.runtime
        self.settings = listener.settings
        self.address = ""
        self.parser = FrontendParser(self.settings.max_message)
        self.process_id = 0
        self.secret = 0
        self.user: Any = None
        self.sql: Any = None              # the domain's SQLSession
        self.database = ""
        self.params: dict[str, str] = {}  # what ParameterStatus reported, SHOW answers
        self.out: list[bytes] = []
        self.pending: deque[frames.Event] = deque()
        self.runner: Any = None           # the QueryRunner, once authenticated
        self.stopping = False
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self._held = 0           # bytes received since the task last ran out of messages
        self._last_read = time.monotonic()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        self.listener.accepted(self)

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        events = self.parser.feed(data)
        if not events:
            return
        runner = self.runner
        if runner is not None and self._waiter is not None and not self.stopping and not self._writing_paused:
            # The task waits for a message (it has answered all before), so nothing is
            # in flight: answer here what can be.
            done = runner.answer_now(events)
            if self.out:
                self.transport.write(b"".join(self.out))
                self.out.clear()
            if done == len(events):
                return
            events = events[done:]
        self.pending.extend(events)
        self._held += len(data)
        if self._held > READ_AHEAD:
            self._hold_reading()
        self._wake()

    # -- I/O ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.out.append(data)

    async def flush(self) -> None:
        if self.out:
            if not self._eof:
                self.transport.write(b"".join(self.out))
            self.out.clear()
        if self._writing_paused:
            await self.drain()

    async def next_event(self, timeout: float | None) -> frames.Event | None:
        """The next frontend message; None when the client has gone. ``timeout``: how
        long the connection may stay silent."""
        while not self.pending:
            if self.parser.pending():  # what a startup packet left behind, or a partial message
                self.pending.extend(self.parser.feed(b""))
                if self.pending:
                    break
            if self.parser.dead or self._eof:
                return None
            # Replies go out only when every message already received is answered: one
            # write per pipelined batch (Bind/Execute/Sync), not one per message.
            await self.flush()
            if self.pending:
                break
            self._held = 0
            self._release_reading()
            await self._wait(timeout)
        return self.pending.popleft()

    async def _wait(self, timeout: float | None) -> None:
        """Until a message or the end of input; counting silence from the later of now
        and the last bytes received (which QueryRunner.now may have answered)."""
        since = time.monotonic()
        while not self.pending and not self._eof and not self.parser.dead:
            if not timeout:
                await self._until_woken()
                continue
            remaining = max(since, self._last_read) + timeout - time.monotonic()
            if remaining <= 0:
                raise Goodbye("57P05" if self.user else "08006",
                              "terminating connection due to idle-session timeout" if self.user
                              else "timeout waiting for the startup packet")
            try:
                # asyncio.timeout, not wait_for: no task per wait.
                async with asyncio.timeout(remaining):
                    await self._until_woken()
            except TimeoutError:
                continue  # time is counted again, from the last bytes

    def cancel(self) -> None:
        if self.sql is not None and self.busy:
            self.sql.cancel()

    def stop(self) -> None:
        """Server shutdown: an idle session is told so and closed now."""
        self.stopping = True
        if not self.busy:
            self.transport.write(messages.error_response("57P01", "terminating connection due to administrator command",
                                                         severity="FATAL"))
            self.transport.close()

    async def close(self) -> None:
        if self.sql is not None:
            sql, self.sql = self.sql, None
            try:
                await _maybe_await(sql.close())
            except Exception:
                pass
        if not self.transport.is_closing():
            self.transport.close()

    # -- the session ----------------------------------------------------------------

    async def run(self) -> None:
        try:
            if not await self.startup():
                return
            from agora.sql.pgwire.query import QueryRunner
            self.runner = QueryRunner(self)
            await self.runner.run()
        except Goodbye as bye:
            self.send(messages.error_response(bye.sqlstate, bye.message, severity="FATAL"))
            await self.flush()

    async def startup(self) -> bool:
        deadline = asyncio.get_running_loop().time() + self.settings.startup_timeout
        ssl_asked = False
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise Goodbye("08006", "timeout waiting for the startup packet")
            event = await self.next_event(remaining)
            if event is None:
                return False
            if isinstance(event, frames.Fatal):
                raise Goodbye(event.sqlstate, event.message)
            if isinstance(event, frames.CancelRequest):
                self.listener.cancel(event.process_id, event.secret)
                return False
            if isinstance(event, frames.GSSENCRequest):
                self.transport.write(messages.SSL_REFUSE)
                continue
            if isinstance(event, frames.SSLRequest):
                if ssl_asked or self.secure:
                    raise Goodbye("08P01", "SSLRequest sent twice")
                ssl_asked = True
                if self.listener.ssl_context is None:
                    self.transport.write(messages.SSL_REFUSE)
                    continue
                if self.parser.pending():
                    raise Goodbye("08P01", "received unencrypted data after SSL request")
                self.transport.write(messages.SSL_ACCEPT)
                try:
                    await self._start_tls(self.listener.ssl_context, self.settings.startup_timeout)
                except ConnectionResetError:  # the client went away during the handshake
                    return False
                continue
            if isinstance(event, frames.Startup):
                if self.refusal:
                    raise Goodbye("53300", self.refusal)
                await self.authenticate(event, deadline)
                return True
            raise Goodbye("08P01", "expected a startup packet")

    async def authenticate(self, startup: frames.Startup, deadline: float) -> None:
        params = startup.params
        name = params.get("user", "")
        if not name:
            raise Goodbye("28000", "no PostgreSQL user name specified in startup packet")
        self.database = params.get("database") or name
        client = ClientInfo(address=self.address, protocol="postgres", secure=self.secure)
        identity = self.runtime.identity
        if (startup.version & 0xFFFF) > 0 or any(k.startswith("_pq_.") for k in params):
            self.send(messages.negotiate_protocol_version(0, [k for k in params if k.startswith("_pq_.")]))
        try:
            plaintext_ok = client.secure or client.loopback or self.runtime.config.identity.allow_plaintext_remote
            cleartext = self.settings.password_method == "password" or await identity.lacks_scram_verifier(name)
            if cleartext and plaintext_ok:
                self.user = await self._cleartext(name, client, deadline)
            else:
                # Unknown names get SCRAM against a made-up verifier, as real users do,
                # so that the method asked for tells a stranger nothing.
                self.user = await self._scram(name, client, deadline)
        except RateLimited as error:
            raise Goodbye("53400", error.detail) from None
        except EncryptionRequired as error:
            raise Goodbye("28000", f"{error.detail}: connect with sslmode=require") from None
        except AuthenticationFailed:
            raise Goodbye("28P01", f'password authentication failed for user "{name}"') from None
        from agora.sql.hosted import hosted_sql
        try:
            self.sql = await _maybe_await(hosted_sql(self.runtime).connect(self.user, self.database))
        except NotFound:
            raise Goodbye("3D000", f'database "{self.database}" does not exist') from None
        except Forbidden as error:
            raise Goodbye("42501", f'permission denied for database "{self.database}": {error.detail}') from None
        except AgoraError as error:
            raise Goodbye(getattr(error, "sqlstate", "08004"), error.detail) from None
        self.process_id, self.secret = self.listener.register(self)
        self.params = {
            "server_version": SERVER_VERSION, "server_encoding": "UTF8", "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY", "integer_datetimes": "on", "standard_conforming_strings": "on",
            "TimeZone": "UTC", "IntervalStyle": "postgres", "application_name": params.get("application_name", ""),
            "is_superuser": "off", "session_authorization": self.user.name, "default_transaction_read_only": "off",
            "in_hot_standby": "off",
        }
        self.send(messages.authentication_ok())
        for key, value in self.params.items():
            self.send(messages.parameter_status(key, value))
        self.send(messages.backend_key_data(self.process_id, self.secret))

    async def _password_message(self, deadline: float) -> bytes:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise Goodbye("08006", "timeout during authentication")
        await self.flush()
        event = await self.next_event(remaining)
        if event is None:
            raise ConnectionResetError("client went away during authentication")
        if isinstance(event, frames.Fatal):
            raise Goodbye(event.sqlstate, event.message)
        if not isinstance(event, frames.Password):
            raise Goodbye("08P01", "expected a password message during authentication")
        return event.data

    async def _cleartext(self, name: str, client: ClientInfo, deadline: float) -> Any:
        self.send(messages.authentication_cleartext())
        data = await self._password_message(deadline)
        if not data.endswith(b"\x00") or b"\x00" in data[:-1]:
            raise Goodbye("08P01", "invalid password packet")
        password = data[:-1].decode("utf-8", "replace")
        identity = self.runtime.identity
        if password.startswith(TOKEN_PREFIX):
            # An API token as the password, as WebDAV takes it: for tools that hold tokens.
            if not (client.secure or client.loopback or self.runtime.config.identity.allow_plaintext_remote):
                raise EncryptionRequired("passwords are accepted only over TLS from this address")
            user = await identity.user_for_token(password)
            if user is None or user.name != name:
                raise AuthenticationFailed("wrong user name or token")
            return user
        return await identity.authenticate(name, password, client)

    async def _scram(self, name: str, client: ClientInfo, deadline: float) -> Any:
        identity = self.runtime.identity
        verifier = await identity.scram_verifier(name, client)
        known = verifier is not None
        if verifier is None:
            verifier = fake_verifier(name, self.listener.secret)
        binding = self.listener.channel_binding if self.secure else None
        mechanisms = [MECHANISM_PLUS, MECHANISM] if binding else [MECHANISM]
        self.send(messages.authentication_sasl(mechanisms))
        scram = ScramServer(verifier, binding)
        try:
            mechanism, first = parse_initial_response(await self._password_message(deadline))
            self.send(messages.authentication_sasl_continue(scram.client_first(mechanism, first)))
            ok, final = scram.client_final(await self._password_message(deadline))
        except ScramError as error:
            raise Goodbye("08P01", str(error)) from None
        user = await identity.record_login(name, ok and known, client)
        self.send(messages.authentication_sasl_final(final))
        return user


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value
