"""SQLAlchemy 2.0 models.

One ``containers`` table holds every hierarchy level (group, project, subject,
session, acquisition, analysis); each row stores all its ancestor ids so
permission checks and rules never recurse. Files are a stable identity
(``files``) plus immutable, content-addressed versions (``file_versions``).
Schema changes go through Alembic (``hpcgear/db/migrations``).

No ``from __future__ import annotations`` here on purpose: with string
annotations SQLAlchemy evaluates every ``Mapped[...]`` with ``eval`` when the
classes are built, a measurable part of each CLI call's start-up.
"""

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}



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


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    login: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # A disabled user is refused by every service call (get_actor); rows are kept.
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Role(Base):
    """A role on a group or a project (``read-only``, ``read-write``, ``admin``)."""

    __tablename__ = "roles"
    __table_args__ = (UniqueConstraint("user_login", "container_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_login: Mapped[str] = mapped_column(ForeignKey("users.login", ondelete="CASCADE"))
    container_id: Mapped[str] = mapped_column(ForeignKey("containers.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    granted_by: Mapped[str] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Container(Base):
    __tablename__ = "containers"
    __table_args__ = (
        # label_key is the label for ordinary levels and the row id for analyses,
        # so labels are unique among siblings but analyses may repeat labels.
        UniqueConstraint("parent_id", "label_key"),
        UniqueConstraint("project_id", "natural_key"),
        Index("ix_containers_project_type", "project_id", "type"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(256))
    label_key: Mapped[str] = mapped_column(String(256))
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("containers.id", ondelete="CASCADE"), index=True
    )
    group_id: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64))
    subject_id: Mapped[str | None] = mapped_column(String(64))
    session_id: Mapped[str | None] = mapped_column(String(64))
    acquisition_id: Mapped[str | None] = mapped_column(String(64))
    natural_key: Mapped[str | None] = mapped_column(String(128))
    info: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    tags: Mapped[list[str]] = mapped_column(JsonType, default=list)
    job_id: Mapped[str | None] = mapped_column(String(64))  # analyses: the job that made it
    # Flywheel-style notes: [{"text", "user", "created"}]; None until the first note.
    notes: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonType, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    modified: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class File(Base):
    """A named file on a container; its bytes live in versions."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("container_id", "name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    container_id: Mapped[str] = mapped_column(
        ForeignKey("containers.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str | None] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(255))
    current_version: Mapped[int] = mapped_column(Integer, default=1)
    type: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(64))
    classification: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    tags: Mapped[list[str]] = mapped_column(JsonType, default=list)
    info: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    modified: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class FileVersion(Base):
    """One immutable version of a file: its content hash, size and origin."""

    __tablename__ = "file_versions"
    __table_args__ = (UniqueConstraint("file_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(80), index=True)  # "sha256:<hex>"
    size: Mapped[int] = mapped_column(BigInteger)
    origin_type: Mapped[str] = mapped_column(String(16))  # user | ingest | job
    origin_id: Mapped[str] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ChangeLog(Base):
    """Append-only feed of hierarchy changes; rule evaluation reads it incrementally."""

    __tablename__ = "change_log"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    kind: Mapped[str] = mapped_column(String(32))  # file.version, file.meta, container.meta ...
    container_id: Mapped[str] = mapped_column(String(64), index=True)
    file_id: Mapped[str | None] = mapped_column(String(64))
    file_version: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrashEntry(Base):
    """A deleted file or container subtree, kept until a site admin restores or purges it.

    Deleting removes the rows from ``containers``/``files``/``file_versions`` (so
    every reader sees the data gone without a filter) and keeps them here as
    JSON (``rows``), with the content hashes they reference (``hashes``).
    Restore re-inserts the same rows (same ids); purge drops the entry and
    removes bytes nothing else references (file versions, provenance records,
    job inputs, other trash entries).
    """

    __tablename__ = "trash"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # file | subject | session | ...
    item_id: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(256))
    path: Mapped[str] = mapped_column(Text)  # where it was, as a hierarchy path
    parent_id: Mapped[str] = mapped_column(String(64))
    group_id: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64))
    rows: Mapped[dict[str, Any]] = mapped_column(JsonType)
    hashes: Mapped[list[str]] = mapped_column(JsonType, default=list)
    files: Mapped[int] = mapped_column(Integer, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    deleted_by: Mapped[str] = mapped_column(String(64))
    deleted: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class HierarchyEvent(Base):
    """Append-only record of every move, rename, delete, restore and purge."""

    __tablename__ = "hierarchy_events"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    action: Mapped[str] = mapped_column(String(16))  # move | rename | delete | restore | purge
    kind: Mapped[str] = mapped_column(String(16))
    item_id: Mapped[str] = mapped_column(String(64), index=True)
    from_path: Mapped[str | None] = mapped_column(Text)
    to_path: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(64))
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)


class SavedView(Base):
    """A named data view (columns, level, filters) of a project."""

    __tablename__ = "saved_views"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("containers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_by: Mapped[str] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Gear(Base):
    __tablename__ = "gears"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(100))
    manifest: Mapped[dict[str, Any]] = mapped_column(JsonType)
    manifest_sha256: Mapped[str] = mapped_column(String(80))
    category: Mapped[str] = mapped_column(String(32), default="utility")
    image_ref: Mapped[str | None] = mapped_column(Text)
    image_digest: Mapped[str | None] = mapped_column(String(80))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    installed_by: Mapped[str] = mapped_column(String(64))
    installed: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GearRule(Base):
    __tablename__ = "gear_rules"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("containers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    gear_name: Mapped[str] = mapped_column(String(100))
    gear_version: Mapped[str | None] = mapped_column(String(100))
    auto_update: Mapped[bool] = mapped_column(Boolean, default=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RuleMatch(Base):
    """Edge memory of file rules: the file version that matched a rule when last evaluated.

    A row exists while the file's current version satisfies the rule; it is
    removed when a change makes the file stop matching. A rule fires only when
    a file matches and no row records that same version (a new version, or a
    metadata change that makes a non-matching file match). ``outcome`` is what
    the engine did: ``queued`` (``job_id`` set), ``duplicate`` (an equal job of
    the rule existed: ``job_id`` is that job), ``guarded`` (output of a failed
    job, or of the rule's own job) or ``error`` (``note`` says why; re-tried on
    the file's next change).
    """

    __tablename__ = "rule_matches"

    rule_id: Mapped[int] = mapped_column(
        ForeignKey("gear_rules.id", ondelete="CASCADE"), primary_key=True
    )
    file_id: Mapped[str] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(BigInteger)  # the change_log row that made it match
    outcome: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RuleCursor(Base):
    """How far rule evaluation has read an append-only feed (``change_log``, ``job_events``).

    ``gaps`` lists ids below ``position`` that were missing when the feed was
    read (on PostgreSQL a transaction that took an id earlier may commit
    later); they are looked up again until they appear or are an hour old.
    """

    __tablename__ = "rule_cursors"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
    gaps: Mapped[list[Any]] = mapped_column(JsonType, default=list)
    updated: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Job(Base):
    """One attempt of a gear run. A retry is a new row linked by ``previous_id``."""

    __tablename__ = "jobs"
    # ix_jobs_created: `hpcgear jobs` lists newest first; without it a listing
    # sorts the whole table (100k jobs: a full scan on every call).
    __table_args__ = (
        Index("ix_jobs_state_site", "state", "site"),
        Index("ix_jobs_created", "created"),
        Index("ix_jobs_project_finished", "project_id", "finished"),
        Index("ix_jobs_finished", "finished"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    previous_id: Mapped[str | None] = mapped_column(String(64), index=True)
    gear_id: Mapped[int] = mapped_column(ForeignKey("gears.id"))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    state_seq: Mapped[int] = mapped_column(Integer, default=0)  # compare-and-set counter
    failure_kind: Mapped[str | None] = mapped_column(String(32))
    failure_message: Mapped[str | None] = mapped_column(Text)
    site: Mapped[str] = mapped_column(String(64))
    native_id: Mapped[str | None] = mapped_column(String(64), index=True)
    scheduler_state: Mapped[str | None] = mapped_column(String(32))
    pending_reason: Mapped[str | None] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    resources: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    destination_type: Mapped[str] = mapped_column(String(16))
    destination_id: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), index=True)
    tags: Mapped[list[str]] = mapped_column(JsonType, default=list)
    priority: Mapped[str] = mapped_column(String(16), default="medium")
    origin_type: Mapped[str] = mapped_column(String(16), default="user")  # user | rule
    origin_id: Mapped[str] = mapped_column(String(64))
    dedupe_key: Mapped[str | None] = mapped_column(String(80), index=True)
    rule_id: Mapped[int | None] = mapped_column(Integer, index=True)
    script_sha256: Mapped[str | None] = mapped_column(String(80))
    array_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # What the scheduler and the job's exit record said (accounting, nodes, exit.json).
    scheduler_info: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    # Usage from SLURM accounting, filled when the job ends (hpcgear.jobs.usage) so
    # `hpcgear usage` sums columns instead of parsing JSON.
    core_hours: Mapped[float | None] = mapped_column(Float)  # allocated CPUs x elapsed
    gpu_hours: Mapped[float | None] = mapped_column(Float)
    wall_seconds: Mapped[int | None] = mapped_column(Integer)  # elapsed (run) time
    wait_seconds: Mapped[int | None] = mapped_column(Integer)  # submit -> start
    cpu_used_seconds: Mapped[float | None] = mapped_column(Float)  # TotalCPU
    max_rss_mb: Mapped[int | None] = mapped_column(Integer)
    submitted: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    started: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    modified: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class JobEvent(Base):
    """Append-only: who/what/when/why for every job state change."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    old_state: Mapped[str | None] = mapped_column(String(16))
    new_state: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)


class ProvenanceRecord(Base):
    __tablename__ = "provenance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    record: Mapped[dict[str, Any]] = mapped_column(JsonType)
    sha256: Mapped[str] = mapped_column(String(80))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ControllerLease(Base):
    """One leader per site: a lease row renewed by heartbeat."""

    __tablename__ = "controller_leases"

    site: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    heartbeat: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProjectDeidProfile(Base):
    """A de-identification profile attached to a project: every ingest and upload
    into the project is de-identified with it, whatever the command's flags."""

    __tablename__ = "project_deid_profiles"

    project_id: Mapped[str] = mapped_column(
        ForeignKey("containers.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(80))
    text: Mapped[str] = mapped_column(Text)  # the profile YAML as written
    set_by: Mapped[str] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeidMapEntry(Base):
    """Re-identification map of one stored file (original -> new values per
    instance); written only when the profile has ``deid-log``; admins only."""

    __tablename__ = "deid_map_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    file_id: Mapped[str] = mapped_column(String(64))
    file_version: Mapped[int] = mapped_column(Integer)
    profile: Mapped[str] = mapped_column(String(128))
    profile_sha256: Mapped[str] = mapped_column(String(80))
    entries: Mapped[list[Any]] = mapped_column(JsonType, default=list)
    actor: Mapped[str] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ControllerStatus(Base):
    """What the last controller cycle of a site did; kept after the lease is released.

    ``hpcgear controller status|health``, ``job show`` ("no controller has led this
    site since ...") and the metrics read it. One row per site, replaced each cycle.
    """

    __tablename__ = "controller_status"

    site: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    last_cycle: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    # The last cycle without errors: the scheduler answered every query in it.
    last_clean_cycle: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    cycles: Mapped[int] = mapped_column(BigInteger, default=0)
    last_report: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    recent_errors: Mapped[list[Any]] = mapped_column(JsonType, default=list)


class ApiKey(Base):
    """An API key: only the sha256 of its secret is stored.

    ``kind`` is ``user`` (made by ``hpcgear user key create``) or ``job`` (made
    for one job whose gear declares an ``api-key`` input; valid only while that
    job is live, and only for its inputs, destination and their parents).
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(ForeignKey("users.login", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8), default="user")  # user | job
    job_id: Mapped[str | None] = mapped_column(String(64), index=True)
    label: Mapped[str | None] = mapped_column(String(128))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    expires: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
