"""trash, hierarchy events, saved views, container notes

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-03 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine[object]:
    json_type: sa.types.TypeEngine[object] = sa.JSON().with_variant(  # type: ignore[assignment]
        postgresql.JSONB(astext_type=sa.Text()), "postgresql"
    )
    return json_type


def upgrade() -> None:
    op.add_column("containers", sa.Column("notes", _json(), nullable=True))
    op.create_table(
        "trash",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=256), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.String(length=64), nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("rows", _json(), nullable=False),
        sa.Column("hashes", _json(), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("deleted_by", sa.String(length=64), nullable=False),
        sa.Column("deleted", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trash")),
    )
    op.create_index(op.f("ix_trash_group_id"), "trash", ["group_id"], unique=False)
    op.create_index(op.f("ix_trash_item_id"), "trash", ["item_id"], unique=False)
    op.create_table(
        "hierarchy_events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("from_path", sa.Text(), nullable=True),
        sa.Column("to_path", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", _json(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_hierarchy_events")),
    )
    op.create_index(
        op.f("ix_hierarchy_events_item_id"), "hierarchy_events", ["item_id"], unique=False
    )
    op.create_table(
        "saved_views",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("spec", _json(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["containers.id"],
            name=op.f("fk_saved_views_project_id_containers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saved_views")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_saved_views_project_id_name")),
    )


def downgrade() -> None:
    op.drop_table("saved_views")
    op.drop_index(op.f("ix_hierarchy_events_item_id"), table_name="hierarchy_events")
    op.drop_table("hierarchy_events")
    op.drop_index(op.f("ix_trash_item_id"), table_name="trash")
    op.drop_index(op.f("ix_trash_group_id"), table_name="trash")
    op.drop_table("trash")
    with op.batch_alter_table("containers") as batch:
        batch.drop_column("notes")
