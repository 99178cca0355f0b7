"""Job services: create (run/batch), list, show, cancel, retry.

A job snapshots at creation everything it will run with: the exact gear
version and image digest, the validated config, each input's file id +
version + hash, the destination, and the resources resolved on its site. A
retry is a new row (attempt + 1) linked to the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File, FileVersion, Gear, Job, JobEvent
from hpcgear.errors import ConfigError, InvalidInputError, NotFoundError, PermissionDeniedError
from hpcgear.hierarchy.permissions import RoleName, get_actor, require_role
from hpcgear.hierarchy.service import (
    container_path,
    file_version,
    new_id,
    resolve_container,
    resolve_file,
)
from hpcgear.jobs.queries import event_dict, job_dict, jobs_page, paths_of
from hpcgear.jobs.transitions import record_event, transition
from hpcgear.spec import InputSpec
from hpcgear.states import JobState
from hpcgear.text import check_storable

if TYPE_CHECKING:
    # Only for annotations: `hpcgear jobs` / `job show` run on login nodes and
    # should not pay for importing the site schema, manifests and resources.
    from hpcgear.config.site import SiteConfig
    from hpcgear.gears.manifest import GearManifest
    from hpcgear.jobs.resources import ResolvedResources
    from hpcgear.jobs.sites import SiteRegistry

logger = logging.getLogger(__name__)

PRIORITIES = ("low", "medium", "high", "critical")


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """A validated job, before (or after) it is stored."""

    gear: Gear
    manifest: GearManifest
    destination: Container
    config: dict[str, Any]
    inputs: tuple[InputSpec, ...]
    site: SiteConfig
    resources: ResolvedResources
    tags: tuple[str, ...]
    priority: str
    dedupe_key: str
    job: Job | None = None
    notes: tuple[str, ...] = field(default=())


def _input_spec(name: str, base: str, container: Container, f: File, fv: FileVersion) -> InputSpec:
    return InputSpec(
        name=name,
        base=base,
        file_id=f.id,
        version=fv.version,
        file_name=f.name,
        sha256=fv.hash,
        size=fv.size,
        container_type=container.type,
        container_id=container.id,
        object={
            "file_id": f.id,
            "version": fv.version,
            "type": f.type,
            "modality": f.modality,
            "classification": dict(f.classification or {}),
            "tags": list(f.tags or []),
            "info": dict(f.info or {}),
            "size": fv.size,
            "hash": fv.hash,
        },
    )


def input_spec_to_json(spec: InputSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "base": spec.base,
        "file_id": spec.file_id,
        "version": spec.version,
        "file_name": spec.file_name,
        "sha256": spec.sha256,
        "size": spec.size,
        "container_type": spec.container_type,
        "container_id": spec.container_id,
        "object": spec.object,
        "value": spec.value,
    }


def input_spec_from_json(d: Mapping[str, Any]) -> InputSpec:
    return InputSpec(
        name=str(d["name"]),
        base=str(d["base"]),
        file_id=d.get("file_id"),
        version=d.get("version"),
        file_name=d.get("file_name"),
        sha256=d.get("sha256"),
        size=d.get("size"),
        container_type=d.get("container_type"),
        container_id=d.get("container_id"),
        object=dict(d.get("object") or {}),
        value=d.get("value"),
    )


def resolve_inputs_by_path(
    session: Session, actor: str, manifest: GearManifest, given: Mapping[str, str]
) -> list[InputSpec]:
    """``NAME -> group/project/.../FILE`` to pinned input specs (read role checked)."""
    problems: list[str] = []
    specs: list[InputSpec] = []
    for name, path in given.items():
        try:
            decl = manifest.input(name)
        except KeyError:
            problems.append(
                f"gear {manifest.name} has no input {name!r} "
                f"(inputs: {', '.join(manifest.input_names) or 'none'})"
            )
            continue
        if decl.base != "file":
            problems.append(f"input {name!r} is a {decl.base} input, not a file")
            continue
        try:
            container, f = resolve_file(session, actor, path, RoleName.READ_ONLY)
        except (NotFoundError, InvalidInputError, PermissionDeniedError) as exc:
            problems.append(f"input {name}: {exc.message}")
            continue
        specs.append(_input_spec(name, "file", container, f, file_version(session, f)))
    if problems:
        raise InvalidInputError("; ".join(problems), "fix the --input NAME=PATH/FILE values")
    return specs


def check_inputs(manifest: GearManifest, specs: Sequence[InputSpec]) -> None:
    """Required inputs present; file types accepted by the manifest's type filters."""
    given = {s.name: s for s in specs}
    problems = []
    for decl in manifest.inputs:
        spec = given.get(decl.name)
        if spec is None:
            if decl.required:
                problems.append(f"required input {decl.name!r} is missing")
            continue
        ftype = (spec.object or {}).get("type")
        if decl.type_filter and ftype not in decl.type_filter:
            problems.append(
                f"input {decl.name!r} takes file types {', '.join(decl.type_filter)}; "
                f"{spec.file_name!r} is {ftype or 'untyped'}"
            )
    if problems:
        inputs = ", ".join(
            f"{i.name}{'' if i.required else ' (optional)'}"
            for i in manifest.inputs
            if i.base == "file"
        )
        raise InvalidInputError(
            f"gear {manifest.name}: " + "; ".join(problems),
            f"give --input NAME=PATH/FILE for: {inputs or 'no file inputs'}",
        )


def context_inputs(
    session: Session, manifest: GearManifest, destination: Container
) -> list[InputSpec]:
    """Flywheel context inputs: values from ``info.context`` on the destination's ancestors."""
    wanted = [i for i in manifest.inputs if i.base == "context"]
    if not wanted:
        return []
    chain: list[Container] = []
    node: Container | None = destination
    while node is not None:
        chain.append(node)
        node = session.get(Container, node.parent_id) if node.parent_id else None
    out = []
    for decl in wanted:
        value: Any = None
        for c in chain:  # nearest container wins
            ctx = (c.info or {}).get("context")
            if isinstance(ctx, dict) and decl.name in ctx:
                value = ctx[decl.name]
                break
        out.append(InputSpec(name=decl.name, base="context", value=value))
    return out


def dedupe_key(
    gear: Gear, destination: Container, specs: Sequence[InputSpec], config: Mapping[str, Any]
) -> str:
    payload = {
        "gear": [gear.name, gear.version],
        "dest": destination.id,
        "inputs": sorted(
            (s.name, s.file_id, s.version, s.sha256) for s in specs if s.base == "file"
        ),
        "config": config,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


_TAG_RE = re.compile(r"^[A-Za-z0-9_.:=+\-]{1,64}$")


def check_job_tags(tags: Sequence[str]) -> tuple[str, ...]:
    bad = [t for t in tags if not _TAG_RE.fullmatch(t)]
    if bad:
        raise InvalidInputError(
            f"job tag(s) {', '.join(map(repr, bad))} not allowed",
            "job tags are 1-64 characters of letters, digits and _ . : = + -",
        )
    return tuple(dict.fromkeys(tags))


def prepare_job(
    session: Session,
    actor: str,
    sites: SiteRegistry,
    *,
    gear: Gear,
    destination: Container,
    inputs: Sequence[InputSpec],
    config: Mapping[str, Any] | None = None,
    rule_config: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    priority: str = "medium",
    coerce_strings: bool = False,
) -> PreparedJob:
    """Validate everything about a job without storing it (``--dry-run`` stops here)."""
    from hpcgear.gears.gear_config import resolve_config
    from hpcgear.gears.reserved import RESERVED_KEY_SET, split_reserved
    from hpcgear.gears.service import manifest_of
    from hpcgear.jobs.resources import resolve_resources

    require_role(session, actor, destination, RoleName.READ_WRITE, "running a gear")
    if gear.disabled:
        raise InvalidInputError(
            f"gear {gear.name}@{gear.version} is disabled",
            "pick an enabled version (hpcgear gear list)",
        )
    if priority not in PRIORITIES:
        raise InvalidInputError(
            f"unknown priority {priority!r}", f"priorities: {', '.join(PRIORITIES)}"
        )
    manifest = manifest_of(gear)
    job_tags = check_job_tags(tags)
    specs = [*inputs, *context_inputs(session, manifest, destination)]
    check_inputs(manifest, specs)
    full = resolve_config(manifest, rule_config or {}, config or {}, coerce_strings=coerce_strings)
    check_storable(full, "gear config")  # before --dry-run returns, so both refuse alike
    declared = manifest.config_names
    _gear_config, _overrides = split_reserved(full, declared=declared)
    manifest_layer = {k: v for k, v in manifest.defaults().items() if k in RESERVED_KEY_SET}
    rule_layer = {k: v for k, v in (rule_config or {}).items() if k in RESERVED_KEY_SET}
    job_layer = {k: v for k, v in (config or {}).items() if k in RESERVED_KEY_SET}
    if coerce_strings:
        job_layer = {k: full[k] for k in job_layer}
    choice = sites.choose(job_tags)
    site = choice.site
    require_api_url(manifest, site)
    resolved = resolve_resources(
        site, manifest=manifest_layer, rule=rule_layer, job=job_layer, tags=job_tags
    )
    return PreparedJob(
        gear=gear,
        manifest=manifest,
        destination=destination,
        config=full,
        inputs=tuple(specs),
        site=site,
        resources=resolved,
        tags=job_tags,
        priority=priority,
        dedupe_key=dedupe_key(gear, destination, specs, full),
        notes=(*choice.notes, *resolved.notes),
    )


def require_api_url(manifest: GearManifest, site: SiteConfig) -> None:
    """A gear with an api-key input needs a site whose compute nodes can reach the API."""
    names = [i.name for i in manifest.inputs if i.base == "api-key"]
    if names and not site.api_url:
        raise ConfigError(
            f"gear {manifest.name} declares api-key input(s) {', '.join(map(repr, names))}, "
            f"but site {site.name!r} has no api_url, so its jobs could not reach the hpcgear API",
            "a site admin sets `api_url:` in the site YAML (the address of `hpcgear serve` "
            "that compute nodes reach; for the embedded local site, `api_url` in the config "
            "file), or route the job to a site that has one",
        )


def resources_to_json(resolved: ResolvedResources) -> dict[str, Any]:
    """The job row's resources snapshot (what the controller renders from)."""
    r = resolved.resources
    return {
        "cpus": r.cpus,
        "mem_mb": r.mem_mb,
        "time_minutes": r.time_minutes,
        "gpus": r.gpus,
        "gres": r.gres,
        "nodes": r.nodes,
        "ntasks": r.ntasks,
        "partition": r.partition,
        "qos": r.qos,
        "account": r.account,
        "writable": resolved.writable,
        "debug": resolved.debug,
        "explain": resolved.explain(),
        **({"notes": list(resolved.notes)} if resolved.notes else {}),
    }


def store_job(
    session: Session,
    actor: str,
    prepared: PreparedJob,
    *,
    origin_type: str = "user",
    origin_id: str | None = None,
    previous: Job | None = None,
    reason: str | None = None,
) -> Job:
    job = Job(
        id=new_id(),
        attempt=(previous.attempt + 1) if previous else 1,
        previous_id=previous.id if previous else None,
        gear_id=prepared.gear.id,
        state=JobState.PENDING.value,
        state_seq=0,
        site=prepared.site.name,
        config=prepared.config,
        inputs=[input_spec_to_json(s) for s in prepared.inputs],
        resources=resources_to_json(prepared.resources),
        destination_type=prepared.destination.type,
        destination_id=prepared.destination.id,
        project_id=prepared.destination.project_id,
        tags=list(prepared.tags),
        priority=prepared.priority,
        origin_type=origin_type,
        origin_id=origin_id or actor,
        dedupe_key=prepared.dedupe_key,
    )
    session.add(job)
    session.flush()
    record_event(
        session,
        job,
        "created",
        actor,
        reason or f"{origin_type} {origin_id or actor}",
        new_state=JobState.PENDING.value,
        data={
            "gear": f"{prepared.gear.name}@{prepared.gear.version}",
            "image_digest": prepared.gear.image_digest,
            **({"notes": list(prepared.notes)} if prepared.notes else {}),
        },
    )
    session.flush()
    return job


def run_gear(
    session: Session,
    actor: str,
    sites: SiteRegistry,
    *,
    gear_ref: str,
    dest_path: str,
    inputs: Mapping[str, str],
    config: Mapping[str, Any],
    tags: Sequence[str] = (),
    priority: str = "medium",
    dry_run: bool = False,
) -> PreparedJob:
    """``hpcgear run``: one job on one destination (strings from the CLI are coerced)."""
    from hpcgear.gears.service import get_gear, manifest_of

    gear = get_gear(session, gear_ref)
    destination = resolve_container(session, dest_path, min_depth=2)
    manifest = manifest_of(gear)
    specs = resolve_inputs_by_path(session, actor, manifest, inputs)
    prepared = prepare_job(
        session,
        actor,
        sites,
        gear=gear,
        destination=destination,
        inputs=specs,
        config=config,
        tags=tags,
        priority=priority,
        coerce_strings=True,
    )
    if dry_run:
        return prepared
    job = store_job(session, actor, prepared)
    return _with_job(prepared, job)


def _with_job(p: PreparedJob, job: Job) -> PreparedJob:
    from dataclasses import replace

    return replace(p, job=job)


@dataclass(frozen=True, slots=True)
class BatchResult:
    prepared: tuple[PreparedJob, ...]
    skipped: tuple[tuple[str, str], ...]  # (container path, reason)


def batch_run(
    session: Session,
    actor: str,
    sites: SiteRegistry,
    *,
    gear_ref: str,
    over: str,
    inputs: Mapping[str, str],
    config: Mapping[str, Any],
    tags: Sequence[str] = (),
    priority: str = "medium",
    dry_run: bool = False,
    per_file: bool = False,
    file_type: str | None = None,
    skip_completed: bool = False,
) -> BatchResult:
    """``hpcgear batch``: one job per container matching ``over`` (``*`` per level).

    Each input is a regex matched against the file names on the container
    (then on its ancestors up to the project); a container lacking a required
    input is skipped with the reason. An input value containing ``/`` is a
    fixed ``PATH/FILE`` (e.g. an analysis output) given to every job.
    ``file_type`` keeps only files of that type (``dicom``, ``nifti``...).
    ``per_file`` (the SDK tutorial's loop) makes one job per matching file on
    each container, for the one regex ``--input`` given. ``skip_completed``
    skips (and names) a container, or a file with ``per_file``, where a job of
    the same gear version with the same config (and the same input file)
    already completed.
    """
    import fnmatch

    from hpcgear.gears.service import get_gear, manifest_of

    gear = get_gear(session, gear_ref)
    manifest = manifest_of(gear)
    parts = [p for p in over.strip().strip("/").split("/") if p]
    if len(parts) < 2 or any("*" in p for p in parts[:2]):
        raise InvalidInputError(
            f"--over {over!r} must start with a literal GROUP/PROJECT",
            "e.g. --over 'imaging/study1/*/*' for every session",
        )
    for name in inputs:
        try:
            manifest.input(name)
        except KeyError as exc:
            raise InvalidInputError(str(exc.args[0]), "fix the --input names") from None
    # A value with '/' is a fixed PATH/FILE (analysis outputs included) shared by
    # every job; file names never contain '/', so it cannot be a name regex.
    fixed = resolve_inputs_by_path(
        session, actor, manifest, {n: v for n, v in inputs.items() if "/" in v}
    )
    patterns = {}
    for name, rx in inputs.items():
        if "/" in rx:
            continue
        try:
            patterns[name] = re.compile(rx)
        except re.error as exc:
            raise InvalidInputError(
                f"--input {name}: bad regex {rx!r}: {exc}", "use a Python regular expression"
            ) from None
    if per_file and len(patterns) != 1:
        raise InvalidInputError(
            f"--per-file needs exactly one --input NAME=REGEX, got {len(patterns)}",
            "e.g. --per-file --input dicom='\\.dicom\\.zip$' --type dicom",
        )
    project = resolve_container(session, "/".join(parts[:2]))
    require_role(session, actor, project, RoleName.READ_WRITE, "running a batch")
    require_api_url(manifest, sites.route(check_job_tags(tags)))  # refuse before any container
    level_types = ("subject", "session", "acquisition")
    frontier = [project]
    for depth, pat in enumerate(parts[2:]):
        nxt: list[Container] = []
        for node in frontier:
            children = session.scalars(
                select(Container)
                .where(Container.parent_id == node.id, Container.type == level_types[depth])
                .order_by(Container.label)
            ).all()
            nxt.extend(c for c in children if fnmatch.fnmatchcase(c.label, pat))
        frontier = nxt
    prepared: list[PreparedJob] = []
    skipped: list[tuple[str, str]] = []
    for dest in frontier:
        path = container_path(session, dest)
        try:
            if per_file:
                [(in_name, in_rx)] = patterns.items()
                files = [
                    f
                    for f in session.scalars(
                        select(File).where(File.container_id == dest.id).order_by(File.name)
                    ).all()
                    if in_rx.search(f.name) and (file_type is None or f.type == file_type)
                ]
                if not files:
                    raise InvalidInputError(
                        f"no file matches {in_rx.pattern!r}"
                        + (f" of type {file_type}" if file_type else "")
                        + f" for input {in_name}",
                        "upload the input or adjust the regex/--type",
                    )
                runs = [
                    (
                        f"{path}/{f.name}",
                        [
                            _input_spec(in_name, "file", dest, f, file_version(session, f)),
                            *fixed,
                        ],
                    )
                    for f in files
                ]
            else:
                runs = [
                    (path, [*_match_inputs(session, dest, manifest, patterns, file_type), *fixed])
                ]
        except InvalidInputError as exc:
            skipped.append((path, exc.message))
            continue
        for where, specs in runs:
            try:
                p = prepare_job(
                    session,
                    actor,
                    sites,
                    gear=gear,
                    destination=dest,
                    inputs=specs,
                    config=config,
                    tags=tags,
                    priority=priority,
                    coerce_strings=True,
                )
            except InvalidInputError as exc:
                skipped.append((where, exc.message))
                continue
            if skip_completed:
                done = _completed_job(session, p, per_file)
                if done is not None:
                    skipped.append(
                        (
                            where,
                            f"already completed by job {done} ({gear.name}@{gear.version}, "
                            "same config)",
                        )
                    )
                    continue
            if not dry_run:
                p = _with_job(p, store_job(session, actor, p, reason=f"batch over {over}"))
            prepared.append(p)
    return BatchResult(tuple(prepared), tuple(skipped))


def _completed_job(session: Session, p: PreparedJob, per_file: bool) -> str | None:
    """A completed job of the same gear version, destination and config (and input files)."""
    rows = session.scalars(
        select(Job).where(
            Job.gear_id == p.gear.id,
            Job.destination_id == p.destination.id,
            Job.state == JobState.COMPLETE.value,
        )
    ).all()
    wanted = sorted((s.name, s.file_id) for s in p.inputs if s.base == "file")
    for job in rows:
        if job.config != p.config:
            continue
        if per_file:
            had = sorted(
                (i.get("name"), i.get("file_id")) for i in job.inputs if i.get("base") == "file"
            )
            if had != wanted:
                continue
        return job.id
    return None


def _match_inputs(
    session: Session,
    dest: Container,
    manifest: GearManifest,
    patterns: Mapping[str, re.Pattern[str]],
    file_type: str | None = None,
) -> list[InputSpec]:
    chain: list[Container] = []
    node: Container | None = dest
    while node is not None and node.type != "group":
        chain.append(node)
        node = session.get(Container, node.parent_id) if node.parent_id else None
    specs = []
    for name, rx in patterns.items():
        found = None
        for c in chain:
            files = session.scalars(
                select(File).where(File.container_id == c.id).order_by(File.name)
            ).all()
            matches = [
                f for f in files if rx.search(f.name) and (file_type is None or f.type == file_type)
            ]
            if len(matches) > 1:
                raise InvalidInputError(
                    f"input {name}: {len(matches)} files match {rx.pattern!r} on "
                    f"{c.type} {c.label!r}",
                    "make the regex match one file",
                )
            if matches:
                found = (c, matches[0])
                break
        if found is None:
            raise InvalidInputError(
                f"no file matches {rx.pattern!r} for input {name}",
                "upload the input or adjust the regex",
            )
        c, f = found
        specs.append(_input_spec(name, "file", c, f, file_version(session, f)))
    return specs


# ------------------------------------------------------------------ queries


def get_job(session: Session, actor: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id!r} does not exist", "list jobs with `hpcgear jobs`")
    dest = session.get(Container, job.destination_id)
    user = get_actor(session, actor)
    if dest is not None and not user.site_admin and job.origin_id != actor:
        require_role(session, actor, dest, RoleName.READ_ONLY, "viewing a job")
    return job


def list_jobs(
    session: Session,
    actor: str,
    *,
    state: str | None = None,
    mine: bool = False,
    project: str | None = None,
    limit: int = 200,
) -> list[Job]:
    """The newest ``limit`` jobs the actor may see, filtered in SQL, as models: the
    statement of the login-node listing (:func:`hpcgear.jobs.queries.jobs_page`; ``Job``
    is mapped onto its table) loaded as ``Job`` objects."""
    q = jobs_page(session, actor, state=state, mine=mine, project=project, limit=limit)
    return list(session.scalars(select(Job).from_statement(q)))


def job_events(session: Session, job: Job) -> list[JobEvent]:
    return list(
        session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id))
    )


def cancel_job(session: Session, actor: str, job_id: str, reason: str | None = None) -> Job:
    """Mark a job cancelled; a submitted one is scancelled by the controller."""
    job = get_job(session, actor, job_id)
    dest = session.get(Container, job.destination_id)
    user = get_actor(session, actor)
    if dest is not None and job.origin_id != actor and not user.site_admin:
        require_role(session, actor, dest, RoleName.READ_WRITE, "cancelling a job")
    state = JobState(job.state)
    if state.final:
        raise InvalidInputError(
            f"job {job_id} is already {state.value}",
            "only pending, queued or running jobs can be cancelled",
        )
    from hpcgear.states import FailureKind

    transition(
        session,
        job,
        JobState.CANCELLED,
        actor,
        reason or f"cancelled by {actor}",
        failure_kind=FailureKind.CANCELLED,
        data={"scancel_needed": bool(job.native_id)},
    )
    return job


def retryable_job(session: Session, actor: str, job_id: str) -> Job:
    """The job ``job_id`` if it may be retried: failed or cancelled, and not retried yet."""
    old = get_job(session, actor, job_id)
    state = JobState(old.state)
    if state not in (JobState.FAILED, JobState.CANCELLED):
        raise InvalidInputError(
            f"job {job_id} is {state.value}", "only failed or cancelled jobs can be retried"
        )
    newer = session.scalar(select(Job).where(Job.previous_id == old.id))
    if newer is not None:
        raise InvalidInputError(
            f"job {job_id} was already retried as {newer.id}",
            f"retry the newest attempt: hpcgear job retry {newer.id}",
        )
    return old


def retry_job(
    session: Session,
    actor: str,
    job_id: str,
    *,
    reason: str | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Job:
    """A new attempt (new row, linked) of a failed or cancelled job, same snapshot."""
    old = retryable_job(session, actor, job_id)
    dest = session.get(Container, old.destination_id)
    if dest is not None:
        require_role(session, actor, dest, RoleName.READ_WRITE, "retrying a job")
    return _next_attempt(session, old, actor, reason=reason, resources=resources)


def retry_on_behalf(
    session: Session,
    system_actor: str,
    job_id: str,
    *,
    reason: str,
    resources: Mapping[str, Any] | None = None,
) -> Job:
    """An automatic retry made by the system (the controller) for the job's requester.

    The retry policy of the failure kind decided it, so no user's role is
    checked; the new attempt keeps the original requester as its origin and
    its ``created`` event names both: ``system_actor`` on behalf of the requester.
    """
    old = session.get(Job, job_id)
    if old is None:
        raise NotFoundError(f"job {job_id!r} does not exist", "it was deleted meanwhile")
    if JobState(old.state) not in (JobState.FAILED, JobState.CANCELLED):
        raise InvalidInputError(
            f"job {job_id} is {old.state}", "only failed or cancelled jobs can be retried"
        )
    newer = session.scalar(select(Job).where(Job.previous_id == old.id))
    if newer is not None:
        raise InvalidInputError(
            f"job {job_id} was already retried as {newer.id}", "nothing to do"
        )
    return _next_attempt(
        session,
        old,
        system_actor,
        reason=f"{reason} (by the system on behalf of {old.origin_type} {old.origin_id})",
        resources=resources,
        data={"on_behalf_of": {"type": old.origin_type, "id": old.origin_id}, "system": True},
    )


def _next_attempt(
    session: Session,
    old: Job,
    actor: str,
    *,
    reason: str | None,
    resources: Mapping[str, Any] | None,
    data: dict[str, Any] | None = None,
) -> Job:
    job = Job(
        id=new_id(),
        attempt=old.attempt + 1,
        previous_id=old.id,
        gear_id=old.gear_id,
        state=JobState.PENDING.value,
        state_seq=0,
        site=old.site,
        config=old.config,
        inputs=old.inputs,
        resources={**old.resources, **(resources or {})},
        destination_type=old.destination_type,
        destination_id=old.destination_id,
        project_id=old.project_id,
        tags=old.tags,
        priority=old.priority,
        origin_type=old.origin_type,
        origin_id=old.origin_id,
        dedupe_key=old.dedupe_key,
    )
    session.add(job)
    session.flush()
    record_event(
        session,
        job,
        "created",
        actor,
        reason or f"retry of {old.id}",
        new_state=JobState.PENDING.value,
        data={"previous": old.id, **(data or {})},
    )
    session.flush()
    return job


def job_to_dict(session: Session, job: Job, *, events: bool = False) -> dict[str, Any]:
    out = jobs_to_dicts(session, [job])[0]
    if events:
        out["events"] = [event_dict(e) for e in job_events(session, job)]
    return out


def jobs_to_dicts(session: Session, jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """``job_to_dict`` for many jobs: gears, destinations and their paths in 3 queries.

    The login-node commands use the Core twin :func:`hpcgear.jobs.queries.job_dicts`;
    both build each dict with :func:`hpcgear.jobs.queries.job_dict`.
    """
    gear_ids = {j.gear_id for j in jobs}
    gears = {
        g.id: f"{g.name}@{g.version}"
        for g in (session.scalars(select(Gear).where(Gear.id.in_(gear_ids))) if gear_ids else [])
    }
    paths = container_paths(session, {j.destination_id for j in jobs})
    return [job_dict(job, gears, paths) for job in jobs]


def container_paths(session: Session, ids: set[str]) -> dict[str, str]:
    """Human paths of many containers: the containers, then all their ancestors, at once."""
    if not ids:
        return {}
    return paths_of(
        ids, lambda wanted: list(session.scalars(select(Container).where(Container.id.in_(wanted))))
    )


# ------------------------------------------------------- by id (the HTTP API)


def run_gear_by_ids(
    session: Session,
    actor: str,
    sites: SiteRegistry,
    *,
    gear: Gear,
    destination: Container,
    inputs: Mapping[str, tuple[str, str]],
    config: Mapping[str, Any],
    tags: Sequence[str] = (),
    priority: str = "medium",
    analysis_label: str | None = None,
) -> tuple[Job, Container | None]:
    """A job from container/file ids (``POST /jobs/add``, ``POST /{type}s/{id}/analyses``).

    ``inputs`` maps an input name to (container id, file name); each is read-checked.
    For analysis gears an analysis container labelled ``analysis_label`` is made now
    (linked by job id; stage-out publishes into it), so its id can be returned at once.
    """
    from hpcgear.gears.service import manifest_of

    manifest = manifest_of(gear)
    problems: list[str] = []
    specs: list[InputSpec] = []
    for name, (container_id, file_name) in inputs.items():
        try:
            decl = manifest.input(name)
        except KeyError:
            problems.append(f"gear {gear.name} has no input {name!r}")
            continue
        if decl.base != "file":
            problems.append(f"input {name!r} is a {decl.base} input, not a file")
            continue
        container = session.get(Container, container_id)
        if container is None:
            problems.append(f"input {name}: container {container_id!r} does not exist")
            continue
        require_role(session, actor, container, RoleName.READ_ONLY, "reading an input")
        f = session.scalar(
            select(File).where(File.container_id == container.id, File.name == file_name)
        )
        if f is None:
            problems.append(f"input {name}: no file {file_name!r} on {container.label!r}")
            continue
        specs.append(_input_spec(name, "file", container, f, file_version(session, f)))
    if problems:
        raise InvalidInputError("; ".join(problems), "fix the job's inputs")
    prepared = prepare_job(
        session,
        actor,
        sites,
        gear=gear,
        destination=destination,
        inputs=specs,
        config=config,
        tags=tags,
        priority=priority,
    )
    job = store_job(session, actor, prepared)
    analysis: Container | None = None
    if gear.category == "analysis":
        from hpcgear.hierarchy.service import create_child

        analysis = create_child(
            session, destination, "analysis", analysis_label or f"{gear.name} {job.id}", actor
        )
        analysis.job_id = job.id
        session.flush()
    return job, analysis
