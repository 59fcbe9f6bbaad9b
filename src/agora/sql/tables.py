"""The hosted-SQL catalogue in the metadata database: which databases exist, who owns
them and who else may use them. The databases themselves are PostgreSQL databases on the
engine (engine.py), their grants mirrored onto PostgreSQL's (grants.py)."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, UniqueConstraint

from agora.core.tables import UTCDateTime, metadata

sql_databases = Table(
    "sql_databases", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Rows go with their owner (ON DELETE CASCADE); the files go by the deletion hook.
    Column("owner_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("owner_id", "name", name="uq_sql_databases_owner_name"),
)

sql_grants = Table(
    "sql_grants", metadata,
    Column("database_id", Integer, ForeignKey("sql_databases.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("access", String(8), nullable=False),  # "read" | "write"
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_sql_grants_user", "user_id"),
)
