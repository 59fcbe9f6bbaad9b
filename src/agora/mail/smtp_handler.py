"""What SMTP accepts and where it goes: aiosmtpd's handler hooks for ``smtp.py``.

Receipt: recipients must be local (a known user, alias or catch-all) and fit their
quota; the message goes to ``MailStore.deliver``. Submission: the client has
authenticated, MAIL FROM is one of the user's addresses, recipients may be anywhere;
the message goes to ``sending.send``, which checks its From:/Sender: addresses with the
same rule (553 5.7.1) before local delivery, the outbound queue and the Sent copy.

Durability: 250 is sent only once the store (or queue) has returned, which it does
after fsync and commit. Any failure there is a 451 and nothing is acknowledged; a
client that retries is recognised by ``dedupe_key`` (a digest of what it sent) and the
recipients already served do not get a second copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from agora.core.database import unavailable
from agora.core.errors import Forbidden, InvalidInput, NotFound, StorageFull, TooLarge
from agora.core.fsutil import is_full
from agora.core.identity import User
from agora.mail import sending
from agora.mail.addresses import split
from agora.mail.store import QuotaExceeded, mail_store

if TYPE_CHECKING:
    from agora.mail.smtp import SMTPListener, SMTPSession

log = logging.getLogger("agora.mail")

NULL_SENDER = "<>"  # how smtp.py hands over MAIL FROM:<>
MAX_HOPS = 50  # Received lines beyond which a message is taken to be looping (RFC 5321 6.3)
_RECEIVED = re.compile(rb"^received:", re.I | re.M)
_UNSAFE = re.compile(r"[^\x21-\x7e]")


def _header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    return raw if end < 0 else raw[:end + 1]


def _size_option(options: list[str]) -> int:
    for option in options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


def _clean(text: str, limit: int = 255) -> str:
    """Client-supplied text fit for a header: printable ASCII, no spaces."""
    return _UNSAFE.sub("?", text)[:limit] or "unknown"


def _clean_text(text: str) -> str:
    """An error's text fit for one reply line: printable ASCII."""
    return re.sub(r"[^\x20-\x7e]", "?", text)[:400]


def dedupe_key(sender: str, recipients: list[str], data: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(sender.encode("utf-8", "surrogateescape") + b"\0")
    for address in recipients:
        digest.update(address.lower().encode("utf-8", "surrogateescape") + b"\0")
    digest.update(b"\0" + data)
    return digest.hexdigest()


class Handler:
    def __init__(self, listener: "SMTPListener"):
        self.listener = listener
        self.runtime = listener.runtime
        self.store = mail_store(listener.runtime)
        self.max_recipients = listener.runtime.config.mail.max_recipients

    # -- greeting and housekeeping ----------------------------------------------------

    async def handle_EHLO(self, server: "SMTPSession", session: Any, envelope: Any,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        lines = [line[4:] for line in responses[1:] if line[4:] != "HELP"]
        if not self.listener.submission:
            lines = [line for line in lines if not line.startswith("AUTH")]
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        return [responses[0]] + [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
        return "250 2.0.0 OK"

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        return "221 2.0.0 Bye"

    async def handle_VRFY(self, server: Any, session: Any, envelope: Any, address: str) -> str:
        # Never tells which users exist (RFC 5321 7.3).
        return "252 2.1.5 Cannot verify the user, but will take the message and try"

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp session failed: %r", error, exc_info=error)
        return "451 4.3.0 Internal error; try again later"

    # -- the envelope -----------------------------------------------------------------

    async def handle_MAIL(self, server: "SMTPSession", session: Any, envelope: Any,
                          address: str, options: list[str]) -> str:
        if address != NULL_SENDER:
            try:
                split(address)
            except InvalidInput:
                return "553 5.1.7 Bad sender address syntax"
        if self.listener.submission:
            user: User = session.auth_data
            if address == NULL_SENDER:
                return "553 5.7.1 Sending needs a sender address of yours"
            try:
                await sending.check_sender(self.runtime, user, address)
            except Forbidden as error:
                return f"553 5.7.1 {_clean_text(error.detail)}"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.size = _size_option(options)
        envelope.local = {}  # recipient address -> user name
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: "SMTPSession", session: Any, envelope: Any,
                          address: str, options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return f"452 4.5.3 Too many recipients (at most {self.max_recipients})"
        try:
            _, domain = split(address)
        except InvalidInput:
            return "501 5.1.3 Bad recipient address syntax"
        if self.store.is_local_domain(domain):
            name = await self.store.resolve(address)
            if name is None:
                return f"550 5.1.1 <{address}>: no such user here"
            if envelope.size > self.store.quota:
                return "552 5.2.2 Message larger than the recipient's mailbox"
            # A courtesy (deliver checks again): the store answers from its usage cache.
            if not await self.store.can_receive(name, envelope.size):
                return f"452 4.2.2 <{address}>: mailbox full"
            envelope.local[address] = name
        elif not (self.listener.submission and session.authenticated):
            return f"554 5.7.1 <{address}>: relay access denied"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    # -- the message ------------------------------------------------------------------

    async def handle_DATA(self, server: "SMTPSession", session: Any, envelope: Any) -> str:
        server.in_data = False
        server._reset_timeout()  # storing may take a while: not a body timeout
        raw: bytes = envelope.original_content
        if len(_RECEIVED.findall(_header_block(raw))) > MAX_HOPS:
            return "554 5.4.6 Too many hops: a mail loop?"
        sender = "" if envelope.mail_from == NULL_SENDER else envelope.mail_from
        recipients = list(envelope.rcpt_tos)
        key = dedupe_key(sender, recipients, raw)
        queue_id = secrets.token_hex(6)
        trace = self._received(server, session, recipients, queue_id)
        if self.listener.submission:
            work = self._submit(session.auth_data, sender, recipients, trace + raw, key)
        else:
            names = [envelope.local[address] for address in recipients]
            return_path = f"Return-Path: <{sender}>\r\n".encode("utf-8", "surrogateescape")
            work = self._deliver(names, return_path + trace + raw, key)
        # Shielded: a client that hangs up (or a timeout) mid-store does not cut the
        # store short; stop() waits for these.
        task = self.listener.track(asyncio.ensure_future(work))
        status = (await asyncio.shield(task)).replace("{id}", queue_id)
        log.info("smtp %s %s: <%s> -> %s, %d bytes: %s", self.listener.name, server.address,
                 sender, ", ".join(recipients), len(raw), status)
        return status

    def _received(self, server: "SMTPSession", session: Any, recipients: list[str],
                  queue_id: str) -> bytes:
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        if server.secure:
            protocol += "S"
        if session.authenticated:
            protocol += "A"
        helo = _clean(session.host_name or "unknown")
        address = f"IPv6:{server.address}" if ":" in server.address else server.address
        line = (f"Received: from {helo} ([{address}])\r\n"
                f"\tby {self.listener.hostname} (Agora) with {protocol} id {queue_id}")
        if len(recipients) == 1:
            line += f"\r\n\tfor <{_clean(recipients[0], 320)}>"
        line += f"; {formatdate(localtime=False, usegmt=True)}\r\n"
        return line.encode("ascii", "replace")

    async def _deliver(self, names: list[str], raw: bytes, key: str) -> str:
        try:
            await self.store.deliver(names, raw, dedupe_key=key)
        except Exception as error:
            return self._failure(error)
        return "250 2.0.0 OK: delivered as {id}"

    async def _submit(self, user: User, sender: str, recipients: list[str], raw: bytes,
                      key: str) -> str:
        try:
            sent = await sending.send(self.runtime, user, sender, recipients, raw, dedupe_key=key)
        except Exception as error:
            return self._failure(error)
        return "250 2.0.0 OK: " + (f"queued as {sent.queue_id}" if sent.queue_id else "delivered as {id}")

    @staticmethod
    def _failure(error: Exception) -> str:
        if isinstance(error, QuotaExceeded):
            return "452 4.2.2 Mailbox full; try again later"
        if isinstance(error, StorageFull) or is_full(error):
            return "452 4.3.1 Insufficient system storage; try again later"
        if isinstance(error, TooLarge):
            return "552 5.3.4 Message too big"
        if isinstance(error, Forbidden):
            return f"553 5.7.1 {_clean_text(error.detail)}"
        if isinstance(error, (NotFound, sending.UnknownRecipient)):
            return "550 5.1.1 Recipient no longer exists"
        if isinstance(error, InvalidInput):
            return f"554 5.6.0 {error.detail}"
        if unavailable(error):  # a blip of the database: nothing was acknowledged, the client retries
            log.warning("smtp: storing a message failed: the database is unavailable: %s", type(error).__name__)
        else:
            log.error("smtp: storing a message failed: %r", error, exc_info=error)
        return "451 4.3.0 Temporary failure storing the message; try again later"
