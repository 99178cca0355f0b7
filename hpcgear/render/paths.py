"""The job directory layout on scratch (the contract between stage-in, the script
and stage-out)::

    <scratch>/hpcgear/<job-id>/a<attempt>/
        flywheel/v0/input/<input-name>/<file>    read-only in the container
        flywheel/v0/output/                      the gear's outputs
        flywheel/v0/work/
        flywheel/v0/config.json                  read-only in the container
        .hpcgear/job.sbatch                      the rendered script (single jobs)
        .hpcgear/job.sbatch.ref                  array tasks: which array script ran it
        .hpcgear/gear.env                        the gear's environment (0600)
        .hpcgear/exit.json                       written atomically by the script
        .hpcgear/slurm-<slurm-id>.out            the job log
        .hpcgear/tmp/   -> /tmp in the container
        .hpcgear/home/  -> $HOME in the container
        .hpcgear/boot/  -> /.hpcgear in the container (start marker ``started``)
        .apptainer/                              the runtime's --workdir

Arrays keep their script, SLURM's own log and ``tasks.dat`` under
``<scratch>/hpcgear/arrays/<array-id>/``. ``tasks.dat`` holds every file of every
task's job directory (config.json, gear.env, inputs; identical contents once) and
the array script lists, per task, where each lies in it (offset, length, sha256):
each task creates its own job directory from it when it starts, and logs there.
Paths are POSIX strings: they are paths on the cluster, not on this host.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass

from hpcgear.config.site import SiteConfig
from hpcgear.errors import InvalidInputError
from hpcgear.spec import JobSpec

#: Paths inside every job directory, relative to its root.
REL_INPUT_DIR = "flywheel/v0/input"
REL_CONFIG_JSON = "flywheel/v0/config.json"
REL_ENV_FILE = ".hpcgear/gear.env"

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
MAX_NAME_BYTES = 255


def check_job_id(job_id: str, what: str = "job id") -> str:
    """``job_id`` if it is safe in paths, SLURM names and #SBATCH lines."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise InvalidInputError(
            f"{what} {job_id!r} cannot be used in a job directory or SLURM job name",
            "ids are letters, digits, '_', '.' and '-', starting with a letter or digit",
        )
    return job_id


def check_path_component(name: str, what: str) -> str:
    """``name`` if it is one path component (any bytes but '/' and NUL; not . or ..)."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name
            or len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES):
        raise InvalidInputError(
            f"{what} {name!r} cannot be used as a file name",
            "names must be non-empty, not '.' or '..', without '/' or NUL, at most 255 bytes",
        )
    return name


@dataclass(frozen=True, slots=True)
class JobPaths:
    """Paths of one attempt's job directory (see the module docstring)."""

    root: str

    @classmethod
    def for_job(cls, scratch_root: str, job_id: str, attempt: int) -> JobPaths:
        if not scratch_root.startswith("/"):
            raise InvalidInputError(f"scratch root {scratch_root!r} is not absolute",
                                    "fix scratch_root in the site config")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise InvalidInputError(f"attempt {attempt!r} must be a whole number >= 1")
        check_job_id(job_id)
        # posixpath.join without its checks: the id is one checked path component.
        return cls(f"{scratch_root.rstrip('/')}/hpcgear/{job_id}/a{attempt}")

    @classmethod
    def for_spec(cls, spec: JobSpec, site: SiteConfig) -> JobPaths:
        return cls.for_job(site.render_scratch_root(spec.user), spec.job_id, spec.attempt)

    def _join(self, *parts: str) -> str:
        # The root never ends in "/" (it ends in a<attempt>) and the parts are this
        # class's own constant names: posixpath.join's checks would find nothing.
        return "/".join((self.root, *parts))

    @property
    def flywheel(self) -> str:
        return self._join("flywheel", "v0")

    @property
    def input_dir(self) -> str:
        return self._join(REL_INPUT_DIR)

    @property
    def output_dir(self) -> str:
        return self._join("flywheel", "v0", "output")

    @property
    def work_dir(self) -> str:
        return self._join("flywheel", "v0", "work")

    @property
    def config_json(self) -> str:
        return self._join(REL_CONFIG_JSON)

    @property
    def meta_dir(self) -> str:
        return self._join(".hpcgear")

    @property
    def sbatch(self) -> str:
        return self._join(".hpcgear", "job.sbatch")

    @property
    def sbatch_ref(self) -> str:
        """An array task's pointer to the array script (instead of ``job.sbatch``)."""
        return self._join(".hpcgear", "job.sbatch.ref")

    @property
    def env_file(self) -> str:
        return self._join(REL_ENV_FILE)

    @property
    def exit_json(self) -> str:
        return self._join(".hpcgear", "exit.json")

    @property
    def log_pattern(self) -> str:
        """The ``--output`` pattern; SLURM replaces ``%j`` with its job id."""
        return self._join(".hpcgear", "slurm-%j.out")

    def log_file(self, native_id: str) -> str:
        """The log of SLURM job ``native_id`` (``local`` for the local backend)."""
        return self._join(".hpcgear", f"slurm-{check_job_id(native_id, 'SLURM job id')}.out")

    @property
    def tmp_dir(self) -> str:
        return self._join(".hpcgear", "tmp")

    @property
    def home_dir(self) -> str:
        return self._join(".hpcgear", "home")

    @property
    def boot_dir(self) -> str:
        return self._join(".hpcgear", "boot")

    @property
    def started_marker(self) -> str:
        return self._join(".hpcgear", "boot", "started")

    @property
    def apptainer_dir(self) -> str:
        return self._join(".apptainer")

    def input_file(self, input_name: str, file_name: str) -> str:
        """Host path of an input file (both names checked as single components)."""
        return self._join(self.input_file_relpath(input_name, file_name))

    @classmethod
    def input_file_relpath(cls, input_name: str, file_name: str) -> str:
        """An input file's path below the job directory (names checked)."""
        return f"{REL_INPUT_DIR}/{cls.input_relpath(input_name, file_name)}"

    @staticmethod
    def input_relpath(input_name: str, file_name: str) -> str:
        """``<input-name>/<file>`` below ``flywheel/v0/input``."""
        check_path_component(input_name, "input name")
        check_path_component(file_name, "input file name")
        return f"{input_name}/{file_name}"

    def relpath(self, path: str) -> str:
        """``path`` (inside the job directory) relative to its root."""
        if path == self.root or not path.startswith(self.root + "/"):
            raise InvalidInputError(f"{path!r} is not inside job directory {self.root!r}")
        return path[len(self.root) + 1 :]

    def directories(self) -> tuple[str, ...]:
        """Every directory stage-in creates (mode 0700), parents first."""
        return (
            self.root, self.flywheel, self.input_dir, self.output_dir, self.work_dir,
            self.meta_dir, self.tmp_dir, self.home_dir, self.boot_dir, self.apptainer_dir,
        )


@dataclass(frozen=True, slots=True)
class ArrayPaths:
    """Where an array's script and SLURM's own per-task logs live."""

    root: str

    @classmethod
    def for_array(cls, scratch_root: str, array_id: str) -> ArrayPaths:
        if not scratch_root.startswith("/"):
            raise InvalidInputError(f"scratch root {scratch_root!r} is not absolute",
                                    "fix scratch_root in the site config")
        check_job_id(array_id, "array id")
        return cls(posixpath.join(scratch_root, "hpcgear", "arrays", array_id))

    @property
    def sbatch(self) -> str:
        return posixpath.join(self.root, "array.sbatch")

    @property
    def tasks_dat(self) -> str:
        """Every task's job-directory files, concatenated (see the module docstring)."""
        return posixpath.join(self.root, "tasks.dat")

    @property
    def log_pattern(self) -> str:
        """``--output`` for the array: ``%A`` array id, ``%a`` task index."""
        return posixpath.join(self.root, "slurm-%A_%a.out")


@dataclass(frozen=True, slots=True)
class TaskFile:
    """One file an array task writes into its job directory from ``tasks.dat``.

    ``relpath`` is below the job directory; the bytes are ``length`` bytes at
    ``offset`` in ``tasks.dat`` whose sha256 is ``sha256`` (bare hex), checked by
    the task before the file is put in place.
    """

    relpath: str
    offset: int
    length: int
    sha256: str

    def __iter__(self) -> Iterator[str | int]:
        """The four fields in order: a row of the script's ``TASK_FILES``."""
        return iter((self.relpath, self.offset, self.length, self.sha256))
