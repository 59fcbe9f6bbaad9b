"""authors: a column dropped, one added with a default, one widened

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("authors", "nickname")
    op.add_column("authors", sa.Column("active", sa.Boolean, server_default=sa.true(), nullable=False))
    op.alter_column("authors", "name", type_=sa.String(200), existing_type=sa.String(80), existing_nullable=False)


def downgrade() -> None:
    op.alter_column("authors", "name", type_=sa.String(80), existing_type=sa.String(200), existing_nullable=False)
    op.drop_column("authors", "active")
    op.add_column("authors", sa.Column("nickname", sa.String(40)))
