"""The bank's domain: currencies, accounts, immutable transfers, statements, the check.

Amounts are integers in minor units everywhere (no floats). Money enters only by an
admin issuing it from a currency's system account, which may go negative, so every
currency's balances sum to zero. Changes of balances go through the single writer
(``writer.py``: group commit, and why); reads here are single statements or one
snapshot. Authorization is decided here and in the writer, against the caller given
to every call: a user debits only accounts they own, credits any open account by its
number, reads only their own accounts, statements and transfers; admins manage
currencies, issue money and read everything.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, AsyncIterator

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from agora.bank import errors
from agora.bank.tables import bank_accounts, bank_currencies, bank_holds, bank_transfers
from agora.bank.transfers import ALLOW_NEGATIVE, POSTING_KINDS, SYSTEM, transfer_out, transfer_select
from agora.bank.writer import Move, Resolve, Spec, Writer, resolution_id
from agora.core.errors import Conflict, Forbidden, InvalidInput
from agora.core.identity import User
from agora.core.runtime import Runtime
from agora.core.tables import users, utcnow

# Crockford's base32 without I, L, O, U: 16 characters carry 80 random bits, shown in
# groups of four ("7KQ2-9XMD-R4TB-0HNE") so a person can read one out and type it.
NUMBER_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# The four groups spelled out: a repeated capturing group made the check of every
# number in a batch (two per transfer) several times slower.
NUMBER_RE = re.compile("^" + "-".join(["[0-9A-HJKMNP-TV-Z]{4}"] * 4) + "$")
CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CURRENCY_RE = re.compile(r"^[A-Z][A-Z0-9]{2,7}$")
MAX_EXPONENT = 18
MAX_AMOUNT = 2**63 - 1
MAX_NAME = 100


def new_number() -> str:
    digits = "".join(secrets.choice(NUMBER_ALPHABET) for _ in range(16))
    return "-".join(digits[i:i + 4] for i in range(0, 16, 4))


def normalize_number(number: str) -> str:
    """An account number as typed: any case, with or without dashes or spaces."""
    if isinstance(number, str) and NUMBER_RE.fullmatch(number):
        return number  # already as shown (the common case: clients copy numbers as given)
    plain = re.sub(r"[\s-]", "", str(number)).upper()
    shown = "-".join(plain[i:i + 4] for i in range(0, len(plain), 4))
    if not NUMBER_RE.match(shown):
        raise errors.UnknownAccount(f"{number!r} is not an account number (like 7KQ2-9XMD-R4TB-0HNE)")
    return shown


def normalize_id(value: str) -> str:
    if isinstance(value, str) and CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidInput(f"transfer id {str(value)[:60]!r} is not a UUID") from None


def normalize_currency(code: str) -> str:
    code = str(code).strip().upper()
    if not CURRENCY_RE.match(code):
        raise InvalidInput(f"{code[:20]!r} is not a currency code (3 to 8 letters or digits, like EUR)")
    return code


def check_amount(amount: Any) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 1 <= amount <= MAX_AMOUNT:
        raise InvalidInput("an amount is a whole number of minor units (cents), at least 1")
    return amount


@dataclass
class TransferRequest:
    """A transfer as a client asks for it (unvalidated)."""
    id: str
    debit: str
    credit: str
    amount: int
    currency: str | None = None
    memo: str = ""
    pending: bool = False
    timeout: int | None = None


class Ledger:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.db = runtime.db
        self.settings = runtime.config.bank
        self.writer = Writer(self.db, self.settings.commit_batch)
        self._issuance: dict[str, str] = {}  # currency -> its system account's number (never changes)

    # -- currencies -----------------------------------------------------------------

    async def add_currency(self, actor: User, code: str, exponent: int) -> tuple[dict[str, Any], bool]:
        _admin(actor)
        code = normalize_currency(code)
        if not isinstance(exponent, int) or not 0 <= exponent <= MAX_EXPONENT:
            raise InvalidInput(f"exponent is the number of decimal places of the minor unit, 0 to {MAX_EXPONENT}")
        now = utcnow()
        try:
            async with self.db.write() as conn:
                await conn.execute(insert(bank_currencies).values(code=code, exponent=exponent, created_at=now))
                number = new_number()
                await conn.execute(insert(bank_accounts).values(
                    number=number, user_id=None, currency=code, name=f"{code} issuance",
                    flags=SYSTEM | ALLOW_NEGATIVE, created_at=now))
                await self.runtime.audit.record("bank.currency", actor=actor.name, target=code, conn=conn,
                                                details={"exponent": exponent}, protocol="http")
        except IntegrityError:
            existing = await self._currency(code)
            if existing["exponent"] == exponent:
                return existing, False
            raise errors.IdempotencyConflict(f"currency {code} exists with exponent {existing['exponent']}") from None
        return await self._currency(code), True

    async def currencies(self) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(_currency_select().order_by(bank_currencies.c.code))
            return [_currency_out(row) for row in rows]

    async def _currency(self, code: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            row = (await conn.execute(_currency_select().where(bank_currencies.c.code == code))).first()
        if row is None:
            raise errors.UnknownCurrency(f"no currency {code}; an admin adds it with POST /api/v1/bank/currencies")
        return _currency_out(row)

    # -- accounts -------------------------------------------------------------------

    async def open_account(self, actor: User, currency: str, name: str = "") -> dict[str, Any]:
        currency = normalize_currency(currency)
        name = _account_name(name or currency)
        async with self.db.write() as conn:
            if (await conn.execute(select(bank_currencies.c.code).where(bank_currencies.c.code == currency))).first() is None:
                raise errors.UnknownCurrency(f"no currency {currency}")
            # One opening at a time per user, so that the count below stays true until the
            # insert commits (SQLite has one writer anyway; on PostgreSQL, the user's row).
            await conn.execute(select(users.c.id).where(users.c.id == actor.id).with_for_update())
            count = (await conn.execute(select(func.count()).select_from(bank_accounts).where(
                bank_accounts.c.user_id == actor.id, bank_accounts.c.closed_at.is_(None)))).scalar_one()
            if count >= self.settings.max_accounts:
                raise InvalidInput(f"you have {count} open accounts, the most allowed (bank.max_accounts)")
            number = new_number()
            await conn.execute(insert(bank_accounts).values(
                number=number, user_id=actor.id, currency=currency, name=name, flags=0, created_at=utcnow()))
            return _public(await _account(conn, number))

    async def accounts(self, actor: User, *, everyone: bool = False) -> list[dict[str, Any]]:
        if everyone:
            _admin(actor)
        query = _account_select().order_by(bank_accounts.c.id)
        if not everyone:
            query = query.where(bank_accounts.c.user_id == actor.id)
        async with self.db.read() as conn:
            return [_account_out(row) for row in await conn.execute(query)]

    async def account(self, actor: User, number: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            account = await _account(conn, normalize_number(number))
        _may_read(actor, account)
        return _public(account)

    async def close_account(self, actor: User, number: str) -> dict[str, Any]:
        number = normalize_number(number)
        async with self.db.write() as conn:
            query = select(bank_accounts).where(bank_accounts.c.number == number)
            if self.db.dialect != "sqlite":
                query = query.with_for_update()  # the writer takes the same lock to move money
            row = (await conn.execute(query)).first()
            if row is None:
                raise errors.UnknownAccount(f"no account {number}")
            if row.user_id != actor.id:
                raise errors.NotYourAccount(f"account {number} is not yours")
            if row.closed_at is None:
                if row.posted or row.pending_debits or row.pending_credits:
                    raise errors.AccountNotEmpty(
                        f"account {number} holds {row.posted} with {row.pending_debits + row.pending_credits} "
                        "pending; move the money out and let pending transfers finish first")
                await conn.execute(update(bank_accounts).where(bank_accounts.c.id == row.id).values(closed_at=utcnow()))
            return _public(await _account(conn, number))

    async def balances(self, actor: User) -> list[dict[str, Any]]:
        """Every account the caller may see, in one statement: one consistent snapshot."""
        query = select(bank_accounts.c.number, bank_accounts.c.currency, bank_accounts.c.posted,
                       bank_accounts.c.pending_debits).order_by(bank_accounts.c.id)
        if not actor.is_admin:
            query = query.where(bank_accounts.c.user_id == actor.id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [{"number": r.number, "currency": r.currency, "posted": r.posted,
                 "available": r.posted - r.pending_debits} for r in rows]

    # -- transfers ------------------------------------------------------------------

    def _spec(self, request: TransferRequest, kind: str = "transfer") -> Spec:
        memo = _text(str(request.memo or ""), "a memo")
        if len(memo) > self.settings.max_memo:
            raise InvalidInput(f"a memo has at most {self.settings.max_memo} characters (bank.max_memo)")
        timeout = None
        if request.pending:
            kind = "pending"
            timeout = self.settings.default_pending_timeout if request.timeout is None else request.timeout
            if not isinstance(timeout, int) or not 1 <= timeout <= self.settings.max_pending_timeout:
                raise InvalidInput(f"timeout is 1 to {self.settings.max_pending_timeout} seconds "
                                   "(bank.max_pending_timeout)")
        elif request.timeout is not None:
            raise InvalidInput("timeout is for pending transfers only")
        return Spec(id=normalize_id(request.id), kind=kind, debit=normalize_number(request.debit),
                    credit=normalize_number(request.credit), amount=check_amount(request.amount),
                    currency=normalize_currency(request.currency) if request.currency else None,
                    memo=memo, timeout=timeout)

    async def transfer(self, actor: User, request: TransferRequest) -> tuple[dict[str, Any], bool]:
        """Commit one transfer; (transfer, True) when new, (the original, False) on a retry."""
        [result] = await self.writer.submit(Move(actor, [self._spec(request)]))
        return result

    async def batch(self, actor: User, requests: list[TransferRequest]) -> tuple[list[dict[str, Any]], bool]:
        """Commit linked transfers, all or none (errors.BatchFailed lists each failure)."""
        if not 1 <= len(requests) <= self.settings.max_batch:
            raise InvalidInput(f"a batch holds 1 to {self.settings.max_batch} transfers (bank.max_batch)")
        specs, failed = [], []
        for index, request in enumerate(requests):
            try:
                specs.append(self._spec(request))
            except (InvalidInput, errors.UnknownAccount) as error:
                failed.append((index, error))
        if failed:
            raise errors.BatchFailed(failed)
        results = await self.writer.submit(Move(actor, specs, batch=True))
        return [t for t, _ in results], any(created for _, created in results)

    async def issue(self, actor: User, id: str, number: str, amount: int, memo: str = "") -> tuple[dict[str, Any], bool]:
        """Money enters the system: debited from the currency's system account."""
        _admin(actor)
        number = normalize_number(number)
        async with self.db.read() as conn:
            account = await _account(conn, number)
        source = await self._issuance_account(account["currency"])
        spec = self._spec(TransferRequest(id=id, debit=source, credit=number, amount=amount, memo=memo))
        spec.kind = "issue"
        [result] = await self.writer.submit(Move(actor, [spec]))
        return result

    async def _issuance_account(self, currency: str) -> str:
        if currency not in self._issuance:
            async with self.db.read() as conn:
                self._issuance[currency] = (await conn.execute(select(bank_accounts.c.number).where(
                    bank_accounts.c.currency == currency, bank_accounts.c.flags.op("&")(SYSTEM) != 0))).scalar_one()
        return self._issuance[currency]

    async def post(self, actor: User, pending_id: str, amount: int | None = None) -> tuple[dict[str, Any], bool]:
        if amount is not None:
            check_amount(amount)
        return await self.writer.submit(Resolve(actor, normalize_id(pending_id), "post", amount))

    async def void(self, actor: User, pending_id: str) -> tuple[dict[str, Any], bool]:
        return await self.writer.submit(Resolve(actor, normalize_id(pending_id), "void"))

    async def expire_due(self, limit: int) -> int:
        """Expire pending transfers past their timeout (the service calls this often)."""
        async with self.db.read() as conn:
            due = (await conn.execute(select(bank_holds.c.transfer_id).where(bank_holds.c.expires_at <= utcnow())
                                      .order_by(bank_holds.c.expires_at).limit(limit))).scalars().all()
        # Submitted together: they go in one commit.
        results = await asyncio.gather(*(self.writer.submit(Resolve(None, pending_id, "expire")) for pending_id in due),
                                       return_exceptions=True)
        return sum(1 for r in results if r is not None and not isinstance(r, BaseException))

    async def get_transfer(self, actor: User, id: str) -> dict[str, Any]:
        id = normalize_id(id)
        async with self.db.read() as conn:
            row = (await conn.execute(transfer_select().where(bank_transfers.c.id == id))).first()
            if row is None:
                raise errors.UnknownTransfer(f"no transfer {id}")
            row = dict(row._mapping)
            if not actor.is_admin:
                owners = set((await conn.execute(select(bank_accounts.c.user_id).where(
                    bank_accounts.c.id.in_([row["debit_id"], row["credit_id"]])))).scalars())
                if actor.id not in owners:
                    raise errors.NotYourAccount(f"transfer {id} is not between accounts of yours")
            out = transfer_out(row)
            out["state"] = None
            if row["kind"] == "pending":
                resolution = (await conn.execute(select(bank_transfers.c.kind).where(
                    bank_transfers.c.id == resolution_id(id)))).scalar()
                out["state"] = {"post": "posted", "void": "voided", "expire": "expired"}.get(resolution or "", "pending")
        return out

    # -- statements -----------------------------------------------------------------

    async def statement(self, actor: User, number: str, *, start: datetime | None = None,
                        end: datetime | None = None, cursor: str | None = None,
                        limit: int | None = None) -> dict[str, Any]:
        """One page of an account's transfers, oldest first, each with the posted
        balance after it; ``next_cursor`` continues after the last one."""
        number = normalize_number(number)
        limit = limit or self.settings.statement_page
        if not 1 <= limit <= self.settings.max_statement_page:
            raise InvalidInput(f"limit is 1 to {self.settings.max_statement_page} (bank.max_statement_page)")
        after = 0
        if cursor:
            if not cursor.isdigit() or len(cursor) > 18:
                raise InvalidInput("not a cursor from a previous page")
            after = int(cursor)
        async with self.db.read() as conn:
            account = await _account(conn, number)
            _may_read(actor, account)
            account_id = account.pop("_id")
            t = bank_transfers.c
            query = transfer_select().where(or_(t.debit_id == account_id, t.credit_id == account_id), t.seq > after)
            if start is not None:
                query = query.where(t.created_at >= start)
            if end is not None:
                query = query.where(t.created_at < end)
            rows = (await conn.execute(query.order_by(t.seq).limit(limit + 1))).all()
        entries = [_entry(dict(row._mapping), account_id) for row in rows[:limit]]
        return {"account": number, "currency": account["currency"], "entries": entries,
                "next_cursor": str(rows[limit - 1].seq) if len(rows) > limit else None}

    async def holds(self, actor: User) -> list[dict[str, Any]]:
        """The pending transfers from or to the actor's accounts that are not yet posted,
        voided or expired (their rows in bank_holds), oldest first, each with its
        ``expires`` time."""
        own = select(bank_accounts.c.id).where(bank_accounts.c.user_id == actor.id)
        query = (transfer_select().add_columns(bank_holds.c.expires_at)
                 .join(bank_holds, bank_holds.c.transfer_id == bank_transfers.c.id)
                 .where(or_(bank_transfers.c.debit_id.in_(own), bank_transfers.c.credit_id.in_(own)))
                 .order_by(bank_transfers.c.seq))
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [{**transfer_out(row._mapping), "expires": row.expires_at.isoformat()} for row in rows]

    async def statement_pages(self, actor: User, number: str, **query: Any) -> AsyncIterator[dict[str, Any]]:
        """Every entry from the cursor on, page by page (for CSV export)."""
        cursor = query.pop("cursor", None)
        while True:
            page = await self.statement(actor, number, cursor=cursor, limit=self.settings.max_statement_page, **query)
            for entry in page["entries"]:
                yield entry
            cursor = page["next_cursor"]
            if cursor is None:
                return

    # -- the invariants -------------------------------------------------------------

    async def check(self, actor: User | None = None) -> list[str]:
        if actor is not None:
            _admin(actor)
        from agora.bank.check import ledger_problems
        async with self.db.engine.connect() as conn:
            if self.db.dialect == "postgresql":  # every query below sees one snapshot
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                return await ledger_problems(conn)

    async def refuse_deleting_holder(self, user: User) -> None:
        """The user-deletion hook: money must never vanish with an account, so a user
        who holds any (or has transfers pending) cannot be deleted until they move it
        out. Their empty accounts stay (with their history) and count as closed."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(bank_accounts.c.number).where(
                bank_accounts.c.user_id == user.id,
                or_(bank_accounts.c.posted != 0, bank_accounts.c.pending_debits != 0,
                    bank_accounts.c.pending_credits != 0)).limit(1))).first()
        if row is not None:
            raise Conflict(f"user {user.name!r} holds money in bank account {row.number}; "
                           "it must be moved out (or pending transfers finish) before the account is deleted")


def ledger(runtime: Runtime) -> Ledger:
    return runtime.shared("bank.ledger", lambda: Ledger(runtime))


def refuse_deleting_holders(runtime: Runtime):
    async def hook(user: User) -> None:
        await ledger(runtime).refuse_deleting_holder(user)
    return hook


# -- helpers --------------------------------------------------------------------------


def _admin(actor: User) -> None:
    if not actor.is_admin:
        raise Forbidden("this needs an admin account")


def _may_read(actor: User, account: dict[str, Any]) -> None:
    if not actor.is_admin and account.get("_owner_id") != actor.id:
        raise errors.NotYourAccount(f"account {account['number']} is not yours")


def _public(account: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in account.items() if not k.startswith("_")}


def _text(value: str, what: str) -> str:
    """Text the database can store as it is: no NUL (PostgreSQL refuses it), no lone
    surrogates (not encodable as UTF-8)."""
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode text") from None
    return value


def _account_name(name: str) -> str:
    name = _text(str(name), "an account name").strip()
    if not 1 <= len(name) <= MAX_NAME or any(ord(c) < 32 for c in name):
        raise InvalidInput(f"an account name has 1 to {MAX_NAME} printable characters")
    return name


def _currency_select() -> Any:
    return select(bank_currencies.c.code, bank_currencies.c.exponent,
                  bank_accounts.c.number.label("issuance_account"), bank_accounts.c.posted).join(
        bank_accounts, and_(bank_accounts.c.currency == bank_currencies.c.code,
                            bank_accounts.c.flags.op("&")(SYSTEM) != 0))


def _currency_out(row: Any) -> dict[str, Any]:
    # The system account's balance is minus everything issued.
    return {"code": row.code, "exponent": row.exponent, "issuance_account": row.issuance_account,
            "issued": -row.posted}


def _account_select() -> Any:
    return select(bank_accounts, users.c.name.label("owner")).outerjoin(users, users.c.id == bank_accounts.c.user_id)


def _account_out(row: Any) -> dict[str, Any]:
    system = bool(row.flags & SYSTEM)
    return {"number": row.number, "currency": row.currency, "name": row.name,
            "balance": {"posted": row.posted, "available": row.posted - row.pending_debits,
                        "pending_debits": row.pending_debits, "pending_credits": row.pending_credits},
            "owner": row.owner, "system": system,
            "closed": row.closed_at is not None or (row.user_id is None and not system),
            "created_at": row.created_at.isoformat(),
            "closed_at": row.closed_at.isoformat() if row.closed_at else None}


async def _account(conn: AsyncConnection, number: str) -> dict[str, Any]:
    row = (await conn.execute(_account_select().where(bank_accounts.c.number == number))).first()
    if row is None:
        raise errors.UnknownAccount(f"no account {number}")
    out = _account_out(row)
    out["_owner_id"], out["_id"] = row.user_id, row.id
    return out


def _entry(row: dict[str, Any], account_id: int) -> dict[str, Any]:
    outgoing = row["debit_id"] == account_id
    amount = -row["amount"] if outgoing else row["amount"]
    return {"id": row["id"], "kind": row["kind"], "timestamp": row["created_at"].isoformat(),
            "amount": amount, "effect": amount if row["kind"] in POSTING_KINDS else 0,
            "counterparty": row["credit"] if outgoing else row["debit"], "memo": row["memo"],
            "pending_id": row["pending_id"],
            "balance": row["debit_balance"] if outgoing else row["credit_balance"]}
