"""SQL errors with PostgreSQL's SQLSTATE code.

Every protocol reports the same code: HTTP in its problem document, the wire protocol
(a pass-through to the engine) in PostgreSQL's own ErrorResponse.
"""

from __future__ import annotations

from agora.core.errors import AgoraError


class SQLError(AgoraError):
    """A statement failed; ``sqlstate`` is PostgreSQL's code for it (e.g. 42P01)."""

    slug, title = "sql-error", "SQL error"

    def __init__(self, detail: str, sqlstate: str = "XX000", *, index: int | None = None):
        super().__init__(detail)
        self.sqlstate = sqlstate
        # In a batch: which statement (0-based) failed.
        self.index = index


class SQLTimeout(SQLError):
    slug, title = "sql-timeout", "Query time limit"


class SQLDenied(SQLError):
    slug, title = "sql-denied", "Not allowed in a hosted database"


def from_engine(error: Exception, *, index: int | None = None) -> SQLError:
    """The SQLError for an error the engine reported (psycopg's or asyncpg's)."""
    code = getattr(error, "sqlstate", None) or "XX000"
    diag = getattr(error, "diag", None)
    message = (getattr(diag, "message_primary", None) if diag is not None else None) \
        or getattr(error, "message", None) or str(error).strip()
    if code == "42501":
        return SQLDenied(message, code, index=index)
    if code == "57014":
        return SQLTimeout(message, code, index=index)
    return SQLError(message, code, index=index)
