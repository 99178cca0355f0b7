"""SQLAlchemy Core tables of the login-node read paths, on the one schema ``MetaData``.

``jobs``, ``job show``, ``upload`` and ``whoami`` run on a login node, where
start-up time is what a user feels: importing ``sqlalchemy.orm`` and building
the 23 ORM models costs 100-150 ms per call. The tables those commands read are
defined here in Core, and the ORM models of the same tables
(:mod:`hpcgear.db.models`) map onto these very ``Table`` objects
(``__table__ = tables.jobs``), so each table is defined once and Alembic sees
one schema. Everything else (:data:`metadata`, the naming convention, the JSON
type, column defaults) lives here too, so the models import this module, never
the other way round.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "NAMING",
    "JsonType",
    "api_keys",
    "change_log",
    "containers",
    "controller_leases",
    "controller_status",
    "file_versions",
    "files",
    "gears",
    "job_events",
    "jobs",
    "metadata",
    "project_deid_profiles",
    "roles",
    "users",
    "utcnow",
]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: The one schema: these tables and every ORM model (``models.Base.metadata``).
metadata = MetaData(naming_convention=NAMING)


class _JsonB(TypeDecorator[Any]):
    """JSON, stored as JSONB on PostgreSQL.

    The PostgreSQL type is imported only when a PostgreSQL dialect asks for
    it: ``sqlalchemy.dialects.postgresql`` pulls in asyncio and every driver
    module, which every SQLite CLI call would otherwise pay for at start-up.
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


JsonType = _JsonB()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _when(name: str, **kw: Any) -> Column[Any]:
    return Column(name, DateTime(timezone=True), **kw)


def _created(name: str = "created") -> Column[Any]:
    return _when(name, nullable=False, default=utcnow)


def _modified() -> Column[Any]:
    return _when("modified", nullable=False, default=utcnow, onupdate=utcnow)


# Column nullability follows what the declarative models said (``Mapped[str]`` is
# NOT NULL, ``Mapped[str | None]`` is nullable), so Alembic sees no difference.
_NN: dict[str, Any] = {"nullable": False}

users = Table(
    "users",
    metadata,
    Column("login", String(64), primary_key=True),
    Column("site_admin", Boolean, default=False, **_NN),
    # A disabled user is refused by every service call (get_actor); rows are kept.
    Column("disabled", Boolean, default=False, server_default=false(), **_NN),
    _created(),
)

roles = Table(
    "roles",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_login", ForeignKey("users.login", ondelete="CASCADE"), **_NN),
    Column("container_id", ForeignKey("containers.id", ondelete="CASCADE"), **_NN),
    Column("role", String(16), **_NN),
    Column("granted_by", String(64), **_NN),
    _created(),
    UniqueConstraint("user_login", "container_id"),
)

containers = Table(
    "containers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("type", String(16), **_NN),
    Column("label", String(256), **_NN),
    Column("label_key", String(256), **_NN),
    Column("parent_id", ForeignKey("containers.id", ondelete="CASCADE"), index=True),
    Column("group_id", String(64), index=True, **_NN),
    Column("project_id", String(64)),
    Column("subject_id", String(64)),
    Column("session_id", String(64)),
    Column("acquisition_id", String(64)),
    Column("natural_key", String(128)),
    Column("info", JsonType, default=dict, **_NN),
    Column("tags", JsonType, default=list, **_NN),
    Column("job_id", String(64)),  # analyses: the job that made it
    # Flywheel-style notes: [{"text", "user", "created"}]; None until the first note.
    Column("notes", JsonType, nullable=True),
    Column("created_by", String(64)),
    _created(),
    _modified(),
    # label_key is the label for ordinary levels and the row id for analyses,
    # so labels are unique among siblings but analyses may repeat labels.
    UniqueConstraint("parent_id", "label_key"),
    UniqueConstraint("project_id", "natural_key"),
    Index("ix_containers_project_type", "project_id", "type"),
)

files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("container_id", ForeignKey("containers.id", ondelete="CASCADE"), index=True, **_NN),
    Column("project_id", String(64), index=True),
    Column("name", String(255), **_NN),
    Column("current_version", Integer, default=1, **_NN),
    Column("type", String(64)),
    Column("modality", String(64)),
    Column("classification", JsonType, default=dict, **_NN),
    Column("tags", JsonType, default=list, **_NN),
    Column("info", JsonType, default=dict, **_NN),
    _created(),
    _modified(),
    UniqueConstraint("container_id", "name"),
)

file_versions = Table(
    "file_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("file_id", ForeignKey("files.id", ondelete="CASCADE"), **_NN),
    Column("version", Integer, **_NN),
    Column("hash", String(80), index=True, **_NN),  # "sha256:<hex>"
    Column("size", BigInteger, **_NN),
    Column("origin_type", String(16), **_NN),  # user | ingest | job
    Column("origin_id", String(64), **_NN),
    _created(),
    UniqueConstraint("file_id", "version"),
)

change_log = Table(
    "change_log",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("kind", String(32), **_NN),  # file.version, file.meta, container.meta ...
    Column("container_id", String(64), index=True, **_NN),
    Column("file_id", String(64)),
    Column("file_version", Integer),
    Column("actor", String(64), **_NN),
    _created(),
)

project_deid_profiles = Table(
    "project_deid_profiles",
    metadata,
    Column("project_id", ForeignKey("containers.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(128), **_NN),
    Column("sha256", String(80), **_NN),
    Column("text", Text, **_NN),  # the profile YAML as written
    Column("set_by", String(64), **_NN),
    _created(),
)

gears = Table(
    "gears",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), **_NN),
    Column("version", String(100), **_NN),
    Column("manifest", JsonType, **_NN),
    Column("manifest_sha256", String(80), **_NN),
    Column("category", String(32), default="utility", **_NN),
    Column("image_ref", Text),
    Column("image_digest", String(80)),
    Column("disabled", Boolean, default=False, **_NN),
    Column("installed_by", String(64), **_NN),
    _created("installed"),
    UniqueConstraint("name", "version"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("attempt", Integer, default=1, **_NN),
    Column("previous_id", String(64), index=True),
    Column("gear_id", ForeignKey("gears.id"), **_NN),
    Column("state", String(16), default="pending", **_NN),
    Column("state_seq", Integer, default=0, **_NN),  # compare-and-set counter
    Column("failure_kind", String(32)),
    Column("failure_message", Text),
    Column("site", String(64), **_NN),
    Column("native_id", String(64), index=True),
    Column("scheduler_state", String(32)),
    Column("pending_reason", String(128)),
    Column("config", JsonType, default=dict, **_NN),
    Column("inputs", JsonType, default=list, **_NN),
    Column("resources", JsonType, default=dict, **_NN),
    Column("destination_type", String(16), **_NN),
    Column("destination_id", String(64), index=True, **_NN),
    Column("project_id", String(64), index=True),
    Column("tags", JsonType, default=list, **_NN),
    Column("priority", String(16), default="medium", **_NN),
    Column("origin_type", String(16), default="user", **_NN),  # user | rule
    Column("origin_id", String(64), **_NN),
    Column("dedupe_key", String(80), index=True),
    Column("rule_id", Integer, index=True),
    Column("script_sha256", String(80)),
    Column("array_id", String(64), index=True),
    Column("array_index", Integer),  # the job's task in its array (set with array_id)
    # What the scheduler and the job's exit record said (accounting, nodes, exit.json).
    Column("scheduler_info", JsonType, default=dict, **_NN),
    # Usage from SLURM accounting, filled when the job ends (hpcgear.jobs.usage) so
    # `hpcgear usage` sums columns instead of parsing JSON.
    Column("core_hours", Float),  # allocated CPUs x elapsed
    Column("gpu_hours", Float),
    Column("wall_seconds", Integer),  # elapsed (run) time
    Column("wait_seconds", Integer),  # submit -> start
    Column("cpu_used_seconds", Float),  # TotalCPU
    Column("max_rss_mb", Integer),
    _when("submitted"),
    _when("started"),
    _when("finished"),
    _when("last_seen"),
    _created(),
    _modified(),
    # ix_jobs_created: `hpcgear jobs` lists newest first; without it a listing
    # sorts the whole table (100k jobs: a full scan on every call). The claim reads
    # a site's pending jobs oldest first, in the order of ix_jobs_state_site_created.
    Index("ix_jobs_state_site_created", "state", "site", "created"),
    Index("ix_jobs_created", "created"),
    Index("ix_jobs_project_finished", "project_id", "finished"),
    Index("ix_jobs_finished", "finished"),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", ForeignKey("jobs.id", ondelete="CASCADE"), index=True, **_NN),
    _created("ts"),
    Column("actor", String(64), **_NN),
    Column("kind", String(32), **_NN),
    Column("old_state", String(16)),
    Column("new_state", String(16)),
    Column("message", Text),
    Column("data", JsonType, default=dict, **_NN),
)

controller_leases = Table(
    "controller_leases",
    metadata,
    Column("site", String(64), primary_key=True),
    Column("holder", String(128), **_NN),
    _when("expires", **_NN),
    _created("heartbeat"),
)

controller_status = Table(
    "controller_status",
    metadata,
    Column("site", String(64), primary_key=True),
    Column("holder", String(128), **_NN),
    _when("last_cycle", **_NN),
    # The last cycle without errors: the scheduler answered every query in it.
    _when("last_clean_cycle"),
    Column("cycles", BigInteger, default=0, **_NN),
    Column("last_report", JsonType, default=dict, **_NN),
    Column("recent_errors", JsonType, default=list, **_NN),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("secret_sha256", String(64), unique=True, **_NN),
    Column("owner", ForeignKey("users.login", ondelete="CASCADE"), index=True, **_NN),
    Column("kind", String(8), default="user", **_NN),  # user | job
    Column("job_id", String(64), index=True),
    Column("label", String(128)),
    _created(),
    _when("last_used"),
    _when("expires"),
    _when("revoked"),
)
