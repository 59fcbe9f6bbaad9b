"""The bank sub-API: ``client.bank.accounts/open/transfer/batch/statement/...``.

Amounts are integers in minor units (cents for EUR), exactly as the API has them;
:func:`parse_amount` and :func:`format_amount` convert decimal text ("12.50") to and
from them without ever going through a float.

Every transfer has a client-chosen id (a UUID), the idempotency key: the server commits
a transfer once per id, and answers a repeat of the same transfer with the original.
So :meth:`SyncBank.transfer` and :meth:`SyncBank.batch` retry a request whose answer
was lost (connection error, timeout, 502/503/504, as after a restart of the server's
database) with the *same* id: whether the first attempt committed or not, the money
moves exactly once. Posting or voiding a pending transfer, issuing with an id and
adding a currency are as safe to repeat, and are retried the same way.
"""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any, AsyncIterator, Iterable, Iterator, Mapping, TypeVar
from urllib.parse import quote

import httpx

from agora.bank.amounts import format_amount, parse_amount  # one home for both sides
from agora.client._http import AsyncAPI, Call, SyncAPI, json_body, one, query
from agora.client.errors import AgoraError, Conflict, InvalidRequest, NotFound, error_for
from agora.client.models import (BankAccount, BankBalance, BankTransfer, Currency, LedgerCheck, StatementEntry,
                                 StatementPage, from_json)

API = "/api/v1/bank"
T = TypeVar("T")

STATEMENT_PAGE = 500


# -- errors ---------------------------------------------------------------------------


class BankError(AgoraError):
    """A refusal of the ledger; the subclasses name the reason (``problem["type"]``).
    Each is also the class of its HTTP status (InsufficientFunds is an InvalidRequest...)."""


class InsufficientFunds(BankError, InvalidRequest):
    """422: the debit account's available balance is less than the amount."""


class CurrencyMismatch(BankError, InvalidRequest):
    """422: the accounts, or the transfer, are not all in the same currency."""


class AccountClosed(BankError, InvalidRequest):
    """422: one of the accounts is closed."""


class UnknownCurrency(BankError, InvalidRequest):
    """422: no such currency (an admin adds them)."""


class NotPending(BankError, InvalidRequest):
    """422: post or void of a transfer that is not a pending one."""


class UnknownAccount(BankError, NotFound):
    """404: no account has this number (or, to the caller, it is not visible)."""


class UnknownTransfer(BankError, NotFound):
    """404: no transfer has this id (or, to the caller, it is not visible)."""


class IdConflict(BankError, Conflict):
    """409: the transfer id was already used for a different transfer."""


class AlreadyResolved(BankError, Conflict):
    """409: the pending transfer was already posted, voided or has expired."""


class AccountNotEmpty(BankError, Conflict):
    """409: an account is closed only once its balance is 0 and nothing is pending."""


class LinkedBatchFailed(BankError):
    """A leg of a linked batch failed, so none committed; ``errors`` says which and why,
    ``status`` and ``type`` are those of the first failing leg."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        items = self.problem.get("errors")
        return items if isinstance(items, list) else []


# Problem type slugs ("urn:agora:problem:<slug>") of the ledger's refusals.
_BY_SLUG: dict[str, type[BankError]] = {
    "insufficient-funds": InsufficientFunds,
    "currency-mismatch": CurrencyMismatch,
    "account-closed": AccountClosed,
    "unknown-currency": UnknownCurrency,
    "not-pending": NotPending,
    "unknown-account": UnknownAccount,
    "unknown-transfer": UnknownTransfer,
    "idempotency-conflict": IdConflict,
    "pending-resolved": AlreadyResolved,
    "account-not-empty": AccountNotEmpty,
}


def bank_error(response: httpx.Response) -> AgoraError:
    """The client error for a refusal, as a :class:`BankError` subclass where the
    problem type is one of the ledger's; else the generic class for its status."""
    error = error_for(response)
    slug = error.type.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    cls = _BY_SLUG.get(slug)
    if isinstance(error.problem.get("errors"), list) and response.request.url.path.endswith("/transfers/batch"):
        cls = LinkedBatchFailed
    if cls is None:
        return error
    return cls(error.status, error.type, error.title, error.detail, error.problem)


class BankCall(Call[T]):
    """A call whose refusals are mapped to the ledger's error classes."""

    def finish(self, response: httpx.Response) -> T:
        if not (response.is_success or response.status_code in self.accept):
            raise bank_error(response)
        return super().finish(response)


# -- amounts --------------------------------------------------------------------------


def new_id() -> str:
    return str(uuid.uuid4())


# -- decoders -------------------------------------------------------------------------


def _account(data: Any) -> BankAccount:
    data = dict(data)
    balance = data.pop("balance", None)
    if isinstance(balance, dict):
        for key in ("posted", "available", "pending_debits", "pending_credits"):
            data.setdefault(key, balance.get(key, 0))
    return from_json(BankAccount, data)


def _one_account(response: httpx.Response) -> BankAccount:
    return _account(json_body(response))


def _accounts(response: httpx.Response) -> list[BankAccount]:
    data = json_body(response)
    items = data.get("accounts") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError("expected a list of accounts")
    return [_account(item) for item in items]


def _balances(response: httpx.Response) -> list[BankBalance]:
    return [from_json(BankBalance, item) for item in json_body(response)["accounts"]]


def _currencies(response: httpx.Response) -> list[Currency]:
    data = json_body(response)
    items = data.get("currencies") if isinstance(data, dict) else data
    return [from_json(Currency, item) for item in items]


def _transfer_of(data: Any, created: bool = True) -> BankTransfer:
    return from_json(BankTransfer, data, created=created)


def _transfer(response: httpx.Response) -> BankTransfer:
    # 201: committed by this request; 200: the same transfer, committed earlier.
    return _transfer_of(json_body(response), response.status_code == 201)


def _transfers(response: httpx.Response) -> list[BankTransfer]:
    data = json_body(response)
    items = data.get("transfers") if isinstance(data, dict) else data
    return [_transfer_of(item, response.status_code == 201) for item in items]


def _statement(response: httpx.Response) -> StatementPage:
    data = json_body(response)
    return StatementPage(account=data.get("account", ""), currency=data.get("currency", ""),
                         entries=[from_json(StatementEntry, item) for item in data["entries"]],
                         next=data.get("next_cursor"))


def _text(response: httpx.Response) -> str:
    return response.text


def _check(response: httpx.Response) -> LedgerCheck:
    data = json_body(response)
    problems = [item if isinstance(item, str) else str(item.get("detail") or item)
                for item in data.get("problems", [])]
    return LedgerCheck(ok=bool(data.get("ok", not problems)), problems=problems)


# -- calls ----------------------------------------------------------------------------


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def currencies() -> Call[list[Currency]]:
    return BankCall("GET", f"{API}/currencies", _currencies)


def add_currency(code: str, exponent: int) -> Call[Currency]:
    # The same currency again answers 200 with it: safe to repeat.
    return BankCall("POST", f"{API}/currencies", one(Currency), json={"code": code, "exponent": exponent},
                    idempotent=True)


def accounts(all: bool) -> Call[list[BankAccount]]:
    return BankCall("GET", f"{API}/accounts", _accounts, params={"all": "true"} if all else None)


def open_account(currency: str, name: str | None) -> Call[BankAccount]:
    return BankCall("POST", f"{API}/accounts", _one_account, json=query(currency=currency, name=name))


def account(number: str) -> Call[BankAccount]:
    return BankCall("GET", f"{API}/accounts/{_segment(number)}", _one_account)


def close_account(number: str) -> Call[BankAccount]:
    return BankCall("POST", f"{API}/accounts/{_segment(number)}/close", _one_account, idempotent=True)


def balances() -> Call[list[BankBalance]]:
    return BankCall("GET", f"{API}/balances", _balances)


def issue(id: str, number: str, amount: int, memo: str | None, attempts: int | None = None) -> Call[BankTransfer]:
    return BankCall("POST", f"{API}/issue", _transfer, json=query(id=id, account=number, amount=amount, memo=memo),
                    idempotent=True, attempts=attempts)


def transfer_body(debit: str, credit: str, amount: int, currency: str | None = None, *, id: str | None = None,
                  memo: str | None = None, pending: bool = False, timeout: int | None = None) -> dict[str, Any]:
    """One transfer as the API takes it (also an item of a batch); an id is made if none is given."""
    body = query(id=id or new_id(), debit=debit, credit=credit, amount=amount, currency=currency, memo=memo,
                 timeout=timeout)
    if pending:
        body["pending"] = True
    return body


def create_transfer(body: Mapping[str, Any], attempts: int | None = None) -> Call[BankTransfer]:
    # Its id makes it idempotent: a repeat is answered with the original (200).
    return BankCall("POST", f"{API}/transfers", _transfer, json=dict(body), idempotent=True, attempts=attempts)


def create_batch(items: list[dict[str, Any]], attempts: int | None = None) -> Call[list[BankTransfer]]:
    return BankCall("POST", f"{API}/transfers/batch", _transfers, json={"transfers": items}, idempotent=True,
                    attempts=attempts)


def transfer(id: str) -> Call[BankTransfer]:
    return BankCall("GET", f"{API}/transfers/{_segment(id)}", lambda response: _transfer_of(json_body(response), False))


# A pending transfer is resolved once: posting (or voiding) it again answers with that
# resolution, so both are safe to repeat.
def post(id: str, amount: int | None) -> Call[BankTransfer]:
    return BankCall("POST", f"{API}/transfers/{_segment(id)}/post", _transfer, json=query(amount=amount),
                    idempotent=True)


def void(id: str) -> Call[BankTransfer]:
    return BankCall("POST", f"{API}/transfers/{_segment(id)}/void", _transfer, json={}, idempotent=True)


def _range(start: Any, end: Any) -> dict[str, Any]:
    return query(**{"from": start.isoformat() if hasattr(start, "isoformat") else start,
                    "to": end.isoformat() if hasattr(end, "isoformat") else end})


def statement(number: str, start: Any, end: Any, cursor: str | None, limit: int) -> Call[StatementPage]:
    return BankCall("GET", f"{API}/accounts/{_segment(number)}/statement", _statement,
                    params={**_range(start, end), **query(cursor=cursor, limit=limit)})


def statement_csv(number: str, start: Any, end: Any) -> Call[str]:
    return BankCall("GET", f"{API}/accounts/{_segment(number)}/statement", _text, params=_range(start, end),
                    headers={"Accept": "text/csv"})


def check() -> Call[LedgerCheck]:
    return BankCall("GET", f"{API}/check", _check)


def _items(transfers: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Batch items with an id each: the ids must not change between retries."""
    items = []
    for item in transfers:
        item = dict(item)
        item.setdefault("id", new_id())
        items.append(item)
    return items


def csv_rows(text: str) -> list[dict[str, str]]:
    """The rows of a CSV statement as dictionaries keyed by its header."""
    return list(csv.DictReader(io.StringIO(text)))


# -- blocking -------------------------------------------------------------------------


class SyncBank(SyncAPI):
    """``client.bank``: accounts, balances, transfers and statements. Amounts are minor units."""

    def currencies(self) -> list[Currency]:
        return self._run(currencies())

    def add_currency(self, code: str, exponent: int) -> Currency:
        """Admins: a new currency, and its issuance account."""
        return self._run(add_currency(code, exponent))

    def accounts(self, *, all: bool = False) -> list[BankAccount]:
        """Your accounts (admins with ``all=True``: everyone's)."""
        return self._run(accounts(all))

    def open(self, currency: str, name: str | None = None) -> BankAccount:
        return self._run(open_account(currency, name))

    def account(self, number: str) -> BankAccount:
        return self._run(account(number))

    def close(self, number: str) -> BankAccount:
        return self._run(close_account(number))

    def balances(self) -> list[BankBalance]:
        """Every account you may see, read in one consistent snapshot."""
        return self._run(balances())

    def issue(self, number: str, amount: int, *, id: str | None = None, memo: str | None = None,
              retries: int | None = None) -> BankTransfer:
        """Admins: new money from the currency's issuance account into ``number``."""
        return self._run(issue(id or new_id(), number, amount, memo, retries))

    def transfer(self, debit: str, credit: str, amount: int, currency: str | None = None, *, id: str | None = None,
                 memo: str | None = None, pending: bool = False, timeout: int | None = None,
                 retries: int | None = None) -> BankTransfer:
        """Move ``amount`` minor units; ``pending`` reserves them until posted or voided
        (or ``timeout`` seconds pass). Retried with the same id when no answer comes."""
        body = transfer_body(debit, credit, amount, currency, id=id, memo=memo, pending=pending, timeout=timeout)
        return self._run(create_transfer(body, retries))

    def batch(self, transfers: Iterable[Mapping[str, Any]], *, retries: int | None = None) -> list[BankTransfer]:
        """A linked batch (see :func:`transfer_body` for an item): all commit, or none
        does and :class:`LinkedBatchFailed` says which leg failed."""
        return self._run(create_batch(_items(transfers), retries))

    def get_transfer(self, id: str) -> BankTransfer:
        return self._run(transfer(id))

    def post(self, id: str, amount: int | None = None) -> BankTransfer:
        """Post a pending transfer, for its whole amount or a lower one."""
        return self._run(post(id, amount))

    def void(self, id: str) -> BankTransfer:
        return self._run(void(id))

    def statement_page(self, number: str, *, start: Any = None, end: Any = None, cursor: str | None = None,
                       limit: int = STATEMENT_PAGE) -> StatementPage:
        return self._run(statement(number, start, end, cursor, limit))

    def statement(self, number: str, *, start: Any = None, end: Any = None,
                  limit: int = STATEMENT_PAGE) -> Iterator[StatementEntry]:
        """Every entry from ``start`` to ``end`` (datetimes or ISO text), page after page."""
        cursor = None
        while True:
            page = self.statement_page(number, start=start, end=end, cursor=cursor, limit=limit)
            yield from page.entries
            if not page.next or not page.entries:
                return
            cursor = page.next

    def statement_csv(self, number: str, *, start: Any = None, end: Any = None) -> str:
        """The statement as CSV text, as the server writes it."""
        return self._run(statement_csv(number, start, end))

    def check(self) -> LedgerCheck:
        """Admins: verify the ledger's invariants."""
        return self._run(check())


# -- async ----------------------------------------------------------------------------


class AsyncBank(AsyncAPI):
    """``client.bank`` of the AsyncClient: the same operations, awaited."""

    async def currencies(self) -> list[Currency]:
        return await self._run(currencies())

    async def add_currency(self, code: str, exponent: int) -> Currency:
        return await self._run(add_currency(code, exponent))

    async def accounts(self, *, all: bool = False) -> list[BankAccount]:
        return await self._run(accounts(all))

    async def open(self, currency: str, name: str | None = None) -> BankAccount:
        return await self._run(open_account(currency, name))

    async def account(self, number: str) -> BankAccount:
        return await self._run(account(number))

    async def close(self, number: str) -> BankAccount:
        return await self._run(close_account(number))

    async def balances(self) -> list[BankBalance]:
        return await self._run(balances())

    async def issue(self, number: str, amount: int, *, id: str | None = None, memo: str | None = None,
                    retries: int | None = None) -> BankTransfer:
        return await self._run(issue(id or new_id(), number, amount, memo, retries))

    async def transfer(self, debit: str, credit: str, amount: int, currency: str | None = None, *,
                       id: str | None = None, memo: str | None = None, pending: bool = False,
                       timeout: int | None = None, retries: int | None = None) -> BankTransfer:
        body = transfer_body(debit, credit, amount, currency, id=id, memo=memo, pending=pending, timeout=timeout)
        return await self._run(create_transfer(body, retries))

    async def batch(self, transfers: Iterable[Mapping[str, Any]], *, retries: int | None = None) -> list[BankTransfer]:
        return await self._run(create_batch(_items(transfers), retries))

    async def get_transfer(self, id: str) -> BankTransfer:
        return await self._run(transfer(id))

    async def post(self, id: str, amount: int | None = None) -> BankTransfer:
        return await self._run(post(id, amount))

    async def void(self, id: str) -> BankTransfer:
        return await self._run(void(id))

    async def statement_page(self, number: str, *, start: Any = None, end: Any = None,
                             cursor: str | None = None, limit: int = STATEMENT_PAGE) -> StatementPage:
        return await self._run(statement(number, start, end, cursor, limit))

    async def statement(self, number: str, *, start: Any = None, end: Any = None,
                        limit: int = STATEMENT_PAGE) -> AsyncIterator[StatementEntry]:
        cursor = None
        while True:
            page = await self.statement_page(number, start=start, end=end, cursor=cursor, limit=limit)
            for entry in page.entries:
                yield entry
            if not page.next or not page.entries:
                return
            cursor = page.next

    async def statement_csv(self, number: str, *, start: Any = None, end: Any = None) -> str:
        return await self._run(statement_csv(number, start, end))

    async def check(self) -> LedgerCheck:
        return await self._run(check())


__all__ = ["SyncBank", "AsyncBank", "parse_amount", "format_amount", "transfer_body", "new_id", "csv_rows",
           "BankError", "InsufficientFunds", "CurrencyMismatch", "AccountClosed", "UnknownCurrency", "NotPending",
           "UnknownAccount", "UnknownTransfer", "IdConflict", "AlreadyResolved", "AccountNotEmpty",
           "LinkedBatchFailed"]
