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
# The columns a transfer is written with (all but ``seq``, which the database assigns).
TRANSFER_COLUMNS = ("id", "kind", "debit_id", "credit_id", "amount", "currency", "memo", "timeout",
                    "pending_id", "debit_balance", "credit_balance", "created_at")


_debit, _credit = bank_accounts.alias("d"), bank_accounts.alias("c")
# Built once: the same construct each time also lets SQLAlchemy reuse its compiled SQL.
_TRANSFERS = (select(bank_transfers, _debit.c.number.label("debit"), _credit.c.number.label("credit"))
              .join(_debit, _debit.c.id == bank_transfers.c.debit_id)
              .join(_credit, _credit.c.id == bank_transfers.c.credit_id))


def transfer_select() -> Select[Any]:
    """Transfer rows with both accounts' numbers (``debit``, ``credit``)."""
    return _TRANSFERS


def transfer_out(row: dict[str, Any], timestamp: str | None = None) -> dict[str, Any]:
    """The API's shape of a transfer; ``timestamp``: its ``created_at`` already formatted
    (the writer formats its commit's time once for all the transfers in it)."""
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
        "timestamp": timestamp or row["created_at"].isoformat(),
    }
