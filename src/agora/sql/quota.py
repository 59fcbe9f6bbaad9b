"""The limits PostgreSQL cannot hold against its own users: the size of a hosted database
(``sql.max_database_size``) and the longest a statement may run (``sql.max_statement_time``,
which a user cannot lift, unlike ``statement_timeout``: a statement still running past it
is cancelled, SQLSTATE 57014).

PostgreSQL has no per-database quota, so the server watches ``pg_database_size`` every
``sql.quota_interval`` and switches a database over its limit to read-only: a statement
trigger on every table refuses INSERT and UPDATE (COPY FROM included) with SQLSTATE
53100, and, where the engine's role is a superuser, an event trigger refuses the DDL that
would make room for more (new tables, indexes, ALTER, dropping the quota triggers).
DELETE, TRUNCATE, DROP and VACUUM stay allowed, so the owner can make room; once the
database is back under its limit the triggers go. Which databases are locked is the
guard's own schema in each (``agora_quota``): a node reads it once at start, then keeps
what it locked and unlocked itself (every node watches every database alike).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import asyncpg

from agora.sql.grants import literal

if TYPE_CHECKING:
    from agora.sql.hosted import HostedSQL

log = logging.getLogger("agora.sql")

SCHEMA = "agora_quota"
TRIGGER = "agora_over_quota"
# DDL refused while over quota: whatever could add data or remove the triggers.
# (The guard's own schema, function and event trigger belong to the engine's role: users
# cannot drop them anyway.)
BLOCKED_DDL = ("CREATE TABLE", "CREATE TABLE AS", "SELECT INTO", "ALTER TABLE", "CREATE INDEX",
               "CREATE MATERIALIZED VIEW", "REFRESH MATERIALIZED VIEW", "DROP TRIGGER", "ALTER TRIGGER",
               "CREATE TRIGGER")


async def locked_databases(hosted: "HostedSQL", names: list[str]) -> set[str]:
    """Which of ``names`` hold the guard (a look into each: done once per process)."""
    found = set()
    for name in names:
        try:
            async with hosted.engine.admin(name) as conn:
                if await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", SCHEMA):
                    found.add(name)
        except (asyncpg.PostgresError, OSError) as error:
            log.warning("sql: quota of %s: %s", name, error)
    return found


async def lock(hosted: "HostedSQL", dbname: str, size: int, limit: int, *, already: bool = False) -> None:
    """Refuse writes in ``dbname`` (again, when ``already``: for tables made meanwhile)."""
    message = (f"database {dbname} is over its size limit ({size // 1024**2} MiB of {limit // 1024**2} MiB, "
               "sql.max_database_size): delete rows and VACUUM to write again")
    async with hosted.engine.admin(dbname) as conn:
        superuser = bool(await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            await conn.execute(f"REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC")
            await conn.execute(
                f"CREATE OR REPLACE FUNCTION {SCHEMA}.refuse() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
                f"RAISE EXCEPTION USING ERRCODE = '53100', MESSAGE = {literal(message)}; END $f$")
            tables = await conn.fetch(
                "SELECT c.oid::regclass::text AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg_temp%' "
                "AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = $2)",
                SCHEMA, TRIGGER)
            for table in tables:
                await conn.execute(f"CREATE TRIGGER {TRIGGER} BEFORE INSERT OR UPDATE ON {table['name']} "
                                   f"FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.refuse()")
            if superuser:
                await conn.execute(
                    f"CREATE OR REPLACE FUNCTION {SCHEMA}.refuse_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$ "
                    f"BEGIN RAISE EXCEPTION USING ERRCODE = '53100', MESSAGE = {literal(message)}; END $f$")
                if not await conn.fetchval("SELECT 1 FROM pg_event_trigger WHERE evtname = $1", TRIGGER):
                    tags = ", ".join(literal(t) for t in BLOCKED_DDL)
                    await conn.execute(f"CREATE EVENT TRIGGER {TRIGGER} ON ddl_command_start WHEN TAG IN ({tags}) "
                                       f"EXECUTE FUNCTION {SCHEMA}.refuse_ddl()")
    if not already:
        log.warning("sql: %s", message)


async def unlock(hosted: "HostedSQL", dbname: str) -> None:
    async with hosted.engine.admin(dbname) as conn:
        async with conn.transaction():
            await conn.execute(f"DROP EVENT TRIGGER IF EXISTS {TRIGGER}")
            await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")  # the triggers with their function
    log.info("sql: database %s is back under its size limit; writes are allowed again", dbname)


async def check(hosted: "HostedSQL") -> None:
    """One round: lock what is over the limit, unlock what is back under."""
    limit = hosted.settings.max_database_size
    prefix = hosted.settings.role_prefix
    async with hosted.engine.admin() as admin:
        rows = await admin.fetch(
            "SELECT datname, pg_database_size(oid) AS size FROM pg_database "
            "WHERE NOT datistemplate AND pg_get_userbyid(datdba) LIKE $1 AND position('/' in datname) > 0",
            prefix.replace("_", r"\_") + "%")
    if hosted.locked is None:
        hosted.locked = await locked_databases(hosted, [r["datname"] for r in rows])
    locked = hosted.locked
    for row in rows:
        name, size = row["datname"], row["size"]
        try:
            if size > limit:
                await lock(hosted, name, size, limit, already=name in locked)
                locked.add(name)
            elif name in locked:
                await unlock(hosted, name)
                locked.discard(name)
        except (asyncpg.PostgresError, OSError) as error:
            log.warning("sql: quota of %s: %s", name, error)


async def cancel_overlong(hosted: "HostedSQL") -> None:
    limit = hosted.settings.max_statement_time
    if not limit:
        return
    async with hosted.engine.admin() as admin:
        cancelled = await admin.fetch(
            "SELECT pid, usename, datname, pg_cancel_backend(pid) FROM pg_stat_activity "
            "WHERE state = 'active' AND backend_type = 'client backend' AND usename LIKE $1 "
            "AND now() - query_start > make_interval(secs => $2)",
            hosted.settings.role_prefix.replace("_", r"\_") + "%", float(limit))
    for row in cancelled:
        log.warning("sql: cancelled a statement of %s on %s that ran past sql.max_statement_time",
                    row["usename"], row["datname"])


async def watch(hosted: "HostedSQL") -> None:
    while True:
        await asyncio.sleep(hosted.settings.quota_interval)
        if hosted.engine._ready is None or not hosted.engine._ready.done():
            continue  # not started (lazily): nothing has been written
        for task, what in ((check, "checking database sizes"), (cancel_overlong, "looking for overlong statements")):
            try:
                await task(hosted)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("sql: %s failed: %s", what, error)
