"""api keys

Revision ID: 0004
Revises: 0007
Create Date: 2026-12-03 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("label", sa.String(length=128), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["owner"], ["users.login"], name=op.f("fk_api_keys_owner_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_sha256", name=op.f("uq_api_keys_secret_sha256")),
    )
    op.create_index(op.f("ix_api_keys_job_id"), "api_keys", ["job_id"], unique=False)
    op.create_index(op.f("ix_api_keys_owner"), "api_keys", ["owner"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_api_keys_owner"), table_name="api_keys")
    op.drop_index(op.f("ix_api_keys_job_id"), table_name="api_keys")
    op.drop_table("api_keys")
