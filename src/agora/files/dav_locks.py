"""WebDAV write locks (RFC 4918 class 2), kept in the metadata database.

A lock is taken by one client on a path of one user's tree; until it is released or
times out, changes to what it covers need its token in the request's If header (see
``dav_if``). Every node of a scale-out reads the same table, so a lock taken through
one node holds on all of them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from xml.sax.saxutils import escape

from sqlalchemy import delete, insert, or_, select, update

from agora.core.database import Database
from agora.core.tables import users, utcnow
from agora.files import dav_xml
from agora.files.dav_tables import dav_locks

DEFAULT_TIMEOUT = 3600
# Longest lock granted: a client that crashed holding a lock blocks others at most this
# long. Clients refresh locks they still need.
MAX_TIMEOUT = 24 * 3600
# Locks one user may hold at once, so that a looping client cannot fill the database.
MAX_LOCKS_PER_USER = 1000
TOKEN_PREFIX = "opaquelocktoken:"


def is_below(path: str, ancestor: str) -> bool:
    """Whether ``path`` is strictly inside the folder ``ancestor`` (virtual paths)."""
    if ancestor == "/":
        return path != "/"
    return path.startswith(ancestor + "/")


@dataclass(frozen=True)
class Lock:
    token: str
    path: str  # the lock root
    infinite: bool
    scope: str  # "exclusive" or "shared"
    owner: str  # XML text
    timeout: int
    expires_at: datetime

    def covers(self, path: str) -> bool:
        return path == self.path or (self.infinite and is_below(path, self.path))

    def activelock(self, root_path: str, is_dir: bool = False) -> str:
        remaining = max(0, int((self.expires_at - utcnow()).total_seconds()))
        owner = f"<D:owner>{self.owner}</D:owner>" if self.owner else ""
        url = dav_xml.href(root_path, self.path, is_dir)
        return (f"<D:activelock><D:locktype><D:write/></D:locktype>"
                f"<D:lockscope><D:{self.scope}/></D:lockscope>"
                f"<D:depth>{'infinity' if self.infinite else '0'}</D:depth>{owner}"
                f"<D:timeout>Second-{remaining}</D:timeout>"
                f"<D:locktoken><D:href>{escape(self.token)}</D:href></D:locktoken>"
                f"<D:lockroot><D:href>{url}</D:href></D:lockroot></D:activelock>")


class LockConflict(Exception):
    def __init__(self, lock: Lock | None):
        super().__init__("the resource is locked")
        self.lock = lock


SUPPORTED_LOCK = "".join(
    f"<D:lockentry><D:lockscope><D:{scope}/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry>"
    for scope in ("exclusive", "shared"))


def timeout_of(header: str | None) -> int:
    """Seconds to grant for a ``Timeout: Second-N, Infinite`` request header."""
    for choice in (header or "").split(","):
        choice = choice.strip().lower()
        if choice == "infinite":
            return MAX_TIMEOUT
        if choice.startswith("second-") and choice[7:].isdigit():
            return max(1, min(int(choice[7:]), MAX_TIMEOUT))
    return DEFAULT_TIMEOUT


def _lock(row) -> Lock:  # type: ignore[no-untyped-def]
    return Lock(token=row.token, path=row.path, infinite=row.depth == "infinity", scope=row.scope,
                owner=row.owner, timeout=row.timeout, expires_at=row.expires_at)


def _in_tree(path: str):  # type: ignore[no-untyped-def]
    if path == "/":
        return dav_locks.c.path.isnot(None)
    return or_(dav_locks.c.path == path, dav_locks.c.path.startswith(path + "/", autoescape=True))


class LockStore:
    def __init__(self, db: Database):
        self.db = db

    async def live(self, user_id: int) -> list[Lock]:
        async with self.db.read() as conn:
            rows = (await conn.execute(select(dav_locks).where(
                dav_locks.c.user_id == user_id, dav_locks.c.expires_at > utcnow()))).all()
        return [_lock(row) for row in rows]

    async def create(self, user_id: int, path: str, *, infinite: bool, scope: str, owner: str,
                     timeout: int) -> Lock:
        """A new lock, unless one already taken conflicts with it (LockConflict)."""
        now = utcnow()
        async with self.db.write() as conn:
            # Taking the user's row serialises lock creation per user on PostgreSQL
            # (SQLite's writers are serialised already), so two clients cannot both get
            # an exclusive lock on one path.
            await conn.execute(select(users.c.id).where(users.c.id == user_id).with_for_update())
            await conn.execute(delete(dav_locks).where(dav_locks.c.user_id == user_id,
                                                       dav_locks.c.expires_at <= now))
            rows = (await conn.execute(select(dav_locks).where(dav_locks.c.user_id == user_id))).all()
            held = [_lock(row) for row in rows]
            for other in held:
                overlaps = other.covers(path) or (infinite and is_below(other.path, path))
                if overlaps and (scope == "exclusive" or other.scope == "exclusive"):
                    raise LockConflict(other)
            if len(held) >= MAX_LOCKS_PER_USER:
                raise LockConflict(None)
            lock = Lock(token=TOKEN_PREFIX + str(uuid.uuid4()), path=path, infinite=infinite,
                        scope=scope, owner=owner, timeout=timeout,
                        expires_at=now + timedelta(seconds=timeout))
            await conn.execute(insert(dav_locks).values(
                token=lock.token, user_id=user_id, path=path, depth="infinity" if infinite else "0",
                scope=scope, owner=owner, timeout=timeout, expires_at=lock.expires_at))
        return lock

    async def refresh(self, user_id: int, lock: Lock, timeout: int) -> Lock:
        expires = utcnow() + timedelta(seconds=timeout)
        async with self.db.write() as conn:
            await conn.execute(update(dav_locks).where(
                dav_locks.c.user_id == user_id, dav_locks.c.token == lock.token)
                .values(timeout=timeout, expires_at=expires))
        return Lock(**{**lock.__dict__, "timeout": timeout, "expires_at": expires})

    async def release(self, user_id: int, token: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(dav_locks).where(dav_locks.c.user_id == user_id,
                                                       dav_locks.c.token == token))

    async def release_tree(self, user_id: int, path: str) -> None:
        """Drop the locks rooted at or below ``path``: what they locked is gone or moved
        away (a lock never follows a MOVE or COPY)."""
        async with self.db.read() as conn:  # most trees hold no lock: spare a durable write
            if (await conn.execute(select(dav_locks.c.token).where(
                    dav_locks.c.user_id == user_id, _in_tree(path)).limit(1))).first() is None:
                return
        async with self.db.write() as conn:
            await conn.execute(delete(dav_locks).where(dav_locks.c.user_id == user_id, _in_tree(path)))
