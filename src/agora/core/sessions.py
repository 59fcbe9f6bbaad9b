"""Open sessions end with their account.

A protocol session that logged in (IMAP, POP3, FTP, SMTP submission, PostgreSQL) holds a
:class:`Login` here until it ends. When the account is deleted, disabled, its password
changed, or the token the session logged in with revoked, the session's ``on_end`` is
called with the reason, and the session says goodbye in its protocol's words.

Changes made in this process end the sessions at once. Those made elsewhere (another
node, another process on the data dir, the CLI) are found by a watcher that re-reads the
accounts with open sessions (one query for all of them) every
``identity.session_recheck`` and at once on a PostgreSQL notice, which every change
to an account sends in its own transaction.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from agora.core.tables import tokens, users, utcnow

if TYPE_CHECKING:
    from agora.core.database import Database
    from agora.core.identity import User

log = logging.getLogger("agora.sessions")

CHANNEL = "agora_accounts"
RECONNECT_DELAY = 2.0  # after the listening connection drops
BATCH = 500            # ids per query: well under every backend's limit on parameters
MIN_RECHECK = 0.1      # a recheck of 0 would spin

DELETED = "the account was deleted"
DISABLED = "the account was disabled"
PASSWORD_CHANGED = "the account's password was changed"
TOKEN_REVOKED = "the token this session logged in with was revoked or has expired"


async def publish(conn: AsyncConnection, user_id: int) -> None:
    """Within a transaction that changed an account: other nodes hear of it when it commits."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                           {"channel": CHANNEL, "payload": str(user_id)})


@dataclass(eq=False)
class Login:
    """One open session's hold on its account."""

    user_id: int
    user_name: str
    protocol: str
    generation: int
    token_id: str | None
    on_end: Callable[[str], None] = field(repr=False)
    registry: "AccountSessions | None" = field(default=None, repr=False)
    ended: str | None = None

    def close(self) -> None:
        """The session is over (whatever ended it); safe to call twice, from any thread."""
        if self.registry is not None:
            self.registry._discard(self)


class AccountSessions:
    """Every open Login of this process, by user; thread-safe (FTP sessions run in threads
    of their own), the ends and the watcher run on the event loop."""

    def __init__(self, db: "Database", recheck: float):
        self.db = db
        self.recheck = max(MIN_RECHECK, recheck)
        self._lock = threading.Lock()
        self._by_user: dict[int, set[Login]] = {}
        self._emptied: dict[int, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._changed: set[int | None] = set()  # users to check at the wake (None: all)
        self._tasks: list[asyncio.Task[None]] = []

    # -- what sessions call --------------------------------------------------------------

    def open(self, user: "User", protocol: str, on_end: Callable[[str], None]) -> Login:
        """Hold ``user``'s account for a session that just logged in. ``on_end(reason)`` is
        called once, on the event loop, when the session must end; it must not block."""
        login = Login(user.id, user.name, protocol, user.generation, user.token_id, on_end, self)
        with self._lock:
            self._by_user.setdefault(user.id, set()).add(login)
        return login

    def _discard(self, login: Login) -> None:
        with self._lock:
            held = self._by_user.get(login.user_id)
            if held is None or login not in held:
                return
            held.discard(login)
            if held:
                return
            del self._by_user[login.user_id]
            emptied = self._emptied.get(login.user_id)
        if emptied is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(emptied.set)

    def open_count(self, user_id: int | None = None) -> int:
        with self._lock:
            if user_id is not None:
                return len(self._by_user.get(user_id, ()))
            return sum(len(held) for held in self._by_user.values())

    # -- what identity calls -------------------------------------------------------------

    def changed(self, user_id: int | None = None) -> None:
        """An account changed (committed): check its open sessions now (all of them
        without ``user_id``)."""
        if self._wake is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_for, user_id)

    def _wake_for(self, user_id: int | None) -> None:
        assert self._wake is not None
        self._changed.add(user_id)
        self._wake.set()

    async def end_user(self, user_id: int, reason: str, timeout: float) -> bool:
        """End every session of a user and wait (at most ``timeout``) until they have
        finished what they were doing (an upload, an APPEND) and gone; False if some
        were still open then."""
        self._loop = self._loop or asyncio.get_running_loop()
        emptied = asyncio.Event()
        with self._lock:
            if not self._by_user.get(user_id):
                return True
            self._emptied[user_id] = emptied
            held = list(self._by_user[user_id])
        try:
            self._end(held, reason)
            try:
                async with asyncio.timeout(timeout):
                    await emptied.wait()
            except TimeoutError:
                log.warning("%d session(s) of user id %d still open %.0f s after they were told: %s",
                            self.open_count(user_id), user_id, timeout, reason)
                return False
            return True
        finally:
            with self._lock:
                self._emptied.pop(user_id, None)

    # -- the watcher ---------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._watch()))
        if self.db.dialect == "postgresql":
            listening = asyncio.Event()
            listener = asyncio.create_task(self._listen(listening))
            self._tasks.append(listener)
            # A change made right after start must be heard.
            heard = asyncio.ensure_future(listening.wait())
            await asyncio.wait([heard, listener], return_when=asyncio.FIRST_COMPLETED)
            heard.cancel()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _watch(self) -> None:
        assert self._wake is not None
        failing = False
        while True:
            changed: set[int | None] = {None}  # the periodic recheck: every account
            try:
                async with asyncio.timeout(self.recheck):
                    await self._wake.wait()
                changed = self._changed
            except TimeoutError:
                pass
            self._wake.clear()
            self._changed = set()
            try:
                await self.check(None if None in changed else {i for i in changed if i is not None})
                failing = False
            except Exception as error:  # the database is away: the sessions stay until it is back
                if not failing:
                    log.warning("cannot recheck open sessions' accounts: %s", error)
                failing = True

    async def check(self, user_ids: set[int] | None = None) -> None:
        """Re-read the accounts (and tokens) of every open session (or of those of
        ``user_ids``); end those that no longer hold."""
        with self._lock:
            held = [login for user_id, logins in self._by_user.items() for login in logins
                    if login.ended is None and (user_ids is None or user_id in user_ids)]
        if not held:
            return
        held_ids = sorted({login.user_id for login in held})
        token_ids = sorted({login.token_id for login in held if login.token_id})
        accounts: dict[int, Any] = {}
        live_tokens: set[str] = set()
        now = utcnow()
        async with self.db.read() as conn:
            for chunk in _chunks(held_ids):
                for row in await conn.execute(select(users.c.id, users.c.disabled, users.c.generation)
                                              .where(users.c.id.in_(chunk))):
                    accounts[row.id] = row
            for chunk in _chunks(token_ids):
                for row in await conn.execute(select(tokens.c.id, tokens.c.revoked_at, tokens.c.expires_at)
                                              .where(tokens.c.id.in_(chunk))):
                    if row.revoked_at is None and (row.expires_at is None or row.expires_at > now):
                        live_tokens.add(row.id)
        ending: dict[str, list[Login]] = {}
        for login in held:
            reason = _why_ended(login, accounts.get(login.user_id), live_tokens)
            if reason:
                ending.setdefault(reason, []).append(login)
        for reason, logins in ending.items():
            self._end(logins, reason)

    def _end(self, logins: Iterable[Login], reason: str) -> None:
        for login in logins:
            if login.ended is not None:
                continue
            login.ended = reason
            log.info("ending the %s session of %s: %s", login.protocol, login.user_name, reason)
            try:
                login.on_end(reason)
            except Exception:
                log.exception("ending a %s session failed", login.protocol)

    async def _listen(self, listening: asyncio.Event) -> None:
        import asyncpg

        dsn = make_url(self.db.url).set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            try:
                conn = await asyncpg.connect(dsn)
                try:
                    lost = asyncio.Event()
                    conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                    await conn.add_listener(CHANNEL, self._heard)
                    listening.set()
                    self.changed()  # what changed while nobody listened
                    await lost.wait()
                finally:
                    await conn.close(timeout=2)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database restarts, the network drops...
                listening.set()
                log.warning("account notices: %s; reconnecting in %.0f s", error, RECONNECT_DELAY)
            await asyncio.sleep(RECONNECT_DELAY)

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            self.changed(int(payload))
        except ValueError:
            log.warning("ignoring a malformed account notice %r", payload)


def _why_ended(login: Login, account: Any, live_tokens: set[str]) -> str | None:
    if account is None:
        return DELETED
    if account.disabled:
        return DISABLED
    if account.generation != login.generation:
        return PASSWORD_CHANGED
    if login.token_id and login.token_id not in live_tokens:
        return TOKEN_REVOKED
    return None


def _chunks(ids: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start:start + BATCH]
