"""A new hosted database from an uploaded SQLite file, through every face a user has:
the HTTP API (POST /api/v1/sql/databases/{name}/sqlite, the raw file as the body), the
Python client (sync and async), `agora sql create NAME --from-sqlite FILE` and the
console's form. What arrives is read back through Agora's PostgreSQL port (psycopg) and
the HTTP query API: equal rows, ids that go on from the highest, the foreign key and the
index, grants as for any database, nobody else reaching it. A file that cannot be
converted is a 422 naming table and row, and leaves no database (nor an uploaded file)
behind; past sql.max_upload a 413, before the body is read where its size is declared.
"""

from __future__ import annotations

import asyncio
import base64
import html
import re
import sqlite3
from pathlib import Path
from typing import Iterator

import httpx
import psycopg
import pytest

from agora.client import AsyncClient, Client, Conflict, InvalidRequest, NotFound
from conftest import AgoraServer, ServerFactory
from pgwire_support import Account
from test_mail_cli import agora, logged_in, ok, refused

API = "/api/v1/sql"
PROBLEM = "application/problem+json"
SQLITE = {"Content-Type": "application/vnd.sqlite3"}
MAX_UPLOAD = 3 * 1024 * 1024  # over http.max_json_body (1 MiB): uploads are not held to it
MAX_DATABASES = 6

AUTHORS = [(1, "Ursula", 1929.5), (2, "Stanisław", None), (7, "Octavia", 1947.0)]
BOOKS = [(1, 1, "The Dispossessed", 9.99, b"\x00\x01\xff"), (2, 1, "Lathe", None, None),
         (3, 2, "Solaris", 12.5, b""), (10, 7, "Kindred", 8.0, bytes(range(256)))]


def make_sqlite(path: Path, *, padding: int = 0, trigger: bool = False, wal: bool = False) -> Path:
    """A SQLite database as an application leaves it: INTEGER PRIMARY KEYs, text, real
    and blob columns, a foreign key, an index (and ``padding`` bytes more of rows)."""
    db = sqlite3.connect(path)
    if wal:  # the file's header says WAL; the upload comes without -wal and -shm files
        db.execute("PRAGMA journal_mode = WAL")
    db.executescript("""
        PRAGMA foreign_keys = ON;
        CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL, born REAL);
        CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL REFERENCES authors (id),
                            title TEXT NOT NULL, price REAL, cover BLOB);
        CREATE INDEX books_by_title ON books (title);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
    """)
    db.executemany("INSERT INTO authors VALUES (?, ?, ?)", AUTHORS)
    db.executemany("INSERT INTO books VALUES (?, ?, ?, ?, ?)", BOOKS)
    piece = "x" * 1000
    db.executemany("INSERT INTO notes (body) VALUES (?)", [(piece,)] * (padding // 1000))
    if trigger:
        db.execute("CREATE TRIGGER stamp AFTER INSERT ON notes BEGIN UPDATE notes SET body = body WHERE id = 0; END")
    db.commit()
    db.close()
    return path


def unfit_sqlite(path: Path) -> Path:
    """A file whose INTEGER column holds text in one row: it does not convert."""
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE ok (id INTEGER PRIMARY KEY, s TEXT);"
                     "INSERT INTO ok (s) VALUES ('fine');"
                     "CREATE TABLE stock (id INTEGER PRIMARY KEY, qty INTEGER);"
                     "INSERT INTO stock VALUES (1, 5), (2, 7), (41, 'lots'), (42, 3);")
    db.commit()
    db.close()
    return path


@pytest.fixture(scope="module")
def sql_server(tmp_path_factory, backend) -> Iterator[AgoraServer]:
    factory = ServerFactory(tmp_path_factory.mktemp(f"sql-import-{backend}"), backend)
    yield factory(env={"AGORA_SQL_MAX_UPLOAD": str(MAX_UPLOAD), "AGORA_SQL_MAX_DATABASES": str(MAX_DATABASES),
                       "AGORA_SQL_ENGINE_START": "background", "AGORA_IDENTITY_ARGON2_TIME_COST": "1",
                       "AGORA_IDENTITY_ARGON2_MEMORY_KIB": "1024"})
    factory.close()


class User:
    def __init__(self, server: AgoraServer):
        self.server = server
        self.name, self.password = server.create_user()
        self.http = server.client(server.login(self.name, self.password))

    @property
    def account(self) -> Account:
        return Account(self.server, self.name, self.password)

    def upload(self, name: str, body: bytes | Iterator[bytes], headers: dict | None = None) -> httpx.Response:
        return self.http.post(f"{API}/databases/{name}/sqlite", content=body, headers=headers or SQLITE)

    def query(self, db: str, sql: str, status: int = 200) -> dict:
        response = self.http.post(f"{API}/{db}/query", json={"sql": sql})
        assert response.status_code == status, response.text
        return response.json()

    def databases(self) -> list[str]:
        return [d["ref"] for d in self.http.get(f"{API}/databases").json()]


@pytest.fixture
def ann(sql_server) -> Iterator[User]:
    user = User(sql_server)
    yield user
    user.http.close()


@pytest.fixture
def bob(sql_server) -> Iterator[User]:
    user = User(sql_server)
    yield user
    user.http.close()


def uploads_left(server: AgoraServer) -> list[Path]:
    root = server.data_dir / "sql" / "uploads"
    return sorted(root.rglob("*")) if root.exists() else []


def engine_databases(server: AgoraServer, owner: str) -> list[str] | None:
    """The owner's databases on an external engine, as PostgreSQL itself lists them
    (None on the embedded engine)."""
    url = server.env.get("AGORA_SQL_ENGINE_URL")
    if server.env.get("AGORA_SQL_ENGINE") != "external" or not url:
        return None
    with psycopg.connect(url, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                           [f"%{owner}/%"])]


def assert_converted(user: User, db: str) -> None:
    """What make_sqlite wrote, read back through the PostgreSQL port and the HTTP API."""
    with psycopg.connect(user.account.dsn(db), autocommit=True) as conn:
        assert conn.execute("SELECT id, name, born FROM authors ORDER BY id").fetchall() == AUTHORS
        assert conn.execute("SELECT id, author_id, title, price, cover FROM books ORDER BY id").fetchall() == BOOKS
        # INTEGER PRIMARY KEY: the next id goes on from the highest
        assert conn.execute("INSERT INTO authors (name) VALUES ('new') RETURNING id").fetchone() == (8,)
        assert conn.execute("INSERT INTO books (author_id, title) VALUES (8, 'x') RETURNING id").fetchone() == (11,)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO books (author_id, title) VALUES (999, 'orphan')")
        indexes = [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'books'")]
        assert "books_by_title" in indexes
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'books'").fetchone()[0]
        assert owner.endswith(user.name)
        conn.execute("DELETE FROM books WHERE id = 11")
        conn.execute("DELETE FROM authors WHERE id = 8")
    rows = user.query(db, "SELECT id, author_id, title, price, cover FROM books ORDER BY id")
    assert rows["types"] == ["int8", "int8", "text", "float8", "bytea"]
    assert rows["rows"] == [[i, a, t, p, None if c is None else {"$base64": base64.b64encode(c).decode()}]
                            for i, a, t, p, c in BOOKS]


def test_api_upload_reads_back_everywhere_and_grants_work(ann, bob, sql_server, tmp_path):
    source = make_sqlite(tmp_path / "library.sqlite", trigger=True)
    response = ann.upload("library", source.read_bytes())
    assert response.status_code == 201, response.text
    made = response.json()
    assert (made["name"], made["owner"], made["ref"], made["access"]) == ("library", ann.name, f"{ann.name}/library",
                                                                            "owner")
    assert made["size"] > 0 and made["grants"] == []
    assert response.headers["location"] == f"{API}/databases/library"
    report = made["report"]
    assert [(t["name"], t["rows"]) for t in report["tables"]] == [("authors", 3), ("books", 4), ("notes", 0)]
    assert report["rows"] == 7 and "books_by_title" in report["indexes"]
    books = {c["name"]: (c["declared"], c["type"]) for c in report["tables"][1]["columns"]}
    assert books["title"] == ("TEXT", "text") and books["cover"][0] == "BLOB" and books["price"][0] == "REAL"
    assert any("stamp" in w for w in report["warnings"]), report["warnings"]
    assert ann.http.get(f"{API}/databases/library").json()["ref"] == f"{ann.name}/library"
    assert_converted(ann, "library")
    # nobody else reaches it ...
    ref = f"{ann.name}:library"
    assert bob.query(ref, "SELECT count(*) FROM books", status=404)["status"] == 404
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(bob.account.dsn(f"{ann.name}/library")).close()
    # ... until it is shared, as any database: read, then write
    assert ann.http.put(f"{API}/databases/library/grants/{bob.name}", json={"access": "read"}).status_code == 200
    assert bob.query(ref, "SELECT title FROM books WHERE id = 3")["rows"] == [["Solaris"]]
    assert bob.query(ref, "DELETE FROM books", status=403)["sqlstate"] == "42501"
    with psycopg.connect(bob.account.dsn(f"{ann.name}/library"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM authors").fetchone() == (3,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE authors SET name = 'x'")
    assert ann.http.put(f"{API}/databases/library/grants/{bob.name}", json={"access": "write"}).status_code == 200
    assert bob.query(ref, "UPDATE books SET price = 1 WHERE id = 2")["rows_affected"] == 1
    assert ann.http.delete(f"{API}/databases/library/grants/{bob.name}").status_code == 204
    assert bob.query(ref, "SELECT 1", status=404)
    # a name taken is a 409, before the body is read
    taken = ann.upload("library", source.read_bytes())
    assert taken.status_code == 409 and taken.headers["content-type"] == PROBLEM
    assert uploads_left(sql_server) == []


def test_a_file_that_cannot_be_converted_leaves_nothing(ann, sql_server, tmp_path):
    # a value that does not fit its column: 422 naming table, row and column
    response = ann.upload("stock", unfit_sqlite(tmp_path / "stock.sqlite").read_bytes())
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM, response.text
    body = response.json()
    assert (body["table"], body["row"], body["column"]) == ("stock", 41, "qty"), body
    assert "stock" in body["detail"] and "41" in body["detail"] and "lots" in body["detail"]
    assert body["title"] == "SQLite conversion failed"
    # not SQLite at all; a SQLite file cut short
    good = make_sqlite(tmp_path / "good.sqlite", padding=200_000).read_bytes()
    cut = good[:len(good) // 3] + b"\x07" * 5000
    for name, content in (("junk", b"PK\x03\x04 not a database at all" * 100), ("cut", cut)):
        response = ann.upload(name, content)
        assert response.status_code == 422 and response.headers["content-type"] == PROBLEM, (name, response.text)
        assert response.json()["detail"]
    assert "not a SQLite database" in ann.upload("junk", b"garbage" * 10).json()["detail"]
    assert ann.databases() == []
    for name in ("stock", "junk", "cut"):
        assert ann.http.get(f"{API}/databases/{name}").status_code == 404
        assert ann.http.post(f"{API}/{name}/query", json={"sql": "SELECT 1"}).status_code == 404
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(ann.account.dsn("stock")).close()
    assert engine_databases(sql_server, ann.name) in ([], None)
    # the name is free again
    assert ann.upload("stock", good).status_code == 201
    found = engine_databases(sql_server, ann.name)
    assert found is None or [d.rsplit("/", 1)[1] for d in found] == ["stock"], found
    assert uploads_left(sql_server) == []


def test_limits_and_refusals(ann, sql_server, tmp_path):
    big = make_sqlite(tmp_path / "big.sqlite", padding=MAX_UPLOAD + 100_000).read_bytes()
    assert len(big) > MAX_UPLOAD
    # declared too big: refused before the body is read
    declared = ann.upload("big", big)
    assert declared.status_code == 413 and declared.headers["content-type"] == PROBLEM
    assert "sql.max_upload" in declared.json()["detail"]

    def pieces() -> Iterator[bytes]:  # chunked: no size declared, refused once past it
        for at in range(0, len(big), 256 * 1024):
            yield big[at:at + 256 * 1024]

    try:
        streamed = ann.upload("big", pieces())
        assert streamed.status_code == 413
    except httpx.TransportError:
        pass  # the server answered and closed while the client was still sending
    # over http.max_json_body (1 MiB) but under sql.max_upload: taken
    medium = make_sqlite(tmp_path / "medium.sqlite", padding=MAX_UPLOAD // 2).read_bytes()
    assert len(medium) > 1024 * 1024
    made = ann.upload("medium", medium)
    assert made.status_code == 201, made.text
    assert made.json()["report"]["tables"][2] == {**made.json()["report"]["tables"][2], "name": "notes",
                                                  "rows": (MAX_UPLOAD // 2) // 1000}
    small = make_sqlite(tmp_path / "small.sqlite").read_bytes()
    # what it is sent as
    for kind in ("application/octet-stream", "application/x-sqlite3"):
        assert ann.upload(f"as-{kind.split('/')[1][:5]}", small, {"Content-Type": kind}).status_code == 201
    for kind in ("application/json", "text/plain", "multipart/form-data; boundary=x"):
        refusal = ann.upload("typed", small, {"Content-Type": kind})
        assert refusal.status_code == 415 and refusal.headers["content-type"] == PROBLEM, (kind, refusal.text)
    # names, and how many databases one may have
    assert ann.upload("Bad Name", small).status_code == 422
    assert ann.upload("x" * 64, small).status_code == 422
    long_ref = ann.upload("x" * 60, small)  # owner/name past PostgreSQL's 63 bytes
    assert long_ref.status_code == 422 and "63 bytes" in long_ref.json()["detail"], long_ref.text
    while len(ann.databases()) < MAX_DATABASES:
        assert ann.http.post(f"{API}/databases", json={"name": f"fill{len(ann.databases())}"}).status_code == 201
    too_many = ann.upload("one-more", small)
    assert too_many.status_code == 413 and "sql.max_databases" in too_many.json()["detail"]
    assert "one-more" not in " ".join(ann.databases()) and "big" not in " ".join(ann.databases())
    assert ann.http.post(f"{API}/databases/x/sqlite", content=small, headers=SQLITE).status_code == 413
    anonymous = sql_server.client()
    assert anonymous.post(f"{API}/databases/anon/sqlite", content=small, headers=SQLITE).status_code == 401
    anonymous.close()
    assert uploads_left(sql_server) == []


def test_python_client_sync_and_async(sql_server, tmp_path):
    name, password = sql_server.create_user()
    source = make_sqlite(tmp_path / "shop.sqlite", trigger=True)
    with Client(sql_server.url) as client:
        client.login(name, password)
        made, report = client.sql.create_from_sqlite("shop", source)
        assert (made.ref, made.access) == (f"{name}/shop", "owner") and made.size > 0
        assert [(t.name, t.rows) for t in report.tables] == [("authors", 3), ("books", 4), ("notes", 0)]
        assert report.rows == 7 and "books_by_title" in report.indexes and any("stamp" in w for w in report.warnings)
        assert {c.name: c.type for c in report.tables[0].columns}["name"] == "text"
        assert client.sql.query("shop", "SELECT title FROM books ORDER BY id").rows == [[b[2]] for b in BOOKS]
        wal = make_sqlite(tmp_path / "wal.sqlite", wal=True)
        assert wal.read_bytes()[18:20] == b"\x02\x02"
        with open(wal, "rb") as handle:  # a file object, as well as a path
            again, _ = client.sql.create_from_sqlite("shop2", handle)
        assert again.name == "shop2"
        assert client.sql.query("shop2", "SELECT cover FROM books WHERE id = 10").rows == [[bytes(range(256))]]
        with pytest.raises(Conflict):
            client.sql.create_from_sqlite("shop", source)
        with pytest.raises(InvalidRequest) as refused_:
            client.sql.create_from_sqlite("broken", unfit_sqlite(tmp_path / "broken.sqlite"))
        assert refused_.value.status == 422 and refused_.value.problem["row"] == 41
        with pytest.raises(NotFound):
            client.sql.get("broken")

    async def run_async() -> None:
        async with AsyncClient(sql_server.url) as client:
            await client.login(name, password)
            made, report = await client.sql.create_from_sqlite("ashop", str(source))
            assert made.ref == f"{name}/ashop" and report.tables[1].rows == 4
            rows = (await client.sql.query("ashop", "SELECT id, name FROM authors ORDER BY id")).rows
            assert rows == [[a[0], a[1]] for a in AUTHORS]
            with pytest.raises(InvalidRequest):
                await client.sql.create_from_sqlite("abroken", tmp_path / "broken.sqlite")
            assert sorted(d.name for d in await client.sql.databases()) == ["ashop", "shop", "shop2"]

    asyncio.run(run_async())
    account = Account(sql_server, name, password)
    with psycopg.connect(account.dsn("ashop"), autocommit=True) as conn:
        assert conn.execute("INSERT INTO authors (name) VALUES ('next') RETURNING id").fetchone() == (8,)


def test_cli_create_from_sqlite(sql_server, tmp_path):
    home, name, _ = logged_in(sql_server, tmp_path, "cli")
    source = make_sqlite(tmp_path / "lib.sqlite", trigger=True)
    result = ok(agora("sql", "create", "lib", "--from-sqlite", str(source), home=home))
    lines = result.stdout.splitlines()
    assert lines[0] == f"created {name}/lib from lib.sqlite: 3 tables, 7 rows"
    assert re.match(r"authors\s+3 rows\s+id bigint", lines[1]) and re.match(r"books\s+4 rows", lines[2])
    assert any(line.startswith("indexes: ") and "books_by_title" in line for line in lines)
    assert "warning: trigger 'stamp'" in result.stderr
    out = ok(agora("sql", "query", "lib", "SELECT title FROM books ORDER BY id", home=home)).stdout
    assert [line.strip() for line in out.splitlines()[2:-1]] == [b[2] for b in BOOKS]
    message = refused(agora("sql", "create", "bad", "--from-sqlite", str(unfit_sqlite(tmp_path / "bad.sqlite")),
                            home=home))
    assert "stock" in message and "41" in message and "qty" in message
    assert "already have" in refused(agora("sql", "create", "lib", "--from-sqlite", str(source), home=home))
    missing = agora("sql", "create", "x", "--from-sqlite", str(tmp_path / "nope.sqlite"), home=home)
    assert missing.returncode == 2 and "nope.sqlite" in missing.stderr
    assert "bad" not in ok(agora("sql", "ls", home=home)).stdout
    assert ok(agora("sql", "create", "plain", home=home)).stdout.strip() == f"created {name}/plain"


class Browser:
    def __init__(self, server: AgoraServer):
        self.name, self.password = server.create_user()
        self.http = server.client()
        self.http.headers["Accept"] = "text/html"
        form = self.http.get("/login")
        response = self.http.post("/login", data={"username": self.name, "password": self.password,
                                                  "csrf_token": self._csrf(form.text), "next": "/sql"})
        assert response.status_code == 303, response.text
        self.csrf = self._csrf(self.http.get("/sql").text)

    @staticmethod
    def _csrf(page: str) -> str:
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match, page[:2000]
        return html.unescape(match.group(1))

    def upload(self, content: bytes, filename: str = "data.sqlite", csrf: str | None = None, **data: str):
        return self.http.post("/sql/import/sqlite", data={"csrf_token": self.csrf if csrf is None else csrf, **data},
                              files={"file": (filename, content, "application/vnd.sqlite3")})


def test_console_creates_from_a_sqlite_file(sql_server, tmp_path):
    ann = Browser(sql_server)
    page = ann.http.get("/sql").text
    form = page.split('id="create-from-sqlite"')[1].split("</form>")[0]
    assert 'enctype="multipart/form-data"' in page and 'type="file"' in form and 'name="csrf_token"' in form
    source = make_sqlite(tmp_path / "Library.sqlite", padding=MAX_UPLOAD // 2, trigger=True).read_bytes()
    assert len(source) > 1024 * 1024  # over http.max_json_body: the form is read against sql.max_upload
    done = ann.upload(source, "Library.sqlite", name="shelf")
    assert done.status_code == 200, done.text[-3000:]
    assert f"Created {ann.name}/shelf" in done.text and 'id="open-console"' in done.text
    tables = done.text.split('id="import-tables"')[1].split("</table>")[0]
    assert re.search(r'data-table="books">\s*<td>books</td>\s*<td class="rows">4</td>', tables)
    assert 'data-column="cover"' in tables and "BLOB" in tables
    assert "stamp" in done.text.split('id="import-warnings"')[1]
    account = Account(sql_server, ann.name, ann.password)
    with psycopg.connect(account.dsn("shelf"), autocommit=True) as conn:
        assert conn.execute("SELECT id, name, born FROM authors ORDER BY id").fetchall() == AUTHORS
    console = ann.http.get(f"/sql/console?db={ann.name}%2Fshelf").text
    assert 'data-table="books"' in console
    # the name defaults to the file's
    assert ann.upload(make_sqlite(tmp_path / "small.sqlite").read_bytes(), "My Stock.sqlite").status_code == 200
    assert f'data-db="{ann.name}/my-stock"' in ann.http.get("/sql").text
    # errors are shown on the page, and no database is left
    failed = ann.upload(unfit_sqlite(tmp_path / "unfit.sqlite").read_bytes(), "unfit.sqlite", name="unfit")
    assert failed.status_code == 422 and 'id="import-error"' in failed.text
    where = html.unescape(failed.text.split('id="import-where"')[1].split("</p>")[0])
    assert "stock" in where and "41" in where and "qty" in where
    assert ann.upload(b"not sqlite" * 50, "junk.sqlite", name="junk").status_code == 422
    taken = ann.upload(source, "again.sqlite", name="shelf")
    assert taken.status_code == 409 and "already have" in taken.text
    listing = ann.http.get("/sql").text
    assert "/unfit" not in listing and "/junk" not in listing
    # the form's token, and the size
    assert ann.upload(source, "x.sqlite", csrf="forged", name="forged").status_code == 403
    too_big = make_sqlite(tmp_path / "big.sqlite", padding=MAX_UPLOAD + 10_000).read_bytes()
    try:
        assert ann.upload(too_big, "big.sqlite", name="big").status_code == 413
    except httpx.TransportError:
        pass  # refused and closed while the form was still being sent
    listing = ann.http.get("/sql").text
    assert "/forged" not in listing and "/big" not in listing
    assert uploads_left(sql_server) == []
    # another user sees none of it
    bob = Browser(sql_server)
    assert 'id="no-databases"' in bob.http.get("/sql").text
    assert bob.http.get(f"/sql/console?db={ann.name}%2Fshelf").status_code == 404
