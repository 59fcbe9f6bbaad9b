"""WebDAV's state in the metadata database: dead properties and write locks.

Both are keyed by user and virtual path, so every node of a scale-out sees the same
locks and properties. Paths can be long (1024 characters of UTF-8), more than a
PostgreSQL index entry holds, so rows are found by the SHA-256 of the path and the
path itself is kept for subtree moves and deletes.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, Text

from agora.core.tables import UTCDateTime, metadata

dav_properties = Table(
    "dav_properties", metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("path_hash", String(64), primary_key=True),  # sha256 of the virtual path
    Column("path", Text, nullable=False),
    # JSON object: Clark name ("{namespace}name") -> the property element as XML text.
    Column("props", Text, nullable=False),
)

dav_locks = Table(
    "dav_locks", metadata,
    Column("token", String(64), primary_key=True),  # opaquelocktoken:<uuid>
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),  # the lock root, virtual
    Column("depth", String(8), nullable=False),  # "0" or "infinity"
    Column("scope", String(9), nullable=False),  # "exclusive" or "shared"
    Column("owner", Text, nullable=False),  # the client's <owner> content, as XML text
    Column("timeout", Integer, nullable=False),  # seconds granted at the last LOCK
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_dav_locks_user_id", "user_id"),
)
