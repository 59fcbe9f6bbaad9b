"""Mail addresses: which domains are local, which user an address reaches (aliases,
catch-all, ``+tag`` sub-addresses, postmaster) and which addresses a user may send as."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select

from agora.core.database import Database
from agora.core.errors import Conflict, InvalidInput, NotFound
from agora.core.identity import User
from agora.core.tables import users, utcnow
from agora.mail.tables import mail_aliases

MAX_ADDRESS = 320  # RFC 5321: 64 octets of local part, @, 255 of domain


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

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    def address_of(self, user: User) -> str:
        return f"{user.name}@{self.domains[0]}"

    async def resolve(self, address: str) -> str | None:
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
            name = (await conn.execute(select(users.c.name).where(
                func.lower(users.c.name) == base))).scalar()
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
        return Alias(key, user_name, now)

    async def remove_alias(self, address: str) -> None:
        key = address.strip().lower()
        async with self.db.write() as conn:
            if (await conn.execute(delete(mail_aliases).where(mail_aliases.c.address == key))).rowcount == 0:
                raise NotFound(f"no alias {key}")
