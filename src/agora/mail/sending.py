"""Sending as a user: the one path for SMTP submission, the HTTP API and the webmail.

``send`` takes a finished message (SMTP submission hands it over as it came): the
envelope sender and every ``From:``/``Sender:`` address must be the user's (see
``check_identity``); local recipients get the message delivered at once, others go to
the outbound queue; a copy is kept in the sender's Sent folder. Every part is durable
before this returns.

``compose_and_send`` is the API's and the webmail's use case: it owns the limits of what
a user may ask for (recipients, subject, size, sender) and answers an error for anything
over them, never a shortened message.
"""

from __future__ import annotations

import asyncio
import email.errors
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.policy import default as default_policy
from email.utils import formataddr, getaddresses

from agora.core.errors import Forbidden, InvalidInput, NotFound, TooLarge
from agora.core.identity import User
from agora.core.runtime import Runtime
from agora.mail import message
from agora.mail.addresses import split
from agora.mail.store import Delivery, mail_store

log = logging.getLogger("agora.mail")

MAX_SUBJECT = 998  # RFC 5322's line limit
# Characters of To, Cc and Bcc together, per recipient mail.max_recipients allows: a long
# display name and an address fit; the text is refused beyond, before it is parsed.
RECIPIENT_CHARS = 1024
# Characters of one From: or Sender: field read for the check: a real one is a name and
# an address or two; a longer one is refused rather than parsed at length.
MAX_IDENTITY_HEADER = 2048
# The stdlib's address parser takes up to ~0.1 s per 1,000 odd characters (a run of
# quotes): a field longer than this is parsed in a worker thread, off the event loop.
INLINE_PARSE = 256
IDENTITY_HEADERS = ("from", "sender")
# Anything a reader would take for an address, "@" with or without spaces around it
# (NFKC first turns look-alikes such as the full-width "＠" into the real ones).
_ADDRESS_LIKE = re.compile(r"[^\s<>()\[\]\"',;:@]+\s*@\s*[^\s<>()\[\]\"',;:@]+")
_FIELD = re.compile(rb"^(from|sender)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I | re.M)


class UnknownRecipient(InvalidInput):
    slug, title = "unknown-recipient", "Unknown recipient"


class TooManyRecipients(InvalidInput):
    slug, title = "too-many-recipients", "Too many recipients"


class NotYourAddress(Forbidden):
    slug, title = "not-your-address", "Not one of your addresses"


@dataclass(frozen=True)
class Sent:
    delivered: list[Delivery]  # local recipients
    queued: list[str]  # remote addresses handed to the outbound queue
    queue_id: str | None
    sent_uid: int | None  # the copy in the sender's Sent folder


@dataclass
class Outgoing:
    """A message to write and send, as the API's body or the compose form gives it."""

    sender: str | None = None  # the From: header ("Name <address>"); None: the user's own address
    to: list[str] = field(default_factory=list)  # entries: 'Name <address>' or comma-separated lists
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)  # the envelope's only, never written
    subject: str = ""
    text: str = ""
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)  # (filename, type, data)


@dataclass(frozen=True)
class Composed:
    sent: Sent
    message_id: str
    recipients: list[str]  # bare addresses, To, Cc and Bcc, each once
    size: int


def size_text(value: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor:
            shown = value / factor
            return f"{shown:.0f} {unit}" if shown == int(shown) else f"{shown:.1f} {unit}"
    return f"{value} bytes"


# -- who may send as what ---------------------------------------------------------------


async def check_sender(runtime: Runtime, user: User, sender: str) -> None:
    """The envelope sender (SMTP MAIL FROM) must be an address of the user's."""
    if not await mail_store(runtime).owns_address(user, sender):
        raise NotYourAddress(f"{user.name} may not send as <{sender[:320]}>")


def identity_mailboxes(name: str, value: str) -> list[str]:
    """The addresses of a From:/Sender: field, or NotYourAddress for a field that could
    show a reader another address than the ones it holds: one that does not parse
    cleanly, and one whose display names or comments hold another address
    (``"bob@example" <alice@example>``, shown as bob by many readers)."""
    label = name.capitalize()
    if len(value) > MAX_IDENTITY_HEADER:
        raise NotYourAddress(f"{label}: longer than {MAX_IDENTITY_HEADER} characters")
    try:
        header = default_policy.header_factory(name, value)
        mailboxes: list[str] = [address.addr_spec for address in header.addresses]  # type: ignore[attr-defined]
        clean, parsed = not header.defects, str(header)
    except Exception:  # the stdlib's parser fails on some odd input in its own ways (AttributeError...)
        mailboxes, clean, parsed = [], False, ""
    if not clean or not mailboxes or any(not mailbox or mailbox == "<>" for mailbox in mailboxes):
        raise NotYourAddress(f"{label}: {value.strip()[:200]!r} is not a plain list of addresses "
                             "(write it as: Name <address>)")
    known = {mailbox.lower() for mailbox in mailboxes}
    for shown in _as_read(value, parsed):
        for token in _ADDRESS_LIKE.findall(shown):
            token = re.sub(r"\s+", "", token).lower()
            if token not in known:
                raise NotYourAddress(f"{label}: the name {token[:100]!r} looks like another address than "
                                     f"<{mailboxes[0][:320]}>")
    return mailboxes


async def mailboxes_of(name: str, value: str) -> list[str]:
    """:func:`identity_mailboxes`, in a worker thread for a long field."""
    if len(value) <= INLINE_PARSE:
        return identity_mailboxes(name, value)
    return await asyncio.to_thread(identity_mailboxes, name, value)


def _as_read(value: str, parsed: str) -> list[str]:
    """The field as readers may show it: as written, with its encoded words decoded
    (comments too), as parsed; look-alikes (a full-width "＠") folded to the real ones."""
    forms = [value, parsed]
    try:
        forms.append(str(make_header(decode_header(value))))
    except Exception:  # as above: an encoded word the stdlib cannot decode is shown as written
        pass
    return [unicodedata.normalize("NFKC", form) for form in forms]


async def check_identity(runtime: Runtime, user: User, sender: str, raw: bytes) -> None:
    """The one sender check of every path: the envelope sender and each address of the
    message's From: and Sender: fields are the user's (own, alias, or allowed by an admin)."""
    await check_sender(runtime, user, sender)
    store = mail_store(runtime)
    # Finding the header's end is a memchr; the fields' scan is bounded by the header only.
    fields = identity_fields(raw) if len(raw) <= 64 * 1024 else await asyncio.to_thread(identity_fields, raw)
    for name, value in fields:
        for mailbox in await mailboxes_of(name, value):
            if not await store.owns_address(user, mailbox):
                raise NotYourAddress(f"{user.name} may not send as {name.capitalize()}: <{mailbox[:320]}>")


def identity_fields(raw: bytes) -> list[tuple[str, str]]:
    """(``from``/``sender``, unfolded value) of each such field of the message's header."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = raw if end < 0 else raw[:end + 2]
    if head.startswith((b"\r\n", b"\n")):
        return []
    fields = []
    for match in _FIELD.finditer(head):
        value = match.group(2)
        if len(value) > 4 * MAX_IDENTITY_HEADER:  # folding included; refused unparsed
            value = value[:4 * MAX_IDENTITY_HEADER + 1]
        text = re.sub(r"\r?\n(?=[ \t])", "", value.decode("utf-8", "replace"))
        fields.append((match.group(1).decode("ascii").lower(), text.strip()))
    return fields


# -- sending a finished message ---------------------------------------------------------


async def route(runtime: Runtime, recipients: list[str]) -> tuple[list[str], list[str]]:
    """(local user names, remote addresses); UnknownRecipient for an unknown local address."""
    store = mail_store(runtime)
    local: list[str] = []
    remote: list[str] = []
    for address in recipients:
        _, domain = split(address)
        if store.is_local_domain(domain):
            name = await store.resolve(address)
            if name is None:
                raise UnknownRecipient(f"no mailbox {address}")
            local.append(name)
        else:
            remote.append(address)
    return local, remote


async def send(runtime: Runtime, user: User, sender: str, recipients: list[str], raw: bytes, *,
               keep_copy: bool = True, dedupe_key: str | None = None) -> Sent:
    if not recipients:
        raise InvalidInput("no recipients")
    await check_identity(runtime, user, sender, raw)
    local, remote = await route(runtime, recipients)
    store = mail_store(runtime)
    delivered = await store.deliver(local, raw, dedupe_key=dedupe_key) if local else []
    queue_id = None
    if remote:
        from agora.mail.outbound import outbound_queue

        queue_id = await outbound_queue(runtime).enqueue(sender, remote, raw, dedupe_key=dedupe_key)
    sent_uid = None
    if keep_copy:
        # The message has gone out: a full Sent folder must not turn that into an error
        # the client would answer by sending it again.
        try:
            _, sent_uid = await store.append(user, "Sent", raw, flags=("\\Seen",))
        except TooLarge as error:
            log.warning("no Sent copy for %s: %s", user.name, error)
    return Sent(delivered, remote, queue_id, sent_uid)


# -- writing and sending: the API's and the webmail's use case ---------------------------


def recipients_of(entries: list[str], what: str) -> list[tuple[str, str]]:
    """(header form, bare address) of every address in the entries, in order; InvalidInput
    naming the field for a bad one."""
    found = []
    for entry in entries:
        pairs = [(name, address) for name, address in getaddresses([entry]) if address]
        if entry.strip() and not pairs:
            raise InvalidInput(f"{what}: {entry.strip()[:100]!r} is not a mail address")
        for name, address in pairs:
            try:
                split(address)
            except InvalidInput:
                raise InvalidInput(f"{what}: {address[:100]!r} is not a mail address") from None
            found.append((formataddr((name, address)) if name else address, address))
    return found


def _parse_recipients(outgoing: Outgoing) -> tuple[list[tuple[str, str]], ...]:
    return (recipients_of(outgoing.to, "To"), recipients_of(outgoing.cc, "Cc"),
            recipients_of(outgoing.bcc, "Bcc"))


async def compose_and_send(runtime: Runtime, user: User, outgoing: Outgoing) -> Composed:
    config = runtime.config.mail
    limit, most = config.max_message, config.max_recipients
    chars = sum(len(entry) for entry in (*outgoing.to, *outgoing.cc, *outgoing.bcc))
    if chars > most * RECIPIENT_CHARS:
        raise TooManyRecipients(f"To, Cc and Bcc hold {chars} characters, more than {most} recipients "
                                f"need (at most {most} recipients: mail.max_recipients)")
    to, cc, bcc = await asyncio.to_thread(_parse_recipients, outgoing)
    recipients = list(dict.fromkeys(address for _, address in to + cc + bcc))
    if not recipients:
        raise InvalidInput("add at least one recipient (To, Cc or Bcc)")
    if len(recipients) > most:
        raise TooManyRecipients(f"{len(recipients)} recipients: at most {most} per message (mail.max_recipients)")
    if len(outgoing.subject) > MAX_SUBJECT:
        raise InvalidInput(f"Subject: longer than {MAX_SUBJECT} characters")
    header_from = (outgoing.sender or "").strip() or mail_store(runtime).address_of(user)
    mailboxes = await mailboxes_of("from", header_from)
    for mailbox in mailboxes:
        await check_sender(runtime, user, mailbox)
    sender = mailboxes[0]  # the envelope's
    await route(runtime, recipients)
    if sum(len(data) for _, _, data in outgoing.attachments) > limit:
        raise TooLarge(f"the attachments are larger than the limit of {size_text(limit)} per message "
                       "(mail.max_message)")
    try:
        raw = await asyncio.to_thread(lambda: message.compose(
            sender=header_from, to=[h for h, _ in to], cc=[h for h, _ in cc], bcc=[h for h, _ in bcc],
            subject=outgoing.subject, text=outgoing.text, attachments=outgoing.attachments,
            in_reply_to=outgoing.in_reply_to, references=outgoing.references, domain=split(sender)[1]))
    except (ValueError, TypeError, UnicodeError, email.errors.MessageError) as error:
        # The stdlib refuses what it cannot write as a header (a line break in the subject...).
        raise InvalidInput(f"the message cannot be written: {error}") from None
    if len(raw) > limit:
        raise TooLarge(f"with its attachments encoded the message is {size_text(len(raw))}, over the limit of "
                       f"{size_text(limit)} (mail.max_message): send fewer or smaller files")
    try:
        sent = await send(runtime, user, sender, recipients, raw)
    except NotFound as error:  # a recipient's account went away meanwhile
        raise UnknownRecipient(error.detail) from None
    message_ids = message.header_values(raw, "message-id")
    return Composed(sent, message_ids[0] if message_ids else "", recipients, len(raw))
