"""Hosted SQL databases: the domain every protocol (HTTP API, PostgreSQL wire protocol,
web console) goes through. Each hosted database is a real PostgreSQL database on the
engine (engine.py), named ``owner/name``; each Agora user who uses SQL has a role of
their own (``agora_<name>``) that owns their databases; the catalogue (which exist,
grants) is in the metadata database (``tables.py``) and is mirrored onto PostgreSQL's own
privileges (grants.py), so that PostgreSQL itself enforces them on every connection.

Interface (what adapters code against)::

    hosted = hosted_sql(runtime)                      # one per runtime
    await hosted.create(user, name) -> DatabaseInfo   # user owns it
    await hosted.list(user) -> list[DatabaseInfo]     # own ones, then those granted to user
    await hosted.get(user, ref) -> DatabaseInfo       # one the user can use (with .access)
    await hosted.drop(user, ref)                      # owner only
    await hosted.grant(user, ref, grantee_name, access)   # owner only; access "read" | "write"
    await hosted.revoke(user, ref, grantee_name)          # owner only
    info, role = await hosted.login(user, ref)        # for the pass-through: whom to connect as
    async with hosted.borrow(user, ref) as conn: ...  # a pooled psycopg (sync) connection
                                                      # as the user's role; use it in a thread

``ref`` names a database: ``name`` is the user's own, ``owner/name`` anyone's (the
user's own too). Database names are 1-63 characters: lower-case letters, digits, ``_``
and ``-``, starting with a letter or digit, and ``owner/name`` fits PostgreSQL's 63 bytes.

Errors: ``SQLError`` (errors.py) carries ``.sqlstate``; a database that does not exist or
that the user may not use is ``NotFound`` (PostgreSQL: 3D000); an owner-only action by a
grantee is ``Forbidden`` (42501); bad names ``InvalidInput``; too many databases
``TooLarge``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator

import asyncpg
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from agora.core.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge
from agora.core.identity import User, possible_user_name
from agora.core.runtime import Runtime
from agora.core.tables import users, utcnow
from agora.sql import grants
from agora.sql.engine import Engine, make_engine
from agora.sql.errors import SQLError, from_engine
from agora.sql.tables import sql_databases, sql_grants

log = logging.getLogger("agora.sql")

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
ACCESS = ("read", "write")
MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes
MAX_ACCESS_CACHE = 10_000  # entries of login()'s cache before it starts afresh

__all__ = ["DatabaseInfo", "Grant", "HostedSQL", "SQLError", "hosted_sql"]


@dataclass(frozen=True)
class Grant:
    user: str
    access: str  # "read" | "write"


@dataclass(frozen=True)
class DatabaseInfo:
    id: int
    owner: str
    name: str
    created_at: datetime
    access: str  # what the asking user may do: "owner" | "write" | "read"
    size: int = 0  # bytes (pg_database_size)
    grants: tuple[Grant, ...] = field(default=())  # filled for the owner only

    @property
    def ref(self) -> str:
        """``owner/name``: also the database's name on the engine."""
        return f"{self.owner}/{self.name}"


def validate_database_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput("database names are 1-63 characters: lower-case letters, digits, '_' and '-', "
                           "starting with a letter or digit")
    return name


class HostedSQL:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.engine: Engine = make_engine(runtime)
        self._roles: set[str] = set()   # roles known to exist on the engine (this process)
        self._role_locks: dict[str, asyncio.Lock] = {}
        self._access: dict[tuple[int, str], tuple[float, DatabaseInfo, str]] = {}
        self._pool: dict[tuple[int, int, str], list[Any]] = {}
        # Every idle pooled connection, oldest first: beyond sql.max_idle_connections the
        # oldest is closed (each holds a backend on the engine).
        self._idle: OrderedDict[Any, tuple[int, int, str]] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self.locked: set[str] | None = None  # databases over their size limit (quota.py)
        runtime.closers.append(self.close)

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        return self.runtime.config.sql

    # -- the server's side: start, watch, stop ------------------------------------------

    async def serve(self) -> None:
        """In ``agora serve``: this process supervises the embedded engine, converts
        databases an earlier version hosted as SQLite files, and watches quotas."""
        self.engine.supervise = True  # type: ignore[attr-defined]
        self._tasks.append(asyncio.ensure_future(self._serve()))

    async def _serve(self) -> None:
        from agora.sql import quota, upgrade

        if self.settings.engine_start == "background" or upgrade.has_legacy(self.runtime):
            try:
                await self.engine.ready()
                await upgrade.convert_legacy(self)
            except Exception:
                log.exception("sql: the engine could not be started; hosted SQL answers with errors until it can")
        await quota.watch(self)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        conns = [c for idle in self._pool.values() for c in idle]
        self._pool.clear()
        self._idle.clear()
        if conns:
            await asyncio.to_thread(lambda: [c.close() for c in conns])
        await self.engine.stop()

    # -- catalogue ------------------------------------------------------------------

    async def create(self, user: User, name: str) -> DatabaseInfo:
        validate_database_name(name)
        ref = f"{user.name}/{name}"
        if len(ref.encode()) > MAX_IDENTIFIER:
            raise InvalidInput(f"{ref!r} is longer than PostgreSQL's {MAX_IDENTIFIER} bytes: choose a shorter name")
        async with self.runtime.db.write() as conn:
            count = await conn.scalar(select(func.count()).select_from(sql_databases)
                                      .where(sql_databases.c.owner_id == user.id))
            if count >= self.settings.max_databases:
                raise TooLarge(f"you have {count} databases, the most allowed (sql.max_databases)")
            now = utcnow()
            try:
                row_id = (await conn.execute(insert(sql_databases).values(
                    owner_id=user.id, name=name, created_at=now).returning(sql_databases.c.id))).scalar_one()
            except IntegrityError:
                raise Conflict(f"you already have a database named {name!r}") from None
            await self.runtime.audit.record("sql.create", actor=user.name, target=ref, conn=conn)
        info = DatabaseInfo(row_id, user.name, name, now, "owner")
        try:
            await self.provision(info, fresh=True)
        except BaseException:
            async with self.runtime.db.write() as conn:
                await conn.execute(delete(sql_databases).where(sql_databases.c.id == row_id))
            raise
        log.info("sql: %s created database %s", user.name, name)
        return info

    async def create_from_sqlite(self, user: User, name: str, source: Path) -> tuple[DatabaseInfo, Any]:
        """A new database holding what the SQLite file ``source`` holds (converted as the
        databases of earlier versions are): (the database, the converter's report).
        A file that cannot be converted leaves no database behind (ConversionError)."""
        from agora.sql.upgrade import convert_file

        info = await self.create(user, name)
        try:
            report = await convert_file(self, info, source)
        except BaseException:
            await self.drop(user, info.name)
            raise
        await self.runtime.audit.record("sql.import", actor=user.name, target=info.ref,
                                        details={"tables": len(report.tables), "rows": report.rows})
        return info, report

    async def provision(self, info: DatabaseInfo, *, fresh: bool = False) -> None:
        """Make the engine's database, roles and privileges for ``info`` (idempotent).
        ``fresh``: a database of this name left by a crash is not this one's: it goes."""
        await self.ensure_role(info.owner)
        try:
            async with self.engine.admin() as admin:
                await grants.create_database(admin, self.engine, self.engine.dbname(info.ref), info.owner, info.id, replace=fresh)
            async with self.engine.admin(self.engine.dbname(info.ref)) as admin:
                await grants.prepare_schema(admin, self.engine, info.owner, info.id)
        except asyncpg.PostgresError as error:
            raise from_engine(error) from None

    async def ensure_role(self, user_name: str) -> str:
        role = self.engine.role_name(user_name)
        if role not in self._roles:
            # One at a time per role: concurrent ALTER ROLEs of one role fail in PostgreSQL.
            async with self._role_locks.setdefault(role, asyncio.Lock()):
                for attempt in range(3):
                    if role in self._roles:
                        break
                    try:
                        async with self.engine.admin() as admin:
                            await grants.ensure_role(admin, self.engine, role, self.settings)
                        self._roles.add(role)
                    except asyncpg.PostgresError as error:
                        # Another node or process changing the same role at once.
                        if error.sqlstate != "XX000" or attempt == 2:
                            raise from_engine(error) from None
                        await asyncio.sleep(0.05 * (attempt + 1))
            self._role_locks.pop(role, None)
        return role

    async def _sizes(self, refs: list[str]) -> dict[str, int]:
        if not refs:
            return {}
        names = {self.engine.dbname(r): r for r in refs}
        try:
            async with self.engine.admin() as admin:
                rows = await admin.fetch("SELECT datname, pg_database_size(oid) AS size FROM pg_database "
                                         "WHERE datname = ANY($1::text[])", list(names))
        except (SQLError, OSError, asyncpg.PostgresError):
            return {}
        return {names[r["datname"]]: r["size"] for r in rows}

    async def list(self, user: User) -> list[DatabaseInfo]:
        """The user's own databases (with their grants), then those granted to them."""
        owner = users.alias("owner")
        grantee = users.alias("grantee")
        async with self.runtime.db.read() as conn:
            own = (await conn.execute(
                select(sql_databases).where(sql_databases.c.owner_id == user.id)
                .order_by(sql_databases.c.name))).all()
            granted = (await conn.execute(
                select(sql_grants.c.database_id, grantee.c.name, sql_grants.c.access)
                .join(grantee, grantee.c.id == sql_grants.c.user_id)
                .join(sql_databases, sql_databases.c.id == sql_grants.c.database_id)
                .where(sql_databases.c.owner_id == user.id).order_by(grantee.c.name))).all()
            shared = (await conn.execute(
                select(sql_databases, owner.c.name.label("owner_name"), sql_grants.c.access)
                .join(sql_grants, sql_grants.c.database_id == sql_databases.c.id)
                .join(owner, owner.c.id == sql_databases.c.owner_id)
                .where(sql_grants.c.user_id == user.id)
                .order_by(owner.c.name, sql_databases.c.name))).all()
        by_db: dict[int, list[Grant]] = {}
        for db_id, name, access in granted:
            by_db.setdefault(db_id, []).append(Grant(name, access))
        sizes = await self._sizes([f"{user.name}/{r.name}" for r in own] + [f"{r.owner_name}/{r.name}" for r in shared])
        found = [DatabaseInfo(r.id, user.name, r.name, r.created_at, "owner", sizes.get(f"{user.name}/{r.name}", 0),
                              tuple(by_db.get(r.id, ()))) for r in own]
        found += [DatabaseInfo(r.id, r.owner_name, r.name, r.created_at, r.access,
                               sizes.get(f"{r.owner_name}/{r.name}", 0)) for r in shared]
        return found

    def parse_ref(self, user: User, ref: str) -> tuple[str, str]:
        if not isinstance(ref, str) or not ref:
            raise NotFound("no database named")
        owner, _, name = ref.rpartition("/")
        owner = owner or user.name
        # Checked before any query: no database can have another name, and the metadata
        # database must not be asked about what it cannot store (NUL on PostgreSQL).
        if not _NAME.fullmatch(name) or not possible_user_name(owner):
            raise NotFound(f"no database named {ref!r}")
        return owner, name

    async def get(self, user: User, ref: str, *, size: bool = True) -> DatabaseInfo:
        """The database ``ref`` if ``user`` may use it (``.access`` says how); else NotFound."""
        owner_name, name = self.parse_ref(user, ref)
        owner = users.alias("owner")
        async with self.runtime.db.read() as conn:
            row = (await conn.execute(
                select(sql_databases, owner.c.name.label("owner_name"))
                .join(owner, owner.c.id == sql_databases.c.owner_id)
                .where(owner.c.name == owner_name, sql_databases.c.name == name))).first()
            access = None
            found: tuple[Grant, ...] = ()
            if row is not None and row.owner_id == user.id:
                access = "owner"
                found = tuple(Grant(n, a) for n, a in (await conn.execute(
                    select(users.c.name, sql_grants.c.access).join(users, users.c.id == sql_grants.c.user_id)
                    .where(sql_grants.c.database_id == row.id).order_by(users.c.name))).all())
            elif row is not None:
                access = await conn.scalar(select(sql_grants.c.access).where(
                    sql_grants.c.database_id == row.id, sql_grants.c.user_id == user.id))
        if access is None:
            # The same answer whether it does not exist or is not shared with this user.
            raise NotFound(f"database {owner_name}/{name} does not exist or is not shared with you")
        full = f"{owner_name}/{name}"
        bytes_ = (await self._sizes([full])).get(full, 0) if size else 0
        return DatabaseInfo(row.id, owner_name, name, row.created_at, access, bytes_, found)

    async def _owned(self, user: User, ref: str) -> DatabaseInfo:
        info = await self.get(user, ref, size=False)
        if info.access != "owner":
            raise Forbidden(f"only {info.owner} can change database {info.ref}")
        return info

    async def drop(self, user: User, ref: str) -> None:
        info = await self._owned(user, ref)
        async with self.runtime.db.write() as conn:
            await conn.execute(delete(sql_grants).where(sql_grants.c.database_id == info.id))
            await conn.execute(delete(sql_databases).where(sql_databases.c.id == info.id))
            await self.runtime.audit.record("sql.drop", actor=user.name, target=info.ref, conn=conn)
        await self._forget_pooled(info.id, None)
        # After the commit: a crash in between leaves a database no row names, dropped by
        # the next create of that name.
        await self._drop_engine_database(self.engine.dbname(info.ref), info.id)
        log.info("sql: %s dropped database %s", user.name, info.ref)

    async def _drop_engine_database(self, ref: str, database_id: int) -> None:
        try:
            async with self.engine.admin() as admin:
                await grants.drop_database(admin, self.engine, ref, database_id)
        except asyncpg.PostgresError as error:
            raise from_engine(error) from None

    async def grant(self, user: User, ref: str, grantee_name: str, access: str) -> Grant:
        if access not in ACCESS:
            raise InvalidInput("access must be 'read' or 'write'")
        info = await self._owned(user, ref)
        grantee = await self.runtime.identity.find_user(grantee_name)
        if grantee is None:
            raise NotFound(f"no user named {grantee_name!r}")
        if grantee.id == user.id:
            raise InvalidInput("the owner always has full access")
        role = await self.ensure_role(grantee.name)
        try:
            async with self.engine.admin(self.engine.dbname(info.ref)) as admin:
                await grants.grant(admin, self.engine, info.owner, info.id, role, access)
        except asyncpg.PostgresError as error:
            raise from_engine(error) from None
        async with self.runtime.db.write() as conn:
            await conn.execute(delete(sql_grants).where(sql_grants.c.database_id == info.id,
                                                        sql_grants.c.user_id == grantee.id))
            await conn.execute(insert(sql_grants).values(database_id=info.id, user_id=grantee.id,
                                                         access=access, created_at=utcnow()))
            await self.runtime.audit.record("sql.grant", actor=user.name, target=info.ref, conn=conn,
                                            details={"user": grantee.name, "access": access})
        await self._forget_pooled(info.id, grantee.id)
        return Grant(grantee.name, access)

    async def revoke(self, user: User, ref: str, grantee_name: str) -> None:
        info = await self._owned(user, ref)
        grantee = await self.runtime.identity.find_user(grantee_name)
        async with self.runtime.db.write() as conn:
            gone = 0
            if grantee is not None:
                gone = (await conn.execute(delete(sql_grants).where(
                    sql_grants.c.database_id == info.id, sql_grants.c.user_id == grantee.id))).rowcount
            if gone:
                await self.runtime.audit.record("sql.revoke", actor=user.name, target=info.ref, conn=conn,
                                                details={"user": grantee_name})
        if not gone or grantee is None:
            raise NotFound(f"{grantee_name} has no grant on {info.ref}")
        await self._forget_pooled(info.id, grantee.id)
        try:
            async with self.engine.admin() as admin:
                await grants.revoke(admin, self.engine, self.engine.dbname(info.ref), info.id, self.engine.role_name(grantee.name))
        except asyncpg.PostgresError as error:
            raise from_engine(error) from None

    # -- connections ------------------------------------------------------------------

    async def login(self, user: User, ref: str) -> tuple[DatabaseInfo, str]:
        """The database and the engine role a connection of ``user`` to ``ref`` uses
        (kept ``sql.access_cache`` seconds: a grant withdrawn on another node reaches
        this one's HTTP requests that much later; here, at once)."""
        key = (user.id, ref)
        loop = asyncio.get_running_loop()
        cached = self._access.get(key)
        if cached is not None and cached[0] > loop.time():
            return cached[1], cached[2]
        info = await self.get(user, ref, size=False)
        role = await self.ensure_role(user.name)
        if self.settings.access_cache > 0:
            if len(self._access) >= MAX_ACCESS_CACHE:
                self._access.clear()
            self._access[key] = (loop.time() + self.settings.access_cache, info, role)
        return info, role

    def _forget_access(self, db_id: int) -> None:
        for key in [k for k, v in self._access.items() if v[1].id == db_id]:
            del self._access[key]

    async def still_allowed(self, user_name: str, info: DatabaseInfo) -> bool:
        """For long-lived connections: the account is enabled and may still use ``info``."""
        user = await self.runtime.identity.find_user(user_name)
        if user is None or user.disabled:
            return False
        try:
            now = await self.get(user, info.ref, size=False)
        except NotFound:
            return False
        return now.id == info.id

    @contextlib.asynccontextmanager
    async def borrow(self, user: User, ref: str) -> AsyncIterator[Any]:
        """A pooled connection for one request (the HTTP API's), as the user's role;
        rolled back if the request left a transaction open."""
        from agora.sql import export  # psycopg's side: at the first query, not at start-up

        export.configure(self.settings.http_threads)
        info, role = await self.login(user, ref)
        key = (info.id, user.id, info.access)
        idle = self._pool.get(key)
        if idle:
            conn = idle.pop()
            self._idle.pop(conn, None)
        else:
            await self.engine.ready()
            conn = await asyncio.to_thread(self._connect, role, self.engine.dbname(info.ref))
        try:
            yield conn
        finally:
            await self._release(key, conn)

    def _connect(self, role: str, dbname: str) -> Any:
        import psycopg

        options = f"-c statement_timeout={int(self.settings.query_timeout * 1000)}"
        try:
            return psycopg.connect(**self.engine.conninfo(role, dbname), autocommit=True, options=options,
                                   connect_timeout=max(1, int(self.settings.engine_timeout)),
                                   application_name="agora-http")
        except psycopg.Error as error:
            raise from_engine(error) from None

    async def _release(self, key: tuple[int, int, str], conn: Any) -> None:
        import psycopg

        def clean() -> bool:
            if conn.closed or conn.broken or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
                return False
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            # What the request SET, LISTENed to or PREPAREd does not follow it into the
            # next request of the pool.
            conn.execute("DISCARD ALL")
            return conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

        try:
            if await asyncio.to_thread(clean):
                idle = self._pool.setdefault(key, [])
                if len(idle) < self.settings.pool_size:
                    idle.append(conn)
                    self._idle[conn] = key
                    while len(self._idle) > self.settings.max_idle_connections:
                        oldest, old_key = self._idle.popitem(last=False)
                        self._pool[old_key].remove(oldest)
                        await asyncio.to_thread(oldest.close)
                    return
        except Exception:  # a connection that cannot roll back is not reused
            log.exception("sql: dropping a pooled connection")
        await asyncio.to_thread(conn.close)

    async def _forget_pooled(self, db_id: int, user_id: int | None) -> None:
        self._forget_access(db_id)
        gone = []
        for key in [k for k in self._pool if k[0] == db_id and (user_id is None or k[1] == user_id)]:
            for conn in self._pool.pop(key):
                self._idle.pop(conn, None)
                gone.append(conn)
        if gone:
            await asyncio.to_thread(lambda: [c.close() for c in gone])

    async def forget_user(self, user: User) -> None:
        """A deleted user's databases go, their objects in others' databases pass to
        those databases' owners, and their role goes."""
        async with self.runtime.db.read() as conn:
            owned = (await conn.execute(select(sql_databases.c.id, sql_databases.c.name)
                                        .where(sql_databases.c.owner_id == user.id))).all()
        for db_id, _ in owned:
            await self._forget_pooled(db_id, None)
        for key in [k for k in self._pool if k[1] == user.id]:
            for c in self._pool.pop(key):
                self._idle.pop(c, None)
                await asyncio.to_thread(c.close)
        role = self.engine.role_name(user.name)
        try:
            async with self.engine.admin() as admin:
                for db_id, name in owned:
                    await grants.drop_database(admin, self.engine, self.engine.dbname(f"{user.name}/{name}"), db_id)
                await grants.drop_role(admin, self.engine, role)
        except asyncpg.PostgresError as error:
            raise from_engine(error) from None
        self._roles.discard(role)


def hosted_sql(runtime: Runtime) -> HostedSQL:
    return runtime.shared("sql", lambda: HostedSQL(runtime))


def forget_user_sql(runtime: Runtime):
    """The deletion hook: a deleted user's databases go with the account."""

    async def forget(user: User) -> None:
        await hosted_sql(runtime).forget_user(user)

    return forget
