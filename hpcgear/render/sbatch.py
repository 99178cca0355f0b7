"""Render sbatch scripts for one job attempt or a job array.

The script contract (see ARCHITECTURE.md, "Inside the job"): bash and the
container runtime only; ``umask 077``; the container argv is a bash array
built here in Python, every element shell-quoted; the runtime runs in the
background while the script ``wait`` s, so a TERM from SLURM
(``--signal=B:TERM@grace``) is forwarded to it; a container that never wrote
its start marker is retried ``runtime.boot_retries`` times; ``exit.json`` is
written atomically with rc, signal, times, host, runtime version and boot
attempts; an EXIT trap only ever writes ``"complete": false``.

``#SBATCH`` values cannot be shell-quoted (sbatch parses them itself), so each
option is validated against a safe character set instead
(:func:`hpcgear.render.environment.check_sbatch_line`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpcgear.config.site import SiteConfig
from hpcgear.errors import ConfigError, InvalidInputError
from hpcgear.render.environment import check_sbatch_line, template_environment
from hpcgear.render.paths import ArrayPaths, JobPaths, TaskFile, check_job_id
from hpcgear.runtimes import (
    CONTAINER_FLYWHEEL,
    ContainerInvocation,
    ContainerMount,
    runtime_for,
)
from hpcgear.spec import JobSpec, Resources
from hpcgear.units import format_memory, format_slurm_time, gpus_in_gres

logger = logging.getLogger(__name__)

JOB_TEMPLATE = "job.sbatch.j2"
ARRAY_TEMPLATE = "array.sbatch.j2"
# Stand-in job directory used to find where the job directory appears in the argv,
# so the script can write those places as "$JOB_DIR" (one array script, many dirs).
_JOB_DIR_SENTINEL = "/@hpcgear-job-dir@"
#: The line an array template must render when its tasks create their own job
#: directories from ``tasks.dat`` (the shipped ``array.sbatch.j2`` does); a site
#: override without it predates that contract and is refused.
TASKS_DAT_CONTRACT = "# hpcgear-contract: tasks.dat v1"


@dataclass(frozen=True, slots=True)
class RenderedScript:
    """A rendered script and its content hash (``sha256:<hex>``)."""

    text: str
    sha256: str

    @classmethod
    def from_text(cls, text: str) -> RenderedScript:
        return cls(text, "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest())


@dataclass(frozen=True, slots=True)
class ArgvPart:
    """Part of one argv word in a script: the job directory, or literal text."""

    job_dir: bool
    text: str = ""


def build_invocation(spec: JobSpec, site: SiteConfig, paths: JobPaths) -> ContainerInvocation:
    """The container invocation for ``spec`` in job directory ``paths``."""
    fw = CONTAINER_FLYWHEEL
    mounts = (
        ContainerMount(paths.input_dir, f"{fw}/input", read_only=True),
        ContainerMount(paths.output_dir, f"{fw}/output"),
        ContainerMount(paths.work_dir, f"{fw}/work"),
        ContainerMount(paths.config_json, f"{fw}/config.json", read_only=True),
        ContainerMount(paths.tmp_dir, "/tmp"),  # noqa: S108 - the container's /tmp
    )
    r = spec.resources
    writable = site.runtime.writable_tmpfs if spec.writable_tmpfs is None else spec.writable_tmpfs
    return ContainerInvocation(
        image=spec.gear.sif_path,
        command=spec.gear.command,
        env_file=paths.env_file,
        workdir=paths.apptainer_dir,
        home=paths.home_dir,
        marker_dir=paths.boot_dir,
        mounts=mounts,
        gpus=max(r.gpus, gpus_in_gres(r.gres)),
        writable_tmpfs=writable,
        debug=spec.runtime_debug,
    )


def build_runtime_argv(spec: JobSpec, site: SiteConfig, paths: JobPaths) -> list[str]:
    """The exact argv the job script runs for ``spec`` (also what ``--dry-run`` shows)."""
    return runtime_for(site.runtime).build_argv(build_invocation(spec, site, paths))


def runtime_argv_template(spec: JobSpec, site: SiteConfig) -> list[list[str]]:
    """The runtime argv with every word split where the job directory goes.

    ``argv_from_template(template, paths.root)`` gives ``build_runtime_argv(spec,
    site, paths)`` for any job directory: array tasks differ only there, so one
    template (recorded with task 0) stands for every task's argv.
    """
    for value in (spec.gear.sif_path, spec.gear.command or "", *site.runtime.extra_flags):
        if _JOB_DIR_SENTINEL in value:
            raise InvalidInputError(f"{value[:60]!r} contains {_JOB_DIR_SENTINEL!r}",
                                    "that text is reserved by hpcgear's renderer")
    argv = build_runtime_argv(spec, site, JobPaths(_JOB_DIR_SENTINEL))
    return [arg.split(_JOB_DIR_SENTINEL) for arg in argv]


def argv_from_template(template: Sequence[Sequence[str]], job_dir: str) -> list[str]:
    """The argv a :func:`runtime_argv_template` stands for in job directory ``job_dir``."""
    return [job_dir.join(parts) for parts in template]


def _argv_words(spec: JobSpec, site: SiteConfig, paths: JobPaths) -> list[list[ArgvPart]]:
    """The runtime argv as script words, the job directory written as ``"$JOB_DIR"``."""
    for value in (spec.gear.sif_path, spec.gear.command or "", *site.runtime.extra_flags):
        if _JOB_DIR_SENTINEL in value:
            raise InvalidInputError(f"{value[:60]!r} contains {_JOB_DIR_SENTINEL!r}",
                                    "that text is reserved by hpcgear's renderer")
    template_argv = build_runtime_argv(spec, site, JobPaths(_JOB_DIR_SENTINEL))
    words: list[list[ArgvPart]] = []
    for arg in template_argv:
        parts: list[ArgvPart] = []
        for i, piece in enumerate(arg.split(_JOB_DIR_SENTINEL)):
            if i:
                parts.append(ArgvPart(job_dir=True))
            if piece:
                parts.append(ArgvPart(job_dir=False, text=piece))
        words.append(parts or [ArgvPart(job_dir=False, text="")])
    # The words, with the real job directory put back, must be the real argv.
    real = build_runtime_argv(spec, site, paths)
    rebuilt = ["".join(paths.root if p.job_dir else p.text for p in w) for w in words]
    if rebuilt != real:  # pragma: no cover - guards the sentinel substitution itself
        raise AssertionError("runtime argv does not depend on the job directory only")
    return words


def _signal_grace(site: SiteConfig, resources: Resources) -> int:
    # Never ask for the warning earlier than half-way through the job.
    return min(site.runtime.term_grace_seconds, resources.time_minutes * 30)


def sbatch_options(
    *,
    name: str,
    comment: str,
    output: str,
    chdir: str,
    resources: Resources,
    site: SiteConfig,
    array: str | None = None,
) -> list[str]:
    """The ``#SBATCH`` options, in order, each validated for an #SBATCH line."""
    r = resources
    opts = [f"--job-name={name}", f"--comment={comment}"]
    if array is not None:
        opts.append(f"--array={array}")
    opts += [f"--output={output}", "--open-mode=append", f"--chdir={chdir}",
             "--export=NONE", "--no-requeue"]
    grace = _signal_grace(site, r)
    if grace > 0:
        opts.append(f"--signal=B:TERM@{grace}")
    if r.partition:
        opts.append(f"--partition={r.partition}")
    if r.qos:
        opts.append(f"--qos={r.qos}")
    if r.account:
        opts.append(f"--account={r.account}")
    opts += [
        f"--time={format_slurm_time(r.time_minutes)}",
        f"--nodes={r.nodes}",
        f"--ntasks={r.ntasks}",
        f"--cpus-per-task={r.cpus}",
        f"--mem={format_memory(r.mem_mb)}",
    ]
    gres = r.gres or (f"gpu:{r.gpus}" if r.gpus > 0 else None)
    if gres:
        opts.append(f"--gres={gres}")
    opts += site.extra_sbatch_options
    for opt in opts:
        check_sbatch_line(opt)
    return opts


def _task_context(spec: JobSpec, paths: JobPaths) -> dict[str, Any]:
    inputs = [
        "input/" + JobPaths.input_relpath(i.name, i.file_name)
        for i in spec.inputs
        if i.base == "file" and i.file_name is not None
    ]
    return {
        "job_dir": paths.root,
        "job_id": check_job_id(spec.job_id),
        "attempt": spec.attempt,
        "tags": list(spec.tags),
        "input_files": inputs,
        "destination": f"{spec.destination_type}/{spec.destination_id}",
    }


def _shared_context(spec: JobSpec, site: SiteConfig, paths: JobPaths) -> dict[str, Any]:
    runtime = runtime_for(site.runtime)
    return {
        "site_name": site.name,
        "gear": f"{spec.gear.name}@{spec.gear.version}",
        "user": spec.user,
        "boot_retries": site.runtime.boot_retries,
        "boot_retry_delay": site.runtime.boot_retry_delay_seconds,
        "time_limit_s": spec.resources.time_minutes * 60,
        "term_grace_s": _signal_grace(site, spec.resources),
        "runtime_version_argv": runtime.version_argv(),
        "runtime_words": _argv_words(spec, site, paths),
    }


def _check_site(spec: JobSpec, site: SiteConfig) -> None:
    if spec.site != site.name:
        raise InvalidInputError(
            f"job {spec.job_id} is for site {spec.site!r}, not {site.name!r}",
            "render with the job's own site config",
        )


def compile_templates(site: SiteConfig) -> list[str]:
    """Load and compile every ``*.j2`` template ``site`` renders with (its override
    directory first, then the shipped ones), so the first job or array of a batch
    does not pay for it; the names of those that failed (their error is raised
    again, with its hint, when a job is rendered with them)."""
    env = template_environment(site.template_dir)
    failed: list[str] = []
    for name in env.list_templates(filter_func=lambda n: n.endswith(".j2")):
        try:
            env.get_template(name)
        except Exception:  # lint or syntax: reported where it is rendered
            failed.append(name)
    return failed


def render_sbatch(spec: JobSpec, site: SiteConfig, paths: JobPaths) -> RenderedScript:
    """Render the sbatch script for one job attempt.

    Raises
    ------
    InvalidInputError
        If a value cannot be placed safely (a NUL byte, an #SBATCH value outside the
        safe set, a bad job id or input name) or the spec is for another site.
    ConfigError
        If a site template override prints a value without a vetted filter.
    """
    _check_site(spec, site)
    context = {
        "sbatch_options": sbatch_options(
            name=spec.slurm_name, comment=spec.slurm_comment, output=paths.log_pattern,
            chdir=paths.root, resources=spec.resources, site=site,
        ),
        **_task_context(spec, paths),
        **_shared_context(spec, site, paths),
    }
    text = template_environment(site.template_dir).get_template(JOB_TEMPLATE).render(context)
    logger.debug("job %s attempt %s: rendered %d bytes", spec.job_id, spec.attempt, len(text))
    return RenderedScript.from_text(text)


def array_slurm_name(array_id: str) -> str:
    """SLURM job name of an array (distinct from single jobs' ``hpcgear-<job-id>``)."""
    return f"hpcgear-array-{check_job_id(array_id, 'array id')}"


def array_slurm_comment(array_id: str, size: int) -> str:
    return f"hpcgear-array:{check_job_id(array_id, 'array id')}:{size}"


def render_array(
    specs: Sequence[JobSpec],
    site: SiteConfig,
    *,
    array_id: str,
    paths: Sequence[JobPaths] | None = None,
    array_paths: ArrayPaths | None = None,
    max_array_size: int | None = None,
    throttle: int | None = None,
    task_files: Sequence[Sequence[TaskFile]] | None = None,
) -> RenderedScript:
    """Render one array script running ``specs`` as tasks ``0..n-1``.

    Task ``i`` runs ``specs[i]`` in ``paths[i]`` (default: each spec's own job
    directory), selected by ``$SLURM_ARRAY_TASK_ID`` from quoted bash arrays. All
    specs must share site, user, gear and resources (one sbatch request).

    Parameters
    ----------
    max_array_size
        The live MaxArraySize; falls back to ``site.array.max_size``.
    throttle
        Most tasks running at once; falls back to ``site.array.throttle``.
    task_files
        Per task, the files it writes into its job directory from the array's
        ``tasks.dat`` when it starts (``hpcgear.staging.stagein.stage_array``).
        Without it every task's job directory must already be staged.

    Raises
    ------
    ConfigError
        ``task_files`` is given but the site's ``array.sbatch.j2`` override does
        not render :data:`TASKS_DAT_CONTRACT` (it predates per-array stage-in).
    """
    if not specs:
        raise InvalidInputError("an array needs at least one job", "submit single jobs instead")
    first = specs[0]
    for spec in specs:
        _check_site(spec, site)
        for attr in ("user", "gear", "resources", "writable_tmpfs", "runtime_debug"):
            if getattr(spec, attr) != getattr(first, attr):
                raise InvalidInputError(
                    f"job {spec.job_id} differs from job {first.job_id} in {attr}; "
                    "array tasks must share it",
                    "group jobs by gear, user and resources before building arrays",
                )
    ids = [s.job_id for s in specs]
    if len(set(ids)) != len(ids):
        raise InvalidInputError("an array lists the same job twice", "deduplicate the batch")
    limit = max_array_size if max_array_size is not None else site.array.max_size
    if limit is not None and len(specs) > limit:
        raise InvalidInputError(
            f"{len(specs)} jobs exceed the array size limit {limit} on site {site.name}",
            f"split the batch into arrays of at most {limit} jobs",
        )
    job_paths = list(paths) if paths is not None else [JobPaths.for_spec(s, site) for s in specs]
    if len(job_paths) != len(specs):
        raise InvalidInputError("render_array needs one JobPaths per job")
    apaths = array_paths or ArrayPaths.for_array(site.render_scratch_root(first.user), array_id)
    throttle = throttle if throttle is not None else site.array.throttle
    array_spec = f"0-{len(specs) - 1}" + (f"%{throttle}" if throttle else "")
    # One argv for all tasks: it may only differ in the job directory.
    # One argv for all tasks, differing only in the job directory: the invocation is
    # built from the gear, resources, writable_tmpfs and runtime_debug (checked equal
    # above) and the site, so it is built once (_shared_context), not once per task.
    if task_files is not None and len(task_files) != len(specs):
        raise InvalidInputError("render_array needs one list of task files per job")
    tasks = [_task_context(s, jp) for s, jp in zip(specs, job_paths, strict=True)]
    if task_files is not None:
        for task, files in zip(tasks, task_files, strict=True):
            task["files"] = files  # TaskFile rows: f.relpath ... or | q_rows
    # Each task's own variables, for ONE | q_case (not a template loop per task).
    task_vars = [
        {
            "HPCGEAR_DESTINATION": t["destination"],
            "HPCGEAR_TAGS": t["tags"],
            "INPUT_FILES": t["input_files"],
            **({"TASK_FILES": t["files"]} if task_files is not None else {}),
        }
        for t in tasks
    ]

    context = {
        "sbatch_options": sbatch_options(
            name=array_slurm_name(array_id), comment=array_slurm_comment(array_id, len(specs)),
            output=apaths.log_pattern, chdir=apaths.root, resources=first.resources, site=site,
            array=array_spec,
        ),
        "array_id": array_id,
        "task_count": len(specs),
        "tasks": tasks,
        "task_vars": task_vars,
        # The per-task columns, for | q_lines (one filter call, not a loop per task).
        "job_dirs": [t["job_dir"] for t in tasks],
        "job_ids": [t["job_id"] for t in tasks],
        "attempts": [t["attempt"] for t in tasks],
        "tasks_dat": apaths.tasks_dat if task_files is not None else None,
        "array_script": apaths.sbatch,
        "task_dirs": [job_paths[0].relpath(d) for d in job_paths[0].directories()[1:]],
        **_shared_context(first, site, job_paths[0]),
    }
    text = template_environment(site.template_dir).get_template(ARRAY_TEMPLATE).render(context)
    if task_files is not None and TASKS_DAT_CONTRACT not in text.splitlines():
        raise ConfigError(
            f"site {site.name}: the array template {ARRAY_TEMPLATE} in "
            f"{site.template_dir} predates per-array stage-in (it does not render "
            f"{TASKS_DAT_CONTRACT!r}, so its tasks would find no job directory)",
            "copy the shipped sbatch_templates/array.sbatch.j2 into the site's template_dir "
            "and re-apply the site's changes to it (or remove the override)",
        )
    logger.debug("array %s: %d tasks, rendered %d bytes", array_id, len(specs), len(text))
    return RenderedScript.from_text(text)
