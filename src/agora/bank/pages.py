"""The bank's pages at ``/bank``: accounts with balances, opening and closing one, an
account's statement (paginated by cursor, CSV download), the transfer form with its
confirmation step, pending holds with post/void, and the admins' page (currencies,
issuing money, the ledger check, every account).

Session pages like the rest of the UI (``web/pages.py``): every POST carries the
session's CSRF token and calls the ledger directly (``ledger.py``), never the JSON API;
the ledger decides who may do what, so a page can never debit someone else's account.

The transfer form sends nothing: it leads to a confirmation page that shows what will
happen and carries, hidden, the transfer's id (a UUID made when the page was shown).
Confirming commits the transfer under that id, so a double click, a reload that
re-posts the form or a retry after a lost answer commits it once: the ledger answers a
repeat of the same id and contents with the original transfer.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, FileSystemLoader

from agora.bank.amounts import format_amount, parse_amount
from agora.bank.ledger import Ledger, TransferRequest, ledger
from agora.core.errors import AgoraError, Forbidden, InvalidInput
from agora.core.identity import Session
from agora.web import pages
from agora.web.pages import PageRoute, actor, viewer
from agora.web.problems import status_of

router = APIRouter(prefix="/bank", route_class=PageRoute, include_in_schema=False)

# The layout of the web UI, plus this service's own templates (under bank/templates).
templates = Jinja2Templates(env=pages.templates.env.overlay(loader=ChoiceLoader([
    FileSystemLoader(Path(__file__).parent / "templates"), pages.templates.env.loader])))

PAGE_SIZE = 50  # statement rows per page
NOTICES = {
    "opened": "Account opened.",
    "closed": "Account closed.",
    "posted": "Pending transfer posted: the money moved.",
    "voided": "Pending transfer voided: the money is free again.",
    "currency": "Currency added.",
    "issued": "Money issued.",
}
# Statement rows whose kind needs a word beside the amount (a plain transfer needs none).
KIND_LABELS = {"issue": "issued", "pending": "pending", "post": "posted", "void": "voided", "expire": "expired"}


# -- helpers --------------------------------------------------------------------------


def _ledger(request: Request) -> Ledger:
    return ledger(request.app.state.runtime)


def _page(request: Request, template: str, session: Session, *, status: int = 200, **context: Any) -> Response:
    context.update(user=session.user, csrf=session.csrf_token)
    context.setdefault("notice", NOTICES.get(request.query_params.get("notice", "")))
    response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _value(form: Any, name: str) -> str:
    value = form.get(name)
    return value[:pages.MAX_FIELD].strip() if isinstance(value, str) else ""


def _done(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


async def _exponents(the_ledger: Ledger) -> dict[str, int]:
    return {currency["code"]: currency["exponent"] for currency in await the_ledger.currencies()}


def _money(minor: int, currency: str, exponents: dict[str, int]) -> str:
    return format_amount(minor, exponents.get(currency, 0))


def _amount(text: str, currency: str, exponents: dict[str, int]) -> int:
    try:
        minor = parse_amount(text, exponents.get(currency, 0))
    except ValueError as error:
        raise InvalidInput(f"amount: {error}") from None
    if minor <= 0:
        raise InvalidInput("the amount must be more than 0")
    return minor


def _account_view(account: dict[str, Any], exponents: dict[str, int]) -> dict[str, Any]:
    balance = account["balance"]
    currency = account["currency"]
    return {**account, "posted": balance["posted"], "available": balance["available"],
            "posted_text": _money(balance["posted"], currency, exponents),
            "available_text": _money(balance["available"], currency, exponents)}


def _when(stamp: str | None) -> str:
    if not stamp:
        return ""
    return datetime.fromisoformat(stamp).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _day(value: str | None, *, end: bool = False) -> datetime | None:
    """A date field (YYYY-MM-DD) as the start of that day in UTC; ``end``: of the next
    day, so that "to" includes the day named."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value[:10])
    except ValueError:
        raise InvalidInput(f"{value[:20]!r} is not a date (YYYY-MM-DD)") from None
    return datetime.combine(day + timedelta(days=1 if end else 0), time(), tzinfo=timezone.utc)


async def _holds(the_ledger: Ledger, session: Session, exponents: dict[str, int]) -> list[dict[str, Any]]:
    """The pending transfers on the user's accounts not yet posted, voided or expired."""
    return [{"id": hold["id"], "debit": hold["debit"], "credit": hold["credit"], "currency": hold["currency"],
             "amount_text": _money(hold["amount"], hold["currency"], exponents), "memo": hold["memo"],
             "expires": datetime.fromisoformat(hold["expires"]).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
            for hold in await the_ledger.holds(session.user)]


# -- accounts -------------------------------------------------------------------------


@router.get("", name="bank.home")
async def home(request: Request, session: Session = Depends(viewer)) -> Response:
    return await _home(request, session)


async def _home(request: Request, session: Session, *, status: int = 200, error: str | None = None) -> Response:
    the_ledger = _ledger(request)
    exponents = await _exponents(the_ledger)
    accounts = await the_ledger.accounts(session.user)
    return _page(request, "bank/home.html", session, status=status, error=error,
                 accounts=[_account_view(account, exponents) for account in accounts],
                 currencies=await the_ledger.currencies(), max_name=100,
                 holds=await _holds(the_ledger, session, exponents))


@router.post("/accounts")
async def open_account(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    try:
        await _ledger(request).open_account(session.user, _value(form, "currency"), _value(form, "name"))
    except AgoraError as error:
        return await _home(request, session, status=status_of(error), error=error.detail)
    return _done("/bank?notice=opened")


@router.post("/accounts/{number}/close")
async def close_account(number: str, request: Request, session: Session = Depends(actor)) -> Response:
    try:
        await _ledger(request).close_account(session.user, number)
    except AgoraError as error:
        return await _home(request, session, status=status_of(error), error=error.detail)
    return _done("/bank?notice=closed")


@router.get("/accounts/{number}")
async def statement(number: str, request: Request, session: Session = Depends(viewer)) -> Response:
    the_ledger = _ledger(request)
    params = request.query_params
    start, end = params.get("from") or None, params.get("to") or None
    cursor = params.get("cursor") or None
    account = await the_ledger.account(session.user, number)
    page = await the_ledger.statement(session.user, number, start=_day(start), end=_day(end, end=True),
                                      cursor=cursor, limit=PAGE_SIZE)
    exponents = await _exponents(the_ledger)
    currency = account["currency"]
    entries = [{**entry, "transfer": entry["id"], "when": _when(entry["timestamp"]),
                "link": entry["pending_id"] or entry["id"], "status": KIND_LABELS.get(entry["kind"], "posted"),
                "amount_text": _money(entry["amount"], currency, exponents),
                "balance_text": _money(entry["balance"], currency, exponents)} for entry in page["entries"]]
    here = {key: value for key, value in (("from", start), ("to", end)) if value}
    base = f"/bank/accounts/{account['number']}"
    return _page(request, "bank/statement.html", session, account=_account_view(account, exponents),
                 entries=entries, start=start, end=end,
                 next_url=f"{base}?{urlencode({**here, 'cursor': page['next_cursor']})}" if page["next_cursor"] else None,
                 first_url=f"{base}?{urlencode(here)}".rstrip("?") if cursor else None,
                 csv_url=f"{base}/statement.csv" + (f"?{urlencode(here)}" if here else ""))


def _as_text(memo: str) -> str:
    # A memo is the payer's text: opened in a spreadsheet, "=..." would run as a formula.
    return "'" + memo if memo[:1] in ("=", "+", "-", "@", "\t", "\r") else memo


@router.get("/accounts/{number}/statement.csv")
async def statement_csv(number: str, request: Request, session: Session = Depends(viewer)) -> Response:
    the_ledger = _ledger(request)
    params = request.query_params
    account = await the_ledger.account(session.user, number)  # refuses another's account before streaming
    exponents = await _exponents(the_ledger)
    currency = account["currency"]
    start, end = _day(params.get("from") or None), _day(params.get("to") or None, end=True)

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["timestamp", "id", "kind", "counterparty", "memo", "amount", "balance", "currency"])
        async for entry in the_ledger.statement_pages(session.user, account["number"], start=start, end=end):
            writer.writerow([entry["timestamp"], entry["id"], entry["kind"], entry["counterparty"], _as_text(entry["memo"]),
                             _money(entry["amount"], currency, exponents),
                             _money(entry["balance"], currency, exponents), currency])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        yield buffer.getvalue()

    name = f"statement-{account['number']}.csv"
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


# -- transfers ------------------------------------------------------------------------


async def _transfer_form(request: Request, session: Session, form: dict[str, str], *, status: int = 200,
                         error: str | None = None) -> Response:
    the_ledger = _ledger(request)
    exponents = await _exponents(the_ledger)
    accounts = [_account_view(account, exponents) for account in await the_ledger.accounts(session.user)
                if not account["closed"]]
    return _page(request, "bank/transfer.html", session, status=status, error=error, form=form,
                 accounts=accounts, max_memo=the_ledger.settings.max_memo)


@router.get("/transfer")
async def transfer_form(request: Request, session: Session = Depends(viewer)) -> Response:
    return await _transfer_form(request, session, {"from": request.query_params.get("from", "")})


def _fields(form: Any) -> dict[str, str]:
    return {name: _value(form, name) for name in ("id", "from", "to", "amount", "memo", "pending", "timeout")}


def _timeout(fields: dict[str, str]) -> int | None:
    if not fields["pending"] or not fields["timeout"]:
        return None
    if not fields["timeout"].isascii() or not fields["timeout"].isdigit() or len(fields["timeout"]) > 9:
        raise InvalidInput("the timeout is a whole number of seconds")
    return int(fields["timeout"])


@router.post("/transfer/confirm")
async def confirm_transfer(request: Request, session: Session = Depends(actor)) -> Response:
    """What the transfer will do, before it is done: nothing moves here."""
    fields = _fields(await request.form())
    the_ledger = _ledger(request)
    try:
        debit = await the_ledger.account(session.user, fields["from"])  # refused unless the caller's own
        exponents = await _exponents(the_ledger)
        currency = debit["currency"]
        amount = _amount(fields["amount"], currency, exponents)
        timeout = _timeout(fields)
        if not fields["to"]:
            raise InvalidInput("name the account to pay into")
    except AgoraError as error:
        return await _transfer_form(request, session, fields, status=status_of(error), error=error.detail)
    pending = bool(fields["pending"])
    available = debit["balance"]["available"]
    return _page(request, "bank/confirm.html", session, id=str(uuid.uuid4()), debit=debit["number"],
                 credit=fields["to"], currency=currency, amount_text=_money(amount, currency, exponents),
                 after_text=_money(available - amount, currency, exponents), memo=fields["memo"],
                 pending=pending, timeout=timeout,
                 edit_url="/bank/transfer?" + urlencode({"from": debit["number"]}))


@router.post("/transfer")
async def make_transfer(request: Request, session: Session = Depends(actor)) -> Response:
    fields = _fields(await request.form())
    the_ledger = _ledger(request)
    try:
        if not fields["id"]:
            raise InvalidInput("the transfer has no id: start again from the transfer form")
        debit = await the_ledger.account(session.user, fields["from"])
        exponents = await _exponents(the_ledger)
        amount = _amount(fields["amount"], debit["currency"], exponents)
        transfer, _ = await the_ledger.transfer(session.user, TransferRequest(
            id=fields["id"], debit=fields["from"], credit=fields["to"], amount=amount, currency=debit["currency"],
            memo=fields["memo"], pending=bool(fields["pending"]), timeout=_timeout(fields)))
    except AgoraError as error:
        return await _transfer_form(request, session, fields, status=status_of(error), error=error.detail)
    # The same page for the first commit and for a repeat: the transfer is what it is.
    return _done(f"/bank/transfers/{transfer['id']}?notice=" + ("reserved" if transfer["pending"] else "sent"))


@router.get("/transfers/{transfer_id}")
async def transfer_page(transfer_id: str, request: Request, session: Session = Depends(viewer)) -> Response:
    the_ledger = _ledger(request)
    transfer = await the_ledger.get_transfer(session.user, transfer_id)
    exponents = await _exponents(the_ledger)
    own = {account["number"] for account in await the_ledger.accounts(session.user)}
    status = transfer["state"] or KIND_LABELS.get(transfer["kind"], "posted")
    view = {**transfer, "status": status, "when": _when(transfer["timestamp"]),
            "amount_text": _money(transfer["amount"], transfer["currency"], exponents),
            "mine": transfer["debit"] in own or transfer["credit"] in own or session.user.is_admin}
    notice = {"sent": "Transfer done.", "reserved": "Money reserved: post or void the pending transfer."}
    return _page(request, "bank/transfer_view.html", session, transfer=view,
                 notice=notice.get(request.query_params.get("notice", "")) or
                 NOTICES.get(request.query_params.get("notice", "")))


@router.post("/transfers/{transfer_id}/post")
async def post_pending(transfer_id: str, request: Request, session: Session = Depends(actor)) -> Response:
    await _ledger(request).post(session.user, transfer_id)
    return _done(f"/bank/transfers/{transfer_id}?notice=posted")


@router.post("/transfers/{transfer_id}/void")
async def void_pending(transfer_id: str, request: Request, session: Session = Depends(actor)) -> Response:
    await _ledger(request).void(session.user, transfer_id)
    return _done(f"/bank/transfers/{transfer_id}?notice=voided")


# -- admin ----------------------------------------------------------------------------


def _admin(session: Session) -> None:
    if not session.user.is_admin:
        raise Forbidden("the bank's admin page is for admins")


async def _admin_page(request: Request, session: Session, *, status: int = 200, error: str | None = None,
                      check: list[str] | None = None) -> Response:
    _admin(session)
    the_ledger = _ledger(request)
    exponents = await _exponents(the_ledger)
    accounts = [_account_view(account, exponents) for account in await the_ledger.accounts(session.user, everyone=True)]
    return _page(request, "bank/admin.html", session, status=status, error=error, check=check,
                 currencies=await the_ledger.currencies(), accounts=accounts, issue_id=str(uuid.uuid4()),
                 max_memo=the_ledger.settings.max_memo)


@router.get("/admin")
async def admin_page(request: Request, session: Session = Depends(viewer)) -> Response:
    _admin(session)
    check = await _ledger(request).check(session.user) if request.query_params.get("check") else None
    return await _admin_page(request, session, check=check)


@router.post("/admin/currencies")
async def add_currency(request: Request, session: Session = Depends(actor)) -> Response:
    _admin(session)
    form = await request.form()
    exponent = _value(form, "exponent")
    try:
        if not exponent.isascii() or not exponent.isdigit() or len(exponent) > 2:
            raise InvalidInput("decimals: a whole number from 0 to 18")
        await _ledger(request).add_currency(session.user, _value(form, "code"), int(exponent))
    except AgoraError as error:
        return await _admin_page(request, session, status=status_of(error), error=error.detail)
    return _done("/bank/admin?notice=currency")


@router.post("/admin/issue")
async def issue(request: Request, session: Session = Depends(actor)) -> Response:
    _admin(session)
    fields = {name: _value(await request.form(), name) for name in ("id", "account", "amount", "memo")}
    the_ledger = _ledger(request)
    try:
        account = await the_ledger.account(session.user, fields["account"])
        amount = _amount(fields["amount"], account["currency"], await _exponents(the_ledger))
        # The form's id, made when it was shown: submitting it twice issues once.
        await the_ledger.issue(session.user, fields["id"] or str(uuid.uuid4()), account["number"], amount,
                               fields["memo"])
    except AgoraError as error:
        return await _admin_page(request, session, status=status_of(error), error=error.detail)
    return _done("/bank/admin?notice=issued")
