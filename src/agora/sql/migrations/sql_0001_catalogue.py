"""Hosted SQL: the catalogue of databases and their grants.

Revision ID: sql_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from agora.core.tables import UTCDateTime

revision = "sql_0001"
down_revision = None
branch_labels = ("sql",)
depends_on = "0001"


def upgrade() -> None:
    op.create_table(
        "sql_databases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("owner_id", "name", name="uq_sql_databases_owner_name"),
    )
    op.create_table(
        "sql_grants",
        sa.Column("database_id", sa.Integer, sa.ForeignKey("sql_databases.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("access", sa.String(8), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_sql_grants_user", "sql_grants", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_sql_grants_user", "sql_grants")
    op.drop_table("sql_grants")
    op.drop_table("sql_databases")
