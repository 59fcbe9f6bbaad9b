"""The ledger's invariants, recomputed from the immutable transfers (``agora bank check``).

Run inside one snapshot (the caller's transaction): every stored balance equals the sum
of its transfers, every currency sums to zero, no user account is below zero, and every
pending transfer is either resolved exactly once or still held.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from agora.bank.tables import bank_accounts, bank_holds, bank_transfers
from agora.bank.transfers import ALLOW_NEGATIVE, POSTING_KINDS

MAX_SHOWN = 100  # problems listed; more are counted


async def _sums(conn: AsyncConnection, column: Any, *where: Any, join_holds: bool = False) -> dict[int, int]:
    query = select(column, func.sum(bank_transfers.c.amount)).where(*where).group_by(column)
    if join_holds:
        query = query.select_from(bank_transfers.join(bank_holds, bank_holds.c.transfer_id == bank_transfers.c.id))
    return {key: int(total) for key, total in await conn.execute(query)}


async def ledger_problems(conn: AsyncConnection) -> list[str]:
    t = bank_transfers.c
    posting = t.kind.in_(POSTING_KINDS)
    debited = await _sums(conn, t.debit_id, posting)
    credited = await _sums(conn, t.credit_id, posting)
    held_debits = await _sums(conn, t.debit_id, t.kind == "pending", join_holds=True)
    held_credits = await _sums(conn, t.credit_id, t.kind == "pending", join_holds=True)
    problems: list[str] = []
    totals: dict[str, int] = defaultdict(int)
    for row in await conn.execute(select(bank_accounts)):
        totals[row.currency] += row.posted
        expected = credited.get(row.id, 0) - debited.get(row.id, 0)
        if row.posted != expected:
            problems.append(f"account {row.number}: posted balance {row.posted}, its transfers sum to {expected}")
        for name, stored, held in (("pending debits", row.pending_debits, held_debits),
                                   ("pending credits", row.pending_credits, held_credits)):
            if stored != held.get(row.id, 0):
                problems.append(f"account {row.number}: {name} {stored}, its open holds sum to {held.get(row.id, 0)}")
        if not row.flags & ALLOW_NEGATIVE and (row.posted < 0 or row.posted - row.pending_debits < 0):
            problems.append(f"account {row.number}: below zero (posted {row.posted}, "
                            f"available {row.posted - row.pending_debits})")
    for currency, total in sorted(totals.items()):
        if total != 0:
            problems.append(f"currency {currency}: balances sum to {total}, not 0")
    debit, credit = bank_accounts.alias("d"), bank_accounts.alias("c")
    mismatched = await conn.execute(
        select(t.id, t.currency).join(debit, debit.c.id == t.debit_id).join(credit, credit.c.id == t.credit_id)
        .where(or_(debit.c.currency != t.currency, credit.c.currency != t.currency)).limit(MAX_SHOWN))
    for row in mismatched:
        problems.append(f"transfer {row.id}: in {row.currency} between accounts of other currencies")
    # Each pending transfer: resolved once (unique ids guarantee at most once) or held.
    pending = (await conn.execute(select(func.count()).where(t.kind == "pending"))).scalar_one()
    resolved = (await conn.execute(select(func.count()).where(t.kind.in_(("post", "void", "expire"))))).scalar_one()
    held = (await conn.execute(select(func.count()).select_from(bank_holds))).scalar_one()
    if pending != resolved + held:
        problems.append(f"{pending} pending transfers, but {resolved} resolved and {held} held")
    stray = (await conn.execute(select(func.count()).select_from(
        bank_holds.outerjoin(bank_transfers, bank_transfers.c.id == bank_holds.c.transfer_id)).where(
        bank_transfers.c.id.is_(None)))).scalar_one()
    if stray:
        problems.append(f"{stray} holds of no pending transfer")
    if len(problems) > MAX_SHOWN:
        problems = problems[:MAX_SHOWN] + [f"... and {len(problems) - MAX_SHOWN} more"]
    return problems
