"""The mail service: SMTP receipt and submission, IMAP, POP3 (each plain with STARTTLS
and, for IMAP and POP3, implicit TLS), the outbound queue; its HTTP API and webmail are
mounted by the web service (see web/app.py)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from agora.core.runtime import Runtime
from agora.mail.store import mail_store


def _listener_class(name: str) -> Any:
    # Each protocol's code is imported only when its listener is on.
    if name in ("smtp", "submission"):
        from agora.mail.smtp import SMTPListener
        return SMTPListener
    if name in ("imap", "imaps"):
        from agora.mail.imap.server import IMAPListener
        return IMAPListener
    from agora.mail.pop3 import POP3Listener
    return POP3Listener


class MailService:
    name = "mail"
    listeners = ("smtp", "submission", "imap", "imaps", "pop3", "pop3s")

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.started: list[Any] = []

    async def start(self, sockets: dict[str, socket.socket]) -> None:
        store = mail_store(self.runtime)
        await store.notices.start()
        self.started.append(store.notices)
        from agora.mail.outbound import outbound_queue

        queue = outbound_queue(self.runtime)
        await queue.start()
        self.started.append(queue)
        for name, sock in sockets.items():
            listener = _listener_class(name)(self.runtime, sock, name)
            await listener.start()
            self.started.append(listener)

    async def stop(self, timeout: float) -> None:
        await asyncio.gather(*(part.stop(timeout) for part in reversed(self.started)))
