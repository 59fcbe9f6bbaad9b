"""The bank's tables in the metadata database: currencies, accounts, transfers, holds.

Transfers are immutable rows (never updated or deleted); an account row carries its
balances, kept by the ledger's writer in the same transaction as the transfers that
change them, so ``check()`` can recompute every balance from the transfers. Each
transfer also records the posted balance of both of its accounts right after it, which
makes a statement's running balance a plain read of any page.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, String, Table, Text

from agora.core.tables import UTCDateTime, metadata

bank_currencies = Table(
    "bank_currencies", metadata,
    Column("code", String(8), primary_key=True),
    Column("exponent", Integer, nullable=False),  # minor units: 2 for EUR, 0 for JPY
    Column("created_at", UTCDateTime, nullable=False),
)

bank_accounts = Table(
    "bank_accounts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("number", String(32), nullable=False, unique=True),
    # NULL for a currency's system (issuance) account, and for the accounts of a user
    # who was deleted (only possible once they were empty; they count as closed).
    Column("user_id", Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    Column("currency", String(8), ForeignKey("bank_currencies.code"), nullable=False),
    Column("name", Text, nullable=False),
    Column("flags", Integer, nullable=False, server_default="0"),  # ledger.ALLOW_NEGATIVE, ledger.SYSTEM
    # Credits minus debits, in minor units: what the owner holds.
    Column("posted", BigInteger, nullable=False, server_default="0"),
    Column("pending_debits", BigInteger, nullable=False, server_default="0"),
    Column("pending_credits", BigInteger, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("closed_at", UTCDateTime, nullable=True),
    Index("ix_bank_accounts_user", "user_id"),
)

bank_transfers = Table(
    "bank_transfers", metadata,
    # Commit order: the statement's order and its cursor.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),  # client-chosen UUID: the idempotency key
    Column("kind", String(8), nullable=False),  # transfer, issue, pending, post, void, expire
    Column("debit_id", Integer, ForeignKey("bank_accounts.id"), nullable=False),
    Column("credit_id", Integer, ForeignKey("bank_accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(8), nullable=False),
    Column("memo", Text, nullable=False, server_default=""),
    # pending: seconds until it expires; post/void/expire: the pending transfer's id.
    Column("timeout", Integer, nullable=True),
    Column("pending_id", String(36), nullable=True),
    Column("debit_balance", BigInteger, nullable=False),  # debit account's posted balance after this
    Column("credit_balance", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_bank_transfers_debit", "debit_id", "seq"),
    Index("ix_bank_transfers_credit", "credit_id", "seq"),
)

# Pending transfers not yet posted, voided or expired, with their deadline: what the
# expiry sweep reads. A row goes in the same transaction as the resolution is written.
bank_holds = Table(
    "bank_holds", metadata,
    Column("transfer_id", String(36), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_bank_holds_expires", "expires_at"),
)
