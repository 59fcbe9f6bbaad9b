"""Mail addresses: which domains are local, which user an address reaches (aliases,
catch-all, ``+tag`` sub-addresses, postmaster) and which addresses a user may send as
(their own, their aliases, and what an admin allowed them: ``mail_senders``)."""

from __future__ import annotations

import fnmatch
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from agora.core.database import Database
from agora.core.errors import Conflict, InvalidInput, NotFound
from agora.core.identity import User
from agora.core.tables import users, utcnow
from agora.mail.tables import mail_aliases, mail_senders

MAX_ADDRESS = 320  # RFC 5321: 64 octets of local part, @, 255 of domain
# How long an address -> user answer is reused. Alias changes on this node clear it at
# once; users created or deleted (or aliases changed on another node) show within this.
RESOLVE_TTL = 5.0
RESOLVE_CACHE_SIZE = 10000


# What an allowed-sender pattern may hold: an address, with "*" for any run of
# characters in its local part or domain (never across the "@").
_PATTERN_CHARS = re.compile(r"^[^\s\x00-\x1f\x7f\ud800-\udfff\[\]?@]+@[^\s\x00-\x1f\x7f\ud800-\udfff\[\]?@]+$")
# What no user name or pattern holds, and the metadata database may not be able to store
# (NUL on PostgreSQL, lone surrogates anywhere): answered "not found" without a query.
# What no address has: white space, control characters, lone surrogates (what undecodable
# bytes become; no database can store them). One regex search, not a test per character:
# a message to 10,000 recipients checks every one of them on the event loop.
_NOT_IN_ADDRESS = re.compile(r"[\s\x00-\x1f\x7f\ud800-\udfff]")
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class SenderGrant:
    user: str
    pattern: str  # "news@example.org", or "*@example.org"
    created_at: datetime


def sender_pattern(pattern: str) -> str:
    """``pattern`` lower-cased, or InvalidInput: ``local@domain`` where either side may
    hold ``*`` (``*@example.org``), nothing else of glob syntax."""
    key = pattern.strip().lower()
    if key.startswith("<") and key.endswith(">"):
        key = key[1:-1]
    if len(key) > MAX_ADDRESS or not _PATTERN_CHARS.match(key) or key.split("@")[1].strip("*.") == "":
        raise InvalidInput(f"not an address or an address pattern like *@example.org: {pattern[:100]!r}")
    return key


def matches(pattern: str, local: str, domain: str) -> bool:
    plocal, _, pdomain = pattern.partition("@")
    return fnmatch.fnmatchcase(local, plocal) and fnmatch.fnmatchcase(domain, pdomain)


@dataclass(frozen=True)
class Alias:
    address: str  # "sales@example.org", or "@example.org" for the catch-all
    user: str
    created_at: datetime


def default_domains() -> list[str]:
    domains = ["localhost"]
    host = socket.gethostname().lower().rstrip(".")
    if host and host not in domains:
        domains.append(host)
    return domains


def split(address: str) -> tuple[str, str]:
    """``Local@Domain`` -> (``local``, ``domain``), lower-cased; InvalidInput otherwise."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain or len(address) > MAX_ADDRESS or _NOT_IN_ADDRESS.search(address):
        raise InvalidInput(f"not a mail address: {address!r}")
    return local.lower(), domain.lower().rstrip(".")


class Addresses:
    def __init__(self, db: Database, domains: list[str]):
        self.db = db
        self.domains = domains or default_domains()
        self._resolved: dict[str, tuple[float, str | None]] = {}  # address -> (when, user)

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    def address_of(self, user: User) -> str:
        return f"{user.name}@{self.domains[0]}"

    async def resolve(self, address: str) -> str | None:
        """The user a local address delivers to (see :meth:`_resolve`), remembered for
        RESOLVE_TTL: SMTP asks at every RCPT, and this answer changes rarely."""
        key = address.strip().lower()
        now = time.monotonic()
        cached = self._resolved.get(key)
        if cached is not None and now - cached[0] < RESOLVE_TTL:
            return cached[1]
        name = await self._resolve(address)
        if name is not None:  # "no such user" is not kept: the user may be made next
            if len(self._resolved) >= RESOLVE_CACHE_SIZE:
                self._resolved.clear()
            self._resolved[key] = (now, name)
        return name

    def forget(self) -> None:
        self._resolved.clear()

    async def _resolve(self, address: str) -> str | None:
        """The user a local address delivers to, or None (unknown, or not a local domain).

        In order: an alias, the user of that name (``name+tag`` too), ``postmaster`` (to
        the first admin, as RFC 5321 requires the address to work), the domain's catch-all.
        """
        try:
            local, domain = split(address)
        except InvalidInput:
            return None
        if not self.is_local_domain(domain):
            return None
        base = local.split("+", 1)[0]
        async with self.db.read() as conn:
            for key in dict.fromkeys((f"{local}@{domain}", f"{base}@{domain}")):
                name = (await conn.execute(select(users.c.name).join(
                    mail_aliases, mail_aliases.c.user_id == users.c.id).where(
                    mail_aliases.c.address == key))).scalar()
                if name:
                    return name
            name = (await conn.execute(select(users.c.name).where(users.c.name == base))).scalar()
            if name:
                return name
            if base == "postmaster":
                name = (await conn.execute(select(users.c.name).where(users.c.role == "admin")
                                           .order_by(users.c.id).limit(1))).scalar()
                if name:
                    return name
            return (await conn.execute(select(users.c.name).join(
                mail_aliases, mail_aliases.c.user_id == users.c.id).where(
                mail_aliases.c.address == f"@{domain}"))).scalar()

    async def owns(self, user: User, address: str) -> bool:
        """A user may send as their own name (and ``name+tag``) at any local domain, as
        the aliases that point to them, and as what an admin allowed them (any domain);
        never as another user or a foreign domain otherwise."""
        try:
            local, domain = split(address)
        except InvalidInput:
            return False
        local_domain = self.is_local_domain(domain)
        if local_domain and local.split("+", 1)[0] == user.name.lower():
            return True
        async with self.db.read() as conn:
            if local_domain:
                owner = (await conn.execute(select(mail_aliases.c.user_id).where(
                    mail_aliases.c.address == f"{local}@{domain}"))).scalar()
                if owner == user.id:
                    return True
            patterns = (await conn.execute(select(mail_senders.c.pattern).where(
                mail_senders.c.user_id == user.id))).scalars().all()
        return any(matches(pattern, local, domain) for pattern in patterns)

    async def sendable(self, user: User) -> list[str]:
        """The addresses a user may pick as sender: their own at each local domain, their
        aliases, and the plain addresses (not the patterns) an admin allowed them."""
        async with self.db.read() as conn:
            aliases = (await conn.execute(select(mail_aliases.c.address).where(
                mail_aliases.c.user_id == user.id).order_by(mail_aliases.c.address))).scalars().all()
            patterns = (await conn.execute(select(mail_senders.c.pattern).where(
                mail_senders.c.user_id == user.id).order_by(mail_senders.c.pattern))).scalars().all()
        own = [f"{user.name}@{domain}" for domain in self.domains]
        extra = [address for address in (*aliases, *patterns) if "*" not in address and not address.startswith("@")]
        return list(dict.fromkeys(own + extra))

    async def senders(self, user_name: str | None = None) -> list[SenderGrant]:
        if user_name is not None and _UNSTORABLE.search(user_name):
            return []
        query = (select(users.c.name, mail_senders.c.pattern, mail_senders.c.created_at)
                 .join(users, users.c.id == mail_senders.c.user_id)
                 .order_by(users.c.name, mail_senders.c.pattern))
        if user_name is not None:
            query = query.where(users.c.name == user_name)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [SenderGrant(row.name, row.pattern, row.created_at) for row in rows]

    async def allow_sender(self, user_name: str, pattern: str) -> SenderGrant:
        key = sender_pattern(pattern)
        if _UNSTORABLE.search(user_name):
            raise NotFound(f"no user {user_name!r}")
        async with self.db.write() as conn:
            user_id = await _user_id(conn, user_name)
            if (await conn.execute(select(mail_senders.c.pattern).where(
                    mail_senders.c.user_id == user_id, mail_senders.c.pattern == key))).first():
                raise Conflict(f"{user_name} may already send as {key}")
            now = utcnow()
            await conn.execute(insert(mail_senders).values(user_id=user_id, pattern=key, created_at=now))
        return SenderGrant(user_name, key, now)

    async def disallow_sender(self, user_name: str, pattern: str) -> None:
        key = pattern.strip().lower()
        if _UNSTORABLE.search(user_name + key):
            raise NotFound(f"{user_name!r} has no allowed sender {key!r}")
        async with self.db.write() as conn:
            user_id = await _user_id(conn, user_name)
            if (await conn.execute(delete(mail_senders).where(
                    mail_senders.c.user_id == user_id, mail_senders.c.pattern == key))).rowcount == 0:
                raise NotFound(f"{user_name} has no allowed sender {key}")

    async def aliases(self) -> list[Alias]:
        async with self.db.read() as conn:
            rows = (await conn.execute(select(mail_aliases.c.address, users.c.name,
                                              mail_aliases.c.created_at)
                                       .join(users, users.c.id == mail_aliases.c.user_id)
                                       .order_by(mail_aliases.c.address))).all()
        return [Alias(row.address, row.name, row.created_at) for row in rows]

    async def add_alias(self, address: str, user_name: str) -> Alias:
        """``address`` is ``local@domain`` or ``@domain`` (catch-all) on a local domain."""
        if address.startswith("@"):
            domain = address[1:].lower().rstrip(".")
            key = f"@{domain}"
        else:
            local, domain = split(address)
            key = f"{local}@{domain}"
        if not self.is_local_domain(domain):
            raise InvalidInput(f"{domain!r} is not a local mail domain ({', '.join(self.domains)})")
        async with self.db.write() as conn:
            user_id = await _user_id(conn, user_name)
            if (await conn.execute(select(mail_aliases.c.address).where(
                    mail_aliases.c.address == key))).first():
                raise Conflict(f"alias {key} exists")
            now = utcnow()
            await conn.execute(insert(mail_aliases).values(address=key, user_id=user_id, created_at=now))
        self._resolved.clear()
        return Alias(key, user_name, now)

    async def remove_alias(self, address: str) -> None:
        key = address.strip().lower()
        async with self.db.write() as conn:
            if (await conn.execute(delete(mail_aliases).where(mail_aliases.c.address == key))).rowcount == 0:
                raise NotFound(f"no alias {key}")
        self._resolved.clear()


async def _user_id(conn: AsyncConnection, user_name: str) -> int:
    """The id of the account ``user_name``; NotFound where there is none."""
    user_id = (await conn.execute(select(users.c.id).where(users.c.name == user_name))).scalar()
    if user_id is None:
        raise NotFound(f"no user {user_name!r}")
    return int(user_id)
