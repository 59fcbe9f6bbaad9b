"""psql against the postgres listener: TLS with a password, DDL and DML, and the
meta-commands that read the catalog (\\dt, \\d TABLE, \\l, \\conninfo)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import ServerFactory
from pgwire_support import Account, account, provision, server_env

pytestmark = [pytest.mark.xdist_group("sql-psql"),
              pytest.mark.skipif(shutil.which("psql") is None,
                                 reason="psql is not installed (Debian package postgresql-client; scripts/test-env.sh installs it)")]


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory, backend):
    factory = ServerFactory(tmp_path_factory.mktemp(f"psql-{backend}"), backend)
    yield factory(env=server_env())
    factory.close()


def psql(acct: Account, database: str, *commands: str, password: str | None = None,
         sslmode: str = "require") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = acct.password if password is None else password
    env["PGCONNECT_TIMEOUT"] = "10"
    args = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(acct.port), "-U", acct.name,
            "-d", f"dbname={database} sslmode={sslmode}"]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


def test_psql_sql_and_meta_commands(pg_server):
    ann = account(pg_server, "shop")
    done = psql(ann, "shop",
                "CREATE TABLE fruit (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL DEFAULT 1.5)",
                "CREATE INDEX fruit_name ON fruit (name)",
                "INSERT INTO fruit (id, name, price) VALUES (1, 'apple', 0.5), (2, 'pear', 0.75), (3, 'fig', 2)",
                "UPDATE fruit SET price = 0.8 WHERE name = 'pear'",
                "DELETE FROM fruit WHERE id = 3",
                "SELECT id, name, price FROM fruit ORDER BY id",
                "CREATE TABLE basket (id INTEGER PRIMARY KEY, fruit INTEGER REFERENCES fruit (id) ON DELETE CASCADE)",
                "\\dt", "\\d fruit", "\\d basket", "\\l", "\\conninfo")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for tag in ("CREATE TABLE", "CREATE INDEX", "INSERT 0 3", "UPDATE 1", "DELETE 1", "(2 rows)"):
        assert tag in out, out
    assert " 1 | apple |   0.5" in out and " 2 | pear  |   0.8" in out
    # \dt lists the table, \d shows its columns and indexes
    assert "List of relations" in out and " public | fruit  | table | " + ann.name in out
    assert 'Table "public.fruit"' in out
    assert " id     | integer |           | not null |" in out
    assert " name   | text    |           | not null |" in out
    assert " price  | real    |           |          | 1.5" in out
    assert '"fruit_pkey" PRIMARY KEY, btree (id)' in out and '"fruit_name" btree (name)' in out
    # foreign keys both ways
    assert '"basket_fruit_fkey" FOREIGN KEY (fruit) REFERENCES fruit(id) ON DELETE CASCADE' in out
    assert 'TABLE "basket" CONSTRAINT "basket_fruit_fkey" FOREIGN KEY (fruit) REFERENCES fruit(id)' in out
    # \l shows the user's databases; \conninfo the TLS connection
    assert "List of databases" in out and f" shop | {ann.name} " in out
    assert f'You are connected to database "shop" as user "{ann.name}"' in out
    assert "SSL connection (protocol: TLSv1.3" in out


def test_psql_errors_transactions_and_multiple_statements(pg_server):
    ann = account(pg_server, "notes")
    done = psql(ann, "notes", "CREATE TABLE n (id INTEGER PRIMARY KEY, body TEXT); "
                              "INSERT INTO n VALUES (1, 'one'); SELECT count(*) AS c FROM n")
    assert done.returncode == 0, done.stderr
    assert " c \n---\n 1\n" in done.stdout
    # An error names its SQLSTATE-backed message; the statements after it in a Query do not run.
    done = psql(ann, "notes", "INSERT INTO n VALUES (2, 'two'); INSERT INTO n VALUES (1, 'dup'); "
                              "INSERT INTO n VALUES (3, 'three')")
    assert done.returncode != 0 and "UNIQUE constraint failed" in done.stderr
    done = psql(ann, "notes", "BEGIN", "INSERT INTO n VALUES (10, 'gone')", "ROLLBACK",
                "SELECT string_agg(id, ',') AS ids FROM (SELECT id FROM n ORDER BY id)", "\\d nosuch")
    assert "1,2\n" in done.stdout, done.stdout + done.stderr
    assert 'Did not find any relation named "nosuch"' in done.stderr
    # errors carry SQLSTATE and, where SQLite names a token, its position
    done = psql(ann, "notes", "\\set VERBOSITY verbose", "SELECT nosuch FROM n")
    assert "ERROR:  42703: no such column: nosuch" in done.stderr, done.stderr
    assert "LINE 1: SELECT nosuch FROM n\n               ^" in done.stderr


def test_psql_denials(pg_server):
    ann = account(pg_server, "private")
    bob = account(pg_server)
    wrong = psql(ann, "private", "SELECT 1", password="not-the-password")
    assert wrong.returncode != 0 and f'password authentication failed for user "{ann.name}"' in wrong.stderr
    other = psql(bob, f"{ann.name}/private", "SELECT 1")
    assert other.returncode != 0 and "does not exist" in other.stderr
    provision(pg_server, grants=[(ann.name, "private", bob.name, "read")])
    assert psql(ann, "private", "CREATE TABLE t (x INTEGER)", "INSERT INTO t VALUES (7)").returncode == 0
    read = psql(bob, f"{ann.name}/private", "SELECT x FROM t")
    assert read.returncode == 0 and " 7\n" in read.stdout, read.stderr
    write = psql(bob, f"{ann.name}/private", "INSERT INTO t VALUES (8)")
    assert write.returncode != 0 and "ERROR" in write.stderr
