"""The user directory: users, passwords, API tokens, web sessions, and the one way every
protocol authenticates, :meth:`Identity.authenticate`.

Every change to a user or a token is written to the audit log in the same transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ipaddress
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

from sqlalchemy import delete, false, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from agora.config import Config
from agora.core.audit import AuditLog
from agora.core.database import Database
from agora.core.errors import (AuthenticationFailed, Conflict, EncryptionRequired, InvalidInput,
                               NotFound, RateLimited)
from agora.core.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, PasswordHasher
from agora.core.ratelimit import LoginLimiter
from agora.core.scram import Verifier, decode_verifier, encode_verifier, make_verifier, saslprep
from agora.core.sessions import DELETED, AccountSessions, publish
from agora.core.tables import sessions, tokens, users, utcnow

log = logging.getLogger("agora.identity")

ROLES = ("admin", "user")
MAX_NAME_LENGTH = 32
MAX_TOKEN_NAME_LENGTH = 100
TOKEN_PREFIX = "agora_"
# last_used_at / session expiry are refreshed at most this often, so that reading with
# a token does not cost a durable write on every request.
TOUCH_INTERVAL = timedelta(seconds=60)
# Longest a login waits for the outcome of earlier attempts of the same name and address
# (limiter.must_wait): a few password hashes' time, with room for a queue of them.
LOGIN_QUEUE_WAIT = 30.0

# Lowercase letters, digits, '-', '_' and single inner dots; starts with a letter. The
# name becomes a directory and a mail local part, so nothing else is allowed.
_NAME = re.compile(r"[a-z](?:[a-z0-9_-]|\.(?=[a-z0-9_-]))*")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    disabled: bool
    quota_bytes: int
    created_at: datetime
    updated_at: datetime
    # Bumped by every password change: a session from before one ends (core/sessions.py).
    generation: int = 0
    # The API token this user was found by, if any: a session it opened ends with it.
    token_id: str | None = field(default=None, compare=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Token:
    id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > utcnow())


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class ClientInfo:
    """Where a request comes from, as every protocol adapter knows it."""

    address: str
    protocol: str
    secure: bool = False

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.address.split("%")[0]).is_loopback
        except ValueError:
            return False


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InvalidInput(
            "user names are 1-32 characters: lowercase letters, digits, '-', '_' and single "
            "inner dots, starting with a letter"
        )
    return name


def validate_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"passwords are {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")
    if "\x00" in password:
        raise InvalidInput("passwords cannot contain NUL characters")
    return password


async def _scram_verifier(password: str, iterations: int) -> str:
    # PBKDF2 with identity.scram_iterations rounds: tens of milliseconds, off the event loop.
    return encode_verifier(await asyncio.to_thread(make_verifier, password, iterations))


def possible_user_name(name: Any) -> bool:
    """Whether an account could have this name (checked before any query: the metadata
    database must never see what it cannot store, such as NUL on PostgreSQL)."""
    return isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


def _shown(name: str) -> str | None:
    """A name as the audit log can store it, whatever was sent: at most 64 characters,
    NUL and lone surrogates written as escapes."""
    return name[:64].encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")[:64] or None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _user(row: Any) -> User:
    return User(id=row.id, name=row.name, role=row.role, disabled=bool(row.disabled),
                quota_bytes=row.quota_bytes, created_at=row.created_at, updated_at=row.updated_at,
                generation=row.generation)


def _token(row: Any) -> Token:
    return Token(id=row.id, name=row.name, created_at=row.created_at, expires_at=row.expires_at,
                 last_used_at=row.last_used_at, revoked_at=row.revoked_at)


_USER_COLUMNS = [users.c.id, users.c.name, users.c.role, users.c.disabled, users.c.quota_bytes,
                 users.c.created_at, users.c.updated_at, users.c.generation]


class Identity:
    def __init__(self, db: Database, audit: AuditLog, config: Config,
                 hasher: PasswordHasher | None = None, limiter: LoginLimiter | None = None):
        self.db = db
        self.audit = audit
        self.config = config
        ident = config.identity
        self.hasher = hasher or PasswordHasher(ident.argon2_time_cost, ident.argon2_memory_kib,
                                               ident.argon2_parallelism, ident.max_concurrent_hashes)
        self.limiter = limiter or LoginLimiter(
            free_failures=ident.login_free_failures,
            free_failures_per_address=ident.login_free_failures_per_address,
            base=ident.login_backoff_base, maximum=ident.login_backoff_max)
        # Called with (protocol, outcome) on every password check: the metrics hook.
        self.login_observers: list[Any] = []
        # Each service's "forget this user's data" (their files, their mail...), awaited
        # before the account row goes, so that a later account of the same name can
        # never inherit what the old one left behind.
        self.deletion_hooks: list[Callable[[User], Awaitable[None]]] = []
        # Set (and replaced) whenever a reserved login attempt is decided: wait_turn().
        self._settled = asyncio.Event()
        # Every protocol session that logged in, so that it ends with its account.
        self.sessions = AccountSessions(db, ident.session_recheck, ident.session_end_timeout)

    # -- users ----------------------------------------------------------------------

    async def create_user(self, name: str, password: str, *, role: str = "user",
                          quota_bytes: int | None = None, actor: str | None = None,
                          client: ClientInfo | None = None) -> User:
        validate_name(name)
        validate_password(password)
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
        if quota_bytes is not None and quota_bytes < 0:
            raise InvalidInput("quota_bytes must not be negative")
        password_hash = await self.hasher.hash(password)
        verifier = await _scram_verifier(password, self.config.identity.scram_iterations)
        now = utcnow()
        try:
            async with self.db.write() as conn:
                await conn.execute(insert(users).values(
                    name=name, password_hash=password_hash, scram_verifier=verifier, role=role, disabled=False,
                    quota_bytes=self.config.identity.default_quota if quota_bytes is None else quota_bytes,
                    created_at=now, updated_at=now))
                await self._audit(conn, "user.create", actor, name, client, {"role": role})
                return await self._require_user(conn, name)
        except IntegrityError:
            raise Conflict(f"user {name!r} already exists") from None

    async def get_user(self, name: str) -> User:
        async with self.db.read() as conn:
            return await self._require_user(conn, name)

    async def find_user(self, name: str) -> User | None:
        if not possible_user_name(name):
            return None
        async with self.db.read() as conn:
            row = (await conn.execute(select(*_USER_COLUMNS).where(users.c.name == name))).first()
        return _user(row) if row else None

    async def list_users(self) -> list[User]:
        async with self.db.read() as conn:
            rows = (await conn.execute(select(*_USER_COLUMNS).order_by(users.c.name))).all()
        return [_user(row) for row in rows]

    async def count_users(self) -> int:
        async with self.db.read() as conn:
            return (await conn.execute(select(func.count()).select_from(users))).scalar_one()

    async def update_user(self, name: str, *, password: str | None = None, role: str | None = None,
                          disabled: bool | None = None, quota_bytes: int | None = None,
                          actor: str | None = None, client: ClientInfo | None = None) -> User:
        changes: dict[str, Any] = {}
        if password is not None:
            changes["password_hash"] = await self.hasher.hash(validate_password(password))
            changes["scram_verifier"] = await _scram_verifier(password, self.config.identity.scram_iterations)
            changes["generation"] = users.c.generation + 1
        if role is not None:
            if role not in ROLES:
                raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
            changes["role"] = role
        if disabled is not None:
            changes["disabled"] = bool(disabled)
        if quota_bytes is not None:
            if quota_bytes < 0:
                raise InvalidInput("quota_bytes must not be negative")
            changes["quota_bytes"] = quota_bytes
        async with self.db.write() as conn:
            before = await self._require_user(conn, name)
            if not changes:
                return before
            if before.is_admin and (changes.get("role") == "user" or changes.get("disabled")):
                await self._keep_an_admin(conn, name)
            changes["updated_at"] = utcnow()
            await conn.execute(update(users).where(users.c.name == name).values(**changes))
            if password is not None or changes.get("disabled"):
                # A new password or a disabled account ends every web login at once.
                await conn.execute(delete(sessions).where(sessions.c.user_id == before.id))
                await publish(conn, before.id)
            shown = {k: v for k, v in changes.items()
                     if k not in ("password_hash", "scram_verifier", "updated_at", "generation")}
            if password is not None:
                shown["password"] = "changed"
            action = "user.update"
            if set(shown) == {"disabled"}:
                action = "user.disable" if shown["disabled"] else "user.enable"
            elif set(shown) == {"password"}:
                action = "user.password"
            await self._audit(conn, action, actor, name, client, shown)
            after = await self._require_user(conn, name)
        if password is not None or changes.get("disabled"):
            self.sessions.changed()
        return after

    async def delete_user(self, name: str, *, actor: str | None = None,
                          client: ClientInfo | None = None) -> None:
        # First the account is disabled (no new login anywhere from now on) and its open
        # sessions end, here at once, elsewhere at the notice or the next recheck, which
        # is waited for; what they were writing is finished or abandoned before their
        # data goes, so nothing of theirs can reappear for a later account of the name.
        async with self.db.write() as conn:
            user = await self._require_user(conn, name)
            if user.is_admin:
                await self._keep_an_admin(conn, name)
            await conn.execute(update(users).where(users.c.id == user.id).values(disabled=True))
            await publish(conn, user.id)
        since = utcnow()
        await self.sessions.end_user(user.id, DELETED, self.sessions.end_timeout)
        await self.sessions.await_others(since, self.sessions.end_timeout)
        try:
            async with self.db.write() as conn:
                # Tokens and sessions go with the user (ON DELETE CASCADE, deleted here too
                # for databases opened without foreign-key enforcement).
                for forget in self.deletion_hooks:
                    await forget(user)  # a failure here aborts the deletion as a whole
                await conn.execute(delete(tokens).where(tokens.c.user_id == user.id))
                await conn.execute(delete(sessions).where(sessions.c.user_id == user.id))
                await conn.execute(delete(users).where(users.c.id == user.id))
                await publish(conn, user.id)
                await self._audit(conn, "user.delete", actor, name, client)
        except BaseException:
            # Refused (money held...) or failed: the account is as it was, but for the
            # sessions that ended meanwhile.
            async with self.db.write() as conn:
                await conn.execute(update(users).where(users.c.id == user.id).values(disabled=user.disabled))
            raise

    async def ensure_admin(self, name: str, password: str) -> bool:
        """Create the first admin when the directory is empty; True if it was created."""
        if await self.count_users():
            return False
        try:
            await self.create_user(name, password, role="admin", actor="agora")
        except Conflict:
            return False  # another node created it first
        return True

    # -- authentication -------------------------------------------------------------

    async def wait_turn(self, key: str, address: str) -> None:
        """Wait while earlier attempts of this name and address are still being checked
        and one more would start a backoff (limiter.must_wait): their outcome decides
        whether this one may run (a right password gives its reservation back). Bounded
        by LOGIN_QUEUE_WAIT; then attempt() decides as it stands."""
        deadline = time.monotonic() + LOGIN_QUEUE_WAIT
        while self.limiter.must_wait(key, address):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            settled = self._settled
            try:
                await asyncio.wait_for(settled.wait(), remaining)
            except TimeoutError:
                return

    def decided(self) -> None:
        """An attempt's outcome is known: wake the attempts waiting their turn."""
        self._settled.set()
        self._settled = asyncio.Event()

    async def _refuse_if_limited(self, key: str, client: ClientInfo, *, reserve: bool = False) -> None:
        """RateLimited while this name and address are backing off (audited once). With
        ``reserve``, an allowed attempt is counted as a failure from now on, before any
        password is checked, until the outcome settles it (limiter.succeeded/release)."""
        if reserve:
            await self.wait_turn(key, client.address)
        wait = self.limiter.attempt(key, client.address) if reserve else self.limiter.retry_after(key, client.address)
        if wait > 0:
            self._observe(client.protocol, "rate_limited")
            if self.limiter.first_refusal(key, client.address):
                await self.audit.record_or_log("login", actor=_shown(key), outcome="rate-limited",
                                               protocol=client.protocol, client_addr=client.address)
            raise RateLimited(wait)

    async def authenticate(self, name: str, password: str, client: ClientInfo) -> User:
        """Check a name and password from any protocol; the only place passwords are checked.

        Raises EncryptionRequired (plain text from a non-loopback address without TLS),
        RateLimited (too many failures: nothing is hashed), or AuthenticationFailed (wrong
        name or password, or a disabled account: one message for all, in the same time).
        """
        if not client.secure and not client.loopback and not self.config.identity.allow_plaintext_remote:
            raise EncryptionRequired("passwords are accepted only over TLS from this address")
        key = name if isinstance(name, str) else ""
        await self._refuse_if_limited(key, client, reserve=True)
        row = None
        try:
            possible = possible_user_name(name)
            if possible:
                async with self.db.read() as conn:
                    row = (await conn.execute(
                        select(*_USER_COLUMNS, users.c.password_hash, users.c.scram_verifier)
                        .where(users.c.name == name))).first()
            valid = isinstance(password, str) and len(password) <= MAX_PASSWORD_LENGTH
            # A name no account can have is refused without a hash: the rules for names
            # are public, so answering it sooner tells nothing.
            ok = possible and await self.hasher.verify(row.password_hash if row else None, password if valid else "")
        except BaseException:
            self.limiter.release(key, client.address)  # nothing was checked
            self.decided()
            raise
        ok = ok and valid and row is not None
        if ok:
            self.limiter.succeeded(key, client.address)  # a disabled account's too: the password was right
        else:
            self.limiter.wrong(key, client.address)
        self.decided()
        if not ok or row.disabled:
            self._observe(client.protocol, "failed")
            await self.audit.record_or_log("login", actor=_shown(key), outcome="failed",
                                           protocol=client.protocol, client_addr=client.address,
                                           details={"reason": "disabled"} if ok else None)
            raise AuthenticationFailed("wrong user name or password")
        self._observe(client.protocol, "ok")
        upgrades: dict[str, Any] = {}
        if self.hasher.needs_rehash(row.password_hash):
            # Parameters were raised since this hash was made: upgrade it now that we
            # have the password.
            upgrades["password_hash"] = await self.hasher.hash(password)
        current = decode_verifier(row.scram_verifier)
        if current is None or current.iterations != self.config.identity.scram_iterations or (
                saslprep(password) != password
                and await asyncio.to_thread(make_verifier, password, current.iterations, current.salt) != current):
            # Users from before SCRAM verifiers existed get one at their next login; so do
            # those whose verifier was made before SASLprep was applied to passwords.
            upgrades["scram_verifier"] = await _scram_verifier(password, self.config.identity.scram_iterations)
        if upgrades:
            # The old hash still works: a login does not fail for want of a write.
            await self._write_if_possible("password hash upgrade",
                                          update(users).where(users.c.id == row.id).values(**upgrades))
        await self.audit.record_or_log("login", actor=name, outcome="ok", protocol=client.protocol,
                                       client_addr=client.address)
        return _user(row)

    async def scram_verifier(self, name: str, client: ClientInfo) -> Verifier | None:
        """First half of a SCRAM login (the password never travels, so no TLS is needed):
        the verifier of an enabled user, or None (unknown, disabled, or no verifier yet:
        the caller runs the exchange against a made-up one, to reveal nothing).

        Raises RateLimited exactly as authenticate() does (but counts nothing: a client
        that goes away here has guessed nothing). The proof must be checked through
        :meth:`record_login`.
        """
        key = name if isinstance(name, str) else ""
        await self._refuse_if_limited(key, client)
        if not possible_user_name(name):
            return None
        async with self.db.read() as conn:
            row = (await conn.execute(select(users.c.disabled, users.c.scram_verifier)
                                      .where(users.c.name == name))).first()
        if row is None or row.disabled:
            return None
        return decode_verifier(row.scram_verifier)

    async def lacks_scram_verifier(self, name: str) -> bool:
        """True for an existing user who has no SCRAM verifier yet (one made before
        verifiers existed): such a user can log in with SCRAM only after giving the
        password once. False for everyone else, unknown names included."""
        if not possible_user_name(name):
            return False
        async with self.db.read() as conn:
            row = (await conn.execute(select(users.c.scram_verifier).where(users.c.name == name))).first()
        return row is not None and decode_verifier(row.scram_verifier) is None

    async def record_login(self, name: str, check: Callable[[], bool], client: ClientInfo) -> User:
        """Second half of a login checked outside authenticate() (SCRAM proofs): reserves
        the attempt with the limiter, then runs ``check()`` (True when the proof holds for
        a known user), and counts the outcome for rate limiting, metrics and the audit log
        as authenticate() does; returns the user, or raises AuthenticationFailed (also for
        a user disabled meanwhile). What ``check`` raises (a malformed message) is
        passed on, and such an attempt is not counted."""
        key = name if isinstance(name, str) else ""
        await self._refuse_if_limited(key, client, reserve=True)
        try:
            ok = check()
        except BaseException:
            self.limiter.release(key, client.address)
            self.decided()
            raise
        if ok:
            self.limiter.succeeded(key, client.address)
        else:
            self.limiter.wrong(key, client.address)
        self.decided()
        user = await self.find_user(name) if ok else None
        if user is None or user.disabled:
            self._observe(client.protocol, "failed")
            await self.audit.record_or_log("login", actor=_shown(key), outcome="failed",
                                           protocol=client.protocol, client_addr=client.address,
                                           details={"reason": "disabled"} if user else None)
            raise AuthenticationFailed("wrong user name or password")
        self._observe(client.protocol, "ok")
        await self.audit.record_or_log("login", actor=name, outcome="ok", protocol=client.protocol,
                                       client_addr=client.address)
        return user

    def _observe(self, protocol: str, outcome: str) -> None:
        for observer in self.login_observers:
            observer(protocol, outcome)

    # -- API tokens -----------------------------------------------------------------

    async def create_token(self, user: User, name: str, *, expires_at: datetime | None = None,
                           client: ClientInfo | None = None) -> tuple[Token, str]:
        """A new token for ``user``; returns it and its secret (shown to the user only now)."""
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_TOKEN_NAME_LENGTH:
            raise InvalidInput(f"a token name is 1-{MAX_TOKEN_NAME_LENGTH} characters")
        now = utcnow()
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("expires_at must be in the future")
        token_id = secrets.token_hex(8)
        secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        async with self.db.write() as conn:
            await conn.execute(insert(tokens).values(
                id=token_id, user_id=user.id, name=name.strip(), secret_hash=_digest(secret),
                created_at=now, expires_at=expires_at))
            await self._audit(conn, "token.create", user.name, user.name, client,
                              {"token": token_id, "name": name.strip()})
            row = (await conn.execute(select(tokens).where(tokens.c.id == token_id))).one()
        return _token(row), secret

    async def list_tokens(self, user: User) -> list[Token]:
        async with self.db.read() as conn:
            rows = (await conn.execute(select(tokens).where(tokens.c.user_id == user.id)
                                       .order_by(tokens.c.created_at.desc()))).all()
        return [_token(row) for row in rows]

    async def revoke_token(self, user: User, token_id: str, *, client: ClientInfo | None = None) -> Token:
        async with self.db.write() as conn:
            row = (await conn.execute(select(tokens).where(
                tokens.c.id == token_id, tokens.c.user_id == user.id))).first()
            if row is None:
                raise NotFound("no such token")
            if row.revoked_at is None:
                await conn.execute(update(tokens).where(tokens.c.id == token_id).values(revoked_at=utcnow()))
                await publish(conn, user.id)
                await self._audit(conn, "token.revoke", user.name, user.name, client, {"token": token_id})
            row = (await conn.execute(select(tokens).where(tokens.c.id == token_id))).one()
        self.sessions.changed()
        return _token(row)

    async def user_for_token(self, secret: str) -> User | None:
        """The enabled user a live token belongs to, or None."""
        if not isinstance(secret, str) or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        now = utcnow()
        async with self.db.read() as conn:
            row = (await conn.execute(
                select(*_USER_COLUMNS, tokens.c.id.label("token_id"), tokens.c.expires_at,
                       tokens.c.revoked_at, tokens.c.last_used_at)
                .join(tokens, tokens.c.user_id == users.c.id)
                .where(tokens.c.secret_hash == _digest(secret)))).first()
        if row is None or row.revoked_at is not None or row.disabled:
            return None
        if row.expires_at is not None and row.expires_at <= now:
            return None
        if row.last_used_at is None or now - row.last_used_at > TOUCH_INTERVAL:
            await self._write_if_possible("token last use", update(tokens).where(
                tokens.c.id == row.token_id).values(last_used_at=now))
        return replace(_user(row), token_id=row.token_id)

    # -- web sessions ---------------------------------------------------------------

    async def create_session(self, user: User, client: ClientInfo) -> tuple[str, Session]:
        secret = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = utcnow()
        expires = now + timedelta(seconds=self.config.identity.session_lifetime)
        async with self.db.write() as conn:
            # Expired sessions are swept here, the only place sessions are created.
            await conn.execute(delete(sessions).where(sessions.c.expires_at < now))
            await conn.execute(insert(sessions).values(
                secret_hash=_digest(secret), user_id=user.id, csrf_token=csrf,
                client_addr=client.address[:64], created_at=now, expires_at=expires))
        return secret, Session(user=user, csrf_token=csrf, expires_at=expires)

    async def session(self, secret: str) -> Session | None:
        if not isinstance(secret, str) or not 20 <= len(secret) <= 100:
            return None
        now = utcnow()
        async with self.db.read() as conn:
            row = (await conn.execute(
                select(*_USER_COLUMNS, sessions.c.csrf_token, sessions.c.expires_at.label("expires"))
                .join(sessions, sessions.c.user_id == users.c.id)
                .where(sessions.c.secret_hash == _digest(secret)))).first()
        if row is None or row.expires <= now or row.disabled:
            return None
        lifetime = timedelta(seconds=self.config.identity.session_lifetime)
        expires = row.expires
        if now + lifetime - row.expires > TOUCH_INTERVAL:
            # Sliding expiry: activity keeps the session alive.
            if await self._write_if_possible("session expiry", update(sessions).where(
                    sessions.c.secret_hash == _digest(secret)).values(expires_at=now + lifetime)):
                expires = now + lifetime
        return Session(user=_user(row), csrf_token=row.csrf_token, expires_at=expires)

    async def end_session(self, secret: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(sessions).where(sessions.c.secret_hash == _digest(secret)))

    # -- helpers --------------------------------------------------------------------

    async def _write_if_possible(self, what: str, statement: Any) -> bool:
        """A write that a login or a read does without: with the disk full (or the
        database refusing writes) it is logged and skipped, and the caller goes on."""
        try:
            async with self.db.write() as conn:
                await conn.execute(statement)
        except (SQLAlchemyError, OSError) as error:
            log.warning("%s not recorded: %s", what, str(getattr(error, "orig", None) or error).splitlines()[0])
            return False
        return True

    async def _require_user(self, conn: AsyncConnection, name: str) -> User:
        if not possible_user_name(name):
            raise NotFound(f"no user named {name!r}")
        row = (await conn.execute(select(*_USER_COLUMNS).where(users.c.name == name))).first()
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return _user(row)

    async def _keep_an_admin(self, conn: AsyncConnection, name: str) -> None:
        others = (await conn.execute(select(func.count()).select_from(users).where(
            users.c.role == "admin", users.c.disabled == false(), users.c.name != name))).scalar_one()
        if not others:
            raise Conflict("this is the last enabled admin: make another admin first")

    async def _audit(self, conn: AsyncConnection, action: str, actor: str | None, target: str | None,
                     client: ClientInfo | None, details: dict[str, Any] | None = None) -> None:
        await self.audit.record(action, actor=actor, target=target, conn=conn, details=details,
                                protocol=client.protocol if client else "cli",
                                client_addr=client.address if client else None)
