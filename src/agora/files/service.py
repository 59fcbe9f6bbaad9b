"""The files service: its own listeners are FTP (explicit FTPS) and implicit FTPS; its
HTTP routes, WebDAV and users' sites are mounted by the web service (see web/app.py)."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from agora.core.runtime import Runtime
from agora.files.access import file_store

if TYPE_CHECKING:
    from agora.files.ftp import FTPListener


class FilesService:
    name = "files"
    listeners = ("ftp", "ftps")

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.ftp: list[FTPListener] = []

    async def start(self, sockets: dict[str, socket.socket]) -> None:
        # Made now, before FTP sessions in other threads can race to make it, and so that
        # uploads left by a crash are swept at start.
        file_store(self.runtime)
        if sockets:
            from agora.files.ftp import FTPListener  # pyftpdlib and pyOpenSSL only when serving FTP

            for name, sock in sockets.items():
                listener = FTPListener(self.runtime, sock, name)
                listener.start(asyncio.get_running_loop())
                self.ftp.append(listener)

    async def stop(self, timeout: float) -> None:
        # Together, so that each listener's transfers get the whole of ``timeout``.
        await asyncio.gather(*(asyncio.to_thread(listener.stop, timeout) for listener in self.ftp))
