"""The files service's tables in the metadata database (the trees themselves are on disk)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, String, Table, Text

from agora.core.tables import UTCDateTime, metadata

share_links = Table(
    "share_links", metadata,
    Column("id", String(16), primary_key=True),  # public id, for listing and revoking
    Column("token_hash", String(64), nullable=False, unique=True),  # SHA-256 of the URL secret
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),  # virtual path in the owner's tree
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("password_hash", String(255), nullable=True),  # argon2id, when the link has a password
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("downloads", BigInteger, nullable=False, server_default="0"),
    Index("ix_share_links_user_id", "user_id"),
)

site_settings = Table(
    "site_settings", metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("listings", Integer, nullable=False, server_default="0"),  # 1: list folders without index.html
)
