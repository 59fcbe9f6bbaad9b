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

After each such pass (and once the sessions it ended have finished what they were
writing) a watcher records the time it started in ``session_watchers``. Deleting a
user disables the account first, then waits until every other live watcher has passed
that moment, so that no session anywhere still writes when the user's data goes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agora.core import notices
from agora.core.tables import session_watchers, tokens, users, utcnow

if TYPE_CHECKING:
    from agora.core.database import Database
    from agora.core.identity import User

log = logging.getLogger("agora.sessions")

CHANNEL = "agora_accounts"
BATCH = 500            # ids per query: well under every backend's limit on parameters
MIN_RECHECK = 0.1      # a recheck of 0 would spin
OTHERS_POLL = 0.05     # how often a deletion looks whether the other nodes have rechecked (a read)

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

    def __init__(self, db: "Database", recheck: float, end_timeout: float = 10.0):
        self.db = db
        self.recheck = max(MIN_RECHECK, recheck)
        self.end_timeout = end_timeout  # how long ended sessions may take to finish their writes
        # This process's row in session_watchers (only while its watcher runs).
        self.node = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._by_user: dict[int, set[Login]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Event] = set()  # each set whenever a Login goes
        self._wake: asyncio.Event | None = None
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
            if not held:
                del self._by_user[login.user_id]
            waiters = list(self._waiters)
        if waiters and self._loop is not None:
            for waiter in waiters:
                self._loop.call_soon_threadsafe(waiter.set)

    def _holds(self, login: Login) -> bool:
        with self._lock:
            return login in self._by_user.get(login.user_id, ())

    def open_count(self, user_id: int | None = None) -> int:
        with self._lock:
            if user_id is not None:
                return len(self._by_user.get(user_id, ()))
            return sum(len(held) for held in self._by_user.values())

    # -- what identity calls -------------------------------------------------------------

    def changed(self) -> None:
        """An account changed (committed): recheck the open sessions now."""
        if self._wake is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def end_user(self, user_id: int, reason: str, timeout: float) -> bool:
        """End every session of a user here and wait (at most ``timeout``) until they have
        finished what they were doing (an upload, an APPEND) and gone; False if some
        were still open then."""
        with self._lock:
            held = list(self._by_user.get(user_id, ()))
        self._end(held, reason)
        return await self._until_closed(held, timeout)

    async def await_others(self, since: datetime, timeout: float) -> bool:
        """Wait (at most ``timeout``) until every other live process with a watcher has
        re-read the accounts after ``since`` (and ended, and waited for, the sessions
        that no longer hold); False if one had not by then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.db.dialect == "postgresql":
            # A recheck that a notice started before ``since`` does not count: ask for one
            # more (elsewhere, the next periodic recheck comes after it).
            async with self.db.write() as conn:
                await publish(conn, 0)
        while True:
            async with self.db.read() as conn:
                rows = (await conn.execute(select(session_watchers).where(
                    session_watchers.c.node != self.node))).all()
            now = utcnow()
            behind = [row.node for row in rows
                      if row.checked_at < since and row.checked_at > now - _grace(row.every_seconds)]
            if not behind:
                return True
            if loop.time() >= deadline:
                log.warning("%d other node(s) had not rechecked open sessions %.0f s after an account "
                            "change: going on without them", len(behind), timeout)
                return False
            await asyncio.sleep(OTHERS_POLL)

    async def _until_closed(self, logins: list[Login], timeout: float) -> bool:
        if not logins:
            return True
        loop = asyncio.get_running_loop()
        self._loop = self._loop or loop
        closed = asyncio.Event()
        with self._lock:
            self._waiters.add(closed)
        deadline = loop.time() + timeout
        try:
            while True:
                closed.clear()  # before looking: a close meanwhile sets it again
                open_ = [login for login in logins if self._holds(login)]
                if not open_:
                    return True
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await closed.wait()
                except TimeoutError:
                    log.warning("%d session(s) still open %.0f s after they were told to end (%s)",
                                len(open_), timeout, ", ".join(sorted({x.protocol for x in open_})))
                    return False
        finally:
            with self._lock:
                self._waiters.discard(closed)

    # -- the watcher ---------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            await self._beat(utcnow())  # a node is waited for from its start
            await self._sweep()
        except Exception as error:  # a full disk, say: the watcher's next pass tries again
            log.warning("cannot record this node's session watcher: %s", error)
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
        try:
            async with self.db.write() as conn:
                await conn.execute(delete(session_watchers).where(session_watchers.c.node == self.node))
        except Exception as error:  # a dead node's row is ignored once it is old anyway
            log.warning("could not remove this node's session watcher row: %s", error)

    async def _watch(self) -> None:
        assert self._wake is not None
        failing = False
        while True:
            try:
                async with asyncio.timeout(self.recheck):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                started = utcnow()
                ended = await self.check()
                await self._until_closed(ended, self.end_timeout)
                await self._beat(started)
                failing = False
            except Exception as error:  # the database is away: the sessions stay until it is back
                if not failing:
                    log.warning("cannot recheck open sessions' accounts: %s", error)
                failing = True

    async def _sweep(self) -> None:
        """Forget the rows of nodes that died without removing theirs."""
        async with self.db.read() as conn:
            rows = (await conn.execute(select(session_watchers))).all()
        now = utcnow()
        dead = [row.node for row in rows if row.checked_at < now - _grace(row.every_seconds)]
        if dead:
            async with self.db.write() as conn:
                await conn.execute(delete(session_watchers).where(session_watchers.c.node.in_(dead)))

    async def _beat(self, checked_at: datetime) -> None:
        """Say that this process has seen every account as it was at ``checked_at``."""
        async with self.db.write() as conn:
            values = {"checked_at": checked_at, "every_seconds": self.recheck}
            done = await conn.execute(update(session_watchers).where(
                session_watchers.c.node == self.node).values(**values))
            if not done.rowcount:
                await conn.execute(insert(session_watchers).values(node=self.node, **values))

    async def check(self) -> list[Login]:
        """Re-read the accounts (and tokens) of every open session; end those that no
        longer hold, and return them."""
        with self._lock:
            held = [login for logins in self._by_user.values() for login in logins if login.ended is None]
        if not held:
            return []
        user_ids = sorted({login.user_id for login in held})
        token_ids = sorted({login.token_id for login in held if login.token_id})
        accounts: dict[int, Any] = {}
        live_tokens: set[str] = set()
        now = utcnow()
        async with self.db.read() as conn:
            for chunk in _chunks(user_ids):
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
        return [login for logins in ending.values() for login in logins]

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
        # Every notice rechecks all open sessions, so that a node's recorded recheck
        # covers every account; so does each reconnection (what changed meanwhile).
        await notices.listen(self.db, CHANNEL, lambda _payload: self.changed(), listening, log,
                             on_connect=self.changed)


def _grace(every_seconds: float) -> timedelta:
    """How long a node may go without recording a recheck before it counts as dead."""
    return timedelta(seconds=3 * every_seconds + 1)


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
