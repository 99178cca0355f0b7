"""Shared set-up for the gear rule tests: an instance with users, a project and gears."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hpcgear.config.settings import Settings
from hpcgear.db.models import Container, File, Job, JobEvent
from hpcgear.db.session import Database
from hpcgear.gears.service import install_gear
from hpcgear.hierarchy import service as hs
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.jobs.transitions import record_event, transition
from hpcgear.rules.context import EvaluationReport
from hpcgear.rules.engine import evaluate
from hpcgear.rules.schema import parse_rules_text
from hpcgear.rules.service import apply_rules
from hpcgear.states import FailureKind, JobState
from hpcgear.storage.objects import ObjectStore

REPO = Path(__file__).resolve().parents[2]
GEARS = {
    name: REPO / "containers" / name
    for name in ("test-gear", "test-analysis", "dcm2niix", "dicom-header", "nifti-header")
}
RULES_DATA = REPO / "tests" / "data" / "rules"
ADMIN = "admin"


@dataclass
class World:
    """A migrated database with admin, a project lab/p1 and the bundled gears installed."""

    db: Database
    store: ObjectStore
    sites: SiteRegistry
    tmp: Path

    # ------------------------------------------------------------- data
    def upload(
        self,
        path: str,
        name: str,
        data: bytes | str,
        *,
        actor: str = ADMIN,
        origin_type: str = "user",
        origin_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> hs.UploadResult:
        raw = data.encode() if isinstance(data, str) else data
        with self.db.session() as s:
            container = hs.ensure_path(s, actor, path)
            digest = "sha256:" + hashlib.sha256(raw).hexdigest()
            return hs.add_file_version(
                s,
                container,
                name,
                digest,
                len(raw),
                actor,
                origin_type=origin_type,
                origin_id=origin_id or actor,
                metadata=metadata,
            )

    def set_meta(self, path: str, metadata: Mapping[str, Any], actor: str = ADMIN) -> None:
        with self.db.session() as s:
            target = hs.resolve_target(s, path)
            assert target.file is not None
            hs.apply_file_metadata(s, target.file, metadata, actor)

    def tag(self, path: str, *tags: str, remove: bool = False) -> None:
        with self.db.session() as s:
            if remove:
                hs.change_tags(s, ADMIN, path, remove=list(tags))
            else:
                hs.change_tags(s, ADMIN, path, add=list(tags))

    def container(self, path: str) -> Container:
        with self.db.session() as s:
            return hs.resolve_container(s, path)

    # ------------------------------------------------------------- rules
    def apply(self, text: str, actor: str = ADMIN) -> list[str]:
        specs = parse_rules_text(text, source="test.yaml")
        with self.db.session() as s:
            return [o.action for o in apply_rules(s, actor, specs)]

    def evaluate(self, **kw: Any) -> EvaluationReport:
        return evaluate(self.db, self.sites, **kw)

    # ------------------------------------------------------------- jobs
    def jobs(self, rule_id: int | None = None) -> list[Job]:
        with self.db.session() as s:
            q = select(Job).order_by(Job.created, Job.id)
            if rule_id is not None:
                q = q.where(Job.rule_id == rule_id)
            return list(s.scalars(q))

    def finish(
        self,
        job_id: str,
        state: JobState = JobState.COMPLETE,
        kind: FailureKind = FailureKind.GEAR_ERROR,
    ) -> None:
        """Move a job through the states the controller would, to ``state``."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            if state == JobState.COMPLETE:
                for st in (
                    JobState.SUBMITTING,
                    JobState.QUEUED,
                    JobState.RUNNING,
                    JobState.STAGING,
                    JobState.COMPLETE,
                ):
                    transition(s, job, st, "controller@test", f"-> {st.value}")
            elif state == JobState.FAILED:
                transition(s, job, JobState.FAILED, "controller@test", "boom", failure_kind=kind)
            else:
                transition(
                    s,
                    job,
                    JobState.CANCELLED,
                    ADMIN,
                    "cancelled by a user",
                    failure_kind=FailureKind.CANCELLED,
                )

    def no_retry_decision(self, job_id: str) -> None:
        """What the controller's retry step records when a failure gets no retry."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            record_event(s, job, "retry_decision", "controller@test", "no retry: gear_error")

    def analysis(self, parent_path: str, label: str, job_id: str) -> None:
        """An analysis container a job made (what stage-out creates for analysis gears)."""
        with self.db.session() as s:
            parent = hs.resolve_container(s, parent_path)
            row = hs.create_child(s, parent, "analysis", label, ADMIN)
            row.job_id = job_id

    def events(self, job_id: str) -> list[JobEvent]:
        with self.db.session() as s:
            return list(
                s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
            )

    def file_id(self, path: str) -> str:
        with self.db.session() as s:
            target = hs.resolve_target(s, path)
            assert isinstance(target.file, File)
            return target.file.id


def make_world(db: Database, tmp: Path, *, gears: tuple[str, ...] = tuple(GEARS)) -> World:
    store = ObjectStore(tmp / "store")
    sif = tmp / "fake.sif"
    sif.write_bytes(b"not a real SIF, content-addressed all the same")
    settings = Settings(
        config_path=tmp / "config.yaml",
        database_url=str(db.engine.url),
        storage_root=tmp / "store",
        scratch_root=tmp / "scratch",
        sites=(REPO / "site_configs" / "curc-alpine.yaml",),
    )
    with db.session() as s:
        hs.add_user(s, None, ADMIN, site_admin=True)
        hs.add_user(s, ADMIN, "alice")
        hs.add_user(s, ADMIN, "rory")
        hs.create_group(s, ADMIN, "lab")
        hs.create_project(s, ADMIN, "lab/p1")
        hs.create_project(s, ADMIN, "lab/p2")
        hs.grant_role(s, ADMIN, "alice", "lab/p1", "admin")
        hs.grant_role(s, ADMIN, "rory", "lab/p1", "read-only")
        for name in gears:
            install_gear(s, store, ADMIN, GEARS[name], image=str(sif))
    return World(db=db, store=store, sites=SiteRegistry.from_settings(settings), tmp=tmp)


@pytest.fixture(name="world")
def world_fixture(db: Database, tmp_path: Path) -> Iterator[World]:
    yield make_world(db, tmp_path)
