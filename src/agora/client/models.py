"""The API's JSON documents as frozen dataclasses, timestamps parsed to aware datetimes.

Fields the server adds later are ignored, so an older client keeps working against a
newer server.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from typing import Any, TypeVar

M = TypeVar("M")


@cache
def _datetime_fields(cls: type) -> frozenset[str]:
    names = set()
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if datetime in args:
            names.add(name)
    return frozenset(names)


def parse_datetime(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    # The server always sends UTC; a bare timestamp from elsewhere is taken as UTC too,
    # so that comparisons with aware datetimes never raise.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@cache
def _init_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    """(name, is a timestamp) of each field ``cls`` takes: worked out once per class,
    not once per object (a batch's answer decodes hundreds)."""
    stamps = _datetime_fields(cls)
    return tuple((f.name, f.name in stamps) for f in dataclasses.fields(cls) if f.init)  # type: ignore[arg-type]


def from_json(cls: type[M], data: Any, **extra: Any) -> M:
    """Build dataclass ``cls`` from a decoded JSON object (``extra``: fields set by the
    client itself)."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    values = {}
    for name, stamp in _init_fields(cls):
        if name in data:
            value = data[name]
            values[name] = parse_datetime(value) if stamp and isinstance(value, str) else value
    values.update(extra)
    return cls(**values)


@dataclass(frozen=True)
class User:
    name: str
    role: str
    disabled: bool
    quota_bytes: int
    created_at: datetime
    updated_at: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Token:
    id: str
    name: str
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked: bool = False


@dataclass(frozen=True)
class NewToken(Token):
    """A token just created: the only time its secret is known."""

    # Kept out of repr so that logging the object does not leak the secret.
    token: str = field(default="", repr=False)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    action: str
    outcome: str
    actor: str | None = None
    target: str | None = None
    protocol: str | None = None
    client_addr: str | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    next: int | None
    """Pass as ``before`` to get the next (older) page; None on the last page."""


@dataclass(frozen=True)
class Health:
    status: str
    checks: dict[str, str] = field(default_factory=dict)
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# -- files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    name: str
    path: str
    type: str  # "file" or "dir"
    size: int
    mtime: datetime
    etag: str = ""

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"


@dataclass(frozen=True)
class Listing:
    path: str
    entries: list[FileEntry]


@dataclass(frozen=True)
class Usage:
    used: int
    quota: int


@dataclass(frozen=True)
class Share:
    id: str
    path: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked: bool = False
    active: bool = True
    password: bool = False
    downloads: int = 0


@dataclass(frozen=True)
class NewShare(Share):
    """A share link just created: the only time its URL is known."""

    # The URL carries the secret: kept out of repr like a token.
    token: str = field(default="", repr=False)
    url: str = field(default="", repr=False)


@dataclass(frozen=True)
class TransferProgress:
    """Where one file's transfer is, as passed to a ``progress`` callback."""

    remote: str
    local: str
    done: int  # bytes of the file in place so far, resumed ones included
    total: int | None
    resumed_from: int = 0  # bytes kept from an earlier, interrupted transfer


# -- mail -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MailFolder:
    name: str
    special_use: str | None = None  # "\\Sent", "\\Drafts", "\\Trash", "\\Junk" or None
    messages: int = 0
    unseen: int = 0
    size: int = 0
    subscribed: bool = True


@dataclass(frozen=True)
class MailSummary:
    """One row of a folder's listing. ``uid`` names it in its folder."""

    uid: int
    subject: str
    from_: str  # "from" in the JSON
    to: str
    date: datetime | None
    received: datetime
    flags: list[str]
    seen: bool
    flagged: bool
    answered: bool
    size: int
    has_attachments: bool


@dataclass(frozen=True)
class MailPage:
    folder: str
    uidvalidity: int
    total: int
    messages: list[MailSummary]  # newest first
    next_before_uid: int | None
    """Pass as ``before_uid`` for the next (older) page; None on the last page."""


@dataclass(frozen=True)
class MailAttachment:
    index: int
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class MailMessage(MailSummary):
    """A message as read: its headers, text, sanitised HTML and attachments' list."""

    folder: str = ""
    cc: str = ""
    message_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    text: str | None = None
    html: str | None = None
    attachments: list[MailAttachment] = field(default_factory=list)


@dataclass(frozen=True)
class SentMail:
    message_id: str
    delivered: list[str]  # local recipients: in their mailboxes
    queued: list[str]  # recipients elsewhere: in the outbound queue
    sent_uid: int | None = None  # the copy in the Sent folder
    size: int = 0


@dataclass(frozen=True)
class MovedMail:
    folder: str
    uid: int  # in the destination folder
    uidvalidity: int


@dataclass(frozen=True)
class DeletedMail:
    expunged: bool  # True: it was in Trash and is gone; False: moved to Trash
    folder: str | None = None
    uid: int | None = None


@dataclass(frozen=True)
class MailQuota:
    used: int
    limit: int


@dataclass(frozen=True)
class MailAlias:
    address: str  # "sales@example.org", or "@example.org" for the catch-all
    user: str
    created_at: datetime


@dataclass(frozen=True)
class MailSender:
    """An address (or ``*@domain`` pattern) an admin allowed a user to send as."""

    user: str
    pattern: str
    created_at: datetime


# -- bank -----------------------------------------------------------------------------
# Amounts are integers in the currency's minor units (cents for EUR, yen for JPY);
# agora.client.bank.format_amount/parse_amount convert them to and from decimal text.


@dataclass(frozen=True)
class Currency:
    code: str  # "EUR"
    exponent: int  # digits after the decimal point: 2 for EUR, 0 for JPY
    issuance_account: str | None = None  # the system account new money comes from
    issued: int = 0  # all money issued so far, in minor units


@dataclass(frozen=True)
class BankAccount:
    number: str  # "7KQ2-9XMD-R4TB-0HNE"
    currency: str
    name: str = ""
    posted: int = 0  # the sum of the account's posted transfers ("balance.posted" in the JSON)
    available: int = 0  # posted minus pending debits: what can still be spent
    pending_debits: int = 0
    pending_credits: int = 0
    owner: str | None = None  # None for a currency's issuance account
    system: bool = False
    closed: bool = False
    created_at: datetime | None = None
    closed_at: datetime | None = None


@dataclass(frozen=True)
class BankBalance:
    number: str
    currency: str
    posted: int
    available: int


@dataclass(frozen=True)
class BankTransfer:
    """An immutable transfer. ``kind``: "transfer", "issue", "pending" (reserves the
    amount), or "post"/"void"/"expire" (resolves the pending transfer ``pending_id``)."""

    id: str
    debit: str
    credit: str
    amount: int
    currency: str
    memo: str = ""
    kind: str = "transfer"
    pending: bool = False
    timeout: int | None = None  # seconds a pending transfer waits before it expires
    pending_id: str | None = None
    timestamp: datetime | None = None
    state: str | None = None  # of a pending transfer read back: "pending", "posted", "voided" or "expired"
    # Set by the client, not the server: False when the server answered with a transfer
    # already committed under this id (a retry), True when this call created it.
    created: bool = True


@dataclass(frozen=True)
class StatementEntry:
    """One transfer seen from the account: ``amount`` is signed (credit +, debit -),
    ``effect`` what it did to the posted balance (0 for a pending one or a void), and
    ``balance`` the posted balance right after it."""

    id: str
    kind: str
    amount: int
    balance: int
    effect: int = 0
    counterparty: str = ""
    memo: str = ""
    pending_id: str | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class StatementPage:
    account: str
    currency: str
    entries: list[StatementEntry]
    next: str | None = None
    """Pass as ``cursor`` for the next page ("next_cursor" in the JSON); None on the last page."""


@dataclass(frozen=True)
class LedgerCheck:
    """The admin's invariant check: ``problems`` is empty when the ledger is sound."""

    ok: bool
    problems: list[str] = field(default_factory=list)
