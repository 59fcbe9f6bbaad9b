"""The hosted-SQL service: its listeners (the PostgreSQL wire protocol), the engine it
supervises, and at stop the engine and the pooled connections. The HTTP API and the
console are mounted by the web service (see web/app.py)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from agora.core.runtime import Runtime
from agora.sql.hosted import hosted_sql


class SQLService:
    name = "sql"
    listeners: tuple[str, ...] = ("postgres",)

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.started: list[Any] = []

    async def start(self, sockets: dict[str, socket.socket]) -> None:
        await hosted_sql(self.runtime).serve()
        for name, sock in sockets.items():
            if self.runtime.config.postgres.workers > 1:
                from agora.sql.pgwire.workers import WorkerPool
                listener: Any = WorkerPool(self.runtime, sock, name)
            else:
                from agora.sql.pgwire.server import PGListener
                listener = PGListener(self.runtime, sock, name)
            await listener.start()
            self.started.append(listener)

    async def stop(self, timeout: float) -> None:
        await asyncio.gather(*(part.stop(timeout) for part in reversed(self.started)))
        await hosted_sql(self.runtime).close()
