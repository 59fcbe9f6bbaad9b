"""SQL errors with the SQLSTATE code PostgreSQL would give, mapped from SQLite's.

Every protocol reports the same code: HTTP in its problem document, the wire protocol
in its ErrorResponse.
"""

from __future__ import annotations

import apsw

from agora.core.errors import AgoraError

# SQLite extended constraint codes -> SQLSTATE (class 23: integrity constraint violation)
_CONSTRAINTS = {
    apsw.SQLITE_CONSTRAINT_UNIQUE: "23505",
    apsw.SQLITE_CONSTRAINT_PRIMARYKEY: "23505",
    apsw.SQLITE_CONSTRAINT_NOTNULL: "23502",
    apsw.SQLITE_CONSTRAINT_FOREIGNKEY: "23503",
    apsw.SQLITE_CONSTRAINT_CHECK: "23514",
}

# Plain SQLITE_ERROR covers every mistake in a statement; its message says which.
_MESSAGES = (
    ("no such table", "42P01"),
    ("no such view", "42P01"),
    ("no such column", "42703"),
    ("no such function", "42883"),
    ("syntax error", "42601"),
    ("incomplete input", "42601"),
    ("unrecognized token", "42601"),
    ("already exists", "42P07"),
    ("no such index", "42704"),
    ("no such savepoint", "3B001"),
    ("cannot start a transaction within a transaction", "25001"),
    ("cannot commit - no transaction is active", "25000"),
    ("not authorized", "42501"),
    ("too many sql variables", "54023"),
    ("wrong number of arguments", "42883"),
    ("datatype mismatch", "42804"),
    ("cannot store", "42804"),
    ("integer overflow", "22003"),  # abs(), sum() beyond 64 bits: PostgreSQL's out of range
)

_CLASSES = (
    (apsw.AuthError, "42501"),
    (apsw.ReadOnlyError, "42501"),
    (apsw.FullError, "53100"),
    (apsw.InterruptError, "57014"),
    (apsw.BusyError, "55P03"),
    (apsw.LockedError, "55P03"),
    (apsw.TooBigError, "54000"),
    (apsw.MismatchError, "42804"),
    (apsw.RangeError, "22023"),
    (apsw.BindingsError, "08P01"),
    (apsw.CorruptError, "XX001"),
    (apsw.IOError, "58030"),
    (apsw.ConstraintError, "23000"),
)


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


def sqlstate_of(error: Exception) -> str:
    if isinstance(error, apsw.ConstraintError):
        return _CONSTRAINTS.get(getattr(error, "extendedresult", 0), "23000")
    for cls, code in _CLASSES:
        if isinstance(error, cls):
            return code
    if isinstance(error, apsw.SQLError):
        message = str(error).lower()
        for needle, code in _MESSAGES:
            if needle in message:
                return code
        return "42000"
    return "XX000"


def translate(error: Exception) -> SQLError:
    """The SQLError for an exception raised by apsw/SQLite."""
    code = sqlstate_of(error)
    message = str(error)
    # apsw prefixes "SQLError: " etc.; the client wants SQLite's own words.
    if ": " in message and message.split(": ", 1)[0].endswith("Error"):
        message = message.split(": ", 1)[1]
    if code in ("42501",):
        return SQLDenied(message, code)
    return SQLError(message, code)
