"""An IMAP listener in this process (a thread with its own event loop) over a real
store, for the IMAP session tests: quicker than a server process, and the store is at
hand to deliver mail directly."""

from __future__ import annotations

import asyncio
import imaplib
import re
import secrets
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from agora import config as config_module
from agora.core.runtime import Runtime

CHEAP_HASHING = {"AGORA_IDENTITY_ARGON2_TIME_COST": "1", "AGORA_IDENTITY_ARGON2_MEMORY_KIB": "1024"}


class IMAPHarness:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None):
        environ = {"AGORA_ADMIN_PASSWORD": "admin-" + secrets.token_hex(8), **CHEAP_HASHING, **(env or {})}
        self.config = config_module.load({"data_dir": str(data_dir)}, environ=environ)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ports: dict[str, int] = {}
        self.listeners: list[Any] = []
        self.call(self._start())

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        from agora.mail.imap.server import IMAPListener
        from agora.mail.store import mail_store

        self.runtime = await Runtime.open(self.config, serving=True)
        self.store = mail_store(self.runtime)
        for name in ("imap", "imaps"):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(100)
            sock.setblocking(False)
            listener = IMAPListener(self.runtime, sock, name)
            await listener.start()
            self.listeners.append(listener)
            self.ports[name] = sock.getsockname()[1]

    def close(self) -> None:
        async def stop() -> None:
            await asyncio.gather(*(listener.stop(2) for listener in self.listeners))
            for listener in self.listeners:
                listener.sock.close()
            await self.runtime.close()
        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    # -- helpers ---------------------------------------------------------------------

    def user(self, name: str | None = None) -> tuple[str, str]:
        name = name or "u" + secrets.token_hex(4)
        password = "pw-" + secrets.token_hex(8)
        self.call(self.runtime.identity.create_user(name, password))
        return name, password

    def get_user(self, name: str) -> Any:
        return self.call(self.runtime.identity.get_user(name))

    def deliver(self, name: str, raw: bytes, folder: str = "INBOX") -> int:
        [delivery] = self.call(self.store.deliver([name], raw, folder=folder, dedupe_key=secrets.token_hex(8)))
        return delivery.uid

    @property
    def cert(self) -> Path:
        return self.runtime.data_dir / "tls" / "cert.pem"

    def imap(self, user: str | None = None, password: str | None = None, **kwargs: Any) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=10, **kwargs)
        if user:
            client.login(user, password)
        return client

    def imaps(self) -> imaplib.IMAP4_SSL:
        context = ssl.create_default_context(cafile=str(self.cert))
        return imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=context, timeout=10)


class RawClient:
    """A line-level IMAP client, for what imaplib cannot send (or would not)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise EOFError("connection closed")
        match = re.search(rb"\{(\d+)\}\r\n$", line)
        if match:  # a literal: keep it in the line
            line += self.file.read(int(match.group(1)))
            line += self.line()
        return line

    def until(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def login(self, user: str, password: str) -> None:
        assert self.command(b"L", f"LOGIN {user} {password}".encode())[-1].startswith(b"L OK")

    def close(self) -> None:
        self.sock.close()
