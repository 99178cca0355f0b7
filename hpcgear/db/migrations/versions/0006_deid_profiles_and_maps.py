"""project de-identification profiles and re-identification maps

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 23:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_deid_profiles",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("sha256", sa.String(length=80), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("set_by", sa.String(length=64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["containers.id"],
            name=op.f("fk_project_deid_profiles_project_id_containers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_project_deid_profiles")),
    )
    op.create_table(
        "deid_map_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("file_id", sa.String(length=64), nullable=False),
        sa.Column("file_version", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(length=128), nullable=False),
        sa.Column("profile_sha256", sa.String(length=80), nullable=False),
        sa.Column(
            "entries",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deid_map_entries")),
    )
    op.create_index(
        op.f("ix_deid_map_entries_project_id"), "deid_map_entries", ["project_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_deid_map_entries_project_id"), table_name="deid_map_entries")
    op.drop_table("deid_map_entries")
    op.drop_table("project_deid_profiles")
