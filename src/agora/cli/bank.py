"""`agora bank ...`: your accounts, transfers and statements, through the stored login.

AMOUNT is decimal text in the currency's units ("12.50" for EUR, "500" for JPY),
converted exactly to the integer minor units the API takes; more decimals than the
currency has is an error, never a rounding. Amounts are shown the same way.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

import click

from agora.cli.common import USAGE, fail, logged_in_client

if TYPE_CHECKING:
    from agora.client import Client

# What a statement row's kind says beside its amount (a plain transfer says nothing).
KIND_MARK = {"issue": "issued", "pending": "pending", "post": "posted", "void": "voided", "expire": "expired"}


def _printable(text: str) -> str:
    # Memos and names are written by other users: no terminal escape sequences from them.
    return re.sub(r"[\x00-\x1f\x7f\x9b]", " ", text)


def _exponents(client: "Client") -> dict[str, int]:
    return {currency.code: currency.exponent for currency in client.bank.currencies()}


def _amount(text: str, currency: str, exponents: dict[str, int]) -> int:
    from agora.client import parse_amount

    if currency not in exponents:
        fail(f"unknown currency {currency}", USAGE)
    try:
        minor = parse_amount(text, exponents[currency])
    except ValueError as error:
        fail(f"bad amount: {error}", USAGE)
    if minor <= 0:
        fail("the amount must be more than 0", USAGE)
    return minor


def _shown(minor: int, currency: str, exponents: dict[str, int]) -> str:
    from agora.client import format_amount

    return format_amount(minor, exponents.get(currency, 0))


NUMERIC = ("posted", "available", "amount", "balance")
# Columns cut with an ellipsis past MAX_FLEXIBLE characters; the others are shown whole
# (Rich would squeeze every column of a table too wide, amounts and ids included).
FLEXIBLE = ("name", "memo", "owner")
MAX_FLEXIBLE = 30


def _print(headers: tuple[str, ...], rows: list[tuple[list[str], str | None]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    needed = 2 * (len(headers) - 1)  # the gaps between columns
    for i, header in enumerate(headers):
        widest = max([len(header)] + [len(cells[i]) for cells, _ in rows])
        if header in FLEXIBLE:
            table.add_column(header, no_wrap=True, overflow="ellipsis", max_width=MAX_FLEXIBLE)
            needed += min(widest, MAX_FLEXIBLE)
        else:
            table.add_column(header, justify="right" if header in NUMERIC else "left", no_wrap=True,
                             min_width=widest)
            needed += widest
    for cells, style in rows:
        table.add_row(*cells, style=style)
    console = Console(highlight=False)
    # Too narrow a terminal wraps the lines rather than cropping an amount.
    console.width = max(console.width, needed)
    console.print(table)


def _currency_of(client: "Client", debit: str, credit: str, given: str | None) -> str:
    """The currency of a transfer: --currency, else the one of whichever account is yours."""
    if given:
        return given.upper()
    own = {account.number: account.currency for account in client.bank.accounts()}
    for number in (debit, credit):
        if number in own:
            return own[number]
    fail("neither account is yours: give --currency so the amount can be read", USAGE)


@click.group()
def bank() -> None:
    """Your bank accounts: balances, transfers, statements (after `agora login`)."""


@bank.command()
@click.option("--all", "all_", is_flag=True, help="Everyone's accounts (admins).")
def accounts(all_: bool) -> None:
    """Your accounts with their balances."""
    with logged_in_client() as client:
        exponents = _exponents(client)
        items = client.bank.accounts(all=all_)
    if not items:
        click.echo("no accounts; open one with `agora bank open --currency EUR`")
        return
    headers = ("number", "name", "currency", "posted", "available") + (("owner",) if all_ else ()) + ("",)
    rows = []
    for item in items:
        row = [item.number, _printable(item.name), item.currency, _shown(item.posted, item.currency, exponents),
               _shown(item.available, item.currency, exponents)]
        if all_:
            row.append(item.owner or "")
        row.append("closed" if item.closed else "")
        rows.append((row, "dim" if item.closed else None))
    _print(headers, rows)


@bank.command("open")
@click.option("--currency", required=True, metavar="CODE", help="The account's currency, e.g. EUR.")
@click.option("--name", default=None, help="A name of your choice for the account.")
def open_(currency: str, name: str | None) -> None:
    """Open an account."""
    with logged_in_client() as client:
        account = client.bank.open(currency.upper(), name)
    click.echo(f"opened {account.number} ({account.currency}{', ' + account.name if account.name else ''})")


@bank.command()
@click.argument("number")
def close(number: str) -> None:
    """Close an account (its balance must be 0)."""
    with logged_in_client() as client:
        account = client.bank.close(number)
    click.echo(f"closed {account.number}")


@bank.command()
@click.argument("debit", metavar="FROM")
@click.argument("credit", metavar="TO")
@click.argument("amount")
@click.option("--memo", default=None, help="A note that both statements show.")
@click.option("--id", "transfer_id", default=None, metavar="UUID",
              help="The transfer's id; running the same command again with it never pays twice.")
@click.option("--currency", default=None, metavar="CODE", help="Only needed when neither account is yours.")
@click.option("--pending", is_flag=True, help="Only reserve the money; `agora bank post/void ID` resolves it.")
@click.option("--timeout", default=None, type=click.IntRange(1), metavar="SECONDS",
              help="With --pending: void it by itself after this long.")
def transfer(debit: str, credit: str, amount: str, memo: str | None, transfer_id: str | None,
             currency: str | None, pending: bool, timeout: int | None) -> None:
    """Move AMOUNT, such as 12.50, from your account FROM to account TO."""
    if timeout is not None and not pending:
        fail("--timeout is for --pending transfers", USAGE)
    if transfer_id is not None:
        import uuid
        try:
            transfer_id = str(uuid.UUID(transfer_id))
        except ValueError:
            fail(f"--id must be a UUID, not {transfer_id!r}", USAGE)
    with logged_in_client() as client:
        exponents = _exponents(client)
        code = _currency_of(client, debit, credit, currency)
        minor = _amount(amount, code, exponents)
        done = client.bank.transfer(debit, credit, minor, code, id=transfer_id, memo=memo, pending=pending,
                                    timeout=timeout)
    what = "reserved" if done.pending else "transferred"
    again = "" if done.created else " (already done earlier under this id; nothing changed)"
    click.echo(f"{what} {_shown(done.amount, done.currency, exponents)} {done.currency} "
               f"from {done.debit} to {done.credit}: {done.id}{again}")


@bank.command()
@click.argument("transfer_id", metavar="ID")
@click.option("--amount", default=None, help="Post less than was reserved.")
def post(transfer_id: str, amount: str | None) -> None:
    """Post a pending transfer: the reserved money moves."""
    with logged_in_client() as client:
        exponents = _exponents(client)
        minor = None
        if amount is not None:
            minor = _amount(amount, client.bank.get_transfer(transfer_id).currency, exponents)
        done = client.bank.post(transfer_id, minor)
    click.echo(f"posted {done.pending_id or transfer_id}: {_shown(done.amount, done.currency, exponents)} {done.currency}")


@bank.command()
@click.argument("transfer_id", metavar="ID")
def void(transfer_id: str) -> None:
    """Void a pending transfer: the reserved money is free again."""
    with logged_in_client() as client:
        done = client.bank.void(transfer_id)
    click.echo(f"voided {done.pending_id or transfer_id}")


@bank.command()
@click.argument("number", metavar="ACCOUNT")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, as the server writes it.")
@click.option("--from", "start", default=None, metavar="DATE", help="From this date or time (ISO 8601).")
@click.option("--to", "end", default=None, metavar="DATE", help="Up to this date or time (ISO 8601).")
def statement(number: str, as_csv: bool, start: str | None, end: str | None) -> None:
    """An account's transfers, oldest first, with the running balance."""
    with logged_in_client() as client:
        if as_csv:
            sys.stdout.write(client.bank.statement_csv(number, start=start, end=end))
            return
        exponents = _exponents(client)
        account = client.bank.account(number)
        entries = list(client.bank.statement(number, start=start, end=end))
    code = account.currency
    rows = []
    for entry in entries:
        when = entry.timestamp.astimezone().strftime("%Y-%m-%d %H:%M") if entry.timestamp else ""
        rows.append(([when, entry.id, entry.counterparty, _printable(entry.memo),
                      _shown(entry.amount, code, exponents), _shown(entry.balance, code, exponents),
                      KIND_MARK.get(entry.kind, "")], None))
    if entries:
        _print(("date", "transfer", "counterparty", "memo", "amount", "balance", ""), rows)
    click.echo(f"{len(entries)} transfers; balance {_shown(account.posted, code, exponents)} {code}, "
               f"available {_shown(account.available, code, exponents)} {code}", err=True)


@bank.command()
def check() -> None:
    """Verify the ledger (admins): balances equal their transfers, every currency sums
    to 0, no user account below 0. Exits 1 when anything is wrong."""
    with logged_in_client() as client:
        result = client.bank.check()
    if result.ok and not result.problems:
        click.echo("ledger ok")
        return
    for problem in result.problems:
        click.echo(f"problem: {problem}")
    fail(f"{len(result.problems)} problem(s) found in the ledger")


@bank.command()
@click.argument("number", metavar="ACCOUNT")
@click.argument("amount")
@click.option("--memo", default=None)
@click.option("--id", "transfer_id", default=None, metavar="UUID", help="The issuance's id (idempotency key).")
def issue(number: str, amount: str, memo: str | None, transfer_id: str | None) -> None:
    """Issue new money into ACCOUNT (admins)."""
    with logged_in_client() as client:
        exponents = _exponents(client)
        currency = client.bank.account(number).currency
        done = client.bank.issue(number, _amount(amount, currency, exponents), id=transfer_id, memo=memo)
    click.echo(f"issued {_shown(done.amount, done.currency, exponents)} {done.currency} to {done.credit}: {done.id}")


@bank.group()
def currency() -> None:
    """The currencies (admins add them)."""


@currency.command("ls")
def currency_ls() -> None:
    with logged_in_client() as client:
        items = client.bank.currencies()
    for item in items:
        click.echo(f"{item.code}  exponent {item.exponent}")


@currency.command("add")
@click.argument("code")
@click.option("--exponent", required=True, type=click.IntRange(0, 18),
              help="Digits after the decimal point: 2 for EUR, 0 for JPY.")
def currency_add(code: str, exponent: int) -> None:
    """Add a currency (admins)."""
    with logged_in_client() as client:
        added = client.bank.add_currency(code.upper(), exponent)
    click.echo(f"added {added.code} (exponent {added.exponent})")
