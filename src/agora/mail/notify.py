"""Folder-change notices between nodes: PostgreSQL LISTEN/NOTIFY.

Within one process the store wakes watchers directly. When several nodes share one
PostgreSQL, a change committed on one node must also wake an IDLE session on another:
every transaction that changes a folder also runs ``pg_notify`` (delivered only if it
commits), and each serving node keeps one connection listening on the channel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from agora.core import notices
from agora.core.database import Database

log = logging.getLogger("agora.mail")

CHANNEL = "agora_mail"


async def publish(conn: AsyncConnection, folder_id: int) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                           {"channel": CHANNEL, "payload": str(folder_id)})


class Listener:
    def __init__(self, db: Database, on_change: Callable[[int], None]):
        self.db = db
        self.on_change = on_change
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.db.dialect == "postgresql" and self.task is None:
            connected = asyncio.Event()
            self.task = asyncio.create_task(self._run(connected))
            # Wait for the first LISTEN, so a change made right after start is heard.
            await asyncio.wait([asyncio.ensure_future(connected.wait()), self.task],
                               return_when=asyncio.FIRST_COMPLETED)

    async def stop(self, timeout: float = 0.0) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    def _received(self, payload: str) -> None:
        try:
            self.on_change(int(payload))
        except ValueError:
            log.warning("ignoring a malformed folder notice %r", payload)

    async def _run(self, connected: asyncio.Event) -> None:
        await notices.listen(self.db, CHANNEL, self._received, connected, log)
