"""Databases that earlier versions of Agora hosted as SQLite files
(``DATA_DIR/sql/<owner>/<name>.sqlite``), converted into PostgreSQL databases at the first
start of this version: the schema with its types mapped and every row copied (the convert package,
which checks the row counts), the grants kept (they are the catalogue's, which stays), and
the original files moved aside to ``DATA_DIR/sql/legacy/`` until an admin removes them.
A file that fails to convert stays where it is, and its database answers with an error
naming it, until the cause is fixed and the server started again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from agora.core.runtime import Runtime
from agora.core.tables import users
from agora.sql.tables import sql_databases, sql_grants

if TYPE_CHECKING:
    from agora.sql.hosted import HostedSQL

log = logging.getLogger("agora.sql")

SUFFIXES = ("", "-wal", "-shm", "-journal")


def legacy_files(runtime: Runtime) -> list[Path]:
    root = runtime.data_dir / "sql"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*/*.sqlite") if p.parent.name not in ("pg", "legacy"))


def has_legacy(runtime: Runtime) -> bool:
    return bool(legacy_files(runtime))


async def convert_legacy(hosted: "HostedSQL") -> None:
    runtime = hosted.runtime
    files = legacy_files(runtime)
    if not files:
        return
    from agora.sql.hosted import DatabaseInfo

    owner = users.alias("owner")
    async with runtime.db.read() as conn:
        rows = (await conn.execute(
            select(sql_databases, owner.c.name.label("owner_name"))
            .join(owner, owner.c.id == sql_databases.c.owner_id))).all()
        granted = (await conn.execute(
            select(sql_grants.c.database_id, users.c.name, sql_grants.c.access)
            .join(users, users.c.id == sql_grants.c.user_id))).all()
    by_path = {runtime.data_dir / "sql" / r.owner_name / f"{r.name}.sqlite": r for r in rows}
    for path in files:
        row = by_path.get(path)
        if row is None:
            log.warning("sql: %s belongs to no hosted database; left as it is", path)
            continue
        info = DatabaseInfo(row.id, row.owner_name, row.name, row.created_at, "owner")
        try:
            await convert_one(hosted, info, path, [(n, a) for db_id, n, a in granted if db_id == row.id])
        except Exception as error:
            log.error("sql: converting %s from SQLite failed, the file is kept: %s", path, error)


async def convert_one(hosted: "HostedSQL", info, path: Path, grantees: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
    from agora.sql import grants

    await hosted.provision(info, fresh=True)
    report = await convert_file(hosted, info, path)
    for name, access in grantees:
        grantee_role = await hosted.ensure_role(name)
        async with hosted.engine.admin(hosted.engine.dbname(info.ref)) as admin:
            await grants.grant(admin, hosted.engine, info.owner, info.id, grantee_role, access)
    aside = hosted.runtime.data_dir / "sql" / "legacy" / info.owner
    aside.mkdir(mode=0o700, parents=True, exist_ok=True)
    for suffix in SUFFIXES:
        part = path.with_name(path.name + suffix)
        if part.exists():
            os.replace(part, aside / part.name)
    log.info("sql: converted %s from SQLite (%s); the original is in %s", info.ref, report, aside)


async def convert_file(hosted: "HostedSQL", info, path: Path):  # type: ignore[no-untyped-def]
    """The SQLite file ``path`` into the (empty) hosted database ``info``, as its owner."""
    role = hosted.engine.role_name(info.owner)
    return await asyncio.to_thread(_convert, hosted, role, hosted.engine.dbname(info.ref), path)


def _convert(hosted: "HostedSQL", role: str, dbname: str, path: Path) -> object:
    import psycopg

    from agora.sql.convert import convert_sqlite

    with psycopg.connect(**hosted.engine.conninfo(role, dbname)) as conn:
        return convert_sqlite(path, conn)
