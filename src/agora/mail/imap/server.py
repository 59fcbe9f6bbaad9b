"""The IMAP listeners: "imap" (STARTTLS) and "imaps" (TLS from the first byte).

The connection and the listener are mail/connection.py's, as for POP3 (5,000 IDLE
sessions are a benchmark: little state per idle client). A client turned away, or one
waiting when the server stops, gets BYE; a session running a command finishes it and
then says BYE itself.
"""

from __future__ import annotations

import logging
import socket

from agora.core.runtime import Runtime
from agora.mail.connection import MailConnection, MailListener
from agora.mail.imap.session import Session


class IMAPListener(MailListener):
    protocol = "IMAP"
    implicit_name = "imaps"
    goodbye = b"* BYE "
    read_ahead = 1024 * 1024  # bytes a client may send beyond what the session has taken
    log = logging.getLogger("agora.imap")

    def __init__(self, runtime: Runtime, sock: socket.socket, name: str = "imap"):
        super().__init__(runtime, sock, name)

    def new_session(self, conn: MailConnection) -> Session:
        return Session(self.runtime, self.store, conn, starttls=self.offers_starttls,
                       stopping=lambda: self.stopping)
