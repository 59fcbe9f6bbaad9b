"""One IMAP session: the protocol's state machine (not authenticated, authenticated,
selected, logout) over the mail store, fed by the sans-IO parser.

The session holds no socket: it reads and writes through a small connection object
(server.py's, or a test's), and collects its responses in a buffer that goes out in
large writes (at the end of each command, or every few hundred KiB of a long FETCH).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Protocol

from agora.core import looplag
from agora.core.database import unavailable
from agora.core.errors import (AgoraError, AuthenticationFailed, Conflict, EncryptionRequired, Forbidden,
                               InvalidInput, NotFound, RateLimited, StorageFull, TooLarge, TooSlow)
from agora.core.identity import ClientInfo
from agora.core.fsutil import is_full
from agora.mail.connection import MailSession, SessionConnection
from agora.mail.imap import folders, messages, responses
from agora.mail.imap.parser import Command, Continue, Error, Line, Parser
from agora.mail.imap.view import MailboxView

log = logging.getLogger("agora.imap")

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = "not authenticated", "authenticated", "selected", "logout"
ANY = (NOT_AUTHENTICATED, AUTHENTICATED, SELECTED)
LOGGED_IN = (AUTHENTICATED, SELECTED)
FLUSH_AT = 256 * 1024  # bytes of responses buffered before a long command writes them out
BASE_CAPABILITIES = ("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT "
                     "CHILDREN SPECIAL-USE")

Done = tuple[str, str | None, str]  # status, response code, text of the tagged reply


class Connection(SessionConnection, Protocol):
    async def read(self) -> bytes | None: ...   # b"" at the end, None after interrupt()
    def interrupt(self) -> None: ...


class Closed(Exception):
    """The session is over (LOGOUT, a fatal error, a timeout, the client went)."""


class Session(MailSession):
    conn: Connection

    def __init__(self, runtime: Any, store: Any, conn: Connection, *, starttls: bool,
                 stopping: Callable[[], bool] = lambda: False):
        super().__init__(runtime, store, conn, stopping)
        config = runtime.config.mail
        self.starttls = starttls
        self.max_message = config.max_message
        # Before login a literal is at most a line's worth: nobody unknown gets to park
        # megabytes here (a password or a user name needs no more).
        self.max_literal = getattr(config, "max_literal", config.max_message)
        self.parser = Parser(config.max_line, min(config.max_line, self.max_literal))
        self.command_started: float | None = None
        self.out = bytearray()
        self.state = NOT_AUTHENTICATED
        self.user: Any = None
        self.view: MailboxView | None = None
        self.busy = False
        self.idling: str | None = None          # the tag of a running IDLE
        self.authenticating: str | None = None  # the tag of an AUTHENTICATE awaiting its answer
        self.hold: Any = None                   # the account's hold (core/sessions.py)
        self.account_ended: str | None = None

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.out += responses.untagged(f"OK [CAPABILITY {self.capabilities()}] Agora IMAP ready")
            await self.flush()
            while True:
                while (event := self.parser.next_event()) is not None:
                    self.busy = True
                    if not isinstance(event, Continue):
                        self.command_started = None  # a command ended; the next one's clock starts
                    await self.handle(event)
                    if len(self.out) > FLUSH_AT:
                        await self.flush(partial=True)
                await self.flush()
                self.busy = False
                if self.account_ended:  # told while a command ran: it finished first
                    await self.bye(f"Logged out: {self.account_ended}")
                if self.stopping():
                    await self.bye("Server shutting down")
                data = await self.receive()
                if not data:
                    return
                self.parser.feed(data)
        except (Closed, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.end()

    async def receive(self) -> bytes:
        """The next bytes from the client, waiting for changes to report meanwhile in
        IDLE; BYE when the client is silent for too long."""
        pending = self.parser.pending and not self.idling
        timeout = self.idle_timeout if self.user is not None else min(self.idle_timeout, self.login_timeout)
        if pending:
            # The whole command, literals included, has command_timeout to arrive: a
            # client trickling a byte at a time cannot hold the session for longer.
            now = asyncio.get_running_loop().time()
            if self.command_started is None:
                self.command_started = now
            timeout = max(0.0, self.command_started + self.command_timeout - now)
        else:
            self.command_started = None
        if self.idling and self.view is not None:
            return await self._receive_idling(timeout)
        try:
            async with asyncio.timeout(timeout):
                while (data := await self.conn.read()) is None:
                    pass  # a change poked an IDLE that has ended since: nothing to read
                return data
        except TimeoutError:
            await self.bye("Command not completed in time" if pending else "Autologout; idle for too long")
            raise Closed from None

    async def _receive_idling(self, timeout: float) -> bytes:
        """Wait for the client, reporting changes as they come (the folder's hub pokes
        the connection, whose read then returns None)."""
        view = self.view
        assert view is not None
        view.on_change = self.conn.interrupt
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if view.dirty:
                        await self.report_changes()
                        await self.flush()
                    data = await self.conn.read()
                    if data is not None:
                        return data
        except TimeoutError:
            await self.bye("Autologout; idle for too long")
            raise Closed from None
        finally:
            view.on_change = None

    async def flush(self, partial: bool = False) -> None:
        """Send what is buffered; ``partial`` in the middle of a long command, which then
        also lets the other sessions run (a FETCH of 10,000 messages takes a while)."""
        if self.out:
            data = bytes(self.out)
            self.out.clear()
            self.conn.write(data)
            try:
                async with asyncio.timeout(self.command_timeout):
                    await self.conn.drain()
            except TimeoutError:
                self.conn.close()  # a client that does not read its responses holds nothing
                raise Closed from None
        if partial:
            await asyncio.sleep(0)

    async def bye(self, text: str) -> None:
        self.out += responses.untagged("BYE " + responses.text(text))
        try:
            await self.flush()
        except (Closed, ConnectionError):
            pass
        self.state = LOGOUT
        raise Closed

    def end_account(self, reason: str) -> None:
        """The account was deleted, disabled or its password changed (core/sessions.py):
        BYE now if waiting for the client, else once the running command is done."""
        self.account_ended = reason
        if not self.busy:
            self.conn.write(responses.untagged("BYE " + responses.text(f"Logged out: {reason}")))
            self.conn.close()

    async def end(self) -> None:
        if self.hold is not None:
            self.hold.close()
        if self.view is not None:
            await self.view.close()
            self.view = None
        self.conn.close()

    # -- events ----------------------------------------------------------------------

    async def handle(self, event: Any) -> None:
        if isinstance(event, Command):
            await self.command(event)
        elif isinstance(event, Continue):
            self.out += responses.continuation("Ready for literal data")
            await self.flush()
        elif isinstance(event, Line):
            if self.idling:
                await self.end_idle(event.data)
            elif self.authenticating:
                await self.end_authenticate(event.data)
        elif isinstance(event, Error):
            self.out += responses.tagged(event.tag or "*", event.status, event.text, event.code)
            if event.fatal:
                await self.bye("Too much data; closing")
            if self.idling:  # what came instead of DONE was unreadable: IDLE ends
                await self.end_idle(b"")
            elif self.authenticating:
                await self.end_authenticate(b"*")

    async def command(self, command: Command) -> None:
        entry = HANDLERS.get(command.name)
        if entry is None:  # the parser knows no command this table lacks; a safety net
            self.out += responses.tagged(command.tag, "BAD", "unknown command")
            return
        handler, states = entry
        if self.state not in states:
            self.out += responses.tagged(command.tag, "BAD", f"{command.name} is not valid when {self.state}")
            return
        looplag.begin("imap", f"{command.tag} {command.name}", self.user.name if self.user else None)
        try:
            done = await handler(self, command)
        except Closed:
            raise
        except AgoraError as error:  # the store's refusals: NotFound, Conflict, TooLarge...
            done = ("NO", _code(error), error.detail)
        except Exception as error:
            if is_full(error):  # the metadata database on a full disk
                done = ("NO", "OVERQUOTA", "the server's disk is full; nothing was changed")
            elif unavailable(error):  # a blip of the database (a restart): the client may try again
                log.warning("IMAP %s: the database is unavailable: %s", command.name, type(error).__name__)
                done = ("NO", "UNAVAILABLE", "temporarily unavailable; try again")
            else:
                log.exception("IMAP %s failed", command.name)
                done = ("NO", "SERVERBUG", "internal error; the command was not completed")
        if done is None:  # IDLE, AUTHENTICATE: the tagged reply comes later
            return
        await self.report_changes(command)
        status, code, text = done
        self.out += responses.tagged(command.tag, status, text, code)

    async def report_changes(self, command: Command | None = None) -> None:
        if self.view is None or self.state != SELECTED:
            return
        numbers_hold = command is not None and not command.uid and command.name in ("FETCH", "STORE", "SEARCH")
        try:
            await self.view.sync(self.out, expunge=not numbers_hold)
        except NotFound:
            await self.bye("The selected mailbox was deleted")

    # -- any state -------------------------------------------------------------------

    def capabilities(self) -> str:
        words = [BASE_CAPABILITIES]
        if self.state == NOT_AUTHENTICATED:
            if self.starttls and not self.conn.secure:
                words.append("STARTTLS")
            words.append("AUTH=PLAIN" if self.may_login() else "LOGINDISABLED")
        return " ".join(words)

    def may_login(self) -> bool:
        client = self.client()
        return (client.secure or client.loopback
                or self.runtime.config.identity.allow_plaintext_remote)

    def client(self) -> ClientInfo:
        return ClientInfo(address=self.conn.peer, protocol="imap", secure=self.conn.secure)

    async def capability(self, command: Command) -> Done:
        self.out += responses.untagged("CAPABILITY " + self.capabilities())
        return ("OK", None, "CAPABILITY completed")

    async def noop(self, command: Command) -> Done:
        return ("OK", None, f"{command.name} completed")

    async def logout(self, command: Command) -> Done:
        self.out += responses.untagged("BYE Logging out")
        self.out += responses.tagged(command.tag, "OK", "LOGOUT completed")
        await self.flush()
        self.state = LOGOUT
        raise Closed

    async def id(self, command: Command) -> Done:
        self.out += responses.untagged('ID ("name" "Agora" "vendor" "Agora")')
        return ("OK", None, "ID completed")

    # -- not authenticated -----------------------------------------------------------

    async def start_tls(self, command: Command) -> Done:
        if not self.starttls or self.conn.secure:
            return ("BAD", None, "TLS is already active" if self.conn.secure else "STARTTLS is not offered here")
        self.out += responses.tagged(command.tag, "OK", "Begin TLS negotiation now")
        await self.flush()
        self.parser.reset()  # nothing sent in plain text before the handshake is run
        try:
            async with asyncio.timeout(self.command_timeout):
                await self.conn.start_tls()
        except (TimeoutError, OSError, ConnectionError):
            self.conn.close()
            raise Closed from None
        return None  # type: ignore[return-value]

    async def login(self, command: Command) -> Done:
        name, password = command.args
        return await self.authenticate(name, password)

    async def authenticate(self, name: str, password: str) -> Done:
        if not self.may_login():
            return ("NO", "PRIVACYREQUIRED", "use STARTTLS before logging in")
        try:
            self.user = await self.runtime.identity.authenticate(name, password, self.client())
        except EncryptionRequired as error:
            return ("NO", "PRIVACYREQUIRED", error.detail)
        except RateLimited as error:
            return ("NO", "UNAVAILABLE", error.detail)
        except AuthenticationFailed:
            return ("NO", "AUTHENTICATIONFAILED", "Authentication failed")
        self.state = AUTHENTICATED
        self.hold = self.runtime.identity.sessions.open(self.user, "imap", self.end_account)
        self.parser.max_literal = self.max_literal
        return ("OK", f"CAPABILITY {self.capabilities()}", "Logged in")

    async def sasl(self, command: Command) -> Done:
        mechanism, initial = command.args
        if mechanism != "PLAIN":
            return ("NO", "CANNOT", "only AUTHENTICATE PLAIN is offered")
        if not self.may_login():
            return ("NO", "PRIVACYREQUIRED", "use STARTTLS before logging in")
        if initial is not None:
            return await self.plain(initial)
        self.authenticating = command.tag
        self.out += b"+ \r\n"
        self.parser.expect_line()
        await self.flush()
        return None  # type: ignore[return-value]

    async def end_authenticate(self, line: bytes) -> None:
        tag, self.authenticating = self.authenticating, None
        assert tag is not None
        if line.strip() == b"*":
            self.out += responses.tagged(tag, "BAD", "Authentication cancelled")
            return
        from agora.mail.imap.commands import decode_sasl
        from agora.mail.imap.grammar import Bad
        try:
            response = decode_sasl(line)
        except Bad:
            self.out += responses.tagged(tag, "BAD", "not valid base64")
            return
        status, code, text = await self.plain(response)
        self.out += responses.tagged(tag, status, text, code)

    async def plain(self, response: bytes) -> Done:
        parts = response.split(b"\0")
        if len(parts) != 3:
            return ("BAD", None, "PLAIN wants authzid NUL authcid NUL password")
        authzid, authcid, password = (p.decode("utf-8", "replace") for p in parts)
        if authzid and authzid != authcid:
            return ("NO", "AUTHORIZATIONFAILED", "acting as another user is not allowed")
        return await self.authenticate(authcid, password)

    # -- authenticated ---------------------------------------------------------------

    async def select(self, command: Command) -> Done:
        await self.deselect()
        view = MailboxView(self.store, self.user, command.args[0], readonly=command.name == "EXAMINE",
                           search_cache=self.runtime.config.mail.search_cache)
        await view.open()
        self.view = view
        self.state = SELECTED
        keywords = sorted({f for m in view.metas for f in m.flags if not f.startswith("\\")})[:200]
        system = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"
        flags = " ".join([system, *keywords])
        unseen = next((i + 1 for i, m in enumerate(view.metas) if "\\Seen" not in m.flags), None)
        out = self.out
        out += responses.untagged(f"FLAGS ({flags})")
        permanent = "" if view.readonly else f"{flags} \\*"
        out += responses.untagged(f"OK [PERMANENTFLAGS ({permanent})] Limited" if view.readonly
                                  else f"OK [PERMANENTFLAGS ({permanent})] Flags permitted")
        out += b"* %d EXISTS\r\n* %d RECENT\r\n" % (len(view), view.recent_count())
        if unseen:
            out += responses.untagged(f"OK [UNSEEN {unseen}] First unseen")
        out += responses.untagged(f"OK [UIDVALIDITY {view.folder.uidvalidity}] UIDs valid")
        out += responses.untagged(f"OK [UIDNEXT {view.folder.uidnext}] Predicted next UID")
        return ("OK", "READ-ONLY" if view.readonly else "READ-WRITE", f"{command.name} completed")

    async def deselect(self) -> None:
        if self.view is not None:
            view, self.view = self.view, None
            await view.close()
        if self.state == SELECTED:
            self.state = AUTHENTICATED

    async def namespace(self, command: Command) -> Done:
        self.out += responses.untagged('NAMESPACE (("" ".")) NIL NIL')
        return ("OK", None, "NAMESPACE completed")

    async def enable(self, command: Command) -> Done:
        self.out += responses.untagged("ENABLED")  # none of the ENABLE-able extensions is offered
        return ("OK", None, "ENABLE completed")

    async def idle(self, command: Command) -> Done:
        self.idling = command.tag
        self.out += responses.continuation("idling")
        self.parser.expect_line()
        await self.report_changes()
        return None  # type: ignore[return-value]

    async def end_idle(self, line: bytes) -> None:
        tag, self.idling = self.idling, None
        assert tag is not None
        await self.report_changes()
        if line.strip().upper() == b"DONE":
            self.out += responses.tagged(tag, "OK", "IDLE terminated")
        else:
            self.out += responses.tagged(tag, "BAD", "expected DONE")

    # -- selected --------------------------------------------------------------------

    async def close_mailbox(self, command: Command) -> Done:
        assert self.view is not None
        if command.name == "CLOSE" and not self.view.readonly:
            await self.store.expunge(self.user, self.view.name)  # silently (RFC 3501 6.4.2)
        await self.deselect()
        return ("OK", None, f"{command.name} completed")


def _code(error: Exception) -> str | None:
    if isinstance(error, NotFound):
        return "NONEXISTENT"
    if isinstance(error, Conflict):
        return "ALREADYEXISTS"
    if isinstance(error, Forbidden):
        return "NOPERM"
    if type(error).__name__ == "QuotaExceeded" or isinstance(error, StorageFull):
        return "OVERQUOTA"  # a full disk too, as Dovecot answers it
    if isinstance(error, TooSlow):
        return "LIMIT"
    if isinstance(error, TooLarge):
        return "TOOBIG"
    if isinstance(error, InvalidInput):
        return "CANNOT"
    return None


Handler = Callable[[Session, Command], Awaitable[Done]]
HANDLERS: dict[str, tuple[Handler, tuple[str, ...]]] = {
    "CAPABILITY": (Session.capability, ANY), "NOOP": (Session.noop, ANY),
    "LOGOUT": (Session.logout, ANY), "ID": (Session.id, ANY),
    "STARTTLS": (Session.start_tls, (NOT_AUTHENTICATED,)), "LOGIN": (Session.login, (NOT_AUTHENTICATED,)),
    "AUTHENTICATE": (Session.sasl, (NOT_AUTHENTICATED,)),
    "SELECT": (Session.select, LOGGED_IN), "EXAMINE": (Session.select, LOGGED_IN),
    "NAMESPACE": (Session.namespace, LOGGED_IN), "ENABLE": (Session.enable, LOGGED_IN),
    "IDLE": (Session.idle, LOGGED_IN), "CHECK": (Session.noop, (SELECTED,)),
    "CLOSE": (Session.close_mailbox, (SELECTED,)), "UNSELECT": (Session.close_mailbox, (SELECTED,)),
    **{name: (handler, LOGGED_IN) for name, handler in folders.HANDLERS.items()},
    **{name: (handler, (SELECTED,)) for name, handler in messages.HANDLERS.items()},
}
