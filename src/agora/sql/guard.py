"""Opening a hosted database so that a query reaches nothing outside it.

Layers, each enough on its own for what it covers:
- The connection: extensions never enabled; SQLite's defensive mode (no writable_schema,
  no raw page writes); no attached databases (LIMIT_ATTACHED 0); untrusted schema (a
  function in a view or trigger cannot run with more rights than the querying user);
  double-quoted strings are identifiers only, as in PostgreSQL.
- The authorizer, consulted by SQLite for every action of every statement it compiles:
  ATTACH/DETACH, load_extension and other dangerous functions, virtual tables other
  than the full-text and R-tree ones, and every PRAGMA outside a read-only allow-list
  are denied; with read access, every write is denied as well (and ``query_only`` is set).
- Size: ``max_page_count`` caps the file, and the temporary tables (a write beyond
  fails with SQLITE_FULL).
"""

from __future__ import annotations

from pathlib import Path

import apsw

# PRAGMAs a client may run, and only to read (no "= value" argument): schema
# introspection and checks, all answered from this database alone.
READ_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
    "page_count", "page_size", "freelist_count", "user_version", "schema_version",
    "encoding", "foreign_keys", "collation_list", "function_list", "module_list",
    "pragma_list", "data_version", "application_id", "max_page_count", "journal_mode",
    "query_only", "compile_options",
})
# PRAGMAs that take an argument without setting anything (the argument names a table).
ARGUMENT_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
})
DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "sqlite_dbpage", "readfile", "writefile", "edit"})
ALLOWED_MODULES = frozenset({"fts3", "fts4", "fts5", "rtree", "rtree_i32", "geopoly", "fts5vocab", "fts4aux"})
# Eponymous virtual tables that read outside the database's own rows.
DENIED_TABLES = frozenset({"sqlite_dbpage", "sqlite_dbdata", "sqlite_dbptr", "dbstat", "fts3tokenize"})

_WRITES = frozenset({
    apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE, apsw.SQLITE_CREATE_INDEX,
    apsw.SQLITE_CREATE_TABLE, apsw.SQLITE_CREATE_TEMP_INDEX, apsw.SQLITE_CREATE_TEMP_TABLE,
    apsw.SQLITE_CREATE_TEMP_TRIGGER, apsw.SQLITE_CREATE_TEMP_VIEW, apsw.SQLITE_CREATE_TRIGGER,
    apsw.SQLITE_CREATE_VIEW, apsw.SQLITE_DROP_INDEX, apsw.SQLITE_DROP_TABLE,
    apsw.SQLITE_DROP_TEMP_INDEX, apsw.SQLITE_DROP_TEMP_TABLE, apsw.SQLITE_DROP_TEMP_TRIGGER,
    apsw.SQLITE_DROP_TEMP_VIEW, apsw.SQLITE_DROP_TRIGGER, apsw.SQLITE_DROP_VIEW,
    apsw.SQLITE_ALTER_TABLE, apsw.SQLITE_REINDEX, apsw.SQLITE_ANALYZE,
    apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_DROP_VTABLE,
})
OK, DENY = apsw.SQLITE_OK, apsw.SQLITE_DENY


def authorizer(read_only: bool):
    """SQLite's authorizer callback for a connection with the given access."""

    def authorize(action: int, one: str | None, two: str | None, database: str | None,
                  _trigger: str | None) -> int:
        if database not in (None, "main", "temp"):
            return DENY
        if action in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
            return DENY
        if action == apsw.SQLITE_PRAGMA:
            name = (one or "").lower()
            if name not in READ_PRAGMAS or two is not None and name not in ARGUMENT_PRAGMAS:
                return DENY
            return OK
        if action == apsw.SQLITE_FUNCTION:
            return DENY if (two or "").lower() in DENIED_FUNCTIONS else OK
        if action == apsw.SQLITE_READ and (one or "").lower() in DENIED_TABLES:
            return DENY
        if action in (apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_DROP_VTABLE) and (two or "").lower() not in ALLOWED_MODULES:
            return DENY
        if read_only and action in _WRITES:
            return DENY
        return OK

    return authorize


def open_database(path: Path, *, read_only: bool, create: bool, max_bytes: int,
                  lock_timeout: float, max_value: int, max_sql: int, mmap_size: int = 0) -> apsw.Connection:
    """A connection to one hosted database file, locked down (see the module doc)."""
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_NOFOLLOW
    if create:
        flags |= apsw.SQLITE_OPEN_CREATE
    conn = apsw.Connection(str(path), flags=flags)
    try:
        conn.enable_load_extension(False)
        for option, value in ((apsw.SQLITE_DBCONFIG_DEFENSIVE, 1), (apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0),
                              (apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0),
                              (apsw.SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, 0),
                              (apsw.SQLITE_DBCONFIG_ENABLE_ATTACH_CREATE, 0),
                              (apsw.SQLITE_DBCONFIG_ENABLE_ATTACH_WRITE, 0),
                              (apsw.SQLITE_DBCONFIG_DQS_DDL, 0), (apsw.SQLITE_DBCONFIG_DQS_DML, 0),
                              (apsw.SQLITE_DBCONFIG_ENABLE_FKEY, 1)):
            conn.config(option, value)
        conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
        conn.limit(apsw.SQLITE_LIMIT_LENGTH, max_value)
        conn.limit(apsw.SQLITE_LIMIT_SQL_LENGTH, max_sql)
        conn.set_busy_timeout(int(lock_timeout * 1000))
        # WAL: readers never block the writer; FULL: every commit is fsynced before it
        # returns, so a row the client was told about survives a crash.
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("PRAGMA synchronous=FULL")
        # Pages read through the mapping cost no system call (a point select on a cold
        # page otherwise makes a pread); writes still go through the WAL.
        conn.execute(f"PRAGMA mmap_size={int(mmap_size)}").fetchall()
        page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
        pages = max(1, max_bytes // page_size)
        conn.execute(f"PRAGMA max_page_count={pages}").fetchall()
        # Temporary tables count too: they live in files outside the data dir.
        conn.execute(f"PRAGMA temp.max_page_count={pages}").fetchall()
        if read_only:
            conn.execute("PRAGMA query_only=1")
        conn.authorizer = authorizer(read_only)
    except BaseException:
        conn.close()
        raise
    return conn
