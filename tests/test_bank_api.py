"""The bank's HTTP API against a real server, on SQLite and PostgreSQL: overdraft under
concurrency, idempotent retries, authorization denials, linked batches, pending
transfers, statements, balances and the ledger check."""

from __future__ import annotations

import asyncio
import csv
import io
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

API = "/api/v1/bank"
PROBLEM = "urn:agora:problem:"


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def bank(server):
    """A currency of this module's own on the shared server, and a way to make funded users."""
    code = "T" + secrets.token_hex(2).upper()
    with server.admin() as admin:
        response = admin.post(f"{API}/currencies", json={"code": code, "exponent": 2})
        assert response.status_code == 201, response.text
        assert admin.post(f"{API}/currencies", json={"code": code, "exponent": 2}).status_code == 200
        conflict = admin.post(f"{API}/currencies", json={"code": code, "exponent": 3})
        assert conflict.status_code == 409, conflict.text

    class Bank:
        currency = code

        def user(self, funds: int = 0, accounts: int = 1) -> tuple[httpx.Client, list[str]]:
            name, password = server.create_user()
            http = server.client(server.login(name, password))
            numbers = []
            for _ in range(accounts):
                response = http.post(f"{API}/accounts", json={"currency": code, "name": "main"})
                assert response.status_code == 201, response.text
                numbers.append(response.json()["number"])
            if funds:
                with server.admin() as admin:
                    issued = admin.post(f"{API}/issue", json={"id": new_id(), "account": numbers[0], "amount": funds})
                    assert issued.status_code == 201, issued.text
            return http, numbers

    return Bank()


def balance(http: httpx.Client, number: str) -> dict[str, int]:
    response = http.get(f"{API}/accounts/{number}")
    assert response.status_code == 200, response.text
    return response.json()["balance"]


def transfer(http: httpx.Client, debit: str, credit: str, amount: int, **extra) -> httpx.Response:
    return http.post(f"{API}/transfers", json={"id": extra.pop("id", None) or new_id(), "debit": debit,
                                               "credit": credit, "amount": amount, **extra})


def test_overdraft_race_exactly_one_full_balance_transfer_succeeds(server, bank):
    http, [source, target] = bank.user(funds=1000, accounts=2)
    token = http.headers["Authorization"]

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": token}, timeout=60,
                                     limits=httpx.Limits(max_connections=100)) as client:
            return await asyncio.gather(*(client.post(f"{API}/transfers", json={
                "id": new_id(), "debit": source, "credit": target, "amount": 1000, "currency": bank.currency})
                for _ in range(100)))

    responses = asyncio.run(race())
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1, statuses
    assert statuses.count(422) == 99, statuses
    refused = [r.json() for r in responses if r.status_code == 422]
    assert all(p["type"] == PROBLEM + "insufficient-funds" for p in refused)
    assert balance(http, source) == {"posted": 0, "available": 0, "pending_debits": 0, "pending_credits": 0}
    assert balance(http, target)["posted"] == 1000


def test_the_open_accounts_limit_holds_under_concurrent_opens(server, bank):
    """bank.max_accounts (100 here) is one user's limit however many opens race."""
    http, _ = bank.user(accounts=0)
    token = http.headers["Authorization"]

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": token}, timeout=60,
                                     limits=httpx.Limits(max_connections=40)) as client:
            return await asyncio.gather(*(client.post(f"{API}/accounts", json={"currency": bank.currency})
                                          for _ in range(130)))

    statuses = sorted(r.status_code for r in asyncio.run(race()))
    assert statuses.count(201) == 100 and statuses.count(422) == 30, statuses
    assert len(http.get(f"{API}/accounts").json()["accounts"]) == 100


def test_retry_returns_the_original_and_debits_once(server, bank):
    http, [source, target] = bank.user(funds=500, accounts=2)
    body = {"id": new_id(), "debit": source, "credit": target, "amount": 120, "currency": bank.currency,
            "memo": "rent"}
    first = http.post(f"{API}/transfers", json=body)
    assert first.status_code == 201, first.text
    again = http.post(f"{API}/transfers", json=body)
    assert again.status_code == 200 and again.json() == first.json()
    # Numbers and ids as typed by people: other case, no dashes. Still the same transfer.
    retyped = {**body, "id": body["id"].upper(), "debit": source.replace("-", "").lower()}
    assert http.post(f"{API}/transfers", json=retyped).status_code == 200
    for change in ({"amount": 121}, {"memo": "other"}, {"credit": source, "debit": target}):
        conflict = http.post(f"{API}/transfers", json={**body, **change})
        assert conflict.status_code in (409, 403), conflict.text
        if conflict.status_code == 409:
            assert conflict.json()["type"] == PROBLEM + "idempotency-conflict"
    assert balance(http, source)["posted"] == 380
    assert balance(http, target)["posted"] == 120
    fetched = http.get(f"{API}/transfers/{body['id']}")
    assert fetched.status_code == 200 and fetched.json()["amount"] == 120


def test_retry_is_recognised_where_the_transfer_could_not_commit_now(server, bank):
    # A retry alone and next to new transfers in one batch, where committing it again
    # would succeed and where it would fail: the stored transfer decides the answer.
    http, [source, target, third] = bank.user(funds=300, accounts=3)
    body = {"id": new_id(), "debit": source, "credit": target, "amount": 100}
    first = http.post(f"{API}/transfers", json=body)
    assert first.status_code == 201, first.text
    # Money enough to commit it again: still the original, nothing moves twice.
    assert http.post(f"{API}/transfers", json=body).json() == first.json()
    fresh = {"id": new_id(), "debit": source, "credit": third, "amount": 10}
    mixed = http.post(f"{API}/transfers/batch", json={"transfers": [fresh, body]})
    assert mixed.status_code == 409, mixed.text
    assert [(e["index"], e["type"]) for e in mixed.json()["errors"]] == [(1, PROBLEM + "idempotency-conflict")]
    assert http.get(f"{API}/transfers/{fresh['id']}").status_code == 404
    # The money gone: a retry is still answered with the original, not a refusal.
    assert transfer(http, source, third, 200).status_code == 201
    again = http.post(f"{API}/transfers", json=body)
    assert again.status_code == 200 and again.json() == first.json()
    mixed = http.post(f"{API}/transfers/batch", json={"transfers": [
        {"id": new_id(), "debit": third, "credit": source, "amount": 50}, body]})
    assert mixed.status_code == 409 and mixed.json()["errors"][0]["index"] == 1, mixed.text
    assert [balance(http, n)["posted"] for n in (source, target, third)] == [0, 100, 200]


def test_a_batch_naming_an_id_twice_commits_nothing(server, bank):
    http, [a, b] = bank.user(funds=100, accounts=2)
    leg = {"id": new_id(), "debit": a, "credit": b, "amount": 1}
    for twice in ({**leg, "amount": 2}, {**leg, "id": leg["id"].upper()}):  # (ids are compared as UUIDs)
        response = http.post(f"{API}/transfers/batch", json={"transfers": [
            leg, {"id": new_id(), "debit": a, "credit": b, "amount": 3}, twice]})
        assert response.status_code == 422, response.text
        assert [(e["index"], e["type"]) for e in response.json()["errors"]] == [(2, PROBLEM + "invalid-input")]
    assert balance(http, a)["posted"] == 100
    assert http.get(f"{API}/transfers/{leg['id']}").status_code == 404


def test_concurrent_retries_of_one_id_commit_once(server, bank):
    http, [source, target] = bank.user(funds=1000, accounts=2)
    token = http.headers["Authorization"]
    body = {"id": new_id(), "debit": source, "credit": target, "amount": 10}

    async def storm() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": token}, timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{API}/transfers", json=body) for _ in range(30)))

    statuses = sorted(r.status_code for r in asyncio.run(storm()))
    assert statuses == [200] * 29 + [201], statuses
    assert balance(http, source)["posted"] == 990


def test_a_user_cannot_debit_or_read_anothers_account(server, bank):
    alice, [alices] = bank.user(funds=300)
    bob, [bobs] = bank.user(funds=100)
    denied = transfer(bob, alices, bobs, 50)
    assert denied.status_code == 403 and denied.json()["type"] == PROBLEM + "forbidden", denied.text
    assert balance(alice, alices)["posted"] == 300
    for path in (f"/accounts/{alices}", f"/accounts/{alices}/statement"):
        response = bob.get(API + path)
        assert response.status_code == 403, (path, response.text)
    assert bob.get(f"{API}/accounts/{alices}/statement", headers={"Accept": "text/csv"}).status_code == 403
    assert bob.post(f"{API}/accounts/{alices}/close").status_code == 403
    # Not the currency's system account, though: that is an admin's.
    issuance = {c["code"]: c for c in bob.get(f"{API}/currencies").json()["currencies"]}[bank.currency]
    assert transfer(bob, bobs, issuance["issuance_account"], 1).status_code == 403
    # Crediting any open account by its number is allowed.
    paid = transfer(bob, bobs, alices, 40)
    assert paid.status_code == 201, paid.text
    # ...and the payer sees the transfer, a third user does not.
    carol, _ = bank.user()
    assert alice.get(f"{API}/transfers/{paid.json()['id']}").status_code == 200
    assert carol.get(f"{API}/transfers/{paid.json()['id']}").status_code == 403
    # Balances list only one's own accounts.
    assert [a["number"] for a in bob.get(f"{API}/balances").json()["accounts"]] == [bobs]
    assert [a["number"] for a in bob.get(f"{API}/accounts").json()["accounts"]] == [bobs]
    # Admin-only endpoints.
    for method, path, body in (("POST", "/currencies", {"code": "ZZZ", "exponent": 2}),
                               ("POST", "/issue", {"id": new_id(), "account": bobs, "amount": 5}),
                               ("GET", "/accounts?all=true", None), ("GET", "/check", None)):
        response = bob.request(method, API + path, json=body)
        assert response.status_code == 403, (path, response.text)
    assert balance(bob, bobs)["posted"] == 60
    assert bob.get(f"{API}/balances", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_refusals_have_distinct_problem_types(server, bank):
    http, [source, target] = bank.user(funds=100, accounts=2)
    other = "O" + secrets.token_hex(2).upper()
    with server.admin() as admin:
        assert admin.post(f"{API}/currencies", json={"code": other, "exponent": 0}).status_code == 201
    foreign = http.post(f"{API}/accounts", json={"currency": other}).json()["number"]
    cases = [
        (transfer(http, source, foreign, 1), 422, "currency-mismatch"),
        (transfer(http, source, target, 1, currency=other), 422, "currency-mismatch"),
        (transfer(http, source, "AAAA-BBBB-CCCC-DDDD", 1), 404, "unknown-account"),
        (transfer(http, source, "not a number", 1), 404, "unknown-account"),
        (transfer(http, source, target, 101), 422, "insufficient-funds"),
        (transfer(http, source, target, 0), 422, "invalid-input"),
        (transfer(http, source, target, 1.5), 422, "invalid-input"),
        (transfer(http, source, target, 2**70), 422, "invalid-input"),
        (transfer(http, source, source, 1), 422, "invalid-input"),
        (http.post(f"{API}/transfers", json={"id": "not-a-uuid", "debit": source, "credit": target,
                                              "amount": 1}), 422, "invalid-input"),
        (http.post(f"{API}/accounts", json={"currency": "NOPE"}), 422, "unknown-currency"),
        (http.post(f"{API}/accounts/{source}/close"), 409, "account-not-empty"),
    ]
    for response, status, slug in cases:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"] == PROBLEM + slug, response.text
    closed = http.post(f"{API}/accounts/{foreign}/close")
    assert closed.status_code == 200 and closed.json()["closed"] is True
    response = transfer(http, source, target, 1)
    assert response.status_code == 201
    http.post(f"{API}/accounts/{target}/close")  # not empty: refused, still open
    empty = http.post(f"{API}/accounts", json={"currency": bank.currency}).json()["number"]
    assert http.post(f"{API}/accounts/{empty}/close").status_code == 200
    refused = transfer(http, source, empty, 1)
    assert refused.status_code == 422 and refused.json()["type"] == PROBLEM + "account-closed"
    assert balance(http, source)["posted"] == 99


def test_linked_batch_commits_all_or_nothing(server, bank):
    http, [a, b, c] = bank.user(funds=100, accounts=3)
    legs = [{"id": new_id(), "debit": a, "credit": b, "amount": 60},
            {"id": new_id(), "debit": a, "credit": c, "amount": 60},  # only 40 left after the first
            {"id": new_id(), "debit": a, "credit": "ZZZZ-ZZZZ-ZZZZ-ZZZZ", "amount": 1}]
    failed = http.post(f"{API}/transfers/batch", json={"transfers": legs})
    assert failed.status_code == 422, failed.text
    problem = failed.json()
    assert problem["type"] == PROBLEM + "insufficient-funds"
    assert [(e["index"], e["type"]) for e in problem["errors"]] == [
        (1, PROBLEM + "insufficient-funds"), (2, PROBLEM + "unknown-account")]
    assert balance(http, a)["posted"] == 100 and balance(http, b)["posted"] == 0
    for leg in legs:
        assert http.get(f"{API}/transfers/{leg['id']}").status_code == 404
    good = [{"id": new_id(), "debit": a, "credit": b, "amount": 30},
            {"id": new_id(), "debit": a, "credit": c, "amount": 70}]
    done = http.post(f"{API}/transfers/batch", json={"transfers": good})
    assert done.status_code == 201, done.text
    assert [t["id"] for t in done.json()["transfers"]] == [g["id"] for g in good]
    again = http.post(f"{API}/transfers/batch", json={"transfers": good})
    assert again.status_code == 200 and again.json() == done.json()
    # A batch reusing a committed id next to a new one commits nothing.
    mixed = http.post(f"{API}/transfers/batch", json={"transfers": [
        good[0], {"id": new_id(), "debit": b, "credit": a, "amount": 1}]})
    assert mixed.status_code == 409 and mixed.json()["errors"][0]["index"] == 0
    assert [balance(http, n)["posted"] for n in (a, b, c)] == [0, 30, 70]
    # Another user's account in one leg: 403 for the batch, nothing committed.
    other, [theirs] = bank.user(funds=10)
    response = http.post(f"{API}/transfers/batch", json={"transfers": [
        {"id": new_id(), "debit": b, "credit": a, "amount": 1},
        {"id": new_id(), "debit": theirs, "credit": a, "amount": 1}]})
    assert response.status_code == 403 and response.json()["errors"][0]["index"] == 1
    assert balance(http, b)["posted"] == 30
    assert http.post(f"{API}/transfers/batch", json={"transfers": []}).status_code == 422


def test_pending_post_void_and_timeout_each_resolve_once(server, bank):
    http, [payer, payee] = bank.user(funds=1000, accounts=2)
    hold = {"id": new_id(), "debit": payer, "credit": payee, "amount": 300, "pending": True, "timeout": 600}
    assert http.post(f"{API}/transfers", json=hold).status_code == 201
    assert balance(http, payer) == {"posted": 1000, "available": 700, "pending_debits": 300, "pending_credits": 0}
    # Reserved funds are not available to others.
    assert transfer(http, payer, payee, 701).status_code == 422
    posted = http.post(f"{API}/transfers/{hold['id']}/post", json={"amount": 250})
    assert posted.status_code == 201 and posted.json()["amount"] == 250, posted.text
    assert http.post(f"{API}/transfers/{hold['id']}/post", json={"amount": 250}).status_code == 200
    assert http.post(f"{API}/transfers/{hold['id']}/post", json={"amount": 100}).status_code == 409
    voided = http.post(f"{API}/transfers/{hold['id']}/void")
    assert voided.status_code == 409 and voided.json()["type"] == PROBLEM + "pending-resolved"
    assert balance(http, payer) == {"posted": 750, "available": 750, "pending_debits": 0, "pending_credits": 0}
    assert http.get(f"{API}/transfers/{hold['id']}").json()["state"] == "posted"

    second = {**hold, "id": new_id()}
    assert http.post(f"{API}/transfers", json=second).status_code == 201
    assert http.post(f"{API}/transfers/{second['id']}/void").status_code == 201
    assert http.post(f"{API}/transfers/{second['id']}/void").status_code == 200
    assert http.post(f"{API}/transfers/{second['id']}/post").status_code == 409
    assert balance(http, payer)["available"] == 750
    not_pending = http.post(f"{API}/transfers/{posted.json()['id']}/void")
    assert not_pending.status_code == 422 and not_pending.json()["type"] == PROBLEM + "not-pending"
    assert http.post(f"{API}/transfers/{new_id()}/post").status_code == 404

    short = {**hold, "id": new_id(), "timeout": 1}
    assert http.post(f"{API}/transfers", json=short).status_code == 201
    deadline = time.monotonic() + 20
    while http.get(f"{API}/transfers/{short['id']}").json()["state"] != "expired":
        assert time.monotonic() < deadline, "the pending transfer did not expire"
        time.sleep(0.2)
    late = http.post(f"{API}/transfers/{short['id']}/post")
    assert late.status_code == 409 and "expired" in late.json()["detail"]
    assert balance(http, payer) == {"posted": 750, "available": 750, "pending_debits": 0, "pending_credits": 0}
    assert balance(http, payee)["posted"] == 250
    # The other side may resolve too; a stranger may not.
    third = {**hold, "id": new_id()}
    assert http.post(f"{API}/transfers", json=third).status_code == 201
    stranger, _ = bank.user()
    assert stranger.post(f"{API}/transfers/{third['id']}/post").status_code == 403
    assert http.post(f"{API}/transfers/{third['id']}/void").status_code == 201


def test_statement_pages_by_cursor_with_running_balance_and_csv(server, bank):
    http, [mine, theirs] = bank.user(funds=10_000, accounts=2)
    for amount in range(1, 8):
        assert transfer(http, mine, theirs, amount * 10, memo=f"payment {amount}").status_code == 201
    entries, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = http.get(f"{API}/accounts/{mine}/statement", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        entries += body["entries"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(entries) == 8  # the issue and seven payments
    running = 0
    for entry in entries:
        running += entry["effect"]
        assert entry["balance"] == running
    assert running == 10_000 - 280 == balance(http, mine)["posted"]
    assert [e["memo"] for e in entries[1:3]] == ["payment 1", "payment 2"]
    # A date range: nothing before now + a minute.
    later = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat()
    assert http.get(f"{API}/accounts/{mine}/statement", params={"from": later}).json()["entries"] == []
    earlier = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    assert len(http.get(f"{API}/accounts/{mine}/statement", params={"from": earlier, "limit": 100}).json()["entries"]) == 8
    exported = http.get(f"{API}/accounts/{mine}/statement", headers={"Accept": "text/csv"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [int(r["balance"]) for r in rows] == [e["balance"] for e in entries]
    assert rows[-1]["memo"] == "payment 7" and rows[-1]["counterparty"] == theirs
    assert http.get(f"{API}/accounts/{mine}/statement", params={"cursor": "x"}).status_code == 422
    # A memo that a spreadsheet would run as a formula is exported as text.
    assert transfer(http, mine, theirs, 1, memo="=HYPERLINK(\"x\")").status_code == 201
    last = list(csv.DictReader(io.StringIO(http.get(f"{API}/accounts/{mine}/statement",
                                                    headers={"Accept": "text/csv"}).text)))[-1]
    assert last["memo"] == "'=HYPERLINK(\"x\")"


def test_balances_are_one_consistent_snapshot_under_load(server, bank):
    http, numbers = bank.user(funds=5_000, accounts=4)
    token = http.headers["Authorization"]
    sums: list[int] = []

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": token}, timeout=60) as client:
            async def mover(seed: int) -> None:
                for i in range(40):
                    a, b = numbers[(seed + i) % 4], numbers[(seed + i + 1) % 4]
                    await client.post(f"{API}/transfers", json={"id": new_id(), "debit": a, "credit": b, "amount": 7})

            async def reader() -> None:
                for _ in range(40):
                    accounts = (await client.get(f"{API}/balances")).json()["accounts"]
                    assert all(a["posted"] >= 0 and a["available"] >= 0 for a in accounts)
                    sums.append(sum(a["posted"] for a in accounts))

            await asyncio.gather(*(mover(n) for n in range(8)), reader(), reader())

    asyncio.run(run())
    assert sums and set(sums) == {5_000}


def test_admin_sees_everything_and_the_check_is_clean(server, bank):
    http, [number] = bank.user(funds=42)
    with server.admin() as admin:
        everyone = admin.get(f"{API}/accounts", params={"all": "true"}).json()["accounts"]
        assert number in {a["number"] for a in everyone}
        assert admin.get(f"{API}/accounts/{number}").status_code == 200
        currencies = {c["code"]: c for c in admin.get(f"{API}/currencies").json()["currencies"]}
        assert currencies[bank.currency]["exponent"] == 2 and currencies[bank.currency]["issued"] > 0
        totals: dict[str, int] = {}
        for account in admin.get(f"{API}/balances").json()["accounts"]:
            totals[account["currency"]] = totals.get(account["currency"], 0) + account["posted"]
        assert set(totals.values()) == {0}
        report = admin.get(f"{API}/check")
        assert report.status_code == 200 and report.json() == {"ok": True, "problems": []}, report.text


def test_deleting_a_user_who_holds_money_is_refused(server, bank):
    http, [number] = bank.user(funds=500)
    name = http.get("/api/v1/me").json()["name"]
    payee, [payees] = bank.user()
    with server.admin() as admin:
        refused = admin.delete(f"/api/v1/users/{name}")
        assert refused.status_code == 409, refused.text
        assert transfer(http, number, payees, 500).status_code == 201
        assert admin.delete(f"/api/v1/users/{name}").status_code == 204
        # The emptied account stays, with its history, and takes no more money.
        kept = admin.get(f"{API}/accounts/{number}").json()
        assert kept["closed"] is True and kept["owner"] is None and kept["balance"]["posted"] == 0
    refused = transfer(payee, payees, number, 1)
    assert refused.status_code == 422 and refused.json()["type"] == PROBLEM + "account-closed"


def test_an_expired_token_answer_is_looked_up_once_for_concurrent_requests(monkeypatch):
    from types import SimpleNamespace

    from fastapi.security import HTTPAuthorizationCredentials

    from agora.bank import api
    from agora.core.errors import NotAuthenticated

    lookups = []

    async def api_user(request, credentials):
        lookups.append(credentials.credentials)
        await asyncio.sleep(0.05)
        if credentials.credentials == "revoked":
            raise NotAuthenticated("the token is unknown, revoked or expired")
        return "user"

    monkeypatch.setattr(api, "api_user", api_user)
    shared: dict = {}
    runtime = SimpleNamespace(config=SimpleNamespace(bank=SimpleNamespace(auth_cache=60.0)),
                              shared=lambda key, make: shared.setdefault(key, make()))

    def request():
        return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(runtime=runtime)), state=SimpleNamespace())

    async def many(secret: str) -> list:
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=secret)
        return await asyncio.gather(*(api.bank_user(request(), credentials) for _ in range(16)),
                                    return_exceptions=True)

    async def scenario() -> None:
        assert await many("good") == ["user"] * 16
        assert await many("good") == ["user"] * 16  # (from the cache)
        refused = await many("revoked")
        assert all(isinstance(r, NotAuthenticated) for r in refused)
        await many("revoked")  # a refusal is not kept: looked up again
        assert lookups == ["good", "revoked", "revoked"]
        assert not shared["bank.auth_lookups"]

    asyncio.run(scenario())
