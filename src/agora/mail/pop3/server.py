"""The POP3 listeners: "pop3" (1110, STLS) and "pop3s" (1995, TLS from the first byte).

The connection and the listener are mail/connection.py's, as for IMAP. A client turned
away, or one waiting when the server stops, gets -ERR [SYS/TEMP]; nothing is deleted
then (that needs QUIT).
"""

from __future__ import annotations

import logging
import socket

from agora.core.runtime import Runtime
from agora.mail.connection import MailConnection, MailListener
from agora.mail.pop3.session import Session


class POP3Listener(MailListener):
    protocol = "POP3"
    implicit_name = "pop3s"
    goodbye = b"-ERR [SYS/TEMP] "
    read_ahead = 256 * 1024  # bytes a client may send beyond what its session has taken
    try_later = "; try again later"
    log = logging.getLogger("agora.pop3")

    def __init__(self, runtime: Runtime, sock: socket.socket, name: str = "pop3"):
        super().__init__(runtime, sock, name)
        # Users whose maildrop a POP3 session holds, shared by both listeners.
        self.maildrops: set[str] = runtime.shared("mail.pop3.maildrops", set)

    def new_session(self, conn: MailConnection) -> Session:
        return Session(self.runtime, self.store, conn, stls=self.offers_starttls, maildrops=self.maildrops,
                       stopping=lambda: self.stopping)
