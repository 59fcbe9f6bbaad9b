"""`agora sql ...`: hosted databases on the server, through the stored login.

A database is ``name`` (yours) or ``owner/name`` (one shared with you). Results print
as an aligned table (NULL as an empty cell, blobs as ``\\x`` hex); ``--json`` prints
the API's result object, ``--csv`` the whole result as CSV (streamed, no row limit).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from agora.cli.common import USAGE, fail, logged_in_client

PROMPT = "sql> "
MORE = "...> "
HISTORY_LINES = 1000


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{value} B"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value).replace("\n", "\\n")


def format_result(result: Any) -> str:
    """An aligned text table and the command tag, as psql prints them."""
    if not result.columns:
        return result.command
    cells = [[_cell(v) for v in row] for row in result.rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(result.columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(result.columns, widths)).rstrip(),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    count = len(result.rows)
    lines.append(f"({count} row{'' if count == 1 else 's'}{', truncated: more rows were left out' if result.truncated else ''})")
    return "\n".join(lines)


def _json_result(result: Any) -> str:
    from agora.client.sql import encode_value

    return json.dumps({"columns": result.columns, "types": result.types,
                       "rows": [[encode_value(v) for v in row] for row in result.rows],
                       "rows_affected": result.rows_affected, "truncated": result.truncated,
                       "command": result.command})


@click.group()
def sql() -> None:
    """Hosted SQL databases: create, share, query (after `agora login`)."""


@sql.command()
@click.argument("name")
def create(name: str) -> None:
    """Create database NAME (yours)."""
    with logged_in_client() as client:
        made = client.sql.create(name)
    click.echo(f"created {made.ref}")


@sql.command()
def ls() -> None:
    """Your databases and those shared with you: size, your access, grants."""
    with logged_in_client() as client:
        found = client.sql.databases()
    if not found:
        click.echo("no databases")
        return
    width = max(len(d.ref) for d in found)
    for d in found:
        grants = ", ".join(f"{g.user}:{g.access}" for g in d.grants)
        click.echo(f"{d.ref.ljust(width)}  {d.access:<5}  {_size(d.size):>10}" + (f"  shared with {grants}" if grants else ""))


@sql.command()
@click.argument("db", metavar="DB")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def drop(db: str, yes: bool) -> None:
    """Drop database DB and everything in it."""
    if not yes and not click.confirm(f"drop {db} and all its data?", err=True):
        fail("not dropped", USAGE)
    with logged_in_client() as client:
        client.sql.drop(db)
    click.echo(f"dropped {db}")


@sql.command()
@click.argument("db", metavar="DB")
@click.argument("user")
@click.option("--write", "access", flag_value="write", help="Let USER change data too.")
@click.option("--read", "access", flag_value="read", default=True, help="Let USER read only (the default).")
def grant(db: str, user: str, access: str) -> None:
    """Share database DB with USER (read-only unless --write)."""
    with logged_in_client() as client:
        given = client.sql.grant(db, user, access)
    click.echo(f"{given.user} may {given.access} {db}")


@sql.command()
@click.argument("db", metavar="DB")
@click.argument("user")
def revoke(db: str, user: str) -> None:
    """Stop sharing database DB with USER."""
    with logged_in_client() as client:
        client.sql.revoke(db, user)
    click.echo(f"{user} no longer has access to {db}")


@sql.command()
@click.argument("db", metavar="DB")
@click.argument("statement", metavar="SQL")
@click.option("--param", "-p", "params", multiple=True, metavar="VALUE",
              help="A parameter for ?/$1 (JSON if it parses: 42, null, \"text\"; else the text). Repeat for more.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the whole result as CSV (no row limit).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON result.")
def query(db: str, statement: str, params: tuple[str, ...], as_csv: bool, as_json: bool) -> None:
    """Run one SQL statement on DB."""
    values = [_param(p) for p in params]
    with logged_in_client() as client:
        if as_csv:
            out = sys.stdout.buffer
            for piece in client.sql.export(db, statement, values):
                out.write(piece)
            out.flush()
            return
        result = client.sql.query(db, statement, values)
    click.echo(_json_result(result) if as_json else format_result(result))


def _param(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@sql.command()
@click.argument("db", metavar="DB")
def url(db: str) -> None:
    """Print a postgresql:// URL for DB (psql, psycopg; your password is asked there)."""
    with logged_in_client() as client:
        port = client.sql.info().get("postgres_port")
        if port is None:
            fail("this server does not serve the PostgreSQL protocol (its postgres listener is off)")
        from agora.client.sql import postgres_url

        click.echo(postgres_url(client.base_url, client.me().name, db if "/" in db else f"{client.me().name}/{db}", port))


def _history_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "agora" / "sql_history"


def _readline() -> Any:
    """readline, with history kept across sessions, when a person types at a terminal."""
    if not sys.stdin.isatty():
        return None
    try:
        import readline
    except ImportError:  # pragma: no cover - platforms without readline
        return None
    try:
        readline.read_history_file(_history_file())
    except OSError:
        pass
    readline.set_history_length(HISTORY_LINES)
    return readline


@sql.command()
@click.argument("db", metavar="DB")
def shell(db: str) -> None:
    """An interactive SQL session on DB: statements end with ';'. \\dt lists tables,
    \\d TABLE describes one, \\q quits. History is kept (with a terminal)."""
    readline = _readline()
    tty = sys.stdin.isatty()
    with logged_in_client() as client:
        client.sql.get(db)  # fails now, not at the first statement, when DB is not yours
        if tty:
            click.echo(f"connected to {db}; end statements with ';', \\q quits", err=True)
        buffer: list[str] = []
        try:
            while True:
                try:
                    line = input((MORE if buffer else PROMPT) if tty else "")
                except EOFError:
                    break
                stripped = line.strip()
                if not buffer and stripped.startswith("\\"):
                    if stripped in ("\\q", "\\quit"):
                        break
                    _meta(client, db, stripped)
                    continue
                if not stripped and not buffer:
                    continue
                buffer.append(line)
                if stripped.endswith(";"):
                    _run(client, db, "\n".join(buffer))
                    buffer = []
            if buffer and "".join(buffer).strip():
                _run(client, db, "\n".join(buffer))
        finally:
            if readline is not None:
                try:
                    _history_file().parent.mkdir(parents=True, exist_ok=True)
                    readline.write_history_file(_history_file())
                except OSError:
                    pass


def _run(client: Any, db: str, statement: str) -> None:
    from agora.client import AgoraError

    try:
        click.echo(format_result(client.sql.query(db, statement)))
    except AgoraError as error:
        state = error.problem.get("sqlstate")
        click.echo(f"ERROR: {error.message}" + (f" (SQLSTATE {state})" if state else ""), err=True)


def _meta(client: Any, db: str, command: str) -> None:
    name, _, arg = command.partition(" ")
    if name == "\\dt":
        _run(client, db, "SELECT name, type FROM sqlite_schema WHERE type IN ('table', 'view') "
                         "AND name NOT LIKE 'sqlite_%' ORDER BY name")
    elif name == "\\d" and arg.strip():
        table = arg.strip().replace("'", "''")
        _run(client, db, f"SELECT name, type, \"notnull\" AS not_null, dflt_value AS \"default\", pk "
                         f"FROM pragma_table_info('{table}')")
    else:
        click.echo(f"unknown command {name}: \\dt, \\d TABLE, \\q", err=True)
