"""PostgreSQL: NOTIFY hpcgear_work when jobs change state or site, or the change log grows

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 16:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

#: The channel a waiting controller LISTENs on (hpcgear.db.session.WORK_CHANNEL).
_CHANNEL = "hpcgear_work"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: the controller reads PRAGMA data_version instead
    # One notification per statement (not per row), delivered at commit, and the same
    # payload sent twice in a transaction is delivered once: a 10,000-row UPDATE costs
    # one. The controller only learns that it should look; it still queries.
    op.execute(f"""
        CREATE OR REPLACE FUNCTION hpcgear_notify_work() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{_CHANNEL}', TG_TABLE_NAME);
            RETURN NULL;
        END
        $$
    """)
    op.execute("""
        CREATE TRIGGER hpcgear_jobs_notify_work
        AFTER INSERT OR UPDATE OF state, site ON jobs
        FOR EACH STATEMENT EXECUTE FUNCTION hpcgear_notify_work()
    """)
    op.execute("""
        CREATE TRIGGER hpcgear_change_log_notify_work
        AFTER INSERT ON change_log
        FOR EACH STATEMENT EXECUTE FUNCTION hpcgear_notify_work()
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS hpcgear_change_log_notify_work ON change_log")
    op.execute("DROP TRIGGER IF EXISTS hpcgear_jobs_notify_work ON jobs")
    op.execute("DROP FUNCTION IF EXISTS hpcgear_notify_work()")
