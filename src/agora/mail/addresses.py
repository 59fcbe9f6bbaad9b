"""Mail addresses: which domains are local, which user an address reaches (aliases,
catch-all, ``+tag`` sub-addresses, postmaster) and which addresses a user may send as."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select

from agora.core.database import Database
from agora.core.errors import Conflict, InvalidInput, NotFound
from agora.core.identity import User
from agora.core.tables import users, utcnow
from agora.mail.tables import mail_aliases

MAX_ADDRESS = 320  # RFC 5321: 64 octets of local part, @, 255 of domain
# How long an address -> user answer is reused. Alias changes on this node clear it at
# once; users created or deleted (or aliases changed on another node) show within this.
RESOLVE_TTL = 5.0
RESOLVE_CACHE_SIZE = 10000


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
    if not sep or not local or not domain or len(address) > MAX_ADDRESS or any(
            c.isspace() or ord(c) < 32 for c in address):
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
        """A user may send as their own name (and ``name+tag``) at any local domain, and
        as the aliases that point to them; never as another user or a foreign domain."""
        try:
            local, domain = split(address)
        except InvalidInput:
            return False
        if not self.is_local_domain(domain):
            return False
        if local.split("+", 1)[0] == user.name.lower():
            return True
        async with self.db.read() as conn:
            owner = (await conn.execute(select(mail_aliases.c.user_id).where(
                mail_aliases.c.address == f"{local}@{domain}"))).scalar()
        return owner == user.id

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
            user_id = (await conn.execute(select(users.c.id).where(users.c.name == user_name))).scalar()
            if user_id is None:
                raise NotFound(f"no user {user_name!r}")
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
