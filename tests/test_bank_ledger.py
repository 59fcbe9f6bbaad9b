"""The ledger check catches what it is there to catch: a stored balance that is not the
sum of its transfers, money made outside a transfer, a user below zero, a hold without
its pending transfer. (Tampered with straight in the database, on both backends.)"""

from __future__ import annotations

import sqlite3
import uuid

from conftest import _pg

API = "/api/v1/bank"


def tamper(server, statement: str) -> None:
    if server.database_url:
        _pg(server.database_url, statement)
    else:
        with sqlite3.connect(server.data_dir / "agora.db") as db:
            db.execute(statement)


def test_check_reports_each_broken_invariant(make_server):
    server = make_server()
    with server.admin() as admin:
        assert admin.post(f"{API}/currencies", json={"code": "EUR", "exponent": 2}).status_code == 201
        a, b = (admin.post(f"{API}/accounts", json={"currency": "EUR"}).json()["number"] for _ in range(2))
        assert admin.post(f"{API}/issue", json={"id": str(uuid.uuid4()), "account": a, "amount": 100}).status_code == 201
        hold = {"id": str(uuid.uuid4()), "debit": a, "credit": b, "amount": 10, "pending": True}
        assert admin.post(f"{API}/transfers", json=hold).status_code == 201
        assert admin.get(f"{API}/check").json() == {"ok": True, "problems": []}

        # Money out of nowhere: a balance raised without a transfer.
        tamper(server, f"UPDATE bank_accounts SET posted = posted + 5 WHERE number = '{b}'")
        problems = admin.get(f"{API}/check").json()["problems"]
        assert any(b in p and "posted balance 5" in p for p in problems), problems
        assert any("EUR" in p and "sum to 5" in p for p in problems), problems
        tamper(server, f"UPDATE bank_accounts SET posted = posted - 5 WHERE number = '{b}'")

        # A user account below zero (and its balance no longer its transfers').
        tamper(server, f"UPDATE bank_accounts SET posted = -1 WHERE number = '{b}'")
        problems = admin.get(f"{API}/check").json()["problems"]
        assert any(b in p and "below zero" in p for p in problems), problems
        tamper(server, f"UPDATE bank_accounts SET posted = 0 WHERE number = '{b}'")

        # A hold lost: the pending transfer is neither resolved nor held any more.
        tamper(server, f"DELETE FROM bank_holds WHERE transfer_id = '{hold['id']}'")
        problems = admin.get(f"{API}/check").json()["problems"]
        assert any("pending debits 10" in p for p in problems), problems
        assert any("1 pending transfers, but 0 resolved and 0 held" in p for p in problems), problems


def test_two_nodes_on_one_postgresql_never_overdraw_or_double(make_server, backend):
    """Each node has its own writer; they meet on row locks and the unique transfer id."""
    import asyncio

    import httpx
    import pytest

    if backend != "postgresql":
        pytest.skip("several nodes need the PostgreSQL backend (SQLite is one node's own file)")
    a, b = make_server.nodes(2)
    with a.admin() as admin:
        assert admin.post(f"{API}/currencies", json={"code": "EUR", "exponent": 2}).status_code == 201
        numbers = [admin.post(f"{API}/accounts", json={"currency": "EUR"}).json()["number"] for _ in range(4)]
        assert admin.post(f"{API}/issue", json={"id": str(uuid.uuid4()), "account": numbers[0],
                                                "amount": 1000}).status_code == 201
    token = a.admin_token

    async def storm(bodies: list[dict]) -> list[int]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            responses = await asyncio.gather(*(
                http.post((a if i % 2 else b).url + f"{API}/transfers", json=body) for i, body in enumerate(bodies)))
        return [r.status_code for r in responses]

    # The whole balance, 60 times at once across both nodes: one succeeds.
    statuses = asyncio.run(storm([{"id": str(uuid.uuid4()), "debit": numbers[0], "credit": numbers[1],
                                   "amount": 1000} for _ in range(60)]))
    assert sorted(statuses) == [201] + [422] * 59, statuses
    # One id sent 40 times to both nodes: committed once.
    body = {"id": str(uuid.uuid4()), "debit": numbers[1], "credit": numbers[2], "amount": 300}
    statuses = asyncio.run(storm([body] * 40))
    assert sorted(statuses) == [200] * 39 + [201], statuses
    # Crossing transfers (locks taken in account order: no deadlock), then the check.
    crossing = [{"id": str(uuid.uuid4()), "debit": numbers[i % 4 if i % 3 else 1], "credit": numbers[(i + 1) % 4],
                 "amount": 1} for i in range(200)]
    statuses = asyncio.run(storm(crossing))
    assert set(statuses) <= {201, 422} and statuses.count(201) > 50, statuses
    with b.admin() as admin:
        ours = {x["number"]: x for x in admin.get(f"{API}/balances").json()["accounts"]}
        assert sum(ours[n]["posted"] for n in numbers) == 1000
        assert all(ours[n]["posted"] >= 0 for n in numbers)
        assert admin.get(f"{API}/check").json() == {"ok": True, "problems": []}


def test_bank_disabled_serves_no_bank_routes(make_server):
    server = make_server(env={"AGORA_BANK_ENABLED": "false"})
    with server.admin() as admin:
        assert admin.get(f"{API}/balances").status_code == 404
        assert admin.get("/api/v1/me").status_code == 200
