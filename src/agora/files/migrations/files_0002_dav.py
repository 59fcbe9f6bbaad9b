"""Files: WebDAV dead properties and write locks.

Revision ID: files_0002_dav
Revises: files_0001
"""

import sqlalchemy as sa
from alembic import op

from agora.core.tables import UTCDateTime

revision = "files_0002_dav"
down_revision = "files_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dav_properties",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("path_hash", sa.String(64), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("props", sa.Text, nullable=False),
    )
    op.create_table(
        "dav_locks",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("depth", sa.String(8), nullable=False),
        sa.Column("scope", sa.String(9), nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("timeout", sa.Integer, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_dav_locks_user_id", "dav_locks", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_dav_locks_user_id", "dav_locks")
    op.drop_table("dav_locks")
    op.drop_table("dav_properties")
