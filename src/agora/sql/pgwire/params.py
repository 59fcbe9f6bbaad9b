"""Guessing a parameter's type from where it stands, for clients (asyncpg) that ask the
server and then insist on it: ``col = $1`` takes col's declared type, as does the
value of an INSERT column or ``LIMIT $1``. Anything else is text, and SQLite's column
affinity converts text on the way in.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable

from agora.sql.pgwire.types import INT8, oid_for_declared

Runner = Callable[[str, list[Any]], Awaitable[Any]]

_COMPARE_LEFT = re.compile(r'(?i)(?:"?(\w+)"?\.)?"?(\w+)"?\s*(?:=|<>|!=|<=|>=|<|>|\bLIKE\b|\bIN\b\s*\()\s*\?(\d+)')
_COMPARE_RIGHT = re.compile(r'(?i)\?(\d+)\s*(?:=|<>|!=|<=|>=|<|>)\s*(?:"?(\w+)"?\.)?"?(\w+)"?')
_LIMIT = re.compile(r"(?i)\b(?:LIMIT|OFFSET)\s+\?(\d+)")
_INSERT = re.compile(r'(?is)\b(?:INSERT|REPLACE)\s+(?:OR\s+\w+\s+)?INTO\s+"?(\w+)"?\s*(?:\(([^)]*)\))?\s*VALUES\s*(.*)')
_TUPLE = re.compile(r"\(((?:[^()]|\([^()]*\))*)\)")
_TABLES = re.compile(r'(?i)\b(?:FROM|JOIN|UPDATE|INTO)\s+"?(\w+)"?')


async def infer_param_types(sql: str, run: Runner) -> dict[int, int]:
    """{parameter number: OID} for the parameters whose type the query makes plain.

    ``sql`` uses ``?N`` placeholders (see rewrite.py)."""
    guesses: dict[int, int] = {}
    for match in _LIMIT.finditer(sql):
        guesses[int(match.group(1))] = INT8
    tables = list(dict.fromkeys(m.group(1) for m in _TABLES.finditer(sql)))
    if not tables:
        return guesses
    columns: dict[str, dict[str, str]] = {}
    ordered: dict[str, list[str]] = {}
    for table in tables[:8]:
        try:
            result = await run(f"SELECT name, type FROM pragma_table_info('{table}')", [])
        except Exception:
            continue
        columns[table.lower()] = {str(r[0]).lower(): r[1] or "" for r in result.rows}
        ordered[table.lower()] = [str(r[0]) for r in result.rows]

    def declared(table: str | None, column: str) -> int | None:
        places = [columns.get(table.lower(), {})] if table else list(columns.values())
        for place in places:
            if column.lower() in place:
                return oid_for_declared(place[column.lower()])
        return None

    insert = _INSERT.search(sql)
    if insert:
        names = ([n.strip().strip('"') for n in insert.group(2).split(",")] if insert.group(2)
                 else ordered.get(insert.group(1).lower(), []))
        pairs = []
        for row in _TUPLE.finditer(insert.group(3)):
            pairs += zip(names, [v.strip() for v in row.group(1).split(",")])
        for name, value in pairs:
            placeholder = re.fullmatch(r"(?:CAST\()?\?(\d+).*", value)
            if placeholder:
                oid = declared(insert.group(1), name)
                if oid:
                    guesses.setdefault(int(placeholder.group(1)), oid)
    for match in _COMPARE_LEFT.finditer(sql):
        oid = declared(match.group(1), match.group(2))
        if oid:
            guesses.setdefault(int(match.group(3)), oid)
    for match in _COMPARE_RIGHT.finditer(sql):
        oid = declared(match.group(2), match.group(3))
        if oid:
            guesses.setdefault(int(match.group(1)), oid)
    return guesses
