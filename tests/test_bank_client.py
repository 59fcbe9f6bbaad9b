"""The Python client's bank sub-API (``client.bank``), blocking and async, against a real
server: currencies, accounts, issue, transfers (idempotent ids, retried with the same id
when the answer is lost), linked batches, pending post/void, statements by cursor and
CSV, the admin check; every refusal as its own exception class, the denials included."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from agora.client import (AccountClosed, AlreadyResolved, AsyncClient, BankError, Client, ConnectionFailed,
                          CurrencyMismatch, Forbidden, IdConflict, InsufficientFunds, InvalidRequest,
                          LinkedBatchFailed, NotFound, UnknownAccount, format_amount, parse_amount)
from agora.client.bank import csv_rows, transfer_body


def admin_client(server) -> Client:
    return Client(server.url, server.admin_token)


def ensure_currency(admin: Client, code: str, exponent: int) -> None:
    if code not in {currency.code for currency in admin.bank.currencies()}:
        try:
            admin.bank.add_currency(code, exponent)
        except BankError:
            pass  # another test added it meanwhile
        except Exception as error:  # a 409 from a concurrent add is fine too
            if getattr(error, "status", None) != 409:
                raise


@pytest.fixture
def bank(server):
    """(admin, alice, bob) clients; EUR (2 decimals) and JPY (0) exist."""
    admin = admin_client(server)
    ensure_currency(admin, "EUR", 2)
    ensure_currency(admin, "JPY", 0)
    users = []
    for _ in range(2):
        name, password = server.create_user()
        client = Client(server.url)
        client.login(name, password)
        users.append(client)
    yield admin, users[0], users[1]
    for client in (admin, *users):
        client.close()


def funded(admin: Client, client: Client, amount: int, currency: str = "EUR", name: str = "main"):
    account = client.bank.open(currency, name)
    if amount:
        admin.bank.issue(account.number, amount)
    return client.bank.account(account.number)


def test_amount_text_is_exact():
    assert parse_amount("12.50", 2) == 1250 and parse_amount("12.5", 2) == 1250 and parse_amount("0.01", 2) == 1
    assert parse_amount("500", 0) == 500 and parse_amount("1.500", 2) == 150
    assert parse_amount("12345678901234567890123.45", 2) == 1234567890123456789012345  # no float, no rounding
    for bad, exponent in (("1.005", 2), ("0.5", 0), ("1e3", 2), ("-1", 2), ("", 2), ("1,50", 2), ("nan", 2)):
        with pytest.raises(ValueError):
            parse_amount(bad, exponent)
    assert format_amount(1250, 2) == "12.50" and format_amount(-5, 2) == "-0.05" and format_amount(7, 0) == "7"
    assert format_amount(1, 3) == "0.001"


def test_accounts_transfers_and_statement(bank):
    admin, alice, bob = bank
    mine = funded(admin, alice, 100_00)
    assert (mine.currency, mine.name, mine.posted, mine.available) == ("EUR", "main", 100_00, 100_00)
    theirs = bob.bank.open("EUR")
    assert [account.number for account in alice.bank.accounts()] == [mine.number]

    sent = alice.bank.transfer(mine.number, theirs.number, 12_50, "EUR", memo="lunch")
    assert sent.created and (sent.debit, sent.credit, sent.amount, sent.memo) == (mine.number, theirs.number,
                                                                                  12_50, "lunch")
    uuid.UUID(sent.id)  # the client made the id
    assert alice.bank.get_transfer(sent.id).amount == 12_50
    assert bob.bank.get_transfer(sent.id).id == sent.id  # the credited side sees it too
    balances = {item.number: item for item in alice.bank.balances()}
    assert set(balances) == {mine.number} and balances[mine.number].posted == 87_50
    assert bob.bank.account(theirs.number).posted == 12_50

    # The same id and contents again: the original, nothing moves twice.
    again = alice.bank.transfer(mine.number, theirs.number, 12_50, "EUR", id=sent.id, memo="lunch")
    assert not again.created and again.id == sent.id and again.timestamp == sent.timestamp
    assert alice.bank.account(mine.number).posted == 87_50
    with pytest.raises(IdConflict) as conflict:
        alice.bank.transfer(mine.number, theirs.number, 13_00, "EUR", id=sent.id)
    assert conflict.value.status == 409
    assert alice.bank.account(mine.number).posted == 87_50

    entries = list(alice.bank.statement(mine.number))
    assert [(entry.amount, entry.balance) for entry in entries] == [(100_00, 100_00), (-12_50, 87_50)]
    assert entries[1].id == sent.id and entries[1].memo == "lunch"
    rows = csv_rows(alice.bank.statement_csv(mine.number))
    assert len(rows) == 2 and sent.id in rows[1].values()


def test_refusals_are_distinct(bank):
    admin, alice, bob = bank
    mine = funded(admin, alice, 10_00)
    theirs = funded(admin, bob, 5_00)
    yen = alice.bank.open("JPY")

    with pytest.raises(InsufficientFunds) as error:
        alice.bank.transfer(mine.number, theirs.number, 10_01, "EUR")
    assert error.value.status == 422 and isinstance(error.value, InvalidRequest)
    with pytest.raises(CurrencyMismatch):
        alice.bank.transfer(mine.number, yen.number, 1, "EUR")
    with pytest.raises(UnknownAccount) as unknown:
        alice.bank.transfer(mine.number, "0000-0000-0000-0000", 1, "EUR")
    assert isinstance(unknown.value, NotFound)

    # Bob may credit Alice's account but never debit it, nor read it.
    with pytest.raises(Forbidden) as denied:
        bob.bank.transfer(mine.number, theirs.number, 1_00, "EUR")
    assert denied.value.status == 403
    with pytest.raises((Forbidden, NotFound)):
        bob.bank.statement_page(mine.number)
    with pytest.raises((Forbidden, NotFound)):
        bob.bank.account(mine.number)
    assert bob.bank.transfer(theirs.number, mine.number, 1_00, "EUR").created
    assert alice.bank.account(mine.number).posted == 11_00
    with pytest.raises(Forbidden):
        alice.bank.issue(mine.number, 1_00)  # admins only
    with pytest.raises(Forbidden):
        alice.bank.add_currency("XAU", 3)
    with pytest.raises(Forbidden):
        alice.bank.check()

    empty = alice.bank.open("EUR", "spare")
    assert alice.bank.close(empty.number).closed
    with pytest.raises(AccountClosed):
        alice.bank.transfer(mine.number, empty.number, 1, "EUR")
    everyone = {account.number: account for account in admin.bank.accounts(all=True)}
    assert everyone[mine.number].owner == alice.me().name and everyone[empty.number].closed
    assert any(account.system for account in everyone.values())  # the issuance accounts
    assert {mine.number, theirs.number} <= {balance.number for balance in admin.bank.balances()}
    with pytest.raises(Forbidden):
        alice.bank.accounts(all=True)
    result = admin.bank.check()
    assert result.ok and result.problems == []


class LoseFirstAnswer(httpx.BaseTransport):
    """Sends each request to the real server, but reports the first transfer's answer as
    lost (a read timeout), as a dropped connection would, after the server committed it."""

    def __init__(self):
        self.inner = httpx.HTTPTransport()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path.endswith("/bank/transfers") and not self.lost:
            response.read()
            self.lost += 1
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def test_a_lost_answer_is_retried_with_the_same_id(server, bank):
    admin, alice, bob = bank
    mine = funded(admin, alice, 50_00)
    theirs = bob.bank.open("EUR")
    lossy = LoseFirstAnswer()
    with Client(server.url, alice.token, transport=lossy) as flaky:
        sent = flaky.bank.transfer(mine.number, theirs.number, 20_00, "EUR")
        assert lossy.lost == 1
        # The retry found the transfer committed by the first attempt: it moved once.
        assert not sent.created
        assert alice.bank.account(mine.number).posted == 30_00 and bob.bank.account(theirs.number).posted == 20_00
        # Without retries the lost answer shows; the caller retries with the same id itself.
        lossy.lost = 0
        chosen = str(uuid.uuid4())
        with pytest.raises(ConnectionFailed):
            flaky.bank.transfer(mine.number, theirs.number, 1_00, "EUR", id=chosen, retries=1)
        again = flaky.bank.transfer(mine.number, theirs.number, 1_00, "EUR", id=chosen)
        assert again.id == chosen and not again.created
    with Client("http://127.0.0.1:9", alice.token, timeout=2) as nowhere:
        with pytest.raises(ConnectionFailed):
            nowhere.bank.transfer(mine.number, theirs.number, 1, "EUR", retries=2)
    assert alice.bank.account(mine.number).posted == 29_00  # each moved once; what never arrived, never
    ids = [entry.id for entry in alice.bank.statement(mine.number)]
    assert ids.count(sent.id) == 1 and ids.count(chosen) == 1


def test_linked_batch_is_all_or_nothing(bank):
    admin, alice, bob = bank
    mine = funded(admin, alice, 10_00)
    theirs = bob.bank.open("EUR")
    good = transfer_body(mine.number, theirs.number, 3_00, "EUR", memo="leg 1")
    too_much = transfer_body(mine.number, theirs.number, 8_00, "EUR", memo="leg 2")  # 11.00 > 10.00 in all
    with pytest.raises(LinkedBatchFailed) as failed:
        alice.bank.batch([good, too_much])
    assert failed.value.errors and "1" in str(failed.value.errors[0])
    assert alice.bank.account(mine.number).posted == 10_00
    with pytest.raises(NotFound):
        alice.bank.get_transfer(good["id"])

    done = alice.bank.batch([good, transfer_body(mine.number, theirs.number, 2_00, "EUR")])
    assert [item.amount for item in done] == [3_00, 2_00] and done[0].id == good["id"]
    assert alice.bank.account(mine.number).posted == 5_00 and bob.bank.account(theirs.number).posted == 5_00
    assert [item.id for item in alice.bank.batch([good, transfer_body(mine.number, theirs.number, 2_00, "EUR",
                                                                        id=done[1].id)])] == [i.id for i in done]
    assert alice.bank.account(mine.number).posted == 5_00  # the replayed batch moved nothing


def test_pending_post_and_void_resolve_once(bank):
    admin, alice, bob = bank
    mine = funded(admin, alice, 10_00)
    theirs = bob.bank.open("EUR")
    hold = alice.bank.transfer(mine.number, theirs.number, 6_00, "EUR", pending=True, timeout=3600)
    assert hold.pending
    account = alice.bank.account(mine.number)
    assert (account.posted, account.available) == (10_00, 4_00)
    with pytest.raises(InsufficientFunds):
        alice.bank.transfer(mine.number, theirs.number, 5_00, "EUR")  # the hold counts

    alice.bank.post(hold.id, 4_00)  # less than reserved
    account = alice.bank.account(mine.number)
    assert (account.posted, account.available) == (6_00, 6_00)
    assert bob.bank.account(theirs.number).posted == 4_00
    assert not alice.bank.post(hold.id).created  # the same post again: the original answer
    with pytest.raises(AlreadyResolved):
        alice.bank.post(hold.id, 5_00)
    with pytest.raises(AlreadyResolved):
        alice.bank.void(hold.id)
    assert alice.bank.get_transfer(hold.id).state == "posted"

    second = alice.bank.transfer(mine.number, theirs.number, 6_00, "EUR", pending=True)
    alice.bank.void(second.id)
    account = alice.bank.account(mine.number)
    assert (account.posted, account.available) == (6_00, 6_00)
    with pytest.raises(AlreadyResolved):
        alice.bank.post(second.id)


def test_statement_pages_by_cursor(bank):
    admin, alice, bob = bank
    mine = funded(admin, alice, 100_00)
    theirs = bob.bank.open("EUR")
    ids = alice.bank.batch([transfer_body(mine.number, theirs.number, n, "EUR") for n in range(1, 8)])
    first = alice.bank.statement_page(mine.number, limit=3)
    assert len(first.entries) == 3 and first.next
    entries = list(alice.bank.statement(mine.number, limit=3))
    assert [entry.id for entry in entries[1:]] == [item.id for item in ids]
    assert entries[-1].balance == 100_00 - sum(range(1, 8))
    future = list(alice.bank.statement(mine.number, start="2999-01-01"))
    assert future == []


def test_async_client(server, bank):
    admin, alice, bob = bank
    mine = funded(admin, alice, 20_00)
    theirs = bob.bank.open("EUR")

    async def run() -> None:
        async with AsyncClient(server.url, alice.token) as client:
            assert [item.number for item in await client.bank.accounts()] == [mine.number]
            sent = await client.bank.transfer(mine.number, theirs.number, 5_00, "EUR")
            again = await client.bank.transfer(mine.number, theirs.number, 5_00, "EUR", id=sent.id)
            assert sent.created and not again.created
            with pytest.raises(InsufficientFunds):
                await client.bank.transfer(mine.number, theirs.number, 100_00, "EUR")
            entries = [entry async for entry in client.bank.statement(mine.number, limit=1)]
            assert [entry.balance for entry in entries] == [20_00, 15_00]
            assert (await client.bank.account(mine.number)).posted == 15_00
            assert "EUR" in {c.code for c in await client.bank.currencies()}

    asyncio.run(run())
