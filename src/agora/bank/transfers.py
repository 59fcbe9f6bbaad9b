"""Transfer rows as the ledger reads and shows them (shared by the writer and reads)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select

from agora.bank.tables import bank_accounts, bank_transfers

# Account flags
ALLOW_NEGATIVE = 1  # may go below zero: only system accounts
SYSTEM = 2  # a currency's issuance account: owned by no user

KINDS = ("transfer", "issue", "pending", "post", "void", "expire")
# The kinds that move posted money (pending only reserves; void and expire release).
POSTING_KINDS = ("transfer", "issue", "post")



def transfer_select() -> Select[Any]:
    """Transfer rows with both accounts' numbers (``debit``, ``credit``)."""
    debit, credit = bank_accounts.alias("d"), bank_accounts.alias("c")
    return (select(bank_transfers, debit.c.number.label("debit"), credit.c.number.label("credit"))
            .join(debit, debit.c.id == bank_transfers.c.debit_id)
            .join(credit, credit.c.id == bank_transfers.c.credit_id))


def transfer_out(row: dict[str, Any]) -> dict[str, Any]:
    """The API's shape of a transfer."""
    return {
        "id": row["id"],
        "kind": row["kind"],
        "debit": row["debit"],
        "credit": row["credit"],
        "amount": row["amount"],
        "currency": row["currency"],
        "memo": row["memo"],
        "pending": row["kind"] == "pending",
        "timeout": row["timeout"],
        "pending_id": row["pending_id"],
        "timestamp": row["created_at"].isoformat(),
    }
