"""From PostgreSQL's SQL dialect to SQLite's, as far as drivers need it.

Drivers send ``$1`` placeholders (SQLite would take ``$1`` as a *named* parameter and
number them by first appearance, so ``$2 ... $1`` would bind wrongly): they become
``?1``. ``x::type`` casts (SQLAlchemy renders them on every parameter) become
``CAST(x AS type)`` and say what type a parameter is. One Query message may hold several
statements; they are split where SQLite itself says a statement is complete.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field

from agora.sql.pgwire.types import oid_for_cast

# One token: a quoted string or identifier, a comment, a placeholder, a cast, or any
# other single character / word. Unterminated quotes and comments run to the end.
_TOKEN = re.compile(r"""
    (?P<str>'(?:[^']|'')*'?)
  | (?P<ident>"(?:[^"]|"")*"?)
  | (?P<line>--[^\n]*)
  | (?P<block>/\*.*?(?:\*/|\Z))
  | (?P<param>\$[0-9]+)
  | (?P<cast>::\s*(?P<type>[A-Za-z_][A-Za-z0-9_]*(?:\s+(?:precision|varying|without\s+time\s+zone|with\s+time\s+zone))?(?:\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\))?(?:\[\])?))
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*|[0-9]+(?:\.[0-9]*)?)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)

# What can make one statement text several, or hide words from a plain reading: without
# any of these, split_statements has nothing to look at.
_SPLIT_SIGNS = re.compile(r"[;\-/]")
# A word preceded by spaces only (the same word as _TOKEN's): first_words' quick path.
_LEAD_WORD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_$]*|[0-9]+(?:\.[0-9]*)?)")

MAX_PARAMS = 32766  # SQLite's SQLITE_MAX_VARIABLE_NUMBER


@dataclass
class Rewritten:
    sql: str
    nparams: int = 0                        # highest $N seen
    cast_types: dict[int, int] = field(default_factory=dict)  # $N -> OID from a cast


def rewrite(sql: str) -> Rewritten:
    """Placeholders and casts turned into SQLite; raises ValueError on $0 or > MAX_PARAMS."""
    if "$" not in sql and "::" not in sql:
        return Rewritten(sql)
    out: list[str] = []
    result = Rewritten("")
    tokens = [(m.lastgroup, m.group(0), m) for m in _TOKEN.finditer(sql)]
    for kind, text, match in tokens:
        if kind == "param":
            number = int(text[1:])
            if not 1 <= number <= MAX_PARAMS:
                raise ValueError(f"there is no parameter {text}")
            result.nparams = max(result.nparams, number)
            out.append(f"?{number}")
        elif kind == "cast":
            # Wrap the previous operand (a placeholder, a literal, a word or a bracket).
            type_text = match.group("type")
            operand_at = _operand_start(out)
            if operand_at is None:
                out.append(text)
                continue
            operand = "".join(out[operand_at:])
            del out[operand_at:]
            placeholder = re.fullmatch(r"\s*\?(\d+)\s*", operand)
            if placeholder:
                result.cast_types.setdefault(int(placeholder.group(1)), oid_for_cast(type_text))
            out.append(f"CAST({operand.strip()} AS {_sqlite_type(type_text)})")
        else:
            out.append(text)
    result.sql = "".join(out)
    return result


def _operand_start(out: list[str]) -> int | None:
    """Index in ``out`` where the operand before a ``::`` starts."""
    i = len(out) - 1
    while i >= 0 and out[i].isspace():
        i -= 1
    if i < 0:
        return None
    if out[i] == ")":
        depth = 0
        while i >= 0:
            if out[i] == ")":
                depth += 1
            elif out[i] == "(":
                depth -= 1
                if depth == 0:
                    break
            i -= 1
        if i < 0:
            return None
        # a function call: include its name
        if i > 0 and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", out[i - 1]):
            i -= 1
        return i
    return i


def _sqlite_type(type_text: str) -> str:
    name = type_text.strip().lower()
    if name.endswith("[]"):
        return "TEXT"
    base = re.sub(r"\s*\(.*", "", name)
    if base in ("regclass", "regtype", "regproc", "oid", "name", "varchar", "character varying", "bpchar", "char",
                "json", "jsonb", "uuid", "date", "timestamp", "timestamptz", "interval", "time"):
        return "TEXT"
    if base.startswith("timestamp"):
        return "TEXT"
    if base in ("bool", "boolean", "int", "int2", "int4", "int8", "integer", "bigint", "smallint"):
        return "INTEGER"
    if base in ("float", "float4", "float8", "real", "double precision", "double"):
        return "REAL"
    if base in ("numeric", "decimal"):
        return "NUMERIC"
    if base == "bytea":
        return "BLOB"
    return "TEXT"


def split_statements(sql: str) -> list[str]:
    """The statements in one Query string, each with its own ';' removed; empty ones dropped.

    SQLite decides where a statement ends (so ';' inside strings, comments and
    CREATE TRIGGER ... BEGIN ... END bodies does not split).
    """
    body = sql.rstrip()
    ended = body.endswith(";")
    if ended:
        body = body[:-1]
    # The common case: one statement, no comment, no ';' but a last one outside quotes.
    if not _SPLIT_SIGNS.search(body) and (not ended or sqlite3.complete_statement(sql)):
        return [body] if body and not body.isspace() else []
    return _split_tokens(sql)


def _split_tokens(sql: str) -> list[str]:
    """split_statements the long way: token by token."""
    statements: list[str] = []
    start = 0
    for match in _TOKEN.finditer(sql):
        if match.group(0) == ";" and sqlite3.complete_statement(sql[start:match.end()]):
            statements.append(sql[start:match.start()])
            start = match.end()
    statements.append(sql[start:])
    return [s for s in statements if not is_empty(s)]


def is_empty(sql: str) -> bool:
    return all(m.lastgroup in ("line", "block") or m.group(0).isspace() or m.group(0) == ";"
               for m in _TOKEN.finditer(sql))


def first_words(sql: str, count: int = 2) -> list[str]:
    """The first words of a statement, upper-cased, skipping comments."""
    words: list[str] = []
    pos = 0
    while len(words) < count and (lead := _LEAD_WORD.match(sql, pos)):  # words and spaces only: no scan
        words.append(lead.group(1).upper())
        pos = lead.end()
    return words if len(words) == count else _scan_words(sql, count, pos, words)


def _scan_words(sql: str, count: int, pos: int = 0, words: list[str] | None = None) -> list[str]:
    """first_words the long way, token by token from ``pos`` (past ``words``)."""
    words = [] if words is None else words
    for match in _TOKEN.finditer(sql, pos):
        if match.lastgroup == "word":
            words.append(match.group(0).upper())
            if len(words) == count:
                break
        elif match.lastgroup in ("line", "block") or match.group(0).isspace():
            continue
        elif match.group(0) != "(":
            break
    return words
