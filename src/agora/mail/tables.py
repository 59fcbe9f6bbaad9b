"""The mail service's tables in the metadata database. Message bodies live in Maildirs
on disk; here are what IMAP needs to be stable: folders, UIDs, flags and mod-sequences,
plus aliases, senders allowed by an admin, the dedupe record of recent deliveries and the outbound queue."""

from __future__ import annotations

from sqlalchemy import (BigInteger, Column, ForeignKey, Index, Integer, String, Table, Text,
                        UniqueConstraint)

from agora.core.tables import UTCDateTime, metadata

mail_folders = Table(
    "mail_folders", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),  # "INBOX", "Sent", "Archive.2024" (delimiter ".")
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uidnext", BigInteger, nullable=False),
    Column("highestmodseq", BigInteger, nullable=False),
    Column("subscribed", Integer, nullable=False, server_default="1"),
    Column("special_use", String(16), nullable=True),  # "\\Sent", "\\Trash"...
    UniqueConstraint("user_id", "name", name="uq_mail_folders_user_name"),
)

mail_messages = Table(
    "mail_messages", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("folder_id", Integer, ForeignKey("mail_folders.id", ondelete="CASCADE"), nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("modseq", BigInteger, nullable=False),
    # The Maildir base name (before ":2,"): unique in its folder, so two nodes indexing
    # the same file cannot give it two UIDs.
    Column("name", String(255), nullable=False),
    Column("filename", Text, nullable=False),  # where it is now: "new/<name>" or "cur/<name>:2,FS"
    Column("flags", Text, nullable=False, server_default=""),  # space-separated IMAP flags
    Column("internaldate", UTCDateTime, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("summary", Text, nullable=False),  # message.Summary as JSON (envelope, structure)
    UniqueConstraint("folder_id", "uid", name="uq_mail_messages_folder_uid"),
    UniqueConstraint("folder_id", "name", name="uq_mail_messages_folder_name"),
    Index("ix_mail_messages_folder_modseq", "folder_id", "modseq"),
)

# Expunged UIDs with the mod-sequence of their expunge, so that a session learns which of
# its messages went since it last looked.
mail_expunged = Table(
    "mail_expunged", metadata,
    Column("folder_id", Integer, ForeignKey("mail_folders.id", ondelete="CASCADE"), nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("modseq", BigInteger, nullable=False),
    Index("ix_mail_expunged_folder_modseq", "folder_id", "modseq"),
)

mail_aliases = Table(
    "mail_aliases", metadata,
    # "sales@example.org", or "@example.org" for a domain's catch-all; lower-case
    Column("address", String(320), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# Addresses an admin lets a user send as beyond their own and their aliases' (an
# outside address of theirs, a shared mailbox): "news@example.org", or "*@example.org"
# for every address of a domain; lower-case.
mail_senders = Table(
    "mail_senders", metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("pattern", String(320), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
)

# A message delivered to a user recently, by digest: an SMTP client that retries after a
# temporary error does not get the copies already made delivered twice.
mail_deliveries = Table(
    "mail_deliveries", metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("digest", String(64), primary_key=True),
    Column("delivered_at", UTCDateTime, nullable=False),
    Index("ix_mail_deliveries_delivered_at", "delivered_at"),
)

# Outbound mail waiting for another server; the message itself is a file in
# DATA_DIR/mail-queue/<id>.eml, written and fsynced before its row is committed.
mail_queue = Table(
    "mail_queue", metadata,
    Column("id", String(32), primary_key=True),
    Column("sender", Text, nullable=False),  # envelope sender ("" for a bounce)
    Column("recipients", Text, nullable=False),  # JSON list of the addresses still to do
    Column("created_at", UTCDateTime, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("claimed_until", UTCDateTime, nullable=True),  # a node working on it
    Index("ix_mail_queue_next_attempt_at", "next_attempt_at"),
)
