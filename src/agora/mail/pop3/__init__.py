"""POP3 (RFC 1939) over the mail store: a sans-IO state machine (protocol.py), the
session that does its I/O (session.py) and the listeners (server.py)."""

from agora.mail.pop3.server import POP3Listener

__all__ = ["POP3Listener"]
