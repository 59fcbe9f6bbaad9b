"""`agora sql ...` as a subprocess against a real server, logged in with `agora login`:
create, ls, query (table, --json, --csv, parameters), grant/revoke, shell (statements
from stdin, meta-commands, errors inline), url, drop; refusals are one line."""

from __future__ import annotations

import csv
import io
import json

from test_mail_cli import agora, logged_in, ok, refused


def test_create_query_share_shell_and_drop(server, tmp_path):
    home, name, _ = logged_in(server, tmp_path, "ann")
    other_home, other, _ = logged_in(server, tmp_path, "bob")
    assert ok(agora("sql", "create", "notes", home=home)).stdout.strip() == f"created {name}/notes"
    out = ok(agora("sql", "query", "notes", "CREATE TABLE n (id INTEGER PRIMARY KEY, body TEXT, b BLOB)", home=home)).stdout
    assert out.strip() == "CREATE TABLE"
    ok(agora("sql", "query", "notes", "INSERT INTO n (body, b) VALUES (?, x'00ff'), ($2, NULL)",
             "-p", "hello", "-p", '"world"', home=home))
    table = ok(agora("sql", "query", "notes", "SELECT id, body, b FROM n ORDER BY id", home=home)).stdout
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].split(" | ")] == ["id", "body", "b"] and "\\x00ff" in lines[2] and lines[-1] == "(2 rows)"
    data = json.loads(ok(agora("sql", "query", "notes", "SELECT id, body FROM n ORDER BY id", "--json", home=home)).stdout)
    assert data["rows"] == [[1, "hello"], [2, "world"]] and data["types"] == ["INTEGER", "TEXT"]
    rows = list(csv.reader(io.StringIO(ok(agora("sql", "query", "notes", "SELECT id, body FROM n", "--csv", home=home)).stdout)))
    assert rows == [["id", "body"], ["1", "hello"], ["2", "world"]]
    assert "no such table" in refused(agora("sql", "query", "notes", "SELECT * FROM nope", home=home))
    # shell: statements over several lines, meta-commands, an error does not end it
    script = "\\dt\nSELECT count(*) AS n\n  FROM n;\nSELECT * FROM nope;\nINSERT INTO n (body) VALUES ('three');\n\\d n\n\\q\n"
    result = ok(agora("sql", "shell", "notes", home=home, input=script))
    assert any(line.split() == ["n", "|", "table"] for line in result.stdout.splitlines())
    assert "(1 row)" in result.stdout and "INSERT 0 1" in result.stdout and "body" in result.stdout
    assert "ERROR: no such table: nope (SQLSTATE 42P01)" in result.stderr
    # sharing
    ref = f"{name}/notes"
    assert "not shared with you" in refused(agora("sql", "query", ref, "SELECT 1", home=other_home))
    ok(agora("sql", "grant", "notes", other, home=home))
    listing = ok(agora("sql", "ls", home=home)).stdout
    assert ref in listing and f"{other}:read" in listing
    assert "read" in ok(agora("sql", "ls", home=other_home)).stdout
    assert ok(agora("sql", "query", ref, "SELECT count(*) FROM n", home=other_home)).stdout.splitlines()[2].strip() == "3"
    refused(agora("sql", "query", ref, "DELETE FROM n", home=other_home))
    ok(agora("sql", "revoke", "notes", other, home=home))
    refused(agora("sql", "query", ref, "SELECT 1", home=other_home))
    # url: a postgresql:// URL when the server has a postgres listener, else a clear refusal
    result = agora("sql", "url", "notes", home=home)
    if server.ports.get("postgres"):
        assert ok(result).stdout.strip() == f"postgresql://{name}@127.0.0.1:{server.ports['postgres']}/{name}%2Fnotes?sslmode=require"
    else:
        assert "PostgreSQL" in refused(result)
    ok(agora("sql", "drop", "notes", "--yes", home=home))
    assert ok(agora("sql", "ls", home=home)).stdout.strip() == "no databases"
