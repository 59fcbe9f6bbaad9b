"""Bank: currencies, accounts, transfers, open holds.

Revision ID: bank_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from agora.core.tables import UTCDateTime

revision = "bank_0001"
down_revision = None
branch_labels = ("bank",)
depends_on = "0001"


def upgrade() -> None:
    op.create_table(
        "bank_currencies",
        sa.Column("code", sa.String(8), primary_key=True),
        sa.Column("exponent", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "bank_accounts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("number", sa.String(32), nullable=False, unique=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("currency", sa.String(8), sa.ForeignKey("bank_currencies.code"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False, server_default="0"),
        sa.Column("posted", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("pending_debits", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("pending_credits", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("closed_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_bank_accounts_user", "bank_accounts", ["user_id"])
    op.create_table(
        "bank_transfers",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("debit_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), nullable=False),
        sa.Column("credit_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("memo", sa.Text, nullable=False, server_default=""),
        sa.Column("timeout", sa.Integer, nullable=True),
        sa.Column("pending_id", sa.String(36), nullable=True),
        sa.Column("debit_balance", sa.BigInteger, nullable=False),
        sa.Column("credit_balance", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_bank_transfers_debit", "bank_transfers", ["debit_id", "seq"])
    op.create_index("ix_bank_transfers_credit", "bank_transfers", ["credit_id", "seq"])
    op.create_table(
        "bank_holds",
        sa.Column("transfer_id", sa.String(36), primary_key=True),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_bank_holds_expires", "bank_holds", ["expires_at"])


def downgrade() -> None:
    for table in ("bank_holds", "bank_transfers", "bank_accounts", "bank_currencies"):
        op.drop_table(table)
