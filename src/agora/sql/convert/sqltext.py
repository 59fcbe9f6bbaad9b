"""SQLite's SQL text in PostgreSQL's terms: the tokens of views, CHECKs, index
expressions, defaults and foreign keys, with names quoted as PostgreSQL needs them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg import sql

from agora.sql.convert.typemap import _Type

Token = tuple[str, str]   # (kind, text): the name of _TOKEN's group, and what it matched

_TOKEN = re.compile(r"""
    (?P<space>\s+|--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<blob>[xX]'[0-9a-fA-F]*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))
  | (?P<word>(?:[A-Za-z_]|[^\x00-\x7f])(?:[A-Za-z0-9_$]|[^\x00-\x7f])*)
  | (?P<op>==|!=|<>|<=|>=|\|\||<<|>>|->>|->|.)
""", re.X | re.S)
_KEYWORDS = frozenset("""
    all and as asc between by case cast collate create cross current_date current_time
    current_timestamp desc distinct else end escape except exists false from full group
    having if in index inner intersect is isnull join left like limit natural not notnull
    null offset on or order outer over partition recursive right select table then true
    union unique using values view when where window with
""".split())


def _tokens(text: str) -> list[Token]:
    return [(m.lastgroup or "op", m.group()) for m in _TOKEN.finditer(text)]


def _solid(text: str) -> list[Token]:
    """The tokens of ``text`` but spaces and comments."""
    return [t for t in _tokens(text) if t[0] != "space"]


def _unquote(token: str) -> str:
    if token[0] == "[":
        return token[1:-1]
    return token[1:-1].replace(token[0] * 2, token[0])


def _name(token: Token) -> str:
    """The name a word or a quoted token stands for."""
    kind, text = token
    return _unquote(text) if kind == "quoted" else text


def _q(name: str) -> str:
    """A name quoted as an identifier, alike in SQLite and PostgreSQL."""
    return '"' + name.replace('"', '""') + '"'


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(name: str) -> str:
    """A name as an unquoted identifier reaches PostgreSQL (and SQLite compares it)."""
    return name.translate(_ASCII_LOWER)


class _Rewriter:
    """SQLite SQL text into PostgreSQL's, for what both spell alike but for quoting:
    SQLite ignores the case of names, PostgreSQL folds unquoted ones to lower case, so a
    name written ``Users`` for the table "Users" is quoted; `x` and [x] become "x"."""

    def __init__(self, names: Iterable[str]):
        self.names: dict[str, set[str]] = {}
        for name in names:
            self.names.setdefault(_fold(name), set()).add(name)

    def rewrite(self, tokens: Sequence[Token]) -> str:
        solid = [i for i, t in enumerate(tokens) if t[0] != "space"]
        after = {i: tokens[j][1] for i, j in zip(solid, solid[1:] + [len(tokens)], strict=True)
                 if j < len(tokens)}
        before = {j: tokens[i][1] for i, j in zip(solid, solid[1:], strict=False)}
        casts: list[bool] = []   # per open parenthesis: whether it is CAST's
        out = []
        for i, (kind, text) in enumerate(tokens):
            following, previous = after.get(i, ""), before.get(i, "")
            if kind == "quoted":
                out.append(_q(_unquote(text)))
            elif kind == "blob":
                out.append(f"'\\x{text[2:-1]}'::bytea")
            elif kind == "op" and text == "==":
                out.append("=")
            elif kind == "word":
                exact = self.names.get(_fold(text), set())
                keyword = _fold(text) in _KEYWORDS
                if _fold(text) == "ifnull" and following == "(":
                    out.append("coalesce")
                elif (previous.upper() == "AS" and not keyword and not (casts and casts[-1])
                      and _fold(text) != text):
                    out.append(_q(text))   # an alias keeps its case, as in SQLite
                elif (len(exact) == 1 and not keyword and following != "("
                      and next(iter(exact)) != _fold(text)):
                    out.append(_q(next(iter(exact))))
                else:
                    out.append(text)
            else:
                if text == "(":
                    casts.append(_fold(previous) == "cast")
                elif text == ")" and casts:
                    casts.pop()
                out.append(text)
        return "".join(out)


def _balanced(tokens: Sequence[Token], start: int) -> int:
    """Index after the parenthesis closing the one at ``start``."""
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i] == ("op", "("):
            depth += 1
        elif tokens[i] == ("op", ")"):
            depth -= 1
            if depth == 0:
                return i + 1
    return len(tokens)


def _elements(tokens: Sequence[Token]) -> list[list[Token]]:
    """``tokens`` split at the commas outside parentheses."""
    elements: list[list[Token]] = [[]]
    depth = 0
    for token in tokens:
        depth += token == ("op", "(")
        depth -= token == ("op", ")")
        if token == ("op", ",") and depth == 0:
            elements.append([])
        else:
            elements[-1].append(token)
    return elements


def _checks(text: str) -> list[list[Token]]:
    """The expressions of a CREATE TABLE's CHECK constraints."""
    tokens = _solid(text)
    found = []
    for i, (kind, word) in enumerate(tokens):
        if kind == "word" and word.upper() == "CHECK" and tokens[i + 1:i + 2] == [("op", "(")]:
            found.append(tokens[i + 2:_balanced(tokens, i + 1) - 1])
    return found


def _collations(text: str) -> set[str]:
    tokens = _solid(text)
    return {_name(t).upper() for i, t in enumerate(tokens[1:], 1)
            if tokens[i - 1][0] == "word" and tokens[i - 1][1].upper() == "COLLATE"} - {"BINARY"}


def _spaced(tokens: Sequence[Token]) -> list[Token]:
    result: list[Token] = []
    for token in tokens:
        if result:
            result.append(("space", " "))
        result.append(token)
    return result


_NOW = {
    "current_timestamp": "timestamp", "datetime('now')": "timestamp",
    "current_date": "date", "date('now')": "date",
    "current_time": "time", "time('now')": "time",
}


def _default(text: str | None, column_type: _Type,
             rewriter: _Rewriter) -> sql.Composable | None:
    """PostgreSQL's DEFAULT for SQLite's (raises _Unfit when there is none to give)."""
    if text is None:
        return None
    tokens = _solid(text)
    while len(tokens) > 2 and tokens[0] == ("op", "(") and _balanced(tokens, 0) == len(tokens):
        tokens = tokens[1:-1]
    sign = -1 if tokens[:1] == [("op", "-")] else 1
    literal = tokens[1:] if tokens[:1] in ([("op", "-")], [("op", "+")]) else tokens
    value: Any = ...
    if len(literal) == 1:
        kind, word = literal[0]
        if kind == "number":
            value = sign * (int(word, 16) if word[:2].lower() == "0x" else
                            int(word) if re.fullmatch(r"\d+", word) else float(word))
        elif kind == "string" and sign == 1:
            value = _unquote(word)
        elif kind == "blob":
            value = bytes.fromhex(word[2:-1])
        elif kind == "word" and word.upper() in ("TRUE", "FALSE"):
            value = int(word.upper() == "TRUE")
        elif kind == "word" and word.upper() == "NULL":
            return None
    if value is not ...:
        return sql.Literal(column_type.convert(value))
    compact = "".join(t[1] for t in tokens).lower().replace('"', "'")
    now = _NOW.get(compact)
    pg = column_type.pg
    if now and pg == "timestamp with time zone":
        return sql.SQL("now()")
    if now and pg in ("timestamp", "date", "time"):
        # SQLite's are in UTC, as the rows already there.
        return sql.SQL(f"(timezone('UTC', now()))::{pg if pg != 'time' else 'time(0)'}")
    if now and (pg == "text" or pg.startswith("varchar")):
        form = {"timestamp": "YYYY-MM-DD HH24:MI:SS", "date": "YYYY-MM-DD", "time": "HH24:MI:SS"}
        return sql.SQL(f"to_char(timezone('UTC', now()), '{form[now]}')")
    return sql.SQL("(" + rewriter.rewrite(_spaced(tokens)) + ")")


def _ident(*names: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _index_sql(text: str, rewriter: _Rewriter, warnings: list[str]) -> str | None:
    """``(...) [WHERE ...]`` of an expression or partial index, in PostgreSQL's terms
    (which wants each expression in parentheses)."""
    tokens = _solid(text)
    on = next((i for i, t in enumerate(tokens) if t[0] == "word" and t[1].upper() == "ON"), None)
    if on is None:
        return None
    start = next((i for i in range(on, len(tokens)) if tokens[i] == ("op", "(")), None)
    if start is None:
        return None
    end = _balanced(tokens, start)
    parts = []
    for element in _elements(tokens[start + 1:end - 1]):
        order = ""
        if element and element[-1][0] == "word" and element[-1][1].upper() in ("ASC", "DESC"):
            order = " " + element.pop()[1].upper()
        if len(element) > 2 and element[-2][0] == "word" and element[-2][1].upper() == "COLLATE":
            warnings.append(f"an index's COLLATE {_name(element[-1])} was dropped")
            element = element[:-2]
        if not element:
            return None
        parts.append(f"({rewriter.rewrite(_spaced(element))}){order}")
    rest = tokens[end:]
    where = ""
    if rest and rest[0][0] == "word" and rest[0][1].upper() == "WHERE":
        where = " WHERE " + rewriter.rewrite(_spaced(rest[1:]))
    elif rest:
        return None
    return f"({', '.join(parts)}){where}"


def _deferred_keys(text: str) -> set[tuple[str, ...]]:
    """The (lower-case) columns of a CREATE TABLE's foreign keys declared DEFERRABLE
    INITIALLY DEFERRED (as Django declares them), which SQLite's pragmas do not tell."""
    tokens = _solid(text)
    start = next((i for i, t in enumerate(tokens) if t == ("op", "(")), None)
    if start is None:
        return set()
    found = set()
    for element in _elements(tokens[start + 1:_balanced(tokens, start) - 1]):
        words = [w.upper() if k == "word" else w for k, w in element]
        if "REFERENCES" not in words or " ".join(words).find("NOT DEFERRABLE") >= 0:
            continue
        if "DEFERRABLE INITIALLY DEFERRED" not in " ".join(words):
            continue
        names = [_name(token).lower() for token in element]
        if "FOREIGN" in words[:3]:
            opening = words.index("(")
            found.add(tuple(n for n in names[opening + 1:words.index(")")] if n != ","))
        else:
            found.add((names[0],))
    return found


def _view_sql(text: str, rewriter: _Rewriter) -> tuple[list[str] | None, str] | None:
    """A CREATE VIEW's column names (None: not given) and its query, in PostgreSQL's
    terms; None when the statement was not understood."""
    tokens = _tokens(text)
    solid = [i for i, t in enumerate(tokens) if t[0] != "space"]
    at = next((n for n, i in enumerate(solid) if tokens[i][0] == "word"
               and tokens[i][1].upper() == "VIEW"), 0) + 1
    if [tokens[i][1].upper() for i in solid[at:at + 3]] == ["IF", "NOT", "EXISTS"]:
        at += 3
    at += 1   # the name
    if at < len(solid) and tokens[solid[at]][1] == ".":   # main.name
        at += 2
    columns = None
    if at < len(solid) and tokens[solid[at]] == ("op", "("):
        end = _balanced([tokens[i] for i in solid], at)
        columns = [_name(tokens[i]) for i in solid[at + 1:end - 1] if tokens[i][1] != ","]
        at = end
    if at >= len(solid) or tokens[solid[at]][1].upper() != "AS":
        return None
    return columns, rewriter.rewrite(tokens[solid[at] + 1:])
