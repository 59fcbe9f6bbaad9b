"""The files service: its own listener is FTP; its HTTP routes, WebDAV and users' sites
are mounted by the web service (see web/app.py)."""

from __future__ import annotations

import asyncio
import socket

from agora.core.runtime import Runtime
from agora.files.access import file_store


class FilesService:
    name = "files"
    listeners = ("ftp",)

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.ftp = None

    async def start(self, sockets: dict[str, socket.socket]) -> None:
        # Made now, before FTP sessions in other threads can race to make it, and so that
        # uploads left by a crash are swept at start.
        file_store(self.runtime)
        if "ftp" in sockets:
            from agora.files.ftp import FTPListener  # pyftpdlib and pyOpenSSL only when serving FTP

            self.ftp = FTPListener(self.runtime, sockets["ftp"])
            self.ftp.start(asyncio.get_running_loop())

    async def stop(self, timeout: float) -> None:
        if self.ftp is not None:
            await asyncio.to_thread(self.ftp.stop, timeout)
