"""The metadata database's tables (SQLAlchemy Core), as the migrations leave them.

Services define their own tables in their own modules on this same ``metadata``.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (BigInteger, Boolean, Column, DateTime, Float, ForeignKey, Index, Integer,
                        MetaData, String, Table, Text)
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# How UTCDateTime's values are stored on SQLite (SQLAlchemy's format, naive UTC), for the
# hot writers that skip SQLAlchemy there (bank/sqlite_batch.py, mail/delivery_commit.py).
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def sqlite_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(SQLITE_TIME)


def from_sqlite_time(text: str) -> datetime:
    return datetime.strptime(text, SQLITE_TIME).replace(tzinfo=timezone.utc)


users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(32), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    # SCRAM-SHA-256 verifier (core/scram.py) for protocols that need one; NULL until made.
    Column("scram_verifier", String(255), nullable=True),
    # Bumped with every password change: a session that logged in at another generation
    # ends (core/sessions.py).
    Column("generation", Integer, nullable=False, server_default="0"),
    Column("role", String(8), nullable=False, server_default="user"),
    Column("disabled", Boolean, nullable=False, server_default="0"),
    Column("quota_bytes", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("id", String(16), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    # SHA-256 of the secret: the secret has 256 random bits, so a fast hash is enough
    # and lets the lookup be one indexed equality.
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Index("ix_tokens_user_id", "user_id"),
)

sessions = Table(
    "sessions", metadata,
    Column("secret_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("client_addr", String(64), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_sessions_user_id", "user_id"),
)

session_watchers = Table(
    "session_watchers", metadata,
    # One row per serving process (core/sessions.py): when it last re-read the accounts
    # of its open sessions, and how often it does (a row far behind is a dead node's).
    Column("node", String(32), primary_key=True),
    Column("checked_at", UTCDateTime, nullable=False),
    Column("every_seconds", Float, nullable=False),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(64), nullable=True),
    Column("action", String(64), nullable=False),
    Column("target", String(255), nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("protocol", String(16), nullable=True),
    Column("client_addr", String(64), nullable=True),
    Column("details", Text, nullable=True),
    Index("ix_audit_log_at", "at"),
)
