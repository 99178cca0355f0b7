"""SQLAlchemy 2.0 models.

One ``containers`` table holds every hierarchy level (group, project, subject,
session, acquisition, analysis); each row stores all its ancestor ids so
permission checks and rules never recurse. Files are a stable identity
(``files``) plus immutable, content-addressed versions (``file_versions``).
Schema changes go through Alembic (``hpcgear/db/migrations``).

The tables the login-node commands use (users, roles, containers, files, file
versions, the change log, de-identification profiles, gears, jobs, job events,
controller leases/status, API keys) are defined in Core in
:mod:`hpcgear.db.tables`; their models here map onto those same ``Table``
objects (``__table__``), so ``jobs``, ``job show``, ``upload`` and ``whoami`` run without
importing the ORM, and each table still has one definition.

No ``from __future__ import annotations`` here on purpose: with string
annotations SQLAlchemy evaluates every ``Mapped[...]`` with ``eval`` when the
classes are built, a measurable part of each CLI call's start-up.
"""

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hpcgear.db import tables
from hpcgear.db.tables import NAMING, JsonType, utcnow

__all__ = ["NAMING", "Base", "JsonType", "utcnow"]  # and the models below


class Base(DeclarativeBase):
    # One MetaData for the Core tables (hpcgear.db.tables) and every model.
    metadata = tables.metadata


class User(Base):
    __table__ = tables.users

    login: Mapped[str]
    site_admin: Mapped[bool]
    disabled: Mapped[bool]
    created: Mapped[dt.datetime]


class Role(Base):
    """A role on a group or a project (``read-only``, ``read-write``, ``admin``)."""

    __table__ = tables.roles

    id: Mapped[int]
    user_login: Mapped[str]
    container_id: Mapped[str]
    role: Mapped[str]
    granted_by: Mapped[str]
    created: Mapped[dt.datetime]


class Container(Base):
    __table__ = tables.containers

    id: Mapped[str]
    type: Mapped[str]
    label: Mapped[str]
    label_key: Mapped[str]
    parent_id: Mapped[str | None]
    group_id: Mapped[str]
    project_id: Mapped[str | None]
    subject_id: Mapped[str | None]
    session_id: Mapped[str | None]
    acquisition_id: Mapped[str | None]
    natural_key: Mapped[str | None]
    info: Mapped[dict[str, Any]]
    tags: Mapped[list[str]]
    job_id: Mapped[str | None]
    notes: Mapped[list[dict[str, Any]] | None]
    created_by: Mapped[str | None]
    created: Mapped[dt.datetime]
    modified: Mapped[dt.datetime]


class File(Base):
    """A named file on a container; its bytes live in versions."""

    __table__ = tables.files

    id: Mapped[str]
    container_id: Mapped[str]
    project_id: Mapped[str | None]
    name: Mapped[str]
    current_version: Mapped[int]
    type: Mapped[str | None]
    modality: Mapped[str | None]
    classification: Mapped[dict[str, Any]]
    tags: Mapped[list[str]]
    info: Mapped[dict[str, Any]]
    created: Mapped[dt.datetime]
    modified: Mapped[dt.datetime]


class FileVersion(Base):
    """One immutable version of a file: its content hash, size and origin."""

    __table__ = tables.file_versions

    id: Mapped[int]
    file_id: Mapped[str]
    version: Mapped[int]
    hash: Mapped[str]
    size: Mapped[int]
    origin_type: Mapped[str]
    origin_id: Mapped[str]
    created: Mapped[dt.datetime]


class ChangeLog(Base):
    """Append-only feed of hierarchy changes; rule evaluation reads it incrementally."""

    __table__ = tables.change_log

    seq: Mapped[int]
    kind: Mapped[str]
    container_id: Mapped[str]
    file_id: Mapped[str | None]
    file_version: Mapped[int | None]
    actor: Mapped[str]
    created: Mapped[dt.datetime]


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
    __table__ = tables.gears

    id: Mapped[int]
    name: Mapped[str]
    version: Mapped[str]
    manifest: Mapped[dict[str, Any]]
    manifest_sha256: Mapped[str]
    category: Mapped[str]
    image_ref: Mapped[str | None]
    image_digest: Mapped[str | None]
    disabled: Mapped[bool]
    installed_by: Mapped[str]
    installed: Mapped[dt.datetime]


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

    __table__ = tables.jobs

    id: Mapped[str]
    attempt: Mapped[int]
    previous_id: Mapped[str | None]
    gear_id: Mapped[int]
    state: Mapped[str]
    state_seq: Mapped[int]
    failure_kind: Mapped[str | None]
    failure_message: Mapped[str | None]
    site: Mapped[str]
    native_id: Mapped[str | None]
    scheduler_state: Mapped[str | None]
    pending_reason: Mapped[str | None]
    config: Mapped[dict[str, Any]]
    inputs: Mapped[list[dict[str, Any]]]
    resources: Mapped[dict[str, Any]]
    destination_type: Mapped[str]
    destination_id: Mapped[str]
    project_id: Mapped[str | None]
    tags: Mapped[list[str]]
    priority: Mapped[str]
    origin_type: Mapped[str]
    origin_id: Mapped[str]
    dedupe_key: Mapped[str | None]
    rule_id: Mapped[int | None]
    script_sha256: Mapped[str | None]
    array_id: Mapped[str | None]
    array_index: Mapped[int | None]
    scheduler_info: Mapped[dict[str, Any]]
    core_hours: Mapped[float | None]
    gpu_hours: Mapped[float | None]
    wall_seconds: Mapped[int | None]
    wait_seconds: Mapped[int | None]
    cpu_used_seconds: Mapped[float | None]
    max_rss_mb: Mapped[int | None]
    submitted: Mapped[dt.datetime | None]
    started: Mapped[dt.datetime | None]
    finished: Mapped[dt.datetime | None]
    last_seen: Mapped[dt.datetime | None]
    created: Mapped[dt.datetime]
    modified: Mapped[dt.datetime]


class JobEvent(Base):
    """Append-only: who/what/when/why for every job state change."""

    __table__ = tables.job_events

    id: Mapped[int]
    job_id: Mapped[str]
    ts: Mapped[dt.datetime]
    actor: Mapped[str]
    kind: Mapped[str]
    old_state: Mapped[str | None]
    new_state: Mapped[str | None]
    message: Mapped[str | None]
    data: Mapped[dict[str, Any]]


class ProvenanceRecord(Base):
    __tablename__ = "provenance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    record: Mapped[dict[str, Any]] = mapped_column(JsonType)
    sha256: Mapped[str] = mapped_column(String(80))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ControllerLease(Base):
    """One leader per site: a lease row renewed by heartbeat."""

    __table__ = tables.controller_leases

    site: Mapped[str]
    holder: Mapped[str]
    expires: Mapped[dt.datetime]
    heartbeat: Mapped[dt.datetime]


class ProjectDeidProfile(Base):
    """A de-identification profile attached to a project: every ingest and upload
    into the project is de-identified with it, whatever the command's flags."""

    __table__ = tables.project_deid_profiles

    project_id: Mapped[str]
    name: Mapped[str]
    sha256: Mapped[str]
    text: Mapped[str]
    set_by: Mapped[str]
    created: Mapped[dt.datetime]


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

    __table__ = tables.controller_status

    site: Mapped[str]
    holder: Mapped[str]
    last_cycle: Mapped[dt.datetime]
    last_clean_cycle: Mapped[dt.datetime | None]
    cycles: Mapped[int]
    last_report: Mapped[dict[str, Any]]
    recent_errors: Mapped[list[Any]]


class ApiKey(Base):
    """An API key: only the sha256 of its secret is stored.

    ``kind`` is ``user`` (made by ``hpcgear user key create``) or ``job`` (made
    for one job whose gear declares an ``api-key`` input; valid only while that
    job is live, and only for its inputs, destination and their parents).
    """

    __table__ = tables.api_keys

    id: Mapped[str]
    secret_sha256: Mapped[str]
    owner: Mapped[str]
    kind: Mapped[str]
    job_id: Mapped[str | None]
    label: Mapped[str | None]
    created: Mapped[dt.datetime]
    last_used: Mapped[dt.datetime | None]
    expires: Mapped[dt.datetime | None]
    revoked: Mapped[dt.datetime | None]
