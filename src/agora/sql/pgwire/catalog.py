"""Answers to the catalog queries clients send, made from SQLite's schema.

psql's meta-commands (``\\l``, ``\\dt``, ``\\d NAME``...) and drivers' start-up
queries read pg_catalog, which SQLite has not. They are recognised by pattern and
answered here; the select list of the query says which columns (and in which order) the
client expects, so psql versions that ask for a column more or less still work. A
catalog query not understood gets an empty result with the columns it asked for:
"nothing of that kind here" is true of rules, policies, publications and the like.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable

from agora.sql.pgwire.results import Rows
from agora.sql.pgwire.rewrite import _TOKEN, first_words

# Runs a read-only query on the user's database: (sql, params) -> Rows.
Runner = Callable[[str, list[Any]], Awaitable[Rows]]

OID_BASE = 100000  # synthetic pg_class OIDs: OID_BASE + the sqlite_master rowid
_CATALOG = re.compile(r"(?i)\b(pg_catalog\.|pg_class|pg_type|pg_namespace|pg_database|pg_attribute|pg_index|"
                      r"pg_settings|pg_roles|pg_user|pg_proc|pg_extension|information_schema\.|pg_am|pg_constraint)")
_SIMPLE_FUNC = re.compile(
    r"(?is)^\s*select\s+(?:pg_catalog\.)?(version|current_schema|current_database|current_user|session_user|"
    r"user|current_role|pg_backend_pid|inet_server_port|inet_server_addr)\s*(?:\(\s*\))?\s*(?:as\s+(\w+|\"[^\"]+\"))?\s*;?\s*$")
_SETTING_FUNC = re.compile(r"(?is)^\s*select\s+(?:pg_catalog\.)?current_setting\s*\(\s*'([^']*)'\s*\)\s*"
                           r"(?:as\s+(\w+|\"[^\"]+\"))?\s*;?\s*$")


def is_catalog_query(sql: str) -> bool:
    lowered = sql.lower()  # two substring tests before the regex: most statements have neither
    if "pg_" not in lowered and "information_schema" not in lowered:
        return False
    return bool(_CATALOG.search(sql)) and first_words(sql, 1) in (["SELECT"], ["WITH"])


def is_simple_function(sql: str) -> bool:
    return bool(_SIMPLE_FUNC.match(sql) or _SETTING_FUNC.match(sql))


def simple_function(sql: str, session: dict[str, str]) -> Rows | None:
    """SELECT version() and its kin, SELECT current_setting('x')."""
    match = _SIMPLE_FUNC.match(sql)
    if match:
        name = match.group(1).lower()
        alias = (match.group(2) or name).strip('"')
        value = {"version": "PostgreSQL " + session["server_version"] + " on SQLite, compiled by Python",
                 "current_schema": "public", "current_database": session["database"],
                 "pg_backend_pid": session["pid"], "inet_server_port": session.get("port", ""),
                 "inet_server_addr": session.get("addr", "")}.get(name, session["user"])
        oid_type = "INTEGER" if name in ("pg_backend_pid", "inet_server_port") else "TEXT"
        return Rows([(alias, oid_type)], [(value,)], "SELECT 1")
    match = _SETTING_FUNC.match(sql)
    if match:
        alias = (match.group(2) or "current_setting").strip('"')
        return Rows([(alias, "TEXT")], [(setting_value(match.group(1), session),)], "SELECT 1")
    return None


def setting_value(name: str, session: dict[str, str]) -> str:
    key = name.lower()
    extra = {"transaction isolation level": "serializable", "transaction_isolation": "serializable",
             "search_path": '"$user", public', "max_identifier_length": "63", "lc_collate": "C",
             "lc_ctype": "C", "default_transaction_isolation": "serializable",
             "default_transaction_read_only": "off", "transaction_read_only": "off",
             "server_version_num": _version_num(session["server_version"]), "statement_timeout": "0",
             "extra_float_digits": "3", "bytea_output": "hex", "max_index_keys": "32"}
    for stored, value in session.items():
        if stored.lower() == key:
            return value
    return extra.get(key, "")


def _version_num(version: str) -> str:
    major, _, minor = version.split(" ")[0].partition(".")
    return str(int(major) * 10000 + int(minor or 0))


# -- the select list of a query: what columns it wants, by name -----------------------

def select_items(sql: str) -> list[tuple[str, str]]:
    """(name, expression) per item of the first SELECT's list."""
    tokens = [(m.lastgroup, m.group(0)) for m in _TOKEN.finditer(sql)]
    items: list[list[tuple[str | None, str]]] = []
    depth, started, current = 0, False, []
    for kind, text in tokens:
        upper = text.upper()
        if not started:
            if kind == "word" and upper == "SELECT":
                started = True
            continue
        if depth == 0 and kind == "word" and upper in ("FROM", "WHERE", "ORDER", "UNION", "GROUP", "LIMIT"):
            break
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        if depth == 0 and text == ",":
            items.append(current)
            current = []
            continue
        if kind not in ("line", "block"):
            current.append((kind, text))
    if current:
        items.append(current)
    if items and len(items[0]) and items[0][0][1].upper() == "DISTINCT":
        items[0] = items[0][1:]
    return [(_item_name(item), "".join(t for _, t in item).strip()) for item in items]


def _item_name(item: list[tuple[str | None, str]]) -> str:
    parts = [(k, t) for k, t in item if not t.isspace()]
    if len(parts) >= 2 and parts[-2][1].upper() == "AS":
        return parts[-1][1].strip('"')
    text = "".join(t for _, t in item)
    lowered = text.lower()
    for marker, name in (("adbin", "default"), ("format_type", "format_type"), ("pg_get_indexdef", "pg_get_indexdef"),
                         ("pg_get_constraintdef", "pg_get_constraintdef"), ("reloftype", "reloftype")):
        if marker in lowered:
            return name
    if parts and parts[-1][0] == "str":
        return "?literal?" + parts[-1][1][1:-1]
    if len(parts) == 1 and parts[0][1].upper() in ("TRUE", "FALSE", "NULL"):
        return "?literal?" + {"TRUE": "t", "FALSE": "f", "NULL": ""}[parts[0][1].upper()]
    words = [t for k, t in parts if k in ("word", "ident")]
    return words[-1].strip('"') if words else "?column?"


def _shape(items: list[tuple[str, str]], records: list[dict[str, Any]], tag_rows: bool = True) -> Rows:
    columns = [(name if not name.startswith("?literal?") else "?column?", "TEXT") for name, _ in items]
    rows = []
    for record in records:
        lowered = {k.lower(): v for k, v in record.items()}
        row = []
        for name, _ in items:
            if name.startswith("?literal?"):
                row.append(name[len("?literal?"):])
            else:
                row.append(lowered.get(name.lower()))
        rows.append(tuple(row))
    return Rows(columns, rows, f"SELECT {len(rows)}")


# -- the schema of the user's database -------------------------------------------------

async def _relations(run: Runner) -> list[dict[str, Any]]:
    result = await run("SELECT rowid, type, name, tbl_name, sql FROM sqlite_master "
                       "WHERE name NOT LIKE 'sqlite_%' ORDER BY name", [])
    return [{"oid": OID_BASE + row[0], "type": row[1], "name": row[2], "table": row[3], "sql": row[4] or ""}
            for row in result.rows]


_KIND = {"table": "r", "view": "v", "index": "i", "trigger": ""}
_KIND_NAME = {"r": "table", "v": "view", "i": "index", "S": "sequence", "m": "materialized view",
              "p": "partitioned table", "f": "foreign table"}


async def answer(sql: str, run: Runner, databases: Callable[[], Awaitable[list[dict[str, Any]]]],
                 session: dict[str, str]) -> Rows:
    items = select_items(sql)
    lowered = sql.lower()
    if "pg_database" in lowered and '"name"' in lowered:
        records = [{"Name": d["name"], "Owner": d["owner"], "Encoding": "UTF8", "Collate": "C", "Ctype": "C",
                    "Locale Provider": "libc", "Locale": "C", "Access privileges": d.get("privileges", "")}
                   for d in await databases()]
        return _shape(items, records)
    if "pg_class c" in lowered and '"schema"' in lowered and '"name"' in lowered and "relkind in" in lowered:
        wanted = set(re.findall(r"'(\w)'", lowered.split("relkind in", 1)[1].split(")", 1)[0]))
        pattern = re.search(r"relname operator\(pg_catalog\.~\) '([^']*)'", sql, re.IGNORECASE)
        records = []
        for rel in await _relations(run):
            kind = _KIND.get(rel["type"], "")
            if kind and kind in wanted and _matches(pattern, rel["name"]):
                records.append({"Schema": "public", "Name": rel["name"], "Type": _KIND_NAME[kind],
                                "Owner": session["owner"], "Table": rel["table"] if kind == "i" else None,
                                "Persistence": "permanent", "Access method": "heap" if kind == "r" else None,
                                "Size": "", "Description": None})
        return _shape(items, records)
    match = re.search(r"relname operator\(pg_catalog\.~\) '([^']*)'", sql, re.IGNORECASE)
    if match and "c.oid" in lowered and "nspname" in lowered:
        records = [{"oid": str(rel["oid"]), "nspname": "public", "relname": rel["name"]}
                   for rel in await _relations(run) if _matches(match, rel["name"]) and _KIND.get(rel["type"])]
        return _shape(items, records)
    oid_match = re.search(r"(?:c\.oid|attrelid|indrelid|conrelid)\s*=\s*'(\d+)'", sql)
    rel = None
    if oid_match:
        rel = next((r for r in await _relations(run) if str(r["oid"]) == oid_match.group(1)), None)
    if rel is not None and "relchecks" in lowered:
        kind = _KIND.get(rel["type"], "r")
        return _shape(items, [{"relchecks": "0", "relkind": kind, "relhasindex": "t", "relhasrules": "f",
                               "relhastriggers": "t", "relrowsecurity": "f", "relforcerowsecurity": "f",
                               "relhasoids": "f", "relispartition": "f", "reltablespace": "0",
                               "reloftype": "", "relpersistence": "p", "relreplident": "d",
                               "amname": "heap" if kind == "r" else None}])
    if rel is not None and "contype = 'f'" in lowered and "conrelid = '" in lowered:
        return _shape(items, await _foreign_keys(run, rel))
    referenced = re.search(r"pg_partition_ancestors\('(\d+)'\)", sql)
    if referenced and "contype = 'f'" in lowered:
        target = next((r for r in await _relations(run) if str(r["oid"]) == referenced.group(1)), None)
        records = []
        if target is not None:
            for other in await _relations(run):
                if other["type"] == "table":
                    records += [fk for fk in await _foreign_keys(run, other) if fk["target"] == target["name"]]
        return _shape(items, records)
    if rel is not None and "pg_attribute a" in lowered and "attname" in lowered:
        return _shape(items, await _attributes(run, rel))
    if rel is not None and "pg_index i" in lowered and "indisprimary" in lowered:
        return _shape(items, await _indexes(run, rel))
    return _shape(items, [])


def _matches(pattern: re.Match[str] | None, name: str) -> bool:
    if pattern is None:
        return True
    try:
        return re.search(pattern.group(1), name) is not None
    except re.error:
        return False


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _attributes(run: Runner, rel: dict[str, Any]) -> list[dict[str, Any]]:
    result = await run(f"SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info({_sql_string(rel['name'])})", [])
    records = []
    for name, decltype, notnull, default, pk in result.rows:
        records.append({"attname": name, "format_type": (decltype or "").lower(), "default": default,
                        "attnotnull": "t" if notnull or (pk and "int" in (decltype or "").lower()) else "f",
                        "attcollation": None, "attidentity": "", "attgenerated": "", "attstorage": "x",
                        "attstattarget": "-1", "attcompression": "", "description": None})
    return records


async def _indexes(run: Runner, rel: dict[str, Any]) -> list[dict[str, Any]]:
    table = rel["name"]
    records = []
    listed = await run(f"SELECT name, \"unique\", origin FROM pragma_index_list({_sql_string(table)})", [])
    has_pk_index = False
    for name, unique, origin in listed.rows:
        cols = await run(f"SELECT name FROM pragma_index_info({_sql_string(name)}) ORDER BY seqno", [])
        columns = ", ".join(str(c[0]) for c in cols.rows)
        primary = origin == "pk"
        has_pk_index = has_pk_index or primary
        shown = table + "_pkey" if primary else name
        records.append(_index_record(shown, table, columns, primary, bool(unique), origin == "u"))
    if not has_pk_index:
        pk = await run(f"SELECT name FROM pragma_table_info({_sql_string(table)}) WHERE pk > 0 ORDER BY pk", [])
        if pk.rows:
            columns = ", ".join(str(c[0]) for c in pk.rows)
            records.append(_index_record(table + "_pkey", table, columns, True, True, False))
    records.sort(key=lambda r: (r["indisprimary"] != "t", r["relname"]))
    return records


def _index_record(name: str, table: str, columns: str, primary: bool, unique: bool, constraint: bool) -> dict[str, Any]:
    kind = "p" if primary else "u" if constraint else None
    return {"relname": name, "indisprimary": "t" if primary else "f", "indisunique": "t" if unique else "f",
            "indisclustered": "f", "indisvalid": "t",
            "pg_get_indexdef": f"CREATE {'UNIQUE ' if unique else ''}INDEX {_quote(name)} ON public.{_quote(table)} "
                               f"USING btree ({columns})",
            "pg_get_constraintdef": ("PRIMARY KEY" if primary else "UNIQUE") + f" ({columns})" if kind else None,
            "contype": kind, "condeferrable": "f" if kind else None, "condeferred": "f" if kind else None,
            "indisreplident": "f", "reltablespace": "0"}


async def _foreign_keys(run: Runner, rel: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's foreign keys as pg_constraint rows (SQLite's are unnamed: named as
    PostgreSQL would name them)."""
    result = await run(f"SELECT id, \"table\", \"from\", \"to\", on_update, on_delete "
                       f"FROM pragma_foreign_key_list({_sql_string(rel['name'])}) ORDER BY id, seq", [])
    keys: dict[int, dict[str, Any]] = {}
    for key_id, target, source, to, on_update, on_delete in result.rows:
        key = keys.setdefault(key_id, {"target": target, "from": [], "to": [], "actions": ""})
        key["from"].append(str(source))
        if to is not None:
            key["to"].append(str(to))
        actions = "".join(f" ON {verb} {action}" for verb, action in (("UPDATE", on_update), ("DELETE", on_delete))
                          if action and action != "NO ACTION")
        key["actions"] = actions
    records = []
    for key in keys.values():
        columns = ", ".join(key["from"])
        to = f"({', '.join(key['to'])})" if key["to"] else ""
        records.append({"sametable": "t", "conname": f"{rel['name']}_{'_'.join(key['from'])}_fkey",
                        "condef": f"FOREIGN KEY ({columns}) REFERENCES {key['target']}{to}{key['actions']}",
                        "ontable": rel["name"], "target": key["target"]})
    return records


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
