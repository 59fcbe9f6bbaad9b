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
