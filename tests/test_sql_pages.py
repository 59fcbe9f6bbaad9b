"""The SQL pages at /sql over real HTTP: the database list (size, access, grants), create,
share and unshare, drop; the console: the schema beside the editor (tables, columns,
types, indexes), scripts of several statements (each result in a grid, the first error
inline with its SQLSTATE and what did not run; the page itself is a 200), NULL and
bytea shown, CSV export, CSV import into a new table (types inferred, or all text) and
onto an existing one (all rows or none); CSRF refused, another user's database out of
reach, read access cannot write."""

from __future__ import annotations

import html
import re

from conftest import AgoraServer


class Browser:
    def __init__(self, server: AgoraServer):
        self.name, password = server.create_user()
        self.http = server.client()
        self.http.headers["Accept"] = "text/html"
        form = self.http.get("/login")
        response = self.http.post("/login", data={"username": self.name, "password": password,
                                                  "csrf_token": self._csrf(form.text), "next": "/sql"})
        assert response.status_code == 303, response.text
        self.csrf = self._csrf(self.http.get("/sql").text)

    @staticmethod
    def _csrf(page: str) -> str:
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match, page[:2000]
        return html.unescape(match.group(1))

    def post(self, path: str, **data: str):
        return self.http.post(path, data={"csrf_token": self.csrf, **data})

    def run(self, db: str, sql: str):
        return self.post("/sql/console", db=db, sql=sql)

    def upload(self, db: str, content: bytes, filename: str = "data.csv", **data: str):
        return self.http.post("/sql/import", data={"csrf_token": self.csrf, "db": db, **data},
                              files={"file": (filename, content, "text/csv")})


def statuses(page: str) -> list[str]:
    return [html.unescape(s).strip() for s in re.findall(r'class="muted sql-status">([^<]*)<', page)]


def test_list_console_share_and_drop(server):
    ann, bob = Browser(server), Browser(server)
    assert 'id="no-databases"' in ann.http.get("/sql").text
    assert "/sql" in ann.http.get("/dashboard").text
    made = ann.post("/sql/databases", name="pages")
    assert made.status_code == 303 and made.headers["location"] == f"/sql/console?db={ann.name}%2Fpages"
    page = ann.http.get(made.headers["location"])
    assert page.status_code == 200 and 'id="console"' in page.text and "/static/sql/sql.js" in page.text
    assert 'id="no-tables"' in page.text
    db = f"{ann.name}/pages"
    # a script: each statement's result, the schema beside it afterwards
    result = ann.run(db, "CREATE TABLE t (id serial PRIMARY KEY, s text NOT NULL DEFAULT '', b bytea);\n"
                         "CREATE INDEX t_s ON t (s);\n"
                         "INSERT INTO t (s, b) VALUES ('<b>x</b>', '\\xcafe'), ('', NULL);\n"
                         "SELECT id, s, b, NULL AS n FROM t ORDER BY id;")
    assert result.status_code == 200
    assert statuses(result.text) == ["CREATE TABLE", "CREATE INDEX", "INSERT 0 2", "SELECT 2"]
    assert "&lt;b&gt;x&lt;/b&gt;" in result.text and "\\xcafe" in result.text and 'class="null">NULL' in result.text
    schema = result.text.split('id="sql-schema"')[1].split("</aside>")[0]
    assert 'data-table="t"' in schema and 'data-column="id"' in schema and "integer" in schema and "PK" in schema
    assert "t_pkey" in schema and "t_s" in schema and 'id="no-tables"' not in schema
    # the first error stops the script; what ran before stays (each statement commits)
    error = ann.run(db, "INSERT INTO t (s) VALUES ('kept'); SELECT * FROM nope; INSERT INTO t (s) VALUES ('not run')")
    assert error.status_code == 200 and 'id="sql-error"' in error.text and "42P01" in error.text
    assert statuses(error.text) == ["INSERT 0 1"] and 'id="sql-not-run"' in error.text
    assert "SELECT * FROM nope" in error.text  # the script stays in the editor
    left_open = ann.run(db, "BEGIN; INSERT INTO t (s) VALUES ('rolled back')")
    assert 'id="sql-rolled-back"' in left_open.text
    assert "SELECT 1" in ann.run(db, "SELECT count(*) FROM t WHERE s IN ('kept')").text
    assert ann.run(db, "SELECT count(*) FROM t WHERE s IN ('not run', 'rolled back')").text.count(">0<") == 1
    exported = ann.post("/sql/export", db=db, sql="SELECT id, s FROM t ORDER BY id")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert exported.text == "id,s\r\n1,<b>x</b>\r\n2,\r\n3,kept\r\n"
    not_exported = ann.post("/sql/export", db=db, sql="DELETE FROM t")
    assert not_exported.status_code == 200 and 'id="sql-error"' in not_exported.text
    several = ann.post("/sql/export", db=db, sql="SELECT 1; SELECT 2")
    assert 'id="sql-error"' in several.text and "one statement" in several.text
    assert "SELECT 3" in ann.run(db, "SELECT * FROM t").text
    # CSRF
    assert ann.http.post("/sql/console", data={"db": db, "sql": "DROP TABLE t"}).status_code == 403
    assert ann.http.post("/sql/drop", data={"db": db}).status_code == 403
    assert ann.http.post("/sql/import", data={"db": db}, files={"file": ("x.csv", b"a\n1\n")}).status_code == 403
    # bob cannot see it, until shared (read), and then cannot write
    assert bob.http.get("/sql/console", params={"db": db}).status_code == 404
    assert bob.run(db, "SELECT 1").status_code == 404
    assert ann.post("/sql/grants", db=db, user=bob.name, access="read").status_code == 303
    listing = ann.http.get("/sql").text
    assert f"{bob.name} (read)" in listing
    assert db in bob.http.get("/sql").text
    assert "SELECT 1" in bob.run(db, "SELECT count(*) FROM t").text
    denied = bob.run(db, "DELETE FROM t")
    assert 'id="sql-error"' in denied.text and "42501" in denied.text
    assert 'id="import"' not in bob.http.get("/sql/console", params={"db": db}).text
    assert bob.post("/sql/drop", db=db).status_code == 403
    assert ann.post("/sql/revoke", db=db, user=bob.name).status_code == 303
    assert bob.run(db, "SELECT 1").status_code == 404
    assert ann.post("/sql/drop", db=db).status_code == 303
    assert 'id="no-databases"' in ann.http.get("/sql").text
    assert ann.http.get("/static/sql/sql.js").status_code == 200


def test_csv_import(server):
    ann = Browser(server)
    ann.post("/sql/databases", name="imports")
    db = f"{ann.name}/imports"
    data = ('\ufeffid,name,price,when,ok,"odd, name"\r\n1,apple,1.50,2024-05-01,true,x\r\n'
            '2,"pear, green",,2024-05-02,false,\r\n3,plum,2e3,2024-05-03,TRUE,"multi\nline"\r\n').encode()
    done = ann.upload(db, data, "fruit.csv", mode="new", types="infer")
    assert done.status_code == 200 and 'id="notice"' in done.text and "3 rows" in done.text, done.text[-3000:]
    r = ann.run(db, "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'fruit' ORDER BY ordinal_position")
    assert re.findall(r"<td>([^<]+)</td><td>([^<]+)</td>", r.text) == [
        ("id", "bigint"), ("name", "text"), ("price", "numeric"), ("when", "date"), ("ok", "boolean"),
        ("odd, name", "text")]
    r = ann.run(db, 'SELECT name, price, "odd, name" FROM fruit ORDER BY id')
    assert "pear, green" in r.text and "2000" in r.text and 'class="null">NULL' in r.text and "multi\nline" in r.text
    # onto the same table (columns by the header's names, in any order); all text
    assert "2 rows" in ann.upload(db, b"name,id\nfig,4\nkiwi,5\n", mode="append", table="fruit").text
    assert "SELECT 5" in ann.run(db, "SELECT * FROM fruit").text
    # a bad row: nothing of the file is kept
    bad = ann.upload(db, b"id,name\n6,lime\nseven,lemon\n", mode="append", table="fruit")
    assert 'id="sql-error"' in bad.text and "22P02" in bad.text
    assert "SELECT 5" in ann.run(db, "SELECT * FROM fruit").text
    assert 'id="sql-error"' in ann.upload(db, b"nope\n1\n", mode="append", table="fruit").text
    texts = ann.upload(db, b"a,b\n1,x\n", mode="new", types="text", table="plain")
    assert "1 rows" in texts.text
    assert "text, text" in ann.run(db, "SELECT string_agg(data_type, ', ') FROM information_schema.columns "
                                       "WHERE table_name = 'plain'").text
    assert 'id="sql-error"' in ann.upload(db, b"a,b\n1,x\n", mode="new", table="plain").text  # exists
    assert 'id="sql-error"' in ann.upload(db, b"a,a\n1,2\n", mode="new", table="twice").text
    assert 'id="sql-error"' in ann.upload(db, b"\xff\xfe,x\n", mode="new", table="latin").text
