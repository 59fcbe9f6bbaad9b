"""Mail: folders, messages (UIDs, flags, modseq), expunges, aliases, deliveries, queue.

Revision ID: mail_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from agora.core.tables import UTCDateTime

revision = "mail_0001"
down_revision = None
branch_labels = ("mail",)
depends_on = "0001"


def upgrade() -> None:
    op.create_table(
        "mail_folders",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("uidvalidity", sa.BigInteger, nullable=False),
        sa.Column("uidnext", sa.BigInteger, nullable=False),
        sa.Column("highestmodseq", sa.BigInteger, nullable=False),
        sa.Column("subscribed", sa.Integer, nullable=False, server_default="1"),
        sa.Column("special_use", sa.String(16), nullable=True),
        sa.UniqueConstraint("user_id", "name", name="uq_mail_folders_user_name"),
    )
    op.create_table(
        "mail_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("folder_id", sa.Integer, sa.ForeignKey("mail_folders.id", ondelete="CASCADE"), nullable=False),
        sa.Column("uid", sa.BigInteger, nullable=False),
        sa.Column("modseq", sa.BigInteger, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("flags", sa.Text, nullable=False, server_default=""),
        sa.Column("internaldate", UTCDateTime, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.UniqueConstraint("folder_id", "uid", name="uq_mail_messages_folder_uid"),
        sa.UniqueConstraint("folder_id", "name", name="uq_mail_messages_folder_name"),
    )
    op.create_index("ix_mail_messages_folder_modseq", "mail_messages", ["folder_id", "modseq"])
    op.create_table(
        "mail_expunged",
        sa.Column("folder_id", sa.Integer, sa.ForeignKey("mail_folders.id", ondelete="CASCADE"), nullable=False),
        sa.Column("uid", sa.BigInteger, nullable=False),
        sa.Column("modseq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_mail_expunged_folder_modseq", "mail_expunged", ["folder_id", "modseq"])
    op.create_table(
        "mail_aliases",
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "mail_deliveries",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("delivered_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_mail_deliveries_delivered_at", "mail_deliveries", ["delivered_at"])
    op.create_table(
        "mail_queue",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("claimed_until", UTCDateTime, nullable=True),
    )
    op.create_index("ix_mail_queue_next_attempt_at", "mail_queue", ["next_attempt_at"])


def downgrade() -> None:
    for table in ("mail_queue", "mail_deliveries", "mail_aliases", "mail_expunged",
                  "mail_messages", "mail_folders"):
        op.drop_table(table)
