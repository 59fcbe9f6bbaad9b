"""Real Agora servers for the tests: `agora serve` subprocesses on ephemeral ports.

Every server runs in its own temporary data dir. On PostgreSQL (when
AGORA_TEST_DATABASE_URL is set) every server also gets a database of its own, created
fresh from that URL and dropped afterwards, so tests never see each other's users.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sized, TypeVar

import httpx
import pytest

from agora.config import LISTENERS

T = TypeVar("T")

ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)
START_TIMEOUT = 30.0


def pytest_configure(config: pytest.Config) -> None:
    # Test servers run as root start their PostgreSQL as an unprivileged user, who must
    # be able to reach the data dirs: every pytest start makes /tmp/pytest-of-root
    # private again, so the tests live under a directory of this run's own instead
    # (xdist's workers get subdirectories of the controller's).
    if config.option.basetemp is None and os.geteuid() == 0:
        import tempfile
        config.option.basetemp = os.path.join(tempfile.mkdtemp(prefix="agora-tests-"), "t")


def pg_admin_url() -> str | None:
    return os.environ.get("AGORA_TEST_DATABASE_URL") or None


def _pg(url: str, statement: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    # In a thread of its own, so that it works from inside a running event loop too.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def create_pg_database() -> str:
    """A fresh, empty PostgreSQL database; returns its URL."""
    base = pg_admin_url()
    assert base
    name = "agora_t_" + secrets.token_hex(6)
    _pg(base, f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    base = pg_admin_url()
    assert base
    name = url.rsplit("/", 1)[1]
    _pg(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_engine_objects(prefix: str) -> None:
    """What a test server made on the external engine: its databases, then its roles."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(pg_admin_url())
        try:
            like = prefix.replace("_", "\\_") + "%"
            for (name,) in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", like):
                await conn.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name.replace('"', '""'))
            roles = [r[0] for r in await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE $1", like)]
            for name in roles:
                await conn.execute('DROP ROLE IF EXISTS "%s"' % name.replace('"', '""'))
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """``predicate()`` once it is truthy, polling for at most ``timeout`` seconds; then
    its last value, for the caller to assert on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a server or CLI: ours without the developer's AGORA_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(extra)
    return env


class AgoraServer:
    """One `agora serve` process and what a test needs to talk to it."""

    def __init__(self, data_dir: Path, *, database_url: str = "", env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()):
        self.data_dir = data_dir
        self.database_url = database_url
        self.env = clean_env(AGORA_ADMIN_PASSWORD=ADMIN_PASSWORD, **(env or {}))
        # Most test servers never use hosted SQL: their PostgreSQL starts only if they do.
        self.env.setdefault("AGORA_SQL_ENGINE_START", "lazy")
        if database_url:
            self.env["AGORA_DATABASE_URL"] = database_url
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.admin_password = ADMIN_PASSWORD
        self._admin_token: str | None = None

    # -- lifecycle --------------------------------------------------------------------

    def command(self) -> list[str]:
        return [sys.executable, "-m", "agora", "serve", "--data-dir", str(self.data_dir),
                *(arg for name in LISTENERS for arg in (f"--{name}-port", "0")), *self.args]

    def start(self) -> "AgoraServer":
        ports_file = self.data_dir / "run" / "ports.json"
        ports_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agora serve exited with {self.proc.returncode}:\n{self.log()}")
            # The contract: ports.json is written, then a line containing "ready" logged.
            if ports_file.exists() and "ready" in self.log():
                self.ports = json.loads(ports_file.read_text())
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"agora serve did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # The server's PostgreSQL dies with it; one a CLI command (or a test's provisioning)
        # started while the server ran lazily is ended here (immediate shutdown).
        try:
            pid = int((self.data_dir / "sql" / "pg" / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- talking to it ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['https']}"

    def client(self, token: str | None = None, *, local_address: str | None = None,
               https: bool = False, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.HTTPTransport(local_address=local_address, verify=False) if local_address else None
        return httpx.Client(base_url=self.https_url if https else self.url, headers=headers,
                            transport=transport, verify=False, timeout=30, **kwargs)

    def login(self, name: str, password: str, *, local_address: str | None = None,
              label: str = "test") -> str:
        with self.client(local_address=local_address) as http:
            response = http.post("/api/v1/tokens", json={"username": name, "password": password, "name": label})
        assert response.status_code == 201, response.text
        return response.json()["token"]

    @property
    def admin_token(self) -> str:
        if self._admin_token is None:
            self._admin_token = self.login("admin", self.admin_password, label="tests-admin")
        return self._admin_token

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def create_user(self, name: str | None = None, password: str | None = None,
                    role: str = "user") -> tuple[str, str]:
        name = name or "u" + secrets.token_hex(4)
        password = password or "pw-" + secrets.token_hex(8)
        with self.admin() as http:
            response = http.post("/api/v1/users", json={"name": name, "password": password, "role": role})
        assert response.status_code == 201, response.text
        return name, password

    def cli(self, *args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `agora ARGS...` against this server's data dir (and database)."""
        run_env = clean_env(**(env or {}))
        if self.database_url:
            run_env["AGORA_DATABASE_URL"] = self.database_url
        run_env["AGORA_DATA_DIR"] = str(self.data_dir)
        return subprocess.run([sys.executable, "-m", "agora", *args], input=input, env=run_env,
                              capture_output=True, text=True, timeout=timeout)


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    if request.param == "postgresql" and not pg_admin_url():
        pytest.skip("PostgreSQL backend: AGORA_TEST_DATABASE_URL is not set (.ci/run sets it)")
    return request.param


class ServerFactory:
    def __init__(self, root: Path, backend: str):
        self.root = root
        self.backend = backend
        self.servers: list[AgoraServer] = []
        self.databases: list[str] = []
        self.engine_prefixes: list[str] = []

    def __call__(self, *, start: bool = True, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), database_url: str | None = None) -> AgoraServer:
        if database_url is None:
            database_url = ""
            if self.backend == "postgresql":
                database_url = create_pg_database()
                self.databases.append(database_url)
        data_dir = self.root / f"server{len(self.servers)}"
        env = dict(env or {})
        if self.backend == "postgresql" and env.get("AGORA_SQL_ENGINE", "external") == "external":
            # Hosted SQL on the same PostgreSQL server as an external engine, with names of
            # this server's own (dropped at the end).
            prefix = "t" + secrets.token_hex(4) + "_"
            env.setdefault("AGORA_SQL_ENGINE", "external")
            env.setdefault("AGORA_SQL_ENGINE_URL", pg_admin_url() or "")
            env.setdefault("AGORA_SQL_ROLE_PREFIX", prefix)
            env.setdefault("AGORA_SQL_DATABASE_PREFIX", prefix)
        if env.get("AGORA_SQL_ENGINE") == "external" and env.get("AGORA_SQL_ROLE_PREFIX"):
            self.engine_prefixes.append(env["AGORA_SQL_ROLE_PREFIX"])
        server = AgoraServer(data_dir, database_url=database_url, env=env, args=args)
        self.servers.append(server)
        return server.start() if start else server

    def nodes(self, count: int = 2) -> list[AgoraServer]:
        """``count`` servers on one fresh PostgreSQL database, started together (the
        migration lock lets exactly one of them migrate); the backend must be postgresql."""
        url = create_pg_database()
        self.databases.append(url)
        prefix = "t" + secrets.token_hex(4) + "_"  # one engine namespace for all the nodes
        env = {"AGORA_SQL_ROLE_PREFIX": prefix, "AGORA_SQL_DATABASE_PREFIX": prefix}
        nodes = [self(start=False, database_url=url, env=env) for _ in range(count)]
        threads = [threading.Thread(target=node.start) for node in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return nodes

    def close(self) -> None:
        for server in self.servers:
            server.kill()
        for url in self.databases:
            drop_pg_database(url)
        for prefix in self.engine_prefixes:
            drop_engine_objects(prefix)


@pytest.fixture
def make_server(tmp_path: Path, backend: str) -> Iterator[ServerFactory]:
    """Start servers of this test's own (fresh data dir and database each)."""
    factory = ServerFactory(tmp_path, backend)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[AgoraServer]:
    """One server per backend shared by the tests that do not need a fresh one."""
    factory = ServerFactory(tmp_path_factory.mktemp(f"shared-{backend}"), backend)
    yield factory()
    factory.close()


def kill_mid_load(server: AgoraServer, worker: Callable[[int, threading.Event], None], workers: int,
                  acknowledged: Sized, at_least: int) -> None:
    """The crash tests' load: ``worker(n, stop)`` in ``workers`` threads until
    ``acknowledged`` holds ``at_least`` items, then kill -9 of the server mid-load; the
    threads are stopped (the server gone, theirs fail) before this returns."""
    stop = threading.Event()
    threads = [threading.Thread(target=worker, args=(n, stop), daemon=True) for n in range(workers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    server.proc.kill()  # SIGKILL, mid-load
    server.proc.wait()
    stop.set()
    for thread in threads:
        thread.join(30)
    assert len(acknowledged) >= at_least, server.log()[-3000:]
