"""The SQL pages at /sql over real HTTP: the database list (size, access, grants), create,
share and unshare, drop, the console (results table, errors inline with SQLSTATE (the page itself is a 200), NULL
and blobs shown), CSRF refused, another user's database out of reach, the dashboard card."""

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


def test_list_console_share_and_drop(server):
    ann, bob = Browser(server), Browser(server)
    assert 'id="no-databases"' in ann.http.get("/sql").text
    assert "/sql" in ann.http.get("/dashboard").text
    made = ann.post("/sql/databases", name="pages")
    assert made.status_code == 303 and made.headers["location"] == f"/sql/console?db={ann.name}%2Fpages"
    page = ann.http.get(made.headers["location"])
    assert page.status_code == 200 and 'id="console"' in page.text and "/static/sql/sql.js" in page.text
    assert ann.run(f"{ann.name}/pages", "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT, b BLOB)").status_code == 200
    ann.run(f"{ann.name}/pages", "INSERT INTO t (s, b) VALUES ('<b>x</b>', x'cafe'), (NULL, NULL)")
    result = ann.run(f"{ann.name}/pages", "SELECT id, s, b FROM t ORDER BY id")
    assert result.status_code == 200
    assert "SELECT 2" in result.text and "&lt;b&gt;x&lt;/b&gt;" in result.text and "\\xcafe" in result.text
    assert 'class="null">NULL' in result.text
    exported = ann.post("/sql/export", db=f"{ann.name}/pages", sql="SELECT id, s FROM t ORDER BY id")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert exported.text == "id,s\r\n1,<b>x</b>\r\n2,\r\n"
    not_exported = ann.post("/sql/export", db=f"{ann.name}/pages", sql="DELETE FROM t")
    assert not_exported.status_code == 200 and 'id="sql-error"' in not_exported.text
    error = ann.run(f"{ann.name}/pages", "SELECT * FROM nope")
    assert error.status_code == 200 and 'id="sql-error"' in error.text and "42P01" in error.text
    assert "SELECT * FROM nope" in error.text  # the statement stays in the editor
    # CSRF
    assert ann.http.post("/sql/console", data={"db": f"{ann.name}/pages", "sql": "DROP TABLE t"}).status_code == 403
    assert ann.http.post("/sql/drop", data={"db": f"{ann.name}/pages"}).status_code == 403
    # bob cannot see it, until shared (read), and then cannot write
    assert bob.http.get("/sql/console", params={"db": f"{ann.name}/pages"}).status_code == 404
    assert bob.run(f"{ann.name}/pages", "SELECT 1").status_code == 404
    assert ann.post("/sql/grants", db=f"{ann.name}/pages", user=bob.name, access="read").status_code == 303
    listing = ann.http.get("/sql").text
    assert f"{bob.name} (read)" in listing
    assert f"{ann.name}/pages" in bob.http.get("/sql").text
    assert "SELECT 1" in bob.run(f"{ann.name}/pages", "SELECT count(*) FROM t").text
    denied = bob.run(f"{ann.name}/pages", "DELETE FROM t")
    assert 'id="sql-error"' in denied.text and "42501" in denied.text
    assert bob.post("/sql/drop", db=f"{ann.name}/pages").status_code == 403
    assert ann.post("/sql/revoke", db=f"{ann.name}/pages", user=bob.name).status_code == 303
    assert bob.run(f"{ann.name}/pages", "SELECT 1").status_code == 404
    assert ann.post("/sql/drop", db=f"{ann.name}/pages").status_code == 303
    assert 'id="no-databases"' in ann.http.get("/sql").text
    assert ann.http.get("/static/sql/sql.js").status_code == 200
