"""Recreate a job's attempt in a fresh scratch directory to debug it by hand.

``hpcgear job debug ID`` stages the same inputs (the pinned file versions,
copied from storage and verified), the same ``config.json``, the same gear
environment file and the same image (by digest, from the site's image cache,
or ``--image SIF``) into ``<scratch>/hpcgear-debug/<job-id>-<stamp>/``, and
returns the exact Apptainer argv the job ran (or a shell in the same
container setup). It runs on the job's site: locally, or through the site's
SSH transport, in which case :attr:`DebugPlan.ssh_argv` runs it on the login
node. The job's own directory and rows are never touched.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import shlex
from dataclasses import dataclass, replace

from sqlalchemy.orm import Session

from hpcgear.config.settings import Settings
from hpcgear.db.models import Gear, Job
from hpcgear.errors import ImageError, InvalidInputError
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.render import JobPaths
from hpcgear.render.sbatch import build_runtime_argv
from hpcgear.runtimes.envfile import render_gear_env
from hpcgear.staging.stagein import stage_in
from hpcgear.storage.objects import ObjectStore

from .resolve import config_json_for, resolve_spec
from .sites import connect_site
from .stagein import bids_view_files

__all__ = ["DebugPlan", "prepare_debug"]


@dataclass(frozen=True, slots=True)
class DebugPlan:
    job_id: str
    site: str
    job_dir: str
    image: str
    argv: tuple[str, ...]  # the container command, run in job_dir
    remote: bool
    ssh_argv: tuple[str, ...] | None  # runs ``argv`` on the login node (SSH sites)

    @property
    def shell_line(self) -> str:
        return f"cd {shlex.quote(self.job_dir)} && {shlex.join(self.argv)}"


def _shell_argv(argv: list[str], image: str) -> list[str]:
    """The same container setup with an interactive shell instead of the gear."""
    cut = argv.index(image)
    head = argv[:cut]
    head[head.index("exec")] = "shell"
    return [*head, image]


def prepare_debug(
    session: Session,
    store: ObjectStore,
    settings: Settings,
    job: Job,
    *,
    image: str | None = None,
    shell: bool = False,
    now: dt.datetime | None = None,
) -> DebugPlan:
    """Stage a copy of ``job``'s attempt and return how to run it."""
    if job.state not in ("failed", "cancelled", "complete"):
        raise InvalidInputError(
            f"job {job.id} is {job.state}",
            "debug an ended job (failed, cancelled or complete); watch a live one with "
            "`hpcgear job logs -f`",
        )
    gear = session.get(Gear, job.gear_id)
    assert gear is not None
    site = SiteRegistry.from_settings(settings).get(job.site)
    rt = connect_site(site, settings)
    try:
        if image is None:
            if not gear.image_digest:
                raise ImageError(f"gear {gear.name}@{gear.version} has no built image",
                                 "pass --image SIF")
            sif = rt.ensure_image(store, gear.image_digest)
        else:
            sif = image
        spec = resolve_spec(session, job, site, sif)
        owner = job.origin_id if job.origin_type == "user" else "hpcgear"
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S")
        root = posixpath.join(site.render_scratch_root(owner), "hpcgear-debug",
                              f"{job.id}-a{job.attempt}-{stamp}")
        paths = JobPaths(root)
        argv = build_runtime_argv(spec, site, paths)
        if shell:
            argv = _shell_argv(argv, sif)
        script = "#!/bin/bash\n# hpcgear job debug: the container command of job " \
            f"{job.id} attempt {job.attempt}\ncd {shlex.quote(root)} || exit 1\n" \
            f"exec {shlex.join(argv)}\n"
        tree = bids_view_files(session, job, spec) if spec.bids_view is not None else []
        stage_in(rt.transport, store, replace(spec), paths,
                 config_json=config_json_for(session, job, spec),
                 gear_env=render_gear_env(spec), script_text=script, tree=tree,
                 tree_dir=spec.bids_view.dir if spec.bids_view is not None else None)
        ssh_argv: tuple[str, ...] | None = None
        if site.transport.kind == "ssh":
            t = site.transport
            target = f"{t.user}@{t.host}" if t.user else str(t.host)
            ssh = ["ssh", "-t", "-p", str(t.port)]
            if t.key_file:
                ssh += ["-i", t.key_file]
            if t.known_hosts:
                ssh += ["-o", f"UserKnownHostsFile={t.known_hosts}"]
            line = f"cd {shlex.quote(root)} && {shlex.join(argv)}"
            ssh_argv = (*ssh, target, line)
        return DebugPlan(job_id=job.id, site=site.name, job_dir=root, image=sif,
                         argv=tuple(argv), remote=not rt.local_files, ssh_argv=ssh_argv)
    finally:
        rt.close()
