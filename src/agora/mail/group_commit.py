"""Group commit: many concurrent writers, one transaction.

Each SMTP delivery must be committed (fsynced) before its ``250``; one transaction per
message spends most of its time in per-transaction overhead and queues on the single
SQLite writer. Here the first caller commits what is waiting, and whatever arrives while
that commit runs goes into the next one, so under load each commit carries many
messages and a lone message still goes at once (no timer, no added latency).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    def __init__(self, flush: Callable[[list[Item]], Awaitable[list[Result]]], max_batch: int = 256):
        self.flush = flush  # commits a batch; returns one result per item, in order
        self.max_batch = max_batch
        self.waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self.task: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        if self.task is None:
            # A task of its own: a writer that is cancelled (its client hung up) must not
            # take the others' commit down with it.
            self.task = asyncio.create_task(self._run())
        return await asyncio.shield(future)

    async def _run(self) -> None:
        try:
            while self.waiting:
                batch = self.waiting[:self.max_batch]
                del self.waiting[:self.max_batch]
                try:
                    results = await self.flush([item for item, _ in batch])
                except Exception as error:
                    # The whole transaction failed: every writer in it hears so.
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):  # this writer's alone (a quota)
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.task = None
