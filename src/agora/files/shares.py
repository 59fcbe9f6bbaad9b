"""Share links: read-only access to one file or folder of a user's tree, without an account.

A link is a random secret (256 bits) in its URL; the database keeps only its SHA-256, as
for API tokens, so a copy of the database does not hand out working links. A link may
expire, may need a password (argon2id, checked through the login rate limiter) and can
be revoked; its downloads are counted. The link's id (shown in listings and used to
revoke it) is not a secret and gives no access.

A link shows whatever is at its path *now*: replacing the file shares the new version,
deleting it breaks the link. Every path below a shared folder goes through the owner's
:class:`~agora.files.store.UserFiles`, which refuses ``..`` and symlinks, so nothing
outside the folder can be reached from the link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from agora.core.errors import AuthenticationFailed, InvalidInput, NotFound, RateLimited
from agora.core.identity import ClientInfo, User
from agora.core.passwords import MAX_PASSWORD_LENGTH
from agora.core.runtime import Runtime
from agora.core.tables import users, utcnow
from agora.files.access import file_store, user_files
from agora.files.store import UserFiles
from agora.files.tables import share_links

log = logging.getLogger("agora.files")

MIN_LIFETIME = 1  # seconds; short links are legitimate (and make expiry testable)
# How long a correct share password is remembered by the browser that sent it.
UNLOCK_LIFETIME = 30 * 60
GONE = "this link does not exist, has expired or was revoked"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ShareLink:
    id: str
    owner: str
    path: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    downloads: int
    # Kept out of repr: it is what the unlock cookie is signed with.
    password_hash: str | None = field(default=None, repr=False)
    owner_quota: int = 0
    owner_disabled: bool = False

    @property
    def has_password(self) -> bool:
        return self.password_hash is not None

    @property
    def active(self) -> bool:
        return (self.revoked_at is None and not self.owner_disabled
                and (self.expires_at is None or self.expires_at > utcnow()))

    @property
    def limiter_key(self) -> str:
        return f"share:{self.id}"


_COLUMNS = [share_links.c.id, share_links.c.path, share_links.c.created_at, share_links.c.expires_at,
            share_links.c.revoked_at, share_links.c.downloads, share_links.c.password_hash,
            users.c.name.label("owner"), users.c.quota_bytes, users.c.disabled]


def _link(row: Any) -> ShareLink:
    return ShareLink(id=row.id, owner=row.owner, path=row.path, created_at=row.created_at,
                     expires_at=row.expires_at, revoked_at=row.revoked_at, downloads=row.downloads,
                     password_hash=row.password_hash, owner_quota=row.quota_bytes,
                     owner_disabled=bool(row.disabled))


def _query() -> Select:
    return select(*_COLUMNS).join(users, users.c.id == share_links.c.user_id)


def validate_share_password(password: str) -> str:
    if not isinstance(password, str) or not 1 <= len(password) <= MAX_PASSWORD_LENGTH or "\x00" in password:
        raise InvalidInput(f"a share password is 1 to {MAX_PASSWORD_LENGTH} characters, without NUL")
    return password


class ShareLinks:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.db = runtime.db
        self.identity = runtime.identity

    # -- the owner's side ---------------------------------------------------------------

    async def create(self, user: User, path: str, *, expires_in: float | None = None,
                     password: str | None = None, client: ClientInfo | None = None) -> tuple[ShareLink, str]:
        """A new link to ``path`` (which must exist); returns it and its secret token.

        Without ``expires_in`` the link lives as long as ``files.share_max_lifetime``
        allows: every link ends some day.
        """
        longest = self.runtime.config.files.share_max_lifetime
        if expires_in is None:
            expires_in = longest
        if not MIN_LIFETIME <= expires_in <= longest:
            raise InvalidInput(f"expires_in is {MIN_LIFETIME} to {int(longest)} seconds")
        entry = await run_in_threadpool(user_files(self.runtime, user).stat, path)
        password_hash = None
        if password is not None:
            password_hash = await self.identity.hasher.hash(validate_share_password(password))
        token = secrets.token_urlsafe(32)
        link_id = secrets.token_hex(8)
        now = utcnow()
        expires_at = now + timedelta(seconds=expires_in)
        async with self.db.write() as conn:
            await conn.execute(insert(share_links).values(
                id=link_id, token_hash=_digest(token), user_id=user.id, path=entry.path, created_at=now,
                expires_at=expires_at, password_hash=password_hash, downloads=0))
            await self.runtime.audit.record(
                "share.create", actor=user.name, target=entry.path, conn=conn,
                details={"share": link_id, "expires_at": expires_at.isoformat(), "password": password is not None},
                protocol=client.protocol if client else None, client_addr=client.address if client else None)
            row = (await conn.execute(_query().where(share_links.c.id == link_id))).one()
        return _link(row), token

    async def of_user(self, user: User) -> list[ShareLink]:
        async with self.db.read() as conn:
            rows = (await conn.execute(_query().where(share_links.c.user_id == user.id)
                                       .order_by(share_links.c.created_at.desc()))).all()
        return [_link(row) for row in rows]

    async def revoke(self, user: User, link_id: str, *, client: ClientInfo | None = None) -> ShareLink:
        """Stop a link of ``user``'s at once; someone else's link is "not found"."""
        async with self.db.write() as conn:
            query = _query().where(share_links.c.id == link_id, share_links.c.user_id == user.id)
            row = (await conn.execute(query)).first()
            if row is None:
                raise NotFound("no such share link of yours")
            if row.revoked_at is None:
                await conn.execute(update(share_links).where(share_links.c.id == link_id).values(revoked_at=utcnow()))
                await self.runtime.audit.record(
                    "share.revoke", actor=user.name, target=row.path, conn=conn, details={"share": link_id},
                    protocol=client.protocol if client else None, client_addr=client.address if client else None)
                row = (await conn.execute(query)).one()
        return _link(row)

    # -- the visitor's side -------------------------------------------------------------

    async def open(self, token: str) -> ShareLink:
        """The live link of a token. Unknown, expired, revoked or an owner disabled all
        look the same, so a visitor learns nothing about links that do not work."""
        if not isinstance(token, str) or not 20 <= len(token) <= 100:
            raise NotFound(GONE)
        async with self.db.read() as conn:
            row = (await conn.execute(_query().where(share_links.c.token_hash == _digest(token)))).first()
        if row is None:
            raise NotFound(GONE)
        link = _link(row)
        if not link.active:
            raise NotFound(GONE)
        return link

    def files(self, link: ShareLink) -> UserFiles:
        return file_store(self.runtime).for_user(link.owner, link.owner_quota)

    async def check_password(self, link: ShareLink, password: str, client: ClientInfo) -> None:
        """Raises RateLimited after too many wrong guesses from ``client``, else
        AuthenticationFailed for a wrong password."""
        limiter = self.identity.limiter
        # Counted as a failure from here, before the hash, so that guesses sent at once
        # cannot all pass before the first has failed; a right one is given back.
        await self.identity.wait_turn(link.limiter_key, client.address)
        wait = limiter.attempt(link.limiter_key, client.address)
        if wait > 0:
            if limiter.first_refusal(link.limiter_key, client.address):
                await self.runtime.audit.record("share.password", target=link.path, outcome="rate-limited",
                                                protocol=client.protocol, client_addr=client.address,
                                                details={"share": link.id})
            raise RateLimited(wait)
        valid = isinstance(password, str) and len(password) <= MAX_PASSWORD_LENGTH
        try:
            ok = await self.identity.hasher.verify(link.password_hash, password if valid else "")
        except BaseException:
            limiter.release(link.limiter_key, client.address)
            self.identity.decided()
            raise
        if not (ok and valid):
            limiter.wrong(link.limiter_key, client.address)
            self.identity.decided()
            raise AuthenticationFailed("wrong password for this link")
        limiter.succeeded(link.limiter_key, client.address)
        self.identity.decided()

    async def count_download(self, link: ShareLink) -> None:
        try:
            async with self.db.write() as conn:
                await conn.execute(update(share_links).where(share_links.c.id == link.id)
                                   .values(downloads=share_links.c.downloads + 1))
        except (SQLAlchemyError, OSError) as error:
            # A count, not a limit: the download goes on when it cannot be written (a
            # full disk under the database).
            log.warning("share %s: download not counted: %s", link.id, type(error).__name__)

    # -- remembering a correct password ---------------------------------------------------

    def unlock_cookie(self, link: ShareLink) -> str:
        """Proof, for a short while, that this browser knew the link's password.

        Signed with the link's password hash: a server-side secret that every node
        shares through the database, and that dies with the link.
        """
        expires = int(time.time()) + UNLOCK_LIFETIME
        return f"{expires}.{self._signature(link, expires)}"

    def unlocked(self, link: ShareLink, cookie: str | None) -> bool:
        if not cookie or not link.password_hash or len(cookie) > 200:
            return False
        expires, _, signature = cookie.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature, self._signature(link, int(expires)))

    @staticmethod
    def _signature(link: ShareLink, expires: int) -> str:
        assert link.password_hash is not None
        mac = hmac.new(link.password_hash.encode(), f"{link.id}.{expires}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def share_links_of(runtime: Runtime) -> ShareLinks:
    return runtime.shared("files.shares", lambda: ShareLinks(runtime))
