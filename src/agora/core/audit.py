"""The append-only audit log: who did what, from where, and whether it worked.

Rows are only ever inserted (the database refuses UPDATE and DELETE on the table). A
record can join the caller's transaction, so a change and its audit entry commit
together or not at all.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from agora.core.database import Database
from agora.core.tables import audit_log, utcnow

log = logging.getLogger("agora.audit")

MAX_PAGE = 1000


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str | None
    action: str
    target: str | None
    outcome: str
    protocol: str | None
    client_addr: str | None
    details: dict[str, Any] | None


class AuditLog:
    def __init__(self, db: Database):
        self.db = db

    async def record(self, action: str, *, actor: str | None = None, target: str | None = None,
                     outcome: str = "ok", protocol: str | None = None,
                     client_addr: str | None = None, details: dict[str, Any] | None = None,
                     conn: AsyncConnection | None = None) -> None:
        row = {
            "at": utcnow(), "actor": actor, "action": action, "target": target,
            "outcome": outcome, "protocol": protocol, "client_addr": client_addr,
            "details": json.dumps(details, sort_keys=True) if details else None,
        }
        if conn is not None:
            await conn.execute(insert(audit_log).values(**row))
            return
        async with self.db.write() as own:
            await own.execute(insert(audit_log).values(**row))

    async def record_or_log(self, action: str, **fields: Any) -> None:
        """:meth:`record`, for an entry that must not fail what it records (a login):
        when the database cannot take the write (a full disk), the entry goes to the
        server log instead, as a warning."""
        try:
            await self.record(action, **fields)
        except (SQLAlchemyError, OSError) as error:
            reason = str(getattr(error, "orig", None) or error).splitlines()[0]
            log.warning("audit entry not written (%s): %s %s", reason, action,
                        json.dumps(fields, sort_keys=True, default=str))

    async def entries(self, *, limit: int = 100, before: int | None = None,
                      action: str | None = None, actor: str | None = None) -> list[AuditEntry]:
        """Newest first; ``before`` is the id to continue below (a cursor)."""
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
        if before is not None:
            query = query.where(audit_log.c.id < before)
        if action:
            query = query.where(audit_log.c.action == action)
        if actor:
            query = query.where(audit_log.c.actor == actor)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [AuditEntry(**{**row, "details": json.loads(row["details"]) if row["details"] else None})
                for row in rows]
