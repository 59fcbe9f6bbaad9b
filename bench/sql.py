"""Hosted SQL over the PostgreSQL wire protocol: Agora against this machine's PostgreSQL,
in one run, with the same client (pgbench) on both sides.

    python bench/sql.py [--duration 5] [--clients 16] [--rows 100000] [--rounds 3]
                        [--workers CPUS] [--no-pin] [--protocol prepared|simple|extended]
                        [--only select|insert] [--json out.json]

Starts `python -m agora serve` on ephemeral loopback ports in a temporary data dir,
creates a hosted database for the admin account and, in PostgreSQL at 127.0.0.1:5432
(user postgres, trust auth, as scripts/test-env.sh expects), a database of the same
shape: ``kv(id INTEGER PRIMARY KEY, v TEXT)`` with --rows rows and an empty ``kv_ins``.
Then pgbench (extended protocol, server-side prepared statements: ``-M prepared``; or
the query mode --protocol names, ``simple`` sending each statement as text) runs
two custom scripts from --clients concurrent connections for --duration seconds each,
servers taking turns, --rounds times (the best run of each server counts):

  (a) select: ``SELECT v FROM kv WHERE id = :random`` (point select by primary key)
  (b) insert: ``INSERT INTO kv_ins (v) VALUES (...)`` (one row per transaction,
      autocommit: durable before it is acknowledged on both sides)

and prints tps, p50/p99 latency (from pgbench's log of a 10% sample of transactions)
and the ratio Agora / PostgreSQL. Agora runs with ``postgres.workers`` = --workers (one
per CPU by default: PostgreSQL, a process per connection, uses every core too), each
worker on a CPU of its own (``postgres.worker_cpu_affinity``; --no-pin leaves them to the
scheduler). Both connections are plain TCP on loopback (sslmode=disable);
connection set-up (SCRAM on Agora, trust on PostgreSQL) is excluded by pgbench.
Absolute numbers on a shared machine mean little; the ratio does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import CHEAP_HASHING, agora_env, fail, start_agora, stop

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
PG_DATABASE = "agora_bench_sql"
LATENCY_SAMPLE = 0.1  # the share of transactions whose latency pgbench logs
DATABASE = "bench"
SCRIPTS = {
    "select": "\\set id random(1, {rows})\nSELECT v FROM kv WHERE id = :id;\n",
    "insert": "\\set n random(1, 1000000000)\nINSERT INTO kv_ins (v) VALUES ('row-' || :n);\n",
}


class Agora:
    def __init__(self, work: Path, workers: int, pin: bool):
        self.workers = workers
        self.pin = pin
        self.data_dir = work / "agora"
        self.password = "bench-" + secrets.token_hex(8)
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        self.proc, self.ports = start_agora(self.data_dir, agora_env(self.password), ("http", "postgres"),
                                            args=["--sql-max-rows", "100000", "--postgres-workers", str(self.workers),
                                                  "--postgres-worker-cpu-affinity", str(self.pin).lower(),
                                                  *CHEAP_HASHING],
                                            log=self.data_dir.parent / "agora.log")

    def create_database(self) -> None:
        """Through the domain, on the data dir the server uses (as `agora sql create` would)."""
        from agora import config as configuration
        from agora.core.runtime import Runtime
        from agora.server import attach_services
        from agora.sql.hosted import hosted_sql

        async def create() -> None:
            runtime = await Runtime.open(configuration.load({"data_dir": str(self.data_dir)}, environ={}))
            attach_services(runtime)
            try:
                await hosted_sql(runtime).create(await runtime.identity.get_user("admin"), DATABASE)
            finally:
                await hosted_sql(runtime).close()
                await runtime.close()

        asyncio.run(create())

    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.ports['postgres']} user=admin dbname={DATABASE} sslmode=disable"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password}

    def stop(self) -> None:
        stop(self.proc)


def psql(conninfo: str, env: dict[str, str], sql: str) -> None:
    done = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", conninfo, "-c", sql], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        fail(f"psql {conninfo}: {done.stderr.strip()}")


def load(conninfo: str, env: dict[str, str], rows: int, integer: str) -> None:
    psql(conninfo, env, f"DROP TABLE IF EXISTS kv; DROP TABLE IF EXISTS kv_ins; "
                        f"CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE kv_ins (id {integer}, v TEXT)")
    # One statement both dialects run: a recursive CTE counting to --rows.
    psql(conninfo, env, f"INSERT INTO kv (id, v) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                        f"WHERE i < {rows}) SELECT i, 'value-' || i FROM n")


def pgbench(conninfo: str, env: dict[str, str], script: str, clients: int, duration: float,
            work: Path, label: str, protocol: str = "prepared") -> dict[str, float]:
    folder = work / f"log-{label}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (work / "script.sql").write_text(script)
    done = subprocess.run(
        ["pgbench", "-n", "-M", protocol, "-c", str(clients), "-j", str(min(clients, 2)),
         "-T", str(max(1, round(duration))), "-f", str(work / "script.sql"),
         # A sample of the transactions is enough for p50/p99, and costs pgbench (on the
         # same two cores as the server) far less than a line for each.
         "-l", f"--sampling-rate={LATENCY_SAMPLE}", "--log-prefix", str(folder / "tx"),
         conninfo], env=env, capture_output=True, text=True, cwd=folder)
    if done.returncode:
        fail(f"pgbench against {label}: {done.stderr.strip() or done.stdout.strip()}")
    tps = float(re.search(r"tps = ([\d.]+)", done.stdout).group(1))
    latencies = []
    for path in folder.glob("tx*"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]) / 1000.0)  # microseconds -> ms
    if not latencies:
        fail(f"pgbench wrote no transaction log for {label}")
    latencies.sort()
    return {"tps": tps, "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], "transactions": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="both servers in turn this many times; the best of each counts (this VM's "
                             "speed changes from one minute to the next)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="Agora's postgres.workers (default: one per CPU, as PostgreSQL uses every core)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="leave the workers to the scheduler (postgres.worker_cpu_affinity off)")
    parser.add_argument("--protocol", choices=("prepared", "simple", "extended"), default="prepared",
                        help="pgbench's -M")
    parser.add_argument("--only", choices=tuple(SCRIPTS), help="run this script only")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    for tool in ("pgbench", "psql"):
        if shutil.which(tool) is None:
            fail(f"{tool} is needed (Debian package postgresql-client)")
    pg_env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres sslmode=disable"
    psql(admin, pg_env, f"DROP DATABASE IF EXISTS {PG_DATABASE}")
    psql(admin, pg_env, f"CREATE DATABASE {PG_DATABASE}")
    postgres = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={PG_DATABASE} sslmode=disable"
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="agora-bench-sql-") as tmp:
        work = Path(tmp)
        agora = Agora(work, args.workers, args.pin)
        try:
            agora.start()
            agora.create_database()
            load(agora.conninfo(), agora.env(), args.rows, "INTEGER PRIMARY KEY")
            load(postgres, pg_env, args.rows, "BIGSERIAL PRIMARY KEY")
            print(f"{args.clients} clients, {args.duration:g} s each, pgbench -M {args.protocol}, {args.rows} rows, "
                  f"Agora with postgres.workers = {args.workers}{' (pinned)' if args.pin else ''}, "
                  f"best of {args.rounds} rounds", flush=True)
            for name, script in SCRIPTS.items():
                if args.only and name != args.only:
                    continue
                script = script.format(rows=args.rows)
                rounds: list[dict[str, dict[str, float]]] = []
                for _ in range(args.rounds):
                    rounds.append({
                        "postgresql": pgbench(postgres, pg_env, script, args.clients, args.duration, work, f"pg-{name}",
                                              args.protocol),
                        "agora": pgbench(agora.conninfo(), agora.env(), script, args.clients, args.duration, work,
                                         f"agora-{name}", args.protocol),
                    })
                    print(f"  {name} round {len(rounds)}: agora {rounds[-1]['agora']['tps']:.0f} tps, "
                          f"postgresql {rounds[-1]['postgresql']['tps']:.0f} tps", flush=True)
                pg = max((r["postgresql"] for r in rounds), key=lambda r: r["tps"])
                ag = max((r["agora"] for r in rounds), key=lambda r: r["tps"])
                ratio = ag["tps"] / pg["tps"]
                results[name] = {"postgresql": pg, "agora": ag, "ratio": {"tps": ratio}, "rounds": rounds}
                print(f"{name:7s} agora {ag['tps']:9.0f} tps  p50 {ag['p50_ms']:6.2f} ms  p99 {ag['p99_ms']:6.2f} ms | "
                      f"postgresql {pg['tps']:9.0f} tps  p50 {pg['p50_ms']:6.2f} ms  p99 {pg['p99_ms']:6.2f} ms | "
                      f"ratio {ratio:.2f}x", flush=True)
        finally:
            agora.stop()
            subprocess.run(["psql", "-X", "-q", admin, "-c", f"DROP DATABASE IF EXISTS {PG_DATABASE}"],
                           env=pg_env, capture_output=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
