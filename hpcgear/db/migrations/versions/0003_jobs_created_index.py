"""jobs: index on created (job listings sort by it)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 22:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_created", "jobs", ["created"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_created", table_name="jobs")
