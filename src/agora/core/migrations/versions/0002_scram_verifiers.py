"""SCRAM-SHA-256 verifiers beside the argon2id hashes, for the PostgreSQL wire protocol.

NULL until the password is next set or used to log in (any protocol), when identity
makes one from it.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("scram_verifier", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("scram_verifier")
