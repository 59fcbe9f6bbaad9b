"""The bank's JSON API, ``/api/v1/bank/...`` (the contract of issue 5; amounts are
integers in minor units, account numbers strings).

Endpoints (for the client, CLI and pages):
  POST /currencies (admin) {"code", "exponent"} -> 201 new, 200 same again; GET /currencies
  POST /accounts {"currency", "name"} -> 201 account; GET /accounts[?all=true (admin)]
  GET /accounts/{number}; POST /accounts/{number}/close
  GET /accounts/{number}/statement?from=&to=&cursor=&limit= (JSON; CSV with Accept: text/csv)
  GET /balances -> {"accounts": [{"number", "currency", "posted", "available"}]} (one snapshot)
  POST /issue (admin) {"id", "account", "amount", "memo"?}
  POST /transfers {"id", "debit", "credit", "amount", "currency"?, "memo"?, "pending"?, "timeout"?}
       -> 201 new, 200 the original on a retry, 409 same id with other contents
  GET /transfers/{id} (with "state" of a pending one: pending, posted, voided, expired)
  POST /transfers/batch {"transfers": [...]} -> 201 {"transfers": [...]}, or the first
       failure's status with "errors": [{"index", "type", "status", "title", "detail"}]
  POST /transfers/{id}/post {"amount"?}; POST /transfers/{id}/void
  GET /check (admin) -> {"ok": bool, "problems": [str]}   (what `agora bank check` calls)
Shapes:
  account  {"number", "currency", "name", "balance": {"posted", "available", "pending_debits",
            "pending_credits"}, "owner", "system", "closed", "created_at", "closed_at"}
  transfer {"id", "kind" (transfer, issue, pending, post, void, expire), "debit", "credit",
            "amount", "currency", "memo", "pending", "timeout", "pending_id", "timestamp"}
  statement {"account", "currency", "entries": [{"id", "kind", "timestamp", "amount" (signed:
            + credit, - debit), "effect" (what it did to posted: 0 for holds), "counterparty",
            "memo", "pending_id", "balance" (posted after it)}], "next_cursor"}; CSV columns
            timestamp,id,kind,amount,effect,balance,counterparty,memo,pending_id
  currency {"code", "exponent", "issuance_account", "issued"}
Errors are problem+json with types urn:agora:problem:insufficient-funds,
currency-mismatch, account-closed, unknown-account, unknown-currency, unknown-transfer,
idempotency-conflict, pending-resolved, not-pending, account-not-empty, forbidden.

The transfer routes are the hot path (thousands a second): they return JSONResponse
directly, without a response model to validate again.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from datetime import datetime
from types import SimpleNamespace
from typing import Any, AsyncIterator, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_json

from agora.bank import errors
from agora.bank.ledger import Ledger, TransferRequest, ledger
from agora.core.identity import User
from agora.web.auth import api_admin, api_user, bearer
from agora.web.problems import problem, problem_type, status_of

router = APIRouter(prefix="/api/v1/bank", tags=["bank"])

PROBLEM = {"model": None, "content": {"application/problem+json": {}}}
AUTH = {401: {"description": "Missing or invalid token", **PROBLEM}}
ADMIN = {**AUTH, 403: {"description": "Not an admin", **PROBLEM}}
ACCOUNT = {**AUTH, 403: {"description": "Not your account", **PROBLEM},
           404: {"description": "No such account", **PROBLEM}}
MOVE = {**ACCOUNT, 409: {"description": "The id was used with other contents", **PROBLEM},
        422: {"description": "Insufficient funds, currency mismatch, closed account, bad input", **PROBLEM}}
CSV_COLUMNS = ["timestamp", "id", "kind", "amount", "effect", "balance", "counterparty", "memo", "pending_id"]


class Strict(BaseModel):
    # strict: values only as documented. Lax parsing took true as 1 cent, "100", " 100"
    # and 100.0 as 100: a client's bug would move money instead of being refused (422).
    model_config = ConfigDict(extra="forbid", strict=True)


class CurrencyIn(Strict):
    code: str = Field(max_length=8, description="3 to 8 letters or digits, e.g. EUR")
    exponent: int = Field(description="Decimal places of the minor unit: EUR 2, JPY 0")


class AccountIn(Strict):
    currency: str = Field(max_length=8)
    name: str = Field("", max_length=100)


class TransferIn(Strict):
    id: str = Field(max_length=64, description="A UUID chosen by the client: the idempotency key")
    debit: str = Field(max_length=64, description="Account number to take the money from (yours)")
    credit: str = Field(max_length=64, description="Account number to give it to (any open one)")
    amount: int = Field(description="Minor units (cents), at least 1: a JSON integer, not a string, float or boolean")
    currency: str | None = Field(None, max_length=8, description="When given, both accounts must hold it")
    memo: str = Field("", max_length=100000)
    pending: bool = Field(False, description="Only reserve the amount until posted, voided or timed out")
    timeout: int | None = Field(None, description="Seconds a pending transfer waits (default bank.default_pending_timeout)")

    def request(self) -> TransferRequest:
        return TransferRequest(self.id, self.debit, self.credit, self.amount, self.currency, self.memo,
                               self.pending, self.timeout)


class BatchIn(Strict):
    transfers: list[TransferIn] = Field(description="Linked: all commit or none (at most bank.max_batch)")


class IssueIn(Strict):
    id: str = Field(max_length=64)
    account: str = Field(max_length=64)
    amount: int
    memo: str = Field("", max_length=100000)


class PostIn(Strict):
    amount: int | None = Field(None, description="At most the pending amount; default all of it")


async def _ledger(request: Request) -> Ledger:
    # async: FastAPI runs a plain-def dependency on a worker thread, a hop per request.
    return ledger(request.app.state.runtime)


MAX_CACHED_TOKENS = 10_000


async def bank_user(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> User:
    """api_user, with its answer kept bank.auth_cache seconds per token.

    Looking a token up costs a database read (four thread hops on SQLite) per request,
    more than the transfer itself costs the ledger; at thousands of transfers a second
    that read is the bottleneck. The price: a revoked token, or a disabled user's, still
    works here for up to that long (0 turns the cache off).

    When an answer expires, the requests with that token that arrive during the new
    lookup wait for it rather than each making their own (with 16 clients sharing a
    token, that herd of reads took a tenth of the server's time in a profile).
    """
    runtime = request.app.state.runtime
    ttl = runtime.config.bank.auth_cache
    if credentials is None or ttl <= 0:
        return await api_user(request, credentials)
    secret = credentials.credentials
    cache: dict[str, tuple[float, User]] = runtime.shared("bank.auth_cache", dict)
    hit = cache.get(secret)
    if hit is not None and hit[0] > time.monotonic():
        request.state.user = hit[1]
        return hit[1]
    lookups: dict[str, asyncio.Future[User]] = runtime.shared("bank.auth_lookups", dict)
    lookup = lookups.get(secret)
    if lookup is None:
        lookup = lookups[secret] = asyncio.ensure_future(_look_up(request, credentials, cache, ttl))

        def done(task: asyncio.Future[User]) -> None:
            lookups.pop(secret, None)
            if not task.cancelled():
                task.exception()  # marked as seen: its waiters may all have hung up

        lookup.add_done_callback(done)
    # Shielded: one waiter hanging up must not cancel the others' lookup.
    user = await asyncio.shield(lookup)
    request.state.user = user
    return user


async def _look_up(request: Request, credentials: HTTPAuthorizationCredentials,
                   cache: dict[str, tuple[float, User]], ttl: float) -> User:
    start = time.monotonic()  # the answer is as old as the read, not as its end
    user = await api_user(request, credentials)
    if len(cache) >= MAX_CACHED_TOKENS:
        cache.clear()
    cache[credentials.credentials] = (start + ttl, user)
    return user


class MoneyResponse(JSONResponse):
    """JSON written by pydantic-core (Rust) rather than json.dumps: a batch's answer
    lists every transfer, and json.dumps took over twice as long to write it."""

    def render(self, content: Any) -> bytes:
        return to_json(content)


def _answer(body: Any, created: bool) -> JSONResponse:
    return MoneyResponse(body, status_code=201 if created else 200)


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], raw: bytes) -> M:
    """The body as ``model``, parsed and validated in one pass (no dict in between);
    refused as FastAPI refuses a body."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError([{**item, "loc": ("body", *item["loc"])} for item in
                                      error.errors(include_url=False, include_input=False)]) from None


# The hot paths first: routes are tried in order. They skip FastAPI's per-request
# machinery (dependency solving, validating the body through a dict, response
# handling): same models, same auth, same ledger calls, same errors, about a third
# less CPU a request. The documented routes below are what /api/docs shows.


async def _transfer_lean(request: Request) -> Response:
    request.scope["route"] = _LEAN_TRANSFER  # for the metrics' route label (a plain route sets none)
    user = await bank_user(request, await bearer(request))
    body = _parse(TransferIn, await request.body())
    return _answer(*await ledger(request.app.state.runtime).transfer(user, body.request()))


async def _batch_lean(request: Request) -> Response:
    request.scope["route"] = _LEAN_BATCH
    user = await bank_user(request, await bearer(request))
    body = _parse(BatchIn, await request.body())
    return await _batch(request, user, ledger(request.app.state.runtime), body)


_LEAN_TRANSFER = SimpleNamespace(path=router.prefix + "/transfers")
_LEAN_BATCH = SimpleNamespace(path=router.prefix + "/transfers/batch")
# A plain route takes its path as given: the router's prefix is not applied to it.
router.add_route(_LEAN_TRANSFER.path, _transfer_lean, methods=["POST"], include_in_schema=False)
router.add_route(_LEAN_BATCH.path, _batch_lean, methods=["POST"], include_in_schema=False)


@router.post("/transfers", status_code=201, responses={**MOVE, 200: {"description": "A retry: the original transfer"}})
async def transfer(body: TransferIn, user: User = Depends(bank_user), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    """Move money from an account of yours to any open account, once per id."""
    return _answer(*await bank.transfer(user, body.request()))


# -- currencies -------------------------------------------------------------------------


@router.post("/currencies", status_code=201, responses={**ADMIN, 200: {"description": "Already there"},
                                                         409: {"description": "Exists with another exponent", **PROBLEM}})
async def add_currency(body: CurrencyIn, user: User = Depends(api_admin), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    """Add a currency (admin); it gets its system account, from which money is issued."""
    currency, created = await bank.add_currency(user, body.code, body.exponent)
    return _answer(currency, created)


@router.get("/currencies", responses=AUTH)
async def currencies(user: User = Depends(bank_user), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    return JSONResponse({"currencies": await bank.currencies()})


# -- accounts ---------------------------------------------------------------------------


@router.post("/accounts", status_code=201, responses={**AUTH, 422: {"description": "Unknown currency", **PROBLEM}})
async def open_account(body: AccountIn, user: User = Depends(bank_user), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    return JSONResponse(await bank.open_account(user, body.currency, body.name), status_code=201)


@router.get("/accounts", responses=ADMIN)
async def accounts(all: bool = Query(False, description="Every user's (admin)"),
                   user: User = Depends(bank_user), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    return JSONResponse({"accounts": await bank.accounts(user, everyone=all)})


@router.get("/accounts/{number}", responses=ACCOUNT)
async def account(number: str, user: User = Depends(bank_user), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    return JSONResponse(await bank.account(user, number))


@router.post("/accounts/{number}/close", responses={**ACCOUNT, 409: {"description": "Not empty", **PROBLEM}})
async def close_account(number: str, user: User = Depends(bank_user), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    """Close an empty account of yours: it takes no more transfers; its history stays."""
    return JSONResponse(await bank.close_account(user, number))


@router.get("/accounts/{number}/statement", responses={
    **ACCOUNT, 200: {"content": {"application/json": {}, "text/csv": {}}}})
async def statement(request: Request, number: str,
                    start: datetime | None = Query(None, alias="from", description="From this time on (inclusive)"),
                    end: datetime | None = Query(None, alias="to", description="Before this time"),
                    cursor: str | None = Query(None, max_length=20, description="next_cursor of the previous page"),
                    limit: int | None = Query(None, ge=1, le=100000),
                    user: User = Depends(bank_user), bank: Ledger = Depends(_ledger)) -> Response:
    """An account's transfers, oldest first, each with the posted balance after it
    (``balance``) and what it did to that balance (``effect``: 0 for holds)."""
    start, end = _aware(start), _aware(end)
    if "text/csv" in request.headers.get("accept", ""):
        if limit is None:  # the whole range, streamed page by page
            rows = bank.statement_pages(user, number, start=start, end=end, cursor=cursor)
            first = await _first(rows)  # errors (403, 404) before the 200 starts
            return StreamingResponse(_csv(first, rows), media_type="text/csv; charset=utf-8",
                                     headers={"Content-Disposition": f'attachment; filename="statement-{number}.csv"'})
        page = await bank.statement(user, number, start=start, end=end, cursor=cursor, limit=limit)
        text = "".join([chunk async for chunk in _csv(page["entries"], _nothing())])
        headers = {"X-Next-Cursor": page["next_cursor"]} if page["next_cursor"] else {}
        return Response(text, media_type="text/csv; charset=utf-8", headers=headers)
    return JSONResponse(await bank.statement(user, number, start=start, end=end, cursor=cursor, limit=limit))


@router.get("/balances", responses=AUTH)
async def balances(user: User = Depends(bank_user), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    """Posted and available balance of every account you may see (admin: all), read at
    one instant."""
    return JSONResponse({"accounts": await bank.balances(user)})


# -- money ------------------------------------------------------------------------------


@router.post("/issue", status_code=201, responses={**MOVE, 403: {"description": "Not an admin", **PROBLEM}})
async def issue(body: IssueIn, user: User = Depends(api_admin), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    """Bring money into the system (admin): a transfer from the currency's system account."""
    return _answer(*await bank.issue(user, body.id, body.account, body.amount, body.memo))


@router.post("/transfers/batch", status_code=201, responses={**MOVE, 200: {"description": "A retry"}})
async def batch(body: BatchIn, request: Request, user: User = Depends(bank_user),
                bank: Ledger = Depends(_ledger)) -> JSONResponse:
    """Linked transfers: all commit, or none does and each failure is listed."""
    return await _batch(request, user, bank, body)


async def _batch(request: Request, user: User, bank: Ledger, body: BatchIn) -> Response:
    try:
        transfers, created = await bank.batch(user, [t.request() for t in body.transfers])
    except errors.BatchFailed as failure:
        return problem(status_of(failure.first), failure.detail, slug=failure.first.slug, title=failure.first.title,
                       instance=request.url.path, errors=[
                           {"index": index, "type": problem_type(error.slug), "status": status_of(error),
                            "title": error.title, "detail": error.detail} for index, error in failure.errors])
    return _answer({"transfers": transfers}, created)


@router.get("/transfers/{id}", responses=ACCOUNT)
async def get_transfer(id: str, user: User = Depends(bank_user), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    return JSONResponse(await bank.get_transfer(user, id))


@router.post("/transfers/{id}/post", status_code=201, responses={**MOVE, 200: {"description": "Already posted so"}})
async def post_pending(id: str, body: PostIn | None = None, user: User = Depends(bank_user),
                       bank: Ledger = Depends(_ledger)) -> JSONResponse:
    """Settle a pending transfer, for its amount or less (either party, or an admin)."""
    return _answer(*await bank.post(user, id, body.amount if body else None))


@router.post("/transfers/{id}/void", status_code=201, responses={**MOVE, 200: {"description": "Already voided"}})
async def void_pending(id: str, user: User = Depends(bank_user), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    """Release a pending transfer's funds (either party, or an admin)."""
    return _answer(*await bank.void(user, id))


@router.get("/check", responses=ADMIN)
async def check(user: User = Depends(api_admin), bank: Ledger = Depends(_ledger)) -> JSONResponse:
    """Verify the ledger (admin): balances equal their transfers, currencies sum to 0,
    no user account below 0, every pending transfer resolved once or held."""
    problems = await bank.check(user)
    return JSONResponse({"ok": not problems, "problems": problems})


# -- helpers ------------------------------------------------------------------------------


def _aware(moment: datetime | None) -> datetime | None:
    from datetime import timezone
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)  # a time without zone is UTC
    return moment


async def _first(rows: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    try:
        return [await rows.__anext__()]
    except StopAsyncIteration:
        return []


async def _nothing() -> AsyncIterator[dict[str, Any]]:
    return
    yield


def _cell(entry: dict[str, Any]) -> dict[str, Any]:
    # A memo is anyone's text (the payer's): in a spreadsheet "=..." would be a formula.
    memo = entry["memo"]
    return {**entry, "memo": "'" + memo if memo[:1] in ("=", "+", "-", "@", "\t", "\r") else memo}


async def _csv(first: list[dict[str, Any]], rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for entry in first:
        writer.writerow(_cell(entry))
    async for entry in rest:
        writer.writerow(_cell(entry))
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
