"""jobs: an array task's index is a column (array_index), no longer a JSON key

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The array intent wrote each task's index into scheduler_info, one JSON document
    # per task (1,000 per array), and recording the array read it back out of JSON.
    # A plain column is written and read as it is. Rows an older controller wrote
    # keep their key and get the column from it (an array in flight is adopted by it).
    op.add_column("jobs", sa.Column("array_index", sa.Integer(), nullable=True))
    _execute(
        postgresql="UPDATE jobs SET array_index = (scheduler_info->>'array_index')::integer "
        "WHERE array_id IS NOT NULL AND scheduler_info ? 'array_index'",
        sqlite="UPDATE jobs SET array_index = "
        "CAST(json_extract(scheduler_info, '$.array_index') AS INTEGER) "
        "WHERE array_id IS NOT NULL AND json_extract(scheduler_info, '$.array_index') IS NOT NULL",
    )


def downgrade() -> None:
    # Back into the JSON key the older code reads (it adopts arrays in flight by it).
    _execute(
        postgresql="UPDATE jobs SET scheduler_info = jsonb_set(scheduler_info, "
        "'{array_index}', to_jsonb(array_index)) WHERE array_index IS NOT NULL",
        sqlite="UPDATE jobs SET scheduler_info = "
        "json_set(scheduler_info, '$.array_index', array_index) WHERE array_index IS NOT NULL",
    )
    op.drop_column("jobs", "array_index")


def _execute(*, postgresql: str, sqlite: str) -> None:
    op.execute(postgresql if op.get_bind().dialect.name == "postgresql" else sqlite)
