"""Hosted SQL databases: the domain every protocol (HTTP API, PostgreSQL wire protocol,
web console) goes through. Each database is a SQLite file
``DATA_DIR/sql/<owner>/<name>.sqlite``; the catalogue (which exist, grants) is in the
metadata database (``tables.py``).

Interface (what adapters code against)::

    hosted = hosted_sql(runtime)                      # one per runtime
    await hosted.create(user, name) -> DatabaseInfo   # user owns it
    await hosted.list(user) -> list[DatabaseInfo]     # own ones, then those granted to user
    await hosted.get(user, ref) -> DatabaseInfo       # one the user can use (with .access)
    await hosted.drop(user, ref)                      # owner only
    await hosted.grant(user, ref, grantee_name, access)   # owner only; access "read" | "write"
    await hosted.revoke(user, ref, grantee_name)          # owner only
    session = await hosted.connect(user, ref) -> SQLSession   # a dedicated connection
    async with hosted.session(user, ref) as session: ...      # one borrowed from the pool

``ref`` names a database: ``name`` is the user's own, ``owner/name`` anyone's (the
user's own too). Database names are 1-63 characters: lower-case letters, digits, ``_``
and ``-``, starting with a letter or digit. User names never contain ``/``.

``SQLSession`` (session.py): ``access`` ("owner" | "write" | "read"), ``database``,
``in_transaction``, ``failed`` (PostgreSQL's aborted-transaction state),
``await execute(sql, params, limits=None) -> Result`` (one statement; ``$1``-style or
``?`` parameters; a statement that only reads is tried on the event loop first with a
tiny step budget, anything else runs on the session's own thread), ``await execute_batch([(sql, params), ...])`` (all or nothing),
``await describe(sql) -> (param_count, [Column])`` (prepares without running),
``stream(sql, params)`` (async iterator of (columns, rows) chunks), ``cancel()``
(thread-safe), ``await rollback()``, ``await close()``.
``statements.split_statements(sql)`` splits a script (simple query protocol).

Errors: ``SQLError`` (errors.py) carries ``.sqlstate`` (PostgreSQL's code: 42P01, 42601,
23505, 57014 time limit or cancel, 42501 denied, 53100 quota, 25P02, ...); a database
that does not exist or that the user may not use is ``NotFound`` (PostgreSQL: 3D000);
an owner-only action by a grantee is ``Forbidden`` (42501); bad names ``InvalidInput``;
too many databases ``TooLarge``.

Authorization is here, per call: the owner may do anything; a grantee may connect with
their access; nobody else learns that the database exists. Limits come from the ``sql``
settings (config.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import weakref
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from agora.core.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge
from agora.core.identity import User
from agora.core.runtime import Runtime
from agora.core.tables import users, utcnow
from agora.sql.errors import SQLError
from agora.sql.guard import open_database
from agora.sql.session import Column, Limits, Result, SQLSession
from agora.sql.tables import sql_databases, sql_grants

log = logging.getLogger("agora.sql")

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
ACCESS = ("read", "write")

__all__ = ["Column", "DatabaseInfo", "Grant", "HostedSQL", "Result", "SQLError", "SQLSession", "hosted_sql"]


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
    size: int = 0  # bytes on disk (database file and its write-ahead log)
    grants: tuple[Grant, ...] = field(default=())  # filled for the owner only

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"


def validate_database_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput("database names are 1-63 characters: lower-case letters, digits, '_' and '-', "
                           "starting with a letter or digit")
    return name


class HostedSQL:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.root = runtime.data_dir / "sql"
        self._sessions: dict[int, weakref.WeakSet[SQLSession]] = {}
        self._pool: dict[tuple[int, int, str], list[SQLSession]] = {}
        # Every idle pooled session, oldest first: beyond sql.max_idle_connections the
        # oldest is closed (each holds a file, a thread and SQLite's page cache).
        self._idle: OrderedDict[SQLSession, tuple[int, int, str]] = OrderedDict()

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        return self.runtime.config.sql

    def limits(self) -> Limits:
        s = self.settings
        return Limits(timeout=s.query_timeout, max_rows=s.max_rows, max_bytes=s.max_result_bytes)

    def path(self, owner: str, name: str) -> Path:
        return self.root / owner / f"{name}.sqlite"

    # -- catalogue ------------------------------------------------------------------

    async def create(self, user: User, name: str) -> DatabaseInfo:
        validate_database_name(name)
        path = self.path(user.name, name)
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
            # The file is made before the row commits: a failure here leaves no row.
            # A file left by an earlier database of this name (dropped, then a crash
            # before its file went) is not this one's: it goes.
            await asyncio.to_thread(self._create_file, path)
            await self.runtime.audit.record("sql.create", actor=user.name, target=f"{user.name}/{name}", conn=conn)
        log.info("sql: %s created database %s", user.name, name)
        return DatabaseInfo(row_id, user.name, name, now, "owner", self._size(path))

    def _create_file(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in self._files(path):
            stale.unlink(missing_ok=True)
        conn = open_database(path, read_only=False, create=True, **self._open_options())
        conn.close()

    @staticmethod
    def _files(path: Path) -> list[Path]:
        return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"),
                path.with_name(path.name + "-journal")]

    def _size(self, path: Path) -> int:
        total = 0
        for part in self._files(path)[:2]:
            try:
                total += part.stat().st_size
            except OSError:
                pass
        return total

    def _open_options(self) -> dict:
        s = self.settings
        return dict(max_bytes=s.max_database_size, lock_timeout=s.lock_timeout,
                    max_value=s.max_value_size, max_sql=s.max_statement, mmap_size=s.mmap_size)

    async def list(self, user: User) -> list[DatabaseInfo]:
        """The user's own databases (with their grants), then those granted to them."""
        owner = users.alias("owner")
        grantee = users.alias("grantee")
        async with self.runtime.db.read() as conn:
            own = (await conn.execute(
                select(sql_databases).where(sql_databases.c.owner_id == user.id)
                .order_by(sql_databases.c.name))).all()
            grants = (await conn.execute(
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
        for db_id, name, access in grants:
            by_db.setdefault(db_id, []).append(Grant(name, access))
        found = [DatabaseInfo(r.id, user.name, r.name, r.created_at, "owner",
                              self._size(self.path(user.name, r.name)), tuple(by_db.get(r.id, ())))
                 for r in own]
        found += [DatabaseInfo(r.id, r.owner_name, r.name, r.created_at, r.access,
                               self._size(self.path(r.owner_name, r.name))) for r in shared]
        return found

    def parse_ref(self, user: User, ref: str) -> tuple[str, str]:
        if not isinstance(ref, str) or not ref:
            raise NotFound("no database named")
        owner, _, name = ref.rpartition("/")
        return owner or user.name, name

    async def get(self, user: User, ref: str) -> DatabaseInfo:
        """The database ``ref`` if ``user`` may use it (``.access`` says how); else NotFound."""
        owner_name, name = self.parse_ref(user, ref)
        owner = users.alias("owner")
        async with self.runtime.db.read() as conn:
            row = (await conn.execute(
                select(sql_databases, owner.c.name.label("owner_name"))
                .join(owner, owner.c.id == sql_databases.c.owner_id)
                .where(owner.c.name == owner_name, sql_databases.c.name == name))).first()
            access = None
            if row is not None and row.owner_id == user.id:
                access = "owner"
                grants = tuple(Grant(n, a) for n, a in (await conn.execute(
                    select(users.c.name, sql_grants.c.access).join(users, users.c.id == sql_grants.c.user_id)
                    .where(sql_grants.c.database_id == row.id).order_by(users.c.name))).all())
            elif row is not None:
                access = await conn.scalar(select(sql_grants.c.access).where(
                    sql_grants.c.database_id == row.id, sql_grants.c.user_id == user.id))
                grants = ()
        if access is None:
            # The same answer whether it does not exist or is not shared with this user.
            raise NotFound(f"database {owner_name}/{name} does not exist or is not shared with you")
        return DatabaseInfo(row.id, owner_name, name, row.created_at, access,
                            self._size(self.path(owner_name, name)), grants)

    async def _owned(self, user: User, ref: str) -> DatabaseInfo:
        info = await self.get(user, ref)
        if info.access != "owner":
            raise Forbidden(f"only {info.owner} can change database {info.ref}")
        return info

    async def drop(self, user: User, ref: str) -> None:
        info = await self._owned(user, ref)
        async with self.runtime.db.write() as conn:
            await conn.execute(delete(sql_grants).where(sql_grants.c.database_id == info.id))
            await conn.execute(delete(sql_databases).where(sql_databases.c.id == info.id))
            await self.runtime.audit.record("sql.drop", actor=user.name, target=info.ref, conn=conn)
        await self._disconnect(info.id, None, f"database {info.ref} was dropped")
        # After the commit: a crash in between leaves a file no row names, removed
        # by the next create of that name.
        await asyncio.to_thread(lambda: [p.unlink(missing_ok=True) for p in self._files(self.path(info.owner, info.name))])
        log.info("sql: %s dropped database %s", user.name, info.ref)

    async def grant(self, user: User, ref: str, grantee_name: str, access: str) -> Grant:
        if access not in ACCESS:
            raise InvalidInput("access must be 'read' or 'write'")
        info = await self._owned(user, ref)
        grantee = await self.runtime.identity.find_user(grantee_name)
        if grantee is None:
            raise NotFound(f"no user named {grantee_name!r}")
        if grantee.id == user.id:
            raise InvalidInput("the owner always has full access")
        async with self.runtime.db.write() as conn:
            await conn.execute(delete(sql_grants).where(sql_grants.c.database_id == info.id,
                                                        sql_grants.c.user_id == grantee.id))
            await conn.execute(insert(sql_grants).values(database_id=info.id, user_id=grantee.id,
                                                         access=access, created_at=utcnow()))
            await self.runtime.audit.record("sql.grant", actor=user.name, target=info.ref, conn=conn,
                                            details={"user": grantee.name, "access": access})
        # A changed grant applies from the next connection; open ones lose write access now.
        if access == "read":
            await self._disconnect(info.id, grantee.id, f"your access to {info.ref} was changed to read-only; reconnect")
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
        if not gone:
            raise NotFound(f"{grantee_name} has no grant on {info.ref}")
        await self._disconnect(info.id, grantee.id, f"your access to {info.ref} was revoked")

    # -- connections ------------------------------------------------------------------

    async def connect(self, user: User, ref: str) -> SQLSession:
        """A dedicated connection (the wire protocol's): closed by the caller. Its access
        is checked again every ``sql.recheck_interval`` (a grant revoked on another node)."""
        info = await self.get(user, ref)
        session = await self._open(info, user)

        async def recheck() -> str | None:
            try:
                now = await self.get(user, info.ref)
            except NotFound:
                return None
            return now.access if now.id == info.id else None

        session.recheck = recheck
        session.recheck_interval = self.settings.recheck_interval
        return session

    async def _open(self, info: DatabaseInfo, user: User) -> SQLSession:
        path = self.path(info.owner, info.name)
        try:
            conn = await asyncio.to_thread(open_database, path, read_only=info.access == "read",
                                           create=False, **self._open_options())
        except Exception as error:  # apsw.CantOpenError and friends
            raise SQLError(f"cannot open database {info.ref}: {error}", "58030") from None
        session = SQLSession(info, info.access, user.id, conn, self.limits())
        self._sessions.setdefault(info.id, weakref.WeakSet()).add(session)
        return session

    @asynccontextmanager
    async def session(self, user: User, ref: str) -> AsyncIterator[SQLSession]:
        """A pooled connection for one request (the HTTP API's), rolled back if the
        request left a transaction open."""
        info = await self.get(user, ref)
        key = (info.id, user.id, info.access)
        idle = self._pool.get(key)
        if idle:
            session = idle.pop()
            self._idle.pop(session, None)
        else:
            session = await self._open(info, user)
        session.database = info
        try:
            yield session
        finally:
            await self._release(key, session)

    async def _release(self, key: tuple[int, int, str], session: SQLSession) -> None:
        if not session.closed and not session.revoked:
            try:
                if session.in_transaction:
                    await session.rollback()
                idle = self._pool.setdefault(key, [])
                if len(idle) < self.settings.pool_size:
                    idle.append(session)
                    self._idle[session] = key
                    while len(self._idle) > self.settings.max_idle_connections:
                        oldest, old_key = self._idle.popitem(last=False)
                        self._pool[old_key].remove(oldest)
                        await oldest.close()
                    return
            except Exception:  # a session that cannot roll back is not reused
                log.exception("sql: dropping a pooled connection")
        await session.close()

    async def _disconnect(self, db_id: int, user_id: int | None, why: str) -> None:
        for key in [k for k in self._pool if k[0] == db_id and (user_id is None or k[1] == user_id)]:
            for session in self._pool.pop(key):
                self._idle.pop(session, None)
                await session.close()
        for session in list(self._sessions.get(db_id, ())):
            if user_id is None or session.user_id == user_id:
                session.revoked = why
                session.cancel()

    async def close(self) -> None:
        for idle in self._pool.values():
            for session in idle:
                await session.close()
        self._pool.clear()
        self._idle.clear()
        for sessions in self._sessions.values():
            for session in list(sessions):
                await session.close()

    async def forget_user(self, user: User) -> None:
        """A deleted user's databases go (their rows cascade with the account)."""
        async with self.runtime.db.read() as conn:
            ids = (await conn.scalars(select(sql_databases.c.id).where(sql_databases.c.owner_id == user.id))).all()
        for db_id in ids:
            await self._disconnect(db_id, None, "the owner of this database was deleted")
        for sessions in self._sessions.values():
            for session in list(sessions):
                if session.user_id == user.id:
                    session.revoked = "your account was deleted"
                    session.cancel()
        await asyncio.to_thread(shutil.rmtree, self.root / user.name, True)


def hosted_sql(runtime: Runtime) -> HostedSQL:
    return runtime.shared("sql", lambda: HostedSQL(runtime))


def forget_user_sql(runtime: Runtime):
    """The deletion hook: a deleted user's databases go with the account."""

    async def forget(user: User) -> None:
        await hosted_sql(runtime).forget_user(user)

    return forget
