"""Reading SQL text before SQLite does: splitting a script into statements, the leading
keywords (for command tags and transaction control), and the PostgreSQL spellings that
SQLite would misread.

PostgreSQL compatibility (both the HTTP API and the wire protocol get it):
- ``$1``, ``$2``... are positional parameters. SQLite reads ``$1`` as a *named*
  parameter numbered by first appearance, so ``SELECT $2, $1`` would swap them: they
  are rewritten to ``?1``, ``?2``.
- ``expr::type`` casts (drivers such as SQLAlchemy's psycopg dialect add them to every
  parameter) are dropped: SQLite has no ``::`` and its values carry their own types.
Strings, quoted identifiers and comments are left untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import apsw

from agora.sql.errors import SQLError

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DIGITS = re.compile(r"[0-9]+")
_SPACE = re.compile(r"\s*")
# Up to four words with only spaces and '(' around them: _keywords' quick path.
_FOUR_WORDS = re.compile(rf"[\s(]*({_WORD.pattern})" + rf"(?:[\s(]+({_WORD.pattern}))?" * 3 + r"[\s(]*")
# What _rewrite acts on: text with none of these (most statements a client builds with
# its values inline) is SQLite's as it stands, and holds one statement.
_REWRITE_SIGNS = re.compile(r"[$:;\-/]")
# Multi-word PostgreSQL type names whose later words must go with a dropped cast.
_TYPE_TAILS = {
    "double": ("precision",), "character": ("varying",), "bit": ("varying",),
    "timestamp": ("with", "without", "time", "zone"), "time": ("with", "without", "time", "zone"),
}
_CLOSERS = {"'": "'", '"': '"', "`": "`", "[": "]"}


@dataclass(frozen=True)
class Statement:
    sql: str  # what SQLite is given
    keywords: tuple[str, ...]  # the first few keywords, upper-case ("INSERT", "INTO")


def _skip_quoted(sql: str, i: int) -> int:
    """Index just past the literal/identifier opening at ``i``."""
    close = _CLOSERS[sql[i]]
    j = i + 1
    while True:
        k = sql.find(close, j)
        if k < 0:
            return len(sql)
        if close != "]" and sql.startswith(close * 2, k):
            j = k + 2  # doubled quote inside
            continue
        return k + 1


def _skip_comment(sql: str, i: int) -> int:
    if sql.startswith("--", i):
        k = sql.find("\n", i)
        return len(sql) if k < 0 else k + 1
    k = sql.find("*/", i + 2)
    return len(sql) if k < 0 else k + 2


def _skip_cast(sql: str, i: int) -> int:
    """``i`` is just past ``::``; the index past the type name that follows."""
    i = _SPACE.match(sql, i).end()
    while True:  # a dotted name: pg_catalog.int4, "public"."t"
        if i < len(sql) and sql[i] == '"':
            i = _skip_quoted(sql, i)
        else:
            m = _WORD.match(sql, i)
            if not m:
                return i
            i = m.end()
            tails = _TYPE_TAILS.get(m.group().lower(), ())
            while tails:
                n = _WORD.match(sql, _SPACE.match(sql, i).end())
                if not n or n.group().lower() not in tails:
                    break
                i = n.end()
        if i < len(sql) and sql[i] == ".":
            i += 1
            continue
        break
    while True:
        j = _SPACE.match(sql, i).end()
        if sql.startswith("(", j):
            k = sql.find(")", j)
            i = len(sql) if k < 0 else k + 1
        elif sql.startswith("[]", j):
            i = j + 2
        else:
            return i


def _rewrite(sql: str) -> tuple[str, list[int]]:
    """SQLite's spelling of ``sql`` and the offsets of its top-level semicolons."""
    if not _REWRITE_SIGNS.search(sql):
        return sql, []
    return _scan_rewrite(sql)


def _scan_rewrite(sql: str) -> tuple[str, list[int]]:
    """_rewrite the long way, character by character."""
    out: list[str] = []
    semicolons: list[int] = []
    start = i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c in _CLOSERS:
            i = _skip_quoted(sql, i)
        elif c == "-" and sql.startswith("--", i) or c == "/" and sql.startswith("/*", i):
            i = _skip_comment(sql, i)
        elif c == "$" and (m := _DIGITS.match(sql, i + 1)):
            out.append(sql[start:i])
            out.append("?" + m.group())
            start = i = m.end()
        elif c == ":" and sql.startswith("::", i):
            out.append(sql[start:i])
            start = i = _skip_cast(sql, i + 2)
        elif c == ";":
            semicolons.append(sum(map(len, out)) + (i - start))
            i += 1
        else:
            i += 1
    out.append(sql[start:])
    return "".join(out), semicolons


def _keywords(sql: str, count: int = 4) -> tuple[str, ...]:
    """The first ``count`` words, upper-cased, past spaces, parentheses and comments."""
    if count == 4 and (plain := _FOUR_WORDS.match(sql)):
        # One regex call for the usual case; a comment among the words takes the long way.
        if plain.lastindex == 4 or sql[plain.end():plain.end() + 1] not in ("-", "/"):
            return tuple(word.upper() for word in plain.groups() if word)
    return _scan_keywords(sql, count)


def _scan_keywords(sql: str, count: int) -> tuple[str, ...]:
    """_keywords the long way, character by character."""
    words: list[str] = []
    i, n = 0, len(sql)
    while i < n and len(words) < count:
        c = sql[i]
        if c.isspace() or c == "(":
            i += 1
        elif c == "-" and sql.startswith("--", i) or c == "/" and sql.startswith("/*", i):
            i = _skip_comment(sql, i)
        elif m := _WORD.match(sql, i):
            words.append(m.group().upper())
            i = m.end()
        else:
            break
    return tuple(words)


@lru_cache(maxsize=1024)
def split_statements(sql: str) -> tuple[Statement, ...]:
    """The statements of a script, rewritten for SQLite; empty ones are left out.

    A semicolon ends a statement only where SQLite agrees the statement is complete
    (not inside a trigger's BEGIN ... END).
    """
    text, semicolons = _rewrite(sql)
    statements: list[Statement] = []
    start = 0
    for pos in semicolons + [len(text)]:
        chunk = text[start:pos + 1]
        if pos < len(text) and not apsw.complete(chunk):
            continue
        body = chunk.strip()
        keywords = _keywords(body)
        if keywords:
            statements.append(Statement(body, keywords))
        start = pos + 1
    return tuple(statements)


def one_statement(sql: str) -> Statement | None:
    """The single statement in ``sql`` (None when there is none); several is an error
    the caller reports (as PostgreSQL does for a prepared statement)."""
    statements = split_statements(sql)
    if len(statements) > 1:
        raise SQLError("cannot run several statements at once here; send them one by one or as a batch", "42601")
    return statements[0] if statements else None
