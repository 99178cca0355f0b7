"""usage columns on jobs (from SLURM accounting), disabled users, controller status

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 22:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_JOB_COLUMNS = (
    ("core_hours", sa.Float()),
    ("gpu_hours", sa.Float()),
    ("wall_seconds", sa.Integer()),
    ("wait_seconds", sa.Integer()),
    ("cpu_used_seconds", sa.Float()),
    ("max_rss_mb", sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("jobs") as batch:
        for name, type_ in _JOB_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.create_index("ix_jobs_project_finished", "jobs", ["project_id", "finished"])
    op.create_index("ix_jobs_finished", "jobs", ["finished"])
    op.create_table(
        "controller_status",
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("last_cycle", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_clean_cycle", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cycles", sa.BigInteger(), nullable=False),
        sa.Column("last_report", _JSON, nullable=False),
        sa.Column("recent_errors", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("site", name=op.f("pk_controller_status")),
    )


def downgrade() -> None:
    op.drop_table("controller_status")
    op.drop_index("ix_jobs_finished", table_name="jobs")
    op.drop_index("ix_jobs_project_finished", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for name, _type in reversed(_JOB_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("users") as batch:
        batch.drop_column("disabled")
