"""Files: share links and per-user site settings.

Revision ID: files_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from agora.core.tables import UTCDateTime

revision = "files_0001"
down_revision = None
branch_labels = ("files",)
depends_on = "0001"


def upgrade() -> None:
    op.create_table(
        "share_links",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("downloads", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_share_links_user_id", "share_links", ["user_id"])
    op.create_table(
        "site_settings",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("listings", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("site_settings")
    op.drop_table("share_links")
