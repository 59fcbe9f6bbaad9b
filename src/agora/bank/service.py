"""The bank's background work: expiring pending transfers past their timeout. (Its HTTP
API and pages are mounted by the web service, see web/app.py; it has no listener.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from agora.bank.ledger import ledger
from agora.core.database import unavailable
from agora.core.runtime import Runtime

log = logging.getLogger("agora.bank")

EXPIRE_PER_ROUND = 1000  # holds expired per sweep; the next sweep takes the rest


class BankService:
    name = "bank"
    listeners: tuple[str, ...] = ()

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.task: asyncio.Task[None] | None = None

    async def start(self, sockets: dict[str, socket.socket]) -> None:
        self.task = asyncio.create_task(self._expire_forever())

    async def _expire_forever(self) -> None:
        interval = self.runtime.config.bank.expiry_interval
        the_ledger = ledger(self.runtime)
        while True:
            try:
                expired = await the_ledger.expire_due(EXPIRE_PER_ROUND)
                if expired:
                    log.info("bank: %d pending transfers expired", expired)
                    if expired >= EXPIRE_PER_ROUND:
                        continue
            except Exception as error:  # storage trouble: log, try again next round
                if unavailable(error):  # a blip: one line a round, not a traceback
                    log.warning("bank: expiring pending transfers failed: the database is unavailable (%s)",
                                type(error).__name__)
                else:
                    log.exception("bank: expiring pending transfers failed")
            await asyncio.sleep(interval)

    async def stop(self, timeout: float) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
