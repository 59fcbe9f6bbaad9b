"""Bank: durable transfers per second through Agora's HTTP API against pgbench's TPC-B-like
script on this machine's PostgreSQL, in one run.

    python bench/bank.py [--seconds 10] [--rounds 1] [--clients 1,16,64] [--accounts 1000] [--batch 100]
                         [--pg-url postgresql://postgres@127.0.0.1:5432/postgres] [--json out.json]

It starts `python -m agora serve` on an ephemeral loopback port in a temporary data dir
(default storage: SQLite, every commit fsynced before the answer), makes a currency and
--accounts accounts of one user, each funded by an admin issue, and measures:

  (a) single transfers, POST /api/v1/bank/transfers, at each client count: every client
      one keep-alive connection sending its next transfer when the last was answered
      (a minimal HTTP/1.1 client, so that the load generator costs little CPU), spread
      over two processes as pgbench's -j 2 spreads its clients over two threads;
  (b) the same through the Python client's linked batch call (`client.bank.batch`,
      --batch transfers a call): transfers/s and the latency of one call;
  (c) pgbench: `pgbench -i -s 10` into a fresh database, then `pgbench -c N -j 2 -T S`
      (the default TPC-B-like script, synchronous_commit as the server has it: on),
      with per-transaction logs for p50/p99.

A transfer is "done" when its 201 arrived, a pgbench transaction when its COMMIT
returned: both durable. At the end `GET /api/v1/bank/check` must be clean and the number
of transfers the server holds must equal the number acknowledged (nothing lost, nothing
doubled). Ratios Agora/pgbench are printed per client count. Absolute figures on a
shared 2-core machine mean little; the ratios are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import multiprocessing
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from common import api, agora_env, start_agora, stop

CURRENCY = "BNC"  # a currency of the bench's own, exponent 2
FUNDS = 10**12  # minor units issued into every account: no transfer ever lacks funds
SECONDS_OF = [0.0]  # in a load process: the length of the point being measured


# -- Agora ------------------------------------------------------------------------------


@dataclass
class Agora:
    data_dir: Path
    accounts: int = 1000
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    proc: subprocess.Popen | None = None
    port: int = 0
    admin: str = ""
    token: str = ""

    def start(self) -> None:
        # All the bench's accounts are one user's. Log level warning: no access log line per request.
        env = agora_env(self.password, AGORA_BANK_MAX_ACCOUNTS=str(max(100, self.accounts)))
        self.proc, ports = start_agora(self.data_dir, env, ("http",), log=self.data_dir.parent / "agora.log")
        self.port = ports["http"]

    def call(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
        return api(self.port, method, path, body, token, timeout=60)

    def setup(self, accounts: int) -> list[str]:
        """A currency, a user and ``accounts`` funded accounts of theirs."""
        self.admin = self.call("POST", "/api/v1/tokens", {"username": "admin", "password": self.password,
                                                          "name": "bench"})["token"]
        self.call("POST", "/api/v1/bank/currencies", {"code": CURRENCY, "exponent": 2}, token=self.admin)
        password = "pw-" + secrets.token_hex(8)
        self.call("POST", "/api/v1/users", {"name": "banker", "password": password}, token=self.admin)
        self.token = self.call("POST", "/api/v1/tokens", {"username": "banker", "password": password,
                                                          "name": "bench"})["token"]
        numbers = []
        for i in range(accounts):
            account = self.call("POST", "/api/v1/bank/accounts", {"currency": CURRENCY, "name": f"a{i}"},
                                token=self.token)
            numbers.append(account["number"])
            self.call("POST", "/api/v1/bank/issue", {"id": str(uuid.uuid4()), "account": account["number"],
                                                     "amount": FUNDS}, token=self.admin)
        return numbers

    def transfers_held(self, numbers: list[str]) -> int:
        """Transfers between the bench's accounts that the server holds (each appears on
        two statements: its debit's and its credit's)."""
        entries = 0
        for number in numbers:
            cursor = None
            while True:
                query = "?limit=1000" + (f"&cursor={cursor}" if cursor else "")
                page = self.call("GET", f"/api/v1/bank/accounts/{number}/statement{query}", token=self.token)
                entries += len(page["entries"])
                cursor = page.get("next_cursor")
                if not cursor or not page["entries"]:
                    break
        return (entries - len(numbers)) // 2  # less each account's issue

    def stop(self) -> None:
        stop(self.proc, 30)


# -- load: single transfers over raw HTTP/1.1 ------------------------------------------


async def _one_client(port: int, token: str, numbers: list[str], until: float,
                      seed: int) -> tuple[list[float], int, int]:
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(max(0.0, until - SECONDS_OF[0] - time.monotonic()))
    head = (f"POST /api/v1/bank/transfers HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n")
    latencies: list[float] = []
    failures = late = 0
    try:
        while time.monotonic() < until:
            debit, credit = rng.sample(numbers, 2)
            body = json.dumps({"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "debit": debit,
                               "credit": credit, "amount": 1, "currency": CURRENCY}).encode()
            start = time.perf_counter()
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            header = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", header).group(1))
            await reader.readexactly(length)
            if not header.startswith(b"HTTP/1.1 201"):
                failures += 1
            elif time.monotonic() <= until:
                latencies.append(time.perf_counter() - start)
            else:
                late += 1  # committed after the window: not in the rate, still acknowledged
    finally:
        writer.close()
    return latencies, failures, late


async def _batch_client(port: int, token: str, numbers: list[str], until: float, seed: int,
                        size: int) -> tuple[list[float], int, int]:
    from agora.client import AgoraError, AsyncClient
    from agora.client.bank import transfer_body

    rng = random.Random(seed)
    latencies: list[float] = []
    failures = late = 0
    async with AsyncClient(f"http://127.0.0.1:{port}", token, timeout=120) as client:
        await asyncio.sleep(max(0.0, until - SECONDS_OF[0] - time.monotonic()))
        while time.monotonic() < until:
            items = [transfer_body(*rng.sample(numbers, 2), 1, CURRENCY) for _ in range(size)]
            start = time.perf_counter()
            try:
                await client.bank.batch(items)
            except AgoraError:
                failures += 1
                continue
            if time.monotonic() <= until:
                latencies.append(time.perf_counter() - start)
            else:
                late += 1
    return latencies, failures, late


def _worker(args: tuple) -> tuple[list[float], int, int]:
    mode, port, token, numbers, clients, until, seed, size, seconds = args
    SECONDS_OF[0] = seconds  # the clients start together, `seconds` before `until`

    async def run() -> tuple[list[float], int, int]:
        if mode == "single":
            jobs = [_one_client(port, token, numbers, until, seed + i) for i in range(clients)]
        else:
            jobs = [_batch_client(port, token, numbers, until, seed + i, size) for i in range(clients)]
        results = await asyncio.gather(*jobs)
        return [x for lat, _, _ in results for x in lat], sum(r[1] for r in results), sum(r[2] for r in results)

    return asyncio.run(run())


@dataclass
class Point:
    tps: float  # transfers (or pgbench transactions) per second
    p50_ms: float
    p99_ms: float
    done: int
    failed: int = 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def agora_load(agora: Agora, numbers: list[str], clients: int, seconds: float, mode: str, size: int) -> Point:
    processes = min(2, clients)
    shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    start = time.monotonic() + 3.0  # every process started and connected before the clock runs
    until = start + seconds
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_worker, [(mode, agora.port, agora.token, numbers, share, until, 1000 * i + clients, size, seconds)
                                     for i, share in enumerate(shares)])
    latencies = [x for lat, _, _ in results for x in lat]
    failed = sum(r[1] for r in results)
    late = sum(r[2] for r in results)
    per_call = size if mode == "batch" else 1
    return Point(len(latencies) * per_call / seconds, percentile(latencies, 0.5) * 1000,
                 percentile(latencies, 0.99) * 1000, (len(latencies) + late) * per_call, failed)


# -- pgbench ----------------------------------------------------------------------------


def psql(url: str, sql: str) -> str:
    return subprocess.run(["psql", url, "-Atc", sql], check=True, capture_output=True, text=True).stdout.strip()


def pgbench_point(url: str, clients: int, seconds: int, logs: Path) -> Point:
    for old in logs.glob("pgb*"):
        old.unlink()
    run = subprocess.run(["pgbench", "-n", "-c", str(clients), "-j", str(min(2, clients)), "-T", str(seconds),
                          "-l", "--log-prefix", str(logs / "pgb"), url],
                         capture_output=True, text=True, cwd=logs)
    if run.returncode != 0:
        sys.exit(f"bench: pgbench failed:\n{run.stderr}")
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", run.stdout).group(1))
    latencies = []
    for path in glob.glob(str(logs / "pgb*")):
        with open(path) as log:
            latencies.extend(int(line.split()[2]) / 1e6 for line in log if line.strip())
    return Point(tps, percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000, len(latencies))


# -- report -----------------------------------------------------------------------------


def row(label: str, point: Point | None) -> str:
    if point is None:
        return f"  {label:<34} n/a"
    failed = f", {point.failed} failed" if point.failed else ""
    return (f"  {label:<34} {point.tps:>9,.0f}/s   p50 {point.p50_ms:7.2f} ms   p99 {point.p99_ms:7.2f} ms"
            f"   ({point.done:,} done{failed})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured point")
    parser.add_argument("--clients", default="1,16,64", help="concurrent clients, comma-separated")
    parser.add_argument("--accounts", type=int, default=1000, help="accounts the transfers move between")
    parser.add_argument("--batch", type=int, default=100, help="transfers per call of the batch mode")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL for pgbench (a fresh database is made there and dropped)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each point (the best counts)")
    parser.add_argument("--no-pgbench", action="store_true", help="measure Agora only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]

    work = Path(tempfile.mkdtemp(prefix="agora-bench-bank-"))
    agora = Agora(work / "data", args.accounts)
    pg_db = f"bench_bank_{secrets.token_hex(4)}"
    pg_url = args.pg_url.rsplit("/", 1)[0] + "/" + pg_db
    results: dict[str, dict[int, Point | None]] = {"single": {}, "batch": {}, "pgbench": {}}
    acknowledged = 0
    try:
        print(f"starting Agora and making {args.accounts} funded accounts ...", flush=True)
        agora.start()
        numbers = agora.setup(args.accounts)
        if not args.no_pgbench:
            print(f"pgbench -i -s 10 into {pg_db} (synchronous_commit="
                  f"{psql(args.pg_url, 'show synchronous_commit')}) ...", flush=True)
            psql(args.pg_url, f'CREATE DATABASE "{pg_db}"')
            subprocess.run(["pgbench", "-i", "-s", "10", "-q", pg_url], check=True, capture_output=True)
        for clients in counts:
            # The two systems take turns at each client count, so a noisy neighbour
            # hurts both alike.
            print(f"{clients} client(s) ...", flush=True)
            for _ in range(args.rounds):
                points = {"single": agora_load(agora, numbers, clients, args.seconds, "single", 1),
                          "batch": agora_load(agora, numbers, clients, args.seconds, "batch", args.batch)}
                if not args.no_pgbench:
                    points["pgbench"] = pgbench_point(pg_url, clients, args.seconds, work)
                for mode, point in points.items():
                    if mode != "pgbench":
                        acknowledged += point.done  # every round's transfers must be held
                    best = results[mode].get(clients)
                    if best is None or point.tps > best.tps:
                        results[mode][clients] = point
        held = agora.transfers_held(numbers)
        check = agora.call("GET", "/api/v1/bank/check", token=agora.admin)
    finally:
        agora.stop()
        if not args.no_pgbench:
            subprocess.run(["psql", args.pg_url, "-qc", f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'],
                           capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nBank transfers, {args.seconds} s per point (best of {args.rounds}), {args.accounts} accounts, "
          f"{os.cpu_count()} CPUs (load generators on the same machine)")
    for clients in counts:
        print(f"\n{clients} client(s):")
        single, batch, pg = results["single"][clients], results["batch"][clients], results["pgbench"].get(clients)
        print(row("Agora HTTP, one transfer a request", single))
        print(row(f"Agora client.bank.batch({args.batch})", batch))
        print(row("pgbench TPC-B-like (scale 10)", pg))
        if pg:
            print(f"  ratio Agora/pgbench: single {single.tps / pg.tps:.2f}x, batch {batch.tps / pg.tps:.2f}x")
    problems = check.get("problems", [])
    print(f"\nacknowledged {acknowledged:,} transfers, server holds {held:,}: "
          f"{'nothing lost or doubled' if held == acknowledged else 'MISMATCH'}; "
          f"ledger check: {'clean' if not problems else problems}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {mode: {str(c): (p.__dict__ if p else None) for c, p in points.items()} for mode, points in results.items()}
            | {"acknowledged": acknowledged, "held": held, "check": problems}, indent=2))
    if held != acknowledged or problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
