"""Mail: addresses an admin allows a user to send as (beyond their own and their aliases).

Revision ID: mail_0002_senders
Revises: mail_0001
"""

import sqlalchemy as sa
from alembic import op

from agora.core.tables import UTCDateTime

revision = "mail_0002_senders"
down_revision = "mail_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mail_senders",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("pattern", sa.String(320), primary_key=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mail_senders")
