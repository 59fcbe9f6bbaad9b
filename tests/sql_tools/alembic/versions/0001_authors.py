"""authors, with a serial key, an index and seed rows

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    authors = op.create_table(
        "authors",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("nickname", sa.String(40)),
    )
    op.create_index("ix_authors_name", "authors", ["name"])
    op.bulk_insert(authors, [{"name": "Ursula"}, {"name": "Iain"}])


def downgrade() -> None:
    op.drop_index("ix_authors_name", table_name="authors")
    op.drop_table("authors")
