"""One PostgreSQL client connection: the asyncio side that feeds the sans-IO start-up
parser (frames.py), answers start-up and authentication against Agora's identity, then
relays bytes to and from the engine as the user's own role (upstream.py).

Start-up: SSLRequest -> 'S' and TLS (or 'N' without a certificate), GSSENCRequest ->
'N', CancelRequest -> the engine's cancel for that session, then close. The startup
packet names the user and the database (a hosted database ``name`` of the user's own or
``owner/name``). Passwords: SCRAM-SHA-256 (-PLUS on TLS) against core.identity's
verifier; a user who has no verifier yet is asked for the password in clear where that
is allowed (TLS or loopback, as everywhere in Agora), which makes their verifier.

Then the engine is connected as the user's role, its ParameterStatus and ReadyForQuery
go to the client with a BackendKeyData of Agora's own (so that a cancel comes here and is
passed on with the engine's key), and from there on bytes go both ways unparsed. Every
``sql.recheck_interval`` the session checks that the account is enabled and the database
still shared with it; if not, the engine ends the backend (FATAL 57P01) and the
connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from agora.core.database import unavailable
from agora.core.errors import AgoraError, AuthenticationFailed, EncryptionRequired, Forbidden, NotFound, RateLimited
from agora.core.identity import TOKEN_PREFIX, ClientInfo
from agora.core.streams import StreamProtocol
from agora.sql.pgwire import frames, messages
from agora.sql.pgwire.frames import FrontendParser
from agora.sql.pgwire.scram import MECHANISM, MECHANISM_PLUS, ScramError, ScramServer, fake_verifier, parse_initial_response
from agora.sql.pgwire.upstream import Upstream, UpstreamError, open_upstream, send_cancel

if TYPE_CHECKING:
    from agora.sql.pgwire.server import PGListener

log = logging.getLogger("agora.sql.pgwire")
TERMINATE_GRACE = 2.0  # how long the engine has to end a backend it was told to end


class Goodbye(Exception):
    """End the session after sending this FATAL error (or ``raw``, the engine's own)."""

    def __init__(self, sqlstate: str, message: str, raw: bytes | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.raw = raw


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
        self.database = ""
        self.info: Any = None                       # the hosted database (DatabaseInfo)
        self.out: list[bytes] = []
        self.pending: deque[frames.Event] = deque()
        self.upstream: Upstream | None = None
        self.engine_key = (0, 0)                    # the engine's BackendKeyData
        self.relaying = False
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self._ended: asyncio.Future[None] | None = None
        self._last_read = time.monotonic()
        self.hold: Any = None                       # the account's hold (core/sessions.py)
        self.account_ended: str | None = None
        self._account_told: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        self.listener.accepted(self)

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        if self.relaying:
            self.upstream.transport.write(data)  # type: ignore[union-attr]
            return
        events = self.parser.feed(data)
        if events:
            self.pending.extend(events)
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._end()

    def eof_received(self) -> bool:
        result = super().eof_received()
        if self.relaying:
            self._end()
        return result

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.relaying and self.upstream is not None:
            self.upstream.transport.pause_reading()  # the client reads slowly: so does the engine's side

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.relaying and self.upstream is not None and not self.upstream.transport.is_closing():
            self.upstream.transport.resume_reading()

    def _end(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

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
        """The next start-up message; None when the client has gone."""
        deadline = time.monotonic() + (timeout or 0)
        while not self.pending:
            if self.parser.pending():  # what a startup packet left behind, or a partial message
                self.pending.extend(self.parser.feed(b""))
                if self.pending:
                    break
            if self.parser.dead or self._eof:
                return None
            await self.flush()
            remaining = deadline - time.monotonic()
            if timeout and remaining <= 0:
                raise Goodbye("08006", "timeout waiting for the startup packet")
            try:
                async with asyncio.timeout(remaining if timeout else None):
                    await self._until_woken()
            except TimeoutError:
                continue
        return self.pending.popleft()

    def cancel(self) -> None:
        """A CancelRequest with this session's key: passed on with the engine's key."""
        if self.relaying and self.engine_key != (0, 0):
            from agora.sql.hosted import hosted_sql

            engine = hosted_sql(self.runtime).engine
            task = asyncio.ensure_future(send_cancel(engine.address(), self.engine_key))
            self.listener.tasks.add(task)
            task.add_done_callback(self.listener.tasks.discard)

    def stop(self) -> None:
        """Server shutdown: the engine ends the backend (its own FATAL reaches the
        client), or the session ends now if it has none."""
        self.stopping = True
        if not self.relaying:
            self.transport.write(messages.error_response("57P01", "terminating connection due to administrator command",
                                                         severity="FATAL"))
            self.transport.close()
        else:
            self._end()

    def end_account(self, reason: str) -> None:
        """The account was deleted, disabled, its password changed or the token this
        session logged in with revoked (core/sessions.py): the relay ends the backend."""
        self.account_ended = reason
        if self._account_told is not None and not self._account_told.done():
            self._account_told.set_result(None)

    async def close(self) -> None:
        if self.hold is not None:
            self.hold.close()
        if self.upstream is not None:
            self.upstream.close()
        if not self.transport.is_closing():
            self.transport.close()

    # -- the session ----------------------------------------------------------------

    async def run(self) -> None:
        try:
            if not await self.startup():
                return
        except Goodbye as bye:
            self.send(bye.raw or messages.error_response(bye.sqlstate, bye.message, severity="FATAL"))
            await self.flush()
            return
        await self.relay()

    async def relay(self) -> None:
        """Until either side ends, checking now and then that access still holds."""
        from agora.sql.hosted import hosted_sql

        hosted = hosted_sql(self.runtime)
        interval = hosted.settings.recheck_interval
        idle = self.settings.idle_timeout
        self._account_told = asyncio.get_running_loop().create_future()
        if self.account_ended:
            self._account_told.set_result(None)
        while self._ended is not None and not self._ended.done():
            await asyncio.wait([self._ended, self._account_told], timeout=interval,
                               return_when=asyncio.FIRST_COMPLETED)
            if self._ended.done():
                break
            if self.account_ended:
                await self._terminate(hosted, "57P01", f"terminating connection: {self.account_ended}")
                break
            quiet = time.monotonic() - self._last_read
            if idle and quiet > idle:
                await self._terminate(hosted, "57P05", "terminating connection due to idle-session timeout")
                break
            try:
                allowed = await hosted.still_allowed(self.user.name, self.info)
            except Exception:  # the metadata database is away: checked again next time
                continue
            if not allowed:
                await self._terminate(hosted, "57P01", "your access to this database was withdrawn")
                break
        if self.stopping and self.relaying and not self._closed:
            await self._terminate(hosted, "57P01", "terminating connection due to administrator command")

    async def _terminate(self, hosted: Any, sqlstate: str, why: str) -> None:
        """The engine ends the backend, so the client reads a whole FATAL message
        between two of the engine's; closed here if that does not come."""
        log.info("sql: ending the PostgreSQL session of %s on %s: %s", self.user.name, self.database, why)
        try:
            async with hosted.engine.admin() as admin:
                await admin.execute("SELECT pg_terminate_backend($1)", self.engine_key[0])
            assert self._ended is not None
            async with asyncio.timeout(TERMINATE_GRACE):
                await asyncio.shield(self._ended)
        except Exception:
            pass

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
        except Exception as error:
            # A client that hangs up mid-login raises ConnectionError too: that is not
            # the database's doing, and there is no one to answer.
            if not unavailable(error) or self.transport is None or self.transport.is_closing():
                raise
            log.warning("sql: login of %r: the database is unavailable: %s", name, type(error).__name__)
            raise Goodbye("57P03", "the server's database is unavailable for a moment; try again") from None
        from agora.sql.hosted import hosted_sql
        hosted = hosted_sql(self.runtime)
        try:
            self.info, role = await hosted.login(self.user, self.database)
            await hosted.engine.ready()
        except NotFound:
            raise Goodbye("3D000", f'database "{self.database}" does not exist') from None
        except Forbidden as error:
            raise Goodbye("42501", f'permission denied for database "{self.database}": {error.detail}') from None
        except AgoraError as error:
            raise Goodbye(getattr(error, "sqlstate", "08004"), error.detail) from None
        engine = hosted.engine
        extra = {"idle_session_timeout": str(int(self.settings.idle_timeout * 1000))} if self.settings.idle_timeout else {}
        try:
            upstream, statuses, self.engine_key, ready = await open_upstream(
                engine.address(), engine.ssl_mode(), role, engine.role_password(role), engine.dbname(self.info.ref),
                params, extra, hosted.settings.engine_timeout)
        except UpstreamError as error:
            if error.error is not None:  # the engine's own words (too many connections...)
                raise Goodbye("", "", raw=error.error) from None
            raise Goodbye(error.sqlstate, str(error)) from None
        except TimeoutError:
            raise Goodbye("57P03", "the SQL engine did not answer in time") from None
        self.process_id, self.secret = self.listener.register(self)
        self.hold = identity.sessions.open(self.user, "postgres", self.end_account)
        self.upstream = upstream
        self._ended = asyncio.get_running_loop().create_future()
        self.send(messages.authentication_ok())
        for status in statuses:
            self.send(status)
        self.send(messages.backend_key_data(self.process_id, self.secret))
        self.send(ready)
        await self.flush()
        # From here on, bytes only: what the client sent meanwhile goes first.
        early = self.parser.take()
        upstream.on_lost = self._end
        upstream.on_pause = self._engine_side_paused
        rest = upstream.start_relay(self.transport.write)
        self.relaying = True
        if rest:
            self.transport.write(rest)
        if early:
            upstream.send(early)

    def _engine_side_paused(self, paused: bool) -> None:
        if self._closed:
            return
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

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
            # As many iterations as a real one has, or the count would tell.
            verifier = fake_verifier(name, self.listener.secret, self.runtime.config.identity.scram_iterations)
        binding = self.listener.channel_binding if self.secure else None
        mechanisms = [MECHANISM_PLUS, MECHANISM] if binding else [MECHANISM]
        self.send(messages.authentication_sasl(mechanisms))
        scram = ScramServer(verifier, binding)
        finals: list[bytes] = []

        def check_proof(message: bytes) -> bool:
            ok, final = scram.client_final(message)
            finals.append(final)
            return ok and known

        try:
            mechanism, first = parse_initial_response(await self._password_message(deadline))
            self.send(messages.authentication_sasl_continue(scram.client_first(mechanism, first)))
            message = await self._password_message(deadline)
            # The limiter counts the attempt before the proof is checked (identity).
            user = await identity.record_login(name, lambda: check_proof(message), client)
        except ScramError as error:
            raise Goodbye("08P01", str(error)) from None
        self.send(messages.authentication_sasl_final(finals[0]))
        return user

