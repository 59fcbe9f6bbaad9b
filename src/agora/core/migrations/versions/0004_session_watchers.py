"""session_watchers: one row per serving process that ends sessions with their accounts
(core/sessions.py), saying when it last re-read the accounts, so that deleting a user
can wait until every live one has seen the account disabled before the data goes.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from agora.core.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_watchers",
        sa.Column("node", sa.String(32), primary_key=True),
        sa.Column("checked_at", UTCDateTime, nullable=False),
        sa.Column("every_seconds", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("session_watchers")
