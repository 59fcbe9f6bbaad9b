"""Agora's catalogue mapped onto PostgreSQL's own roles and privileges, so that the
engine enforces it on every connection, whatever the client sends.

- Each user who uses SQL has a LOGIN role (``agora_alice``): no superuser, no CREATEDB,
  no CREATEROLE, no replication, a connection limit, and the time limits as role settings.
- Each hosted database ``alice/shop`` is owned by its owner's role. CONNECT and TEMP are
  revoked from PUBLIC; two NOLOGIN group roles per database (``agora_db7_read``,
  ``agora_db7_write``) carry the grants, and a grantee is made a member of one. Default
  privileges of the owner's role (and of each writer's, who may create tables too) give
  the groups their rights on every table and sequence, later ones included.

Every function takes an asyncpg connection as the engine's administrative role: a
superuser (embedded), or a role with CREATEDB and CREATEROLE (external), which on
PostgreSQL 16+ becomes able to act as the roles it creates.
"""

from __future__ import annotations

from typing import Any

import asyncpg

READ_TABLES = "SELECT"
WRITE_TABLES = "SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER"
READ_SEQUENCES = "SELECT"
WRITE_SEQUENCES = "USAGE, SELECT, UPDATE"


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def _superuser(admin: asyncpg.Connection) -> bool:
    return bool(await admin.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))


async def _act_as(admin: asyncpg.Connection, role: str) -> None:
    """Make the (non-superuser) admin able to SET ROLE to a role it administers."""
    if await _superuser(admin):
        return
    if admin.get_server_version().major >= 16:
        await admin.execute(f"GRANT {ident(role)} TO CURRENT_USER WITH INHERIT FALSE, SET TRUE")
    else:
        await admin.execute(f"GRANT {ident(role)} TO CURRENT_USER")


async def ensure_role(admin: asyncpg.Connection, engine: Any, role: str, settings: Any) -> None:
    exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    password = literal(engine.role_password(role))
    # (NOSUPERUSER, NOREPLICATION and NOBYPASSRLS are the defaults, and only a superuser
    # may name them in ALTER ROLE.)
    attributes = f"LOGIN NOCREATEDB NOCREATEROLE INHERIT CONNECTION LIMIT {int(settings.connections_per_user)}"
    if not exists:
        try:
            await admin.execute(f"CREATE ROLE {ident(role)} NOSUPERUSER NOREPLICATION NOBYPASSRLS {attributes} "
                                f"PASSWORD {password}")
        except asyncpg.DuplicateObjectError:  # made meanwhile by another node
            pass
        await _act_as(admin, role)
    else:
        await admin.execute(f"ALTER ROLE {ident(role)} {attributes}")
    await admin.execute(f"ALTER ROLE {ident(role)} SET statement_timeout = {int(settings.query_timeout * 1000)}")
    await admin.execute(f"ALTER ROLE {ident(role)} SET idle_in_transaction_session_timeout = "
                        f"{int(settings.idle_transaction_timeout * 1000)}")
    if await _superuser(admin):  # a superuser-only setting: the user cannot raise it
        await admin.execute(f"ALTER ROLE {ident(role)} SET temp_file_limit = {max(1, settings.temp_file_limit // 1024)}")


async def _group(admin: asyncpg.Connection, name: str) -> None:
    if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
        try:
            await admin.execute(f"CREATE ROLE {ident(name)} NOLOGIN NOINHERIT")
        except asyncpg.DuplicateObjectError:
            pass
        await _act_as(admin, name)


async def create_database(admin: asyncpg.Connection, engine: Any, dbname: str, owner_name: str,
                          database_id: int, *, replace: bool = False) -> None:
    owner = engine.role_name(owner_name)
    exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dbname)
    if exists and replace:
        await admin.execute(f"DROP DATABASE {ident(dbname)} WITH (FORCE)")
        exists = False
    if not exists:
        await admin.execute(f"CREATE DATABASE {ident(dbname)} OWNER {ident(owner)} ENCODING 'UTF8' TEMPLATE template0")
    await admin.execute(f"REVOKE ALL ON DATABASE {ident(dbname)} FROM PUBLIC")
    for access in ("read", "write"):
        group = engine.group_name(database_id, access)
        await _group(admin, group)
        await admin.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {ident(dbname)} TO {ident(group)}")


async def _defaults_for(admin: asyncpg.Connection, engine: Any, creator: str, owner: str, database_id: int) -> None:
    """Tables and sequences ``creator`` makes in schema public: readable by the read
    group, writable by the write group and the database's owner."""
    read, write = (ident(engine.group_name(database_id, a)) for a in ("read", "write"))
    prefix = f"ALTER DEFAULT PRIVILEGES FOR ROLE {ident(creator)} IN SCHEMA public GRANT"
    await admin.execute(f"{prefix} {READ_TABLES} ON TABLES TO {read}")
    await admin.execute(f"{prefix} {WRITE_TABLES} ON TABLES TO {write}")
    await admin.execute(f"{prefix} {READ_SEQUENCES} ON SEQUENCES TO {read}")
    await admin.execute(f"{prefix} {WRITE_SEQUENCES} ON SEQUENCES TO {write}")
    if creator != owner:
        await admin.execute(f"{prefix} ALL ON TABLES TO {ident(owner)}")
        await admin.execute(f"{prefix} ALL ON SEQUENCES TO {ident(owner)}")


async def prepare_schema(admin: asyncpg.Connection, engine: Any, owner_name: str, database_id: int) -> None:
    """In the hosted database itself (a connection to it)."""
    owner = engine.role_name(owner_name)
    read, write = (ident(engine.group_name(database_id, a)) for a in ("read", "write"))
    async with admin.transaction():
        await admin.execute(f"ALTER SCHEMA public OWNER TO {ident(owner)}")
        await admin.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        await admin.execute(f"GRANT USAGE ON SCHEMA public TO {read}, {write}")
        await admin.execute(f"GRANT CREATE ON SCHEMA public TO {write}")
        # Tables that exist already (a converted database) as later ones.
        await admin.execute(f"GRANT {READ_TABLES} ON ALL TABLES IN SCHEMA public TO {read}")
        await admin.execute(f"GRANT {WRITE_TABLES} ON ALL TABLES IN SCHEMA public TO {write}")
        await admin.execute(f"GRANT {READ_SEQUENCES} ON ALL SEQUENCES IN SCHEMA public TO {read}")
        await admin.execute(f"GRANT {WRITE_SEQUENCES} ON ALL SEQUENCES IN SCHEMA public TO {write}")
        await _defaults_for(admin, engine, owner, owner, database_id)


async def grant(admin: asyncpg.Connection, engine: Any, owner_name: str, database_id: int, role: str,
                access: str) -> None:
    """``role`` may use the database (``admin`` is connected to it) with ``access``."""
    other = "write" if access == "read" else "read"
    async with admin.transaction():
        await admin.execute(f"REVOKE {ident(engine.group_name(database_id, other))} FROM {ident(role)}")
        await admin.execute(f"GRANT {ident(engine.group_name(database_id, access))} TO {ident(role)}")
        if access == "write":
            await _defaults_for(admin, engine, role, engine.role_name(owner_name), database_id)


async def _terminate(admin: asyncpg.Connection, dbname: str, role: str | None = None) -> None:
    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = $1 AND ($2::text IS NULL OR usename = $2) AND pid <> pg_backend_pid()",
                        dbname, role)


async def revoke(admin: asyncpg.Connection, engine: Any, dbname: str, database_id: int, role: str) -> None:
    for access in ("read", "write"):
        await admin.execute(f"REVOKE {ident(engine.group_name(database_id, access))} FROM {ident(role)}")
    await _terminate(admin, dbname, role)


async def drop_database(admin: asyncpg.Connection, engine: Any, dbname: str, database_id: int) -> None:
    await admin.execute(f"DROP DATABASE IF EXISTS {ident(dbname)} WITH (FORCE)")
    for access in ("read", "write"):
        await admin.execute(f"DROP ROLE IF EXISTS {ident(engine.group_name(database_id, access))}")


async def drop_role(admin: asyncpg.Connection, engine: Any, role: str) -> None:
    """A deleted user's role: what it made in others' databases passes to their owners."""
    if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
        return
    await admin.execute(f"ALTER ROLE {ident(role)} NOLOGIN")
    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
    databases = await admin.fetch(
        "SELECT DISTINCT d.datname, pg_get_userbyid(d.datdba) AS owner FROM pg_shdepend s "
        "JOIN pg_database d ON d.oid = s.dbid WHERE s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)",
        role)
    for row in databases:
        async with engine.admin(row["datname"]) as conn:
            if row["owner"] != role:
                await conn.execute(f"REASSIGN OWNED BY {ident(role)} TO {ident(row['owner'])}")
            await conn.execute(f"DROP OWNED BY {ident(role)}")
    await admin.execute(f"DROP ROLE IF EXISTS {ident(role)}")
