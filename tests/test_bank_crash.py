"""Jepsen's bank workload, adapted: 32 clients move money between a handful of accounts
(retrying with the same ids when the server is unreachable) and read all balances,
while the server is SIGKILLed several times and restarted. Afterwards: the total is
unchanged, no read ever saw a negative balance or a sum other than the total, every
acknowledged transfer is in the ledger exactly once, and the ledger check is clean.

Bounded for the suite (BANK_CRASH_SECONDS, default 16 s of load per backend); longer
runs: BANK_CRASH_SECONDS=600.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter

import httpx
import pytest

API = "/api/v1/bank"
CLIENTS = 32
ACCOUNTS = 5
START = 10_000  # issued to each account
SECONDS = float(os.environ.get("BANK_CRASH_SECONDS", "16"))
KILLS = max(3, int(SECONDS // 5))  # one every few seconds of load


@pytest.mark.slow
def test_bank_survives_kill_9_under_concurrent_transfers(make_server):
    server = make_server()
    admin = server.admin()
    assert admin.post(f"{API}/currencies", json={"code": "EUR", "exponent": 2}).status_code == 201
    numbers = [admin.post(f"{API}/accounts", json={"currency": "EUR"}).json()["number"] for _ in range(ACCOUNTS)]
    for number in numbers:
        response = admin.post(f"{API}/issue", json={"id": str(uuid.uuid4()), "account": number, "amount": START})
        assert response.status_code == 201, response.text
    total = START * ACCOUNTS
    token = server.admin_token

    stop = threading.Event()
    lock = threading.Lock()
    acknowledged: dict[str, tuple[str, str, int]] = {}
    uncertain: set[str] = set()  # sent, never answered: may or may not have committed
    refused: Counter[str] = Counter()
    reads: list[tuple[int, int]] = []  # (sum of our accounts, sum of all accounts)
    bad_reads: list[object] = []
    retries = Counter[str]()

    def request(http: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response | None:
        """Until the server answers (not 5xx); None if the run ends first."""
        while not stop.is_set():
            try:
                response = http.request(method, server.url + path, **kwargs)
            except (httpx.TransportError, KeyError):
                retries["transport"] += 1
            else:
                if response.status_code < 500:
                    return response
                retries[str(response.status_code)] += 1
            time.sleep(0.05)
        return None

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
            while not stop.is_set():
                if rng.random() < 0.2:
                    response = request(http, "GET", f"{API}/balances")
                    if response is None:
                        return
                    accounts = {a["number"]: a for a in response.json()["accounts"]}
                    ours = [accounts[n] for n in numbers]
                    if any(a["posted"] < 0 or a["available"] < 0 for a in ours):
                        bad_reads.append(ours)
                    with lock:
                        reads.append((sum(a["posted"] for a in ours), sum(a["posted"] for a in accounts.values())))
                    continue
                debit, credit = rng.sample(numbers, 2)
                body = {"id": str(uuid.uuid4()), "debit": debit, "credit": credit,
                        "amount": rng.randint(1, 3_000), "currency": "EUR"}
                with lock:
                    uncertain.add(body["id"])
                response = request(http, "POST", f"{API}/transfers", json=body)
                if response is None:
                    return
                with lock:
                    uncertain.discard(body["id"])
                    if response.status_code in (200, 201):
                        acknowledged[body["id"]] = (debit, credit, body["amount"])
                    else:
                        refused[response.json()["type"]] += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    progress = 0
    for _ in range(KILLS):
        time.sleep(SECONDS / (KILLS + 1))
        assert len(acknowledged) > progress, "no transfer acknowledged since the last restart"
        server.proc.kill()  # SIGKILL, mid-load
        server.proc.wait()
        time.sleep(0.3)
        server.start()
        progress = len(acknowledged)
    time.sleep(max(0.0, SECONDS - (time.monotonic() - started)))
    stop.set()
    for thread in threads:
        thread.join(30)

    assert len(acknowledged) > 100, (len(acknowledged), retries, server.log()[-3000:])
    assert not bad_reads, bad_reads[:3]
    assert reads and {r for r in reads} == {(total, 0)}, Counter(reads).most_common(5)
    assert set(refused) <= {"urn:agora:problem:insufficient-funds"}, refused

    # The ledger after the crashes: every acknowledged transfer once, nothing invented.
    with server.admin() as http:
        balances = {a["number"]: a for a in http.get(f"{API}/balances").json()["accounts"]}
        assert sum(balances[n]["posted"] for n in numbers) == total
        assert all(balances[n]["posted"] >= 0 for n in numbers)
        seen: Counter[str] = Counter()
        for number in numbers:
            running, cursor = 0, None
            while True:
                page = http.get(f"{API}/accounts/{number}/statement",
                                params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
                for entry in page["entries"]:
                    running += entry["effect"]
                    assert entry["balance"] == running
                    if entry["kind"] == "transfer":
                        seen[entry["id"]] += 1
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert running == balances[number]["posted"]
        missing = set(acknowledged) - set(seen)
        assert not missing, f"{len(missing)} acknowledged transfers lost, e.g. {sorted(missing)[:3]}"
        assert set(seen.values()) == {2}, "a transfer shows other than once on each side"
        invented = set(seen) - set(acknowledged) - uncertain
        assert not invented, f"transfers nobody was told about: {sorted(invented)[:3]}"
        for transfer_id, (debit, credit, amount) in random.sample(sorted(acknowledged.items()), 20):
            stored = http.get(f"{API}/transfers/{transfer_id}").json()
            assert (stored["debit"], stored["credit"], stored["amount"]) == (debit, credit, amount)
        report = http.get(f"{API}/check").json()
        assert report == {"ok": True, "problems": []}, report
