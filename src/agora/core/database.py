"""The metadata database: SQLite in the data dir by default, PostgreSQL when configured.

One schema for both, SQLAlchemy 2 Core (async), Alembic migrations applied at start.
Callers open a transaction with ``db.read()`` or ``db.write()``; the difference matters
on SQLite, where a writer takes the write lock up front (``BEGIN IMMEDIATE``) so two
writers queue on the busy timeout instead of one failing half-way with "database is
locked" when it upgrades a read lock.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, TypeVar

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

log = logging.getLogger("agora.database")

# Taken by whichever node migrates first, so several nodes starting at once against
# one PostgreSQL do not run the same migration twice.
_MIGRATION_LOCK_ID = 0x61676F7261  # "agora"

MIGRATIONS = "agora.core:migrations"

T = TypeVar("T")


class DatabaseError(Exception):
    """The database cannot be used: unreachable, or its schema is not one we know."""


class SchemaTooNew(DatabaseError):
    pass


# SQLSTATEs that say "not now" rather than "not so": the request may succeed when
# tried again, so clients hear 503 with Retry-After, never 500.
#   08...: connection exceptions; 57P01-57P03: admin or crash shutdown, starting up;
#   53...: insufficient resources (disk full, out of memory, too many connections);
#   40001/40P01: serialization failure, deadlock (the transaction was rolled back).
_UNAVAILABLE_CLASSES = ("08", "53")
_UNAVAILABLE_STATES = {"57P01", "57P02", "57P03", "40001", "40P01"}
# SQLite says so only in words: a lock held past busy_timeout, or a full disk.
_SQLITE_UNAVAILABLE = ("database is locked", "database table is locked", "database or disk is full")
RETRY_AFTER = 1  # seconds a client is asked to wait: PostgreSQL restarts in about that


def unavailable_classes() -> tuple[type[BaseException], ...]:
    """The exception classes that ``unavailable`` may say yes to, for handlers that
    are registered by class (OSError itself is left out: a full disk of the files
    store is not the database's, and has an answer of its own)."""
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    return (SQLAlchemyError, sqlite3.Error, ConnectionError, TimeoutError)


def unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the metadata database cannot answer *now* (a restart,
    a failover, a terminated backend, a lock held too long, a full disk) rather than
    that the request is wrong or the code is: every protocol answers these with its
    temporary-failure reply (HTTP 503 with Retry-After, IMAP NO [UNAVAILABLE], ...).

    Looks through SQLAlchemy's wrapper and the driver's exception chain.
    """
    from sqlalchemy.exc import DBAPIError, TimeoutError as PoolTimeout

    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, (PoolTimeout, ConnectionError, TimeoutError)):
            return True
        state = getattr(current, "sqlstate", None) or getattr(getattr(current, "diag", None), "sqlstate", None)
        if isinstance(state, str) and (state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES):
            return True
        name = type(current).__name__
        message = str(current)
        if name == "InterfaceError" and ("connection is closed" in message or "connection was closed" in message):
            return True  # asyncpg, when the server went away between statements
        if name == "OperationalError" and any(words in message for words in _SQLITE_UNAVAILABLE):
            return True
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return False


def engine_url(url: str, data_dir: Path) -> str:
    """The SQLAlchemy URL for a configured ``database.url`` (empty: SQLite in data_dir)."""
    if not url:
        return f"sqlite+aiosqlite:///{data_dir / 'agora.db'}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, busy_timeout: float = 10.0,
                 sqlite_cache: int = 64 * 1024**2, sqlite_checkpoint: int = 32 * 1024**2):
        self.url = url
        self.engine: AsyncEngine = self._create_engine(url, pool_size, busy_timeout, sqlite_cache, sqlite_checkpoint)
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _create_engine(self, url: str, pool_size: int, busy_timeout: float, sqlite_cache: int,
                       sqlite_checkpoint: int) -> AsyncEngine:
        if make_url(url).get_backend_name() == "sqlite":
            # LIFO: the connection used last is used next, so its page cache is still
            # warm (SQLite drops a connection's cache when another one wrote since).
            engine = create_async_engine(url, pool_size=pool_size, max_overflow=0,
                                         pool_timeout=busy_timeout + 5, pool_use_lifo=True)

            @event.listens_for(engine.sync_engine, "connect")
            def _sqlite_setup(dbapi_connection, _record):  # type: ignore[no-untyped-def]
                # We issue BEGIN ourselves (below); the driver must not.
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                # FULL: every commit is fsynced before it returns, so "acknowledged"
                # means on disk (NORMAL would lose the last commits on power loss).
                cursor.execute("PRAGMA synchronous=FULL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
                cursor.execute(f"PRAGMA cache_size={-max(1, sqlite_cache // 1024)}")  # negative: KiB
                # Checkpoints run in the commit that crosses this size (and fsync the
                # database): the default, 4 MiB, made nearly every large commit pay one.
                cursor.execute("PRAGMA page_size")
                page_size = cursor.fetchone()[0]
                cursor.execute(f"PRAGMA wal_autocheckpoint={max(1, sqlite_checkpoint // page_size)}")
                cursor.close()

            @event.listens_for(engine.sync_engine, "begin")
            def _sqlite_begin(conn: Connection) -> None:
                write = conn.get_execution_options().get("agora_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

            return engine
        return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size,
                                   pool_pre_ping=True)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that will write: committed (and durable) when the block ends."""
        if self._write_lock is None:
            async with self._write() as conn:
                yield conn
            return
        # SQLite has one writer at a time. Writers of this process queue here, in order,
        # instead of in SQLite's busy handler, which polls with sleeps of up to 100 ms
        # and cut concurrent mail delivery to a tenth. (Other processes still meet the
        # busy timeout.)
        async with self._write_lock:
            async with self._write() as conn:
                yield conn

    async def sqlite_write(self, work: Callable[..., T], *args: Any) -> T:
        """SQLite only: ``work(sqlite3_connection, *args)`` in one write transaction
        (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back if it raises), run whole on the
        connection's own thread.

        For a hot writer (the bank's): ``write()`` costs some seven thread hops and
        SQLAlchemy's bookkeeping around the work (begin, commit, reset on return), which
        for small commits cost more than the work; this costs one hop (and the reset).
        """
        assert self._write_lock is not None, "sqlite_write is for SQLite"
        async with self._write_lock:
            async with self.engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                return await driver._execute(_transaction, driver._conn, work, args)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(agora_write=True)
            async with conn.begin():
                yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()

    # -- migrations -----------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Bring the schema to the newest revision this code knows; return the heads.

        Raises SchemaTooNew when the database was migrated by a newer Agora.
        """
        try:
            async with self.write() as conn:
                return await conn.run_sync(_migrate)
        except DatabaseError:
            raise
        except (OSError, SQLAlchemyError) as error:
            # Unreachable, refused credentials, unwritable file: one line, not a traceback.
            reason = str(getattr(error, "orig", None) or error).splitlines()[0]
            raise DatabaseError(f"cannot use the metadata database ({type(error).__name__}): {reason}") from None


def _transaction(conn: Any, work: Callable[..., T], args: tuple[Any, ...]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn, *args)
        conn.execute("COMMIT")  # synchronous=FULL: on disk when this returns
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def version_locations() -> list[str]:
    """The core's migrations plus every service's ``<service>/migrations/`` folder.

    Found on disk rather than imported, so that core never imports a service. Each
    service's migrations are a branch of their own (branch label = service name) that
    depends on the core's first revision.
    """
    package = Path(__file__).resolve().parents[1]
    found = [str(package / "core" / "migrations" / "versions")]
    found += sorted(str(path) for path in package.glob("*/migrations") if path.parent.name != "core")
    return found


def expected_heads() -> set[str]:
    """The revisions alembic_version holds when the schema is current, read from the
    migration files without importing Alembic (a quarter of start-up time otherwise).

    A revision named as another's down_revision or depends_on is implied by it, so it is
    not stored. Only a fast path: when this disagrees with the table, Alembic decides.
    """
    revisions: set[str] = set()
    implied: set[str] = set()
    for location in version_locations():
        for path in Path(location).glob("*.py"):
            values: dict[str, object] = {}
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        values[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        continue
            if isinstance(values.get("revision"), str):
                revisions.add(values["revision"])  # type: ignore[arg-type]
                for key in ("down_revision", "depends_on"):
                    value = values.get(key)
                    implied.update([value] if isinstance(value, str) else list(value or ()))  # type: ignore[arg-type]
    return revisions - implied


def _alembic_config(connection: Connection) -> "AlembicConfig":
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", MIGRATIONS)
    # Alembic splits this option on the separator; os.pathsep keeps paths with spaces whole.
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(version_locations()))
    cfg.attributes["connection"] = connection
    return cfg


def _stored_heads(connection: Connection) -> set[str] | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return {row[0] for row in connection.exec_driver_sql("SELECT version_num FROM alembic_version")}


def _migrate(connection: Connection) -> list[str]:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
    expected = expected_heads()
    if _stored_heads(connection) == expected:
        return sorted(expected)  # current: no need to load Alembic at all

    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(connection)
    script = ScriptDirectory.from_config(cfg)
    current = set(MigrationContext.configure(connection).get_current_heads())
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = sorted(current - known)
    if unknown:
        raise SchemaTooNew(
            f"the database schema is at revision {', '.join(unknown)}, which this version of "
            "Agora does not know: it was upgraded by a newer Agora; run that version (or restore a backup)"
        )
    heads = set(script.get_heads())
    if current != heads:
        log.info("migrating the metadata database from %s to %s",
                 ", ".join(sorted(current)) or "empty", ", ".join(sorted(heads)))
        command.upgrade(cfg, "heads")
    return sorted(heads)
