"""One POP3 session: feeds the sans-IO state machine (protocol.py) with what the client
sends and does the I/O its events ask for, over the mail store.

POP3 sees INBOX as it was at login (RFC 1939's maildrop); DELE only marks, and QUIT
applies the marks through the store (\\Deleted, then expunge of exactly those UIDs), so
IMAP sessions and the web UI see the removal like any other. One POP3 session per user
at a time holds the maildrop (a second gets -ERR [IN-USE]), as RFC 1939 asks.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import Any, BinaryIO, Callable, Protocol

from agora.core import looplag
from agora.core.database import unavailable
from agora.core.errors import AuthenticationFailed, EncryptionRequired, NotFound, RateLimited
from agora.core.identity import ClientInfo
from agora.mail.connection import MailSession, SessionConnection
from agora.mail.pop3.protocol import (POP3, Close, Entry, Flush, Login, MessageEncoder, Retrieve,
                                      StartTLS, Update)

log = logging.getLogger("agora.pop3")

INBOX = "INBOX"
CHUNK = 256 * 1024  # bytes of a message read (and written) at a time


class Connection(SessionConnection, Protocol):
    async def read(self) -> bytes: ...          # b"" at the end


class Closed(Exception):
    """The client is gone or too slow to read: stop now."""


def unique_id(uidvalidity: int, uid: int) -> str:
    """UIDL's unique-id: the same message has the same one in every session, and a
    folder made anew (a new UIDVALIDITY) never repeats an old one."""
    return f"{uidvalidity}.{uid}"


def _open(path: Path) -> tuple[BinaryIO, bytes]:
    file = open(path, "rb")
    try:
        return file, file.read(CHUNK)
    except BaseException:
        file.close()
        raise


class Session(MailSession):
    conn: Connection

    def __init__(self, runtime: Any, store: Any, conn: Connection, *, stls: bool, maildrops: set[str],
                 stopping: Callable[[], bool] = lambda: False):
        super().__init__(runtime, store, conn, stopping)
        config = runtime.config.mail
        self.maildrops = maildrops
        self.proto = POP3(max_line=config.max_line, stls=stls, secure=conn.secure,
                          login_allowed=self._may_login())
        self.user: Any = None
        self.locked: str | None = None
        self.busy = False
        self.hold: Any = None  # the account's hold (core/sessions.py)
        self.account_ended: str | None = None
        self._command_started: float | None = None

    def _may_login(self) -> bool:
        client = self._client()
        return client.secure or client.loopback or self.runtime.config.identity.allow_plaintext_remote

    def _client(self) -> ClientInfo:
        return ClientInfo(address=self.conn.peer, protocol="pop3", secure=self.conn.secure)

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        self.proto.greeting()
        try:
            while True:
                event = self.proto.next_event()
                if event is None:
                    await self.flush()
                    self.busy = False
                    if self.account_ended:  # told while a command ran: it finished first
                        self.proto.abort(f"Logged out: {self.account_ended}")
                        continue
                    if self.stopping():
                        self.proto.abort("Server shutting down", "SYS/TEMP")
                        continue
                    self.proto.receive_data(await self.receive())
                    continue
                self.busy = True
                looplag.begin("pop3", type(event).__name__, self.user.name if self.user else None)
                if isinstance(event, Close):
                    # Released before the last reply goes out: a client that reconnects
                    # as soon as QUIT is answered finds the maildrop free.
                    self.release()
                    await self.flush()
                    return
                if isinstance(event, Flush):
                    await self.flush()
                elif isinstance(event, Login):
                    await self.login(event)
                elif isinstance(event, Retrieve):
                    await self.retrieve(event)
                elif isinstance(event, StartTLS):
                    await self.flush()
                    await self.conn.start_tls()
                    self.proto.tls_started()
                elif isinstance(event, Update):
                    await self.update(event)
        except (Closed, ConnectionError):
            pass
        finally:
            self.release()
            self.conn.close()

    async def receive(self) -> bytes:
        """The next bytes from the client; the end (after -ERR) when it is silent too long."""
        loop = asyncio.get_running_loop()
        if self.proto.pending:
            # A whole command has command_timeout to arrive: a client trickling a byte at
            # a time cannot hold the session longer.
            if self._command_started is None:
                self._command_started = loop.time()
            timeout = max(0.0, self._command_started + self.command_timeout - loop.time())
        else:
            self._command_started = None
            timeout = self.idle_timeout if self.user is not None else min(self.idle_timeout, self.login_timeout)
        try:
            async with asyncio.timeout(timeout):
                return await self.conn.read()
        except TimeoutError:
            self.proto.abort("Command not completed in time" if self.proto.pending
                             else "Autologout; idle for too long")
            return b""

    async def flush(self) -> None:
        data = self.proto.data_to_send()
        if data:
            await self.write(data)

    async def write(self, data: bytes) -> None:
        self.conn.write(data)
        try:
            async with asyncio.timeout(self.command_timeout):
                await self.conn.drain()
        except TimeoutError:
            self.conn.close()  # a client that does not read its responses holds nothing
            raise Closed from None

    def end_account(self, reason: str) -> None:
        """The account was deleted, disabled or its password changed (core/sessions.py):
        -ERR now if waiting for the client (nothing marked is deleted), else once the
        running command is done."""
        self.account_ended = reason
        if not self.busy:
            self.release()
            self.conn.write(f"-ERR Logged out: {reason}\r\n".encode())
            self.conn.close()

    def release(self) -> None:
        if self.hold is not None:
            self.hold.close()
        if self.locked is not None:
            self.maildrops.discard(self.locked)
            self.locked = None

    # -- events ----------------------------------------------------------------------

    async def login(self, event: Login) -> None:
        try:
            user = await self.runtime.identity.authenticate(event.name, event.password, self._client())
        except EncryptionRequired:
            self.proto.login_failed("Plain-text passwords need TLS here: use STLS first")
            return
        except RateLimited as error:
            wait = max(1, math.ceil(error.retry_after))
            self.proto.login_failed(f"Too many failed logins; try again in {wait} s", "SYS/TEMP")
            return
        except AuthenticationFailed:
            self.proto.login_failed("Authentication failed")
            return
        except Exception as error:
            if not unavailable(error):
                raise
            log.warning("POP3: login of %r: the database is unavailable: %s", event.name, type(error).__name__)
            self.proto.login_failed("Temporarily unavailable; try again later", "SYS/TEMP")
            return
        if user.name in self.maildrops:
            self.proto.login_failed("The maildrop is in use by another POP3 session", "IN-USE")
            return
        self.maildrops.add(user.name)
        self.locked = user.name
        try:
            folder, metas = await self.store.messages(user, INBOX)
        except Exception as error:
            if unavailable(error):
                log.warning("POP3: could not open %s's maildrop: the database is unavailable", user.name)
            else:
                log.exception("POP3: could not open %s's maildrop", user.name)
            self.release()
            self.proto.login_failed("The maildrop cannot be opened now; try again later", "SYS/TEMP")
            return
        self.user = user
        self.hold = self.runtime.identity.sessions.open(user, "pop3", self.end_account)
        self.proto.logged_in([Entry(m.uid, unique_id(folder.uidvalidity, m.uid), m.size) for m in metas])

    async def retrieve(self, event: Retrieve) -> None:
        try:
            path = await self.store.open_message(self.user, INBOX, event.uid)
            file, chunk = await asyncio.to_thread(_open, path)
        except (NotFound, FileNotFoundError):
            self.proto.retrieve_failed(f"message {event.number} was removed by another session")
            return
        except Exception as error:
            if not isinstance(error, OSError) and not unavailable(error):
                raise
            log.error("POP3: cannot read message %d of %s: %s", event.uid, self.user.name, error)
            self.proto.retrieve_failed(f"message {event.number} cannot be read now", "SYS/TEMP")
            return
        try:
            self.proto.start_retrieve()
            encoder = MessageEncoder(event.lines)
            out = self.proto.data_to_send() + encoder.feed(chunk)
            # Big messages go out a chunk at a time, at the pace the client reads them.
            while len(chunk) == CHUNK and not encoder.done:
                await self.write(out)
                chunk = await asyncio.to_thread(file.read, CHUNK)
                out = encoder.feed(chunk)
            await self.write(out + encoder.finish())
        finally:
            file.close()
        self.proto.retrieve_done()

    async def update(self, event: Update) -> None:
        if event.seen:
            try:
                await self.store.store_flags(self.user, INBOX, event.seen, ["\\Seen"], "add")
            except Exception as error:
                # A mark the reader can do without (the disk may be full): the session
                # still ends as asked, and nothing was lost.
                log.warning("POP3: could not mark %s's retrieved messages seen: %r", self.user.name, error)
        try:
            if event.deleted:
                await self.store.store_flags(self.user, INBOX, event.deleted, ["\\Deleted"], "add")
                await self.store.expunge(self.user, INBOX, event.deleted)
        except Exception:
            log.exception("POP3: could not apply %s's deletions", self.user.name)
            self.proto.updated(False, "Some deletions could not be applied; those messages are still there")
            return
        self.proto.updated(True, f"Agora POP3 server signing off ({len(event.deleted)} messages deleted)")
