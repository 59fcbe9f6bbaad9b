"""Helpers the mail server tests share (SMTP, IMAP, POP3 against `agora serve`)."""

from __future__ import annotations

import secrets
import smtplib
import socket
import ssl
from contextlib import contextmanager
from typing import Iterator

from conftest import AgoraServer, ServerFactory

TIMEOUT = 15
DOMAIN = "a.test"
# Cheap password hashing: logging in is not what these tests are about.
SERVER_ENV = {"AGORA_IDENTITY_ARGON2_TIME_COST": "1", "AGORA_IDENTITY_ARGON2_MEMORY_KIB": "1024"}


@contextmanager
def module_server(tmp_path_factory, backend: str, prefix: str, args: tuple[str, ...]) -> Iterator[AgoraServer]:
    """A server for a module's tests (a module-scoped fixture yields from this)."""
    factory = ServerFactory(tmp_path_factory.mktemp(f"{prefix}-{backend}"), backend)
    try:
        yield factory(env=SERVER_ENV, args=args)
    finally:
        factory.close()


def message(subject: str, body: bytes = b"Hello from the tests.\r\n") -> bytes:
    return (f"From: Sender <sender@elsewhere.example>\r\nTo: someone@{DOMAIN}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{secrets.token_hex(8)}@elsewhere.example>\r\n"
            "Date: Tue, 2 Jan 2024 09:30:00 +0000\r\n\r\n").encode() + body


def send_smtp(server: AgoraServer, name: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=TIMEOUT) as client:
        client.sendmail("sender@elsewhere.example", [f"{name}@{DOMAIN}"], raw)


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed
    return context


def local_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("203.0.113.1", 9))  # no packet is sent
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address
