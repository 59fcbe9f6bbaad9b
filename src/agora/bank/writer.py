"""The ledger's single writer: every change of balances goes through here.

Why one writer with group commit (on both backends): a durable transfer costs one
fsync (SQLite ``synchronous=FULL``, PostgreSQL ``synchronous_commit=on``), and one
transaction per transfer spends nearly all its time in that fsync and in queueing for
SQLite's one write lock. So requests are queued in memory, and one task applies
whatever is waiting in one transaction: it locks the accounts involved, checks each
operation against balances held in memory for the batch (idempotency and overdraft are
decided here, inside the transaction, in commit order), writes the rows with a few
executemany statements and commits once. Each request is answered after the commit
that carries it, so acknowledged means on disk. A lone request still goes at once (no
timer); under load each commit carries hundreds.

Several nodes on one PostgreSQL each have such a writer; they meet on row locks, taken
``FOR UPDATE`` in account-id order (so two batches can never wait on each other in a
cycle), and on the unique transfer id: a batch that loses a race on an id is retried
and then finds the other node's row (the idempotent answer). On SQLite,
``BEGIN IMMEDIATE`` makes the whole transaction exclusive and FOR UPDATE is omitted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from agora.bank import errors
from agora.bank.tables import bank_accounts, bank_holds, bank_transfers
from agora.bank.transfers import ALLOW_NEGATIVE, SYSTEM, TRANSFER_COLUMNS, transfer_out, transfer_select
from agora.core.database import Database, unavailable
from agora.core.errors import AgoraError, InvalidInput
from agora.core.identity import User
from agora.core.tables import utcnow

log = logging.getLogger("agora.bank")

MAX_BALANCE = 2**63 - 1  # BIGINT: what any balance column can hold
# The post, void or expiry of a pending transfer has an id derived from the pending's:
# the unique transfer id then makes "resolved at most once" a database constraint.
RESOLUTION_NAMESPACE = uuid.UUID("5b0c3f4e-5e8a-4d4e-9a51-7a2b8c1d0e6f")
RETRIES = 5  # a batch that lost a race with another node (PostgreSQL) is tried again


def resolution_id(pending_id: str) -> str:
    return str(uuid.uuid5(RESOLUTION_NAMESPACE, pending_id))


@dataclass
class Spec:
    """One transfer as requested: accounts by number."""
    id: str
    kind: str  # transfer, issue or pending
    debit: str
    credit: str
    amount: int
    currency: str | None
    memo: str = ""
    timeout: int | None = None

    def same_as(self, row: dict[str, Any]) -> bool:
        return (row["kind"] == self.kind and row["debit"] == self.debit and row["credit"] == self.credit
                and row["amount"] == self.amount and row["memo"] == self.memo
                and (self.currency is None or row["currency"] == self.currency)
                and (self.kind != "pending" or row["timeout"] == self.timeout))


@dataclass
class Move:
    """Transfers that commit together or not at all (one, or a linked batch)."""
    actor: User | None  # None: the system itself
    specs: list[Spec]
    batch: bool = False


@dataclass
class Resolve:
    actor: User | None
    pending_id: str
    action: str  # post, void or expire
    amount: int | None = None


@dataclass
class Account:
    id: int
    number: str
    user_id: int | None
    currency: str
    flags: int
    posted: int
    pending_debits: int
    pending_credits: int
    closed: bool

    @property
    def open(self) -> bool:
        # An account whose owner was deleted counts as closed (see ledger.forget_user).
        return not self.closed and (self.user_id is not None or bool(self.flags & SYSTEM))


@dataclass
class Batch:
    """What one commit writes, built in memory from the operations that succeeded."""
    now: datetime
    accounts: dict[str, Account]  # by number
    known: dict[str, dict[str, Any]]  # transfers by id: stored ones and this batch's
    pendings: dict[str, dict[str, Any]]
    transfers: list[dict[str, Any]] = field(default_factory=list)
    holds_added: list[dict[str, Any]] = field(default_factory=list)
    holds_removed: list[str] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)
    stamp: str = ""  # ``now`` as the API shows it: formatted once, not once per transfer

    def __post_init__(self) -> None:
        self.stamp = self.now.isoformat()


class Writer:
    def __init__(self, db: Database, max_ops: int = 512):
        self.db = db
        self.max_ops = max_ops  # transfers per commit
        self.waiting: list[tuple[Move | Resolve, asyncio.Future[Any]]] = []
        self.task: asyncio.Task[None] | None = None
        self.lock_rows = db.dialect != "sqlite"

    async def submit(self, op: Move | Resolve) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append((op, future))
        if self.task is None:
            # A task of its own: a request that is cancelled (its client hung up) must
            # not take the others' commit down with it.
            self.task = asyncio.create_task(self._run())
        result = await asyncio.shield(future)
        if isinstance(result, BaseException):
            raise result
        return result

    async def _run(self) -> None:
        try:
            while self.waiting:
                taken, size = 0, 0
                for op, _ in self.waiting:
                    size += len(op.specs) if isinstance(op, Move) else 1
                    taken += 1
                    if size >= self.max_ops:
                        break
                batch = self.waiting[:taken]
                del self.waiting[:taken]
                try:
                    results = await self._commit([op for op, _ in batch])
                except Exception as error:  # the transaction failed: each request hears so
                    if unavailable(error):  # a blip, answered 503: clients retry with their ids
                        log.warning("bank: a commit of %d operations failed: the database is unavailable (%s)",
                                    len(batch), type(error).__name__)
                    else:
                        log.exception("bank: a commit of %d operations failed", len(batch))
                    results = [error] * len(batch)
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            self.task = None

    async def _commit(self, ops: list[Move | Resolve]) -> list[Any]:
        for attempt in range(RETRIES):
            try:
                if self.db.dialect == "sqlite":
                    # The whole transaction in one call on the connection's own thread,
                    # instead of a thread hop and a SQLAlchemy execution per statement:
                    # the commit's latency bounds the transfers per second at a given
                    # number of clients, so it is kept to little more than the fsync.
                    from agora.bank import sqlite_batch  # (it imports this module)
                    return await self.db.sqlite_write(sqlite_batch.apply, self, ops)
                async with self.db.write() as conn:
                    return await self._apply(conn, ops)
            except (IntegrityError, DBAPIError) as error:
                # Another node committed the same id (unique violation) or PostgreSQL
                # broke a lock cycle: nothing of ours was committed; read again, retry.
                if attempt == RETRIES - 1 or (isinstance(error, DBAPIError) and error.connection_invalidated):
                    raise
                log.info("bank: retrying a commit after %s", type(error.orig).__name__)
                await asyncio.sleep(0.001 * 2 ** attempt)
        raise AssertionError("unreachable")

    # -- one transaction ------------------------------------------------------------

    async def _apply(self, conn: AsyncConnection, ops: list[Move | Resolve]) -> list[Any]:
        numbers = {n for op in ops if isinstance(op, Move) for s in op.specs for n in (s.debit, s.credit)}
        pending_ids = {op.pending_id for op in ops if isinstance(op, Resolve)}
        pendings: dict[str, dict[str, Any]] = {}
        if pending_ids:  # immutable rows: read before taking any lock
            pendings = {r["id"]: r for r in await _transfers(conn, pending_ids)}
        account_ids = {r[k] for r in pendings.values() for k in ("debit_id", "credit_id")}
        query = select(bank_accounts).where(or_(bank_accounts.c.number.in_(numbers),
                                                bank_accounts.c.id.in_(account_ids))).order_by(bank_accounts.c.id)
        if self.lock_rows:
            query = query.with_for_update()
        accounts = {row.number: Account(row.id, row.number, row.user_id, row.currency, row.flags, row.posted,
                                        row.pending_debits, row.pending_credits, row.closed_at is not None)
                    for row in await conn.execute(query)}
        ids = {s.id for op in ops if isinstance(op, Move) for s in op.specs}
        ids |= {resolution_id(p) for p in pending_ids}
        known = {r["id"]: r for r in await _transfers(conn, ids)} if ids else {}
        batch = Batch(now=utcnow(), accounts=accounts, known=known, pendings=pendings)
        results = self.run(batch, ops)
        await self._write(conn, batch)
        return results

    def run(self, batch: Batch, ops: list[Move | Resolve]) -> list[Any]:
        """Apply the operations to the batch in memory, in order; one result each."""
        return [self._move(batch, op) if isinstance(op, Move) else self._resolve(batch, op) for op in ops]

    async def _write(self, conn: AsyncConnection, batch: Batch) -> None:
        if batch.transfers:
            # (A row also carries its accounts' numbers, for the answer: not columns.)
            await conn.execute(insert(bank_transfers), [{c: t[c] for c in TRANSFER_COLUMNS} for t in batch.transfers])
        if batch.dirty:
            await conn.execute(
                update(bank_accounts).where(bank_accounts.c.id == bindparam("b_id")).values(
                    posted=bindparam("b_posted"), pending_debits=bindparam("b_pd"),
                    pending_credits=bindparam("b_pc")),
                [{"b_id": a.id, "b_posted": a.posted, "b_pd": a.pending_debits, "b_pc": a.pending_credits}
                 for a in (batch.accounts[n] for n in batch.dirty)])
        if batch.holds_added:
            await conn.execute(insert(bank_holds), batch.holds_added)
        if batch.holds_removed:
            await conn.execute(delete(bank_holds).where(bank_holds.c.transfer_id.in_(batch.holds_removed)))

    # -- operations, applied to the batch in memory ---------------------------------

    def _move(self, batch: Batch, op: Move) -> Any:
        existing = [batch.known.get(s.id) for s in op.specs]
        if all(existing):
            # A retry: the same contents answer with the originals and change nothing.
            failed = [(i, errors.IdempotencyConflict(f"transfer {s.id} exists with other contents"))
                      for i, (s, row) in enumerate(zip(op.specs, existing)) if not s.same_as(row)]  # type: ignore[arg-type]
            if failed:
                return _failure(op, failed)
            return [(transfer_out(row), False) for row in existing]  # type: ignore[arg-type]
        saved: dict[str, tuple[int, int, int]] = {}
        marks = (len(batch.transfers), len(batch.holds_added), set(batch.dirty))
        failed, done = [], []
        seen: set[str] = set()
        for index, spec in enumerate(op.specs):
            try:
                if existing[index] is not None:
                    raise errors.IdempotencyConflict(
                        f"transfer {spec.id} was already committed, so this batch cannot commit it again"
                        if spec.same_as(existing[index]) else f"transfer {spec.id} exists with other contents")  # type: ignore[arg-type]
                if spec.id in seen:
                    raise InvalidInput(f"transfer id {spec.id} appears twice in the batch")
                seen.add(spec.id)
                done.append(self._transfer(batch, op.actor, spec, saved))
            except AgoraError as error:
                failed.append((index, error))
        if failed:  # linked: undo this operation's changes to the batch
            for number, (posted, pd, pc) in saved.items():
                account = batch.accounts[number]
                account.posted, account.pending_debits, account.pending_credits = posted, pd, pc
            del batch.transfers[marks[0]:]
            del batch.holds_added[marks[1]:]
            batch.dirty = marks[2]
            return _failure(op, failed)
        for row in done:
            batch.known[row["id"]] = row
        return [(transfer_out(row, batch.stamp), True) for row in done]

    def _transfer(self, batch: Batch, actor: User | None, spec: Spec,
                  saved: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
        debit, credit = batch.accounts.get(spec.debit), batch.accounts.get(spec.credit)
        for number, account in ((spec.debit, debit), (spec.credit, credit)):
            if account is None:
                raise errors.UnknownAccount(f"no account {number}")
        assert debit is not None and credit is not None
        if debit is credit:
            raise InvalidInput("the debit and credit accounts must differ")
        if spec.kind == "issue":
            if not debit.flags & SYSTEM:
                raise InvalidInput("money is issued from a currency's system account")
        elif actor is not None and debit.user_id != actor.id:
            raise errors.NotYourAccount(f"account {debit.number} is not yours to debit")
        if credit.flags & SYSTEM and not (actor is not None and actor.is_admin):
            # Money leaves circulation (back to its issuance account) only by an admin's hand.
            raise errors.NotYourAccount(f"account {credit.number} is a system account; only an admin pays into it")
        for account in (debit, credit):
            if not account.open:
                raise errors.AccountClosed(f"account {account.number} is closed")
        if debit.currency != credit.currency or (spec.currency and spec.currency != debit.currency):
            raise errors.CurrencyMismatch(
                f"account {debit.number} holds {debit.currency}, {credit.number} holds {credit.currency}"
                + (f", the transfer is in {spec.currency}" if spec.currency else ""))
        if not debit.flags & ALLOW_NEGATIVE and debit.posted - debit.pending_debits - spec.amount < 0:
            raise errors.InsufficientFunds(
                f"account {debit.number} has {max(0, debit.posted - debit.pending_debits)} available, "
                f"{spec.amount} needed")
        if credit.posted + spec.amount > MAX_BALANCE or credit.pending_credits + spec.amount > MAX_BALANCE \
                or debit.posted - spec.amount < -MAX_BALANCE:
            raise InvalidInput("this transfer would overflow an account's balance")
        for account in (debit, credit):
            saved.setdefault(account.number, (account.posted, account.pending_debits, account.pending_credits))
            batch.dirty.add(account.number)
        if spec.kind == "pending":
            debit.pending_debits += spec.amount
            credit.pending_credits += spec.amount
            assert spec.timeout is not None
            batch.holds_added.append({"transfer_id": spec.id,
                                      "expires_at": batch.now + timedelta(seconds=spec.timeout)})
        else:
            debit.posted -= spec.amount
            credit.posted += spec.amount
        row = {"id": spec.id, "kind": spec.kind, "debit_id": debit.id, "credit_id": credit.id,
               "amount": spec.amount, "currency": debit.currency, "memo": spec.memo,
               "timeout": spec.timeout if spec.kind == "pending" else None, "pending_id": None,
               "debit_balance": debit.posted, "credit_balance": credit.posted, "created_at": batch.now,
               "debit": debit.number, "credit": credit.number}
        batch.transfers.append(row)
        return row

    def _resolve(self, batch: Batch, op: Resolve) -> Any:
        pending = batch.pendings.get(op.pending_id)
        if pending is None:
            return errors.UnknownTransfer(f"no transfer {op.pending_id}")
        if pending["kind"] != "pending":
            return errors.NotPending(f"transfer {op.pending_id} is not pending (it is a {pending['kind']})")
        debit, credit = batch.accounts[pending["debit"]], batch.accounts[pending["credit"]]
        if op.actor is not None and not op.actor.is_admin and op.actor.id not in (debit.user_id, credit.user_id):
            return errors.NotYourAccount(f"transfer {op.pending_id} is not between accounts of yours")
        rid = resolution_id(op.pending_id)
        done = batch.known.get(rid)
        if done is not None:
            if done["kind"] == op.action and (op.amount is None or op.amount == done["amount"]):
                return transfer_out(done), False
            if op.action == "expire":
                return None
            past = {"post": "posted", "void": "voided", "expire": "expired"}[done["kind"]]
            return errors.PendingResolved(f"transfer {op.pending_id} was already {past}"
                                          + (f" for {done['amount']}" if done["kind"] == "post" else ""))
        expires_at = pending["created_at"] + timedelta(seconds=pending["timeout"])
        expired = batch.now >= expires_at
        if op.action == "expire" and not expired:
            return None
        amount = pending["amount"]
        if op.action == "post" and not expired and op.amount is not None:
            if not 1 <= op.amount <= amount:
                return InvalidInput(f"a pending transfer of {amount} can be posted for 1 to {amount}")
            amount = op.amount
        action = "expire" if expired else op.action
        for account in (debit, credit):
            batch.dirty.add(account.number)
        debit.pending_debits -= pending["amount"]
        credit.pending_credits -= pending["amount"]
        if action == "post":
            debit.posted -= amount
            credit.posted += amount
        row = {"id": rid, "kind": action, "debit_id": debit.id, "credit_id": credit.id, "amount": amount,
               "currency": pending["currency"], "memo": pending["memo"], "timeout": None,
               "pending_id": op.pending_id, "debit_balance": debit.posted, "credit_balance": credit.posted,
               "created_at": batch.now, "debit": debit.number, "credit": credit.number}
        batch.transfers.append(row)
        batch.holds_removed.append(op.pending_id)
        batch.known[rid] = row
        if action != op.action:
            return errors.PendingResolved(f"transfer {op.pending_id} expired at {expires_at.isoformat()}")
        return transfer_out(row, batch.stamp), True


def _failure(op: Move, failed: list[tuple[int, AgoraError]]) -> AgoraError:
    return errors.BatchFailed(failed) if op.batch else failed[0][1]


async def _transfers(conn: AsyncConnection, ids: set[str]) -> list[dict[str, Any]]:
    rows = await conn.execute(transfer_select().where(bank_transfers.c.id.in_(ids)))
    return [dict(row._mapping) for row in rows]
