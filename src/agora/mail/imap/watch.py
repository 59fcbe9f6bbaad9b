"""One store watch per folder for all the IMAP sessions that have it selected.

A delivery to a folder that 5,000 IDLE sessions watch then wakes one task here, which
marks each session's view and pokes its connection directly: no task per session
waits for changes, and each session runs once per change instead of three times.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("agora.imap")


class FolderHub:
    def __init__(self, folder_id: int):
        self.folder_id = folder_id
        self.views: set[Any] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.watch: Any = None
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            await self.watch.wait()
            for view in list(self.views):
                try:
                    view.notify()
                except Exception:  # one broken session must not deafen the others
                    log.exception("IMAP change notice failed")


async def join(view: Any, store: Any, user: Any, name: str, folder_id: int) -> FolderHub:
    """Have ``view`` told of every change to the folder from when this returns."""
    hubs = view.shared.hubs
    hub = hubs.get(folder_id)
    if hub is None:
        hub = hubs[folder_id] = FolderHub(folder_id)
        try:
            watch = store.watch(user, name)
            await watch.__aenter__()
        except BaseException as error:
            hubs.pop(folder_id, None)
            hub.ready.set_exception(error)
            hub.ready.exception()  # retrieved: the joiners that wait get it too
            raise
        hub.watch = watch
        hub.task = asyncio.ensure_future(hub.run())
        hub.ready.set_result(None)
    else:
        await asyncio.shield(hub.ready)
    hub.views.add(view)
    return hub


async def leave(view: Any, hub: FolderHub) -> None:
    hub.views.discard(view)
    hubs = view.shared.hubs
    if hub.views or hubs.get(hub.folder_id) is not hub:
        return
    del hubs[hub.folder_id]  # before any await: a session joining now makes a new one
    if hub.task is not None:
        hub.task.cancel()
    if hub.watch is not None:
        await hub.watch.__aexit__(None, None, None)
