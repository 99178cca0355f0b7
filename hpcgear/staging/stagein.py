"""Stage-in: build one attempt's job directory on scratch.

``stage_in`` creates every directory of :class:`~hpcgear.render.paths.JobPaths`
(mode 0700: job directories are not world-readable), copies each file input
from permanent storage to ``flywheel/v0/input/<input>/<file>``, and writes
``config.json``, ``.hpcgear/gear.env`` (0600) and ``.hpcgear/job.sbatch``. A gear
that asks for a BIDS view gets a tree of files (planned on the database side,
written here) below ``flywheel/v0/work/bids`` or where its manifest says.

Copies are verified end to end. Locally, :meth:`ObjectStore.copy_to` hashes
the bytes while copying and renames into place. Through SSH the object is
first copied to a verified local temporary file, sent by SFTP (temp name +
rename on the far side) and then hashed *there* with ``sha256sum``; a
mismatch is an error. Files are written fresh, never with the stored mtime,
so a scratch purge clock starts when the job is staged.

Idempotent: rerunning over a half-staged directory finishes it. Inputs that
are already present with the right hash are kept; anything else in an input
directory (a leftover temp file, a stale file) is removed, because gears
often take "the one file in ``input/<name>/``". The run-state directories
(``output``, ``work``, ``.hpcgear/{tmp,home,boot}``, ``.apptainer``) and a
stale ``exit.json`` are emptied, as the gear spec says the output folder is
emptied at launch. **Never call it for an attempt that may already have been
submitted** (reconcile by name first): it resets the run state.

Every failure raises :class:`~hpcgear.errors.StagingError` (the controller
records failure kind ``input_staging``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hpcgear.errors import HpcgearError, StagingError
from hpcgear.render.paths import REL_CONFIG_JSON, REL_ENV_FILE, JobPaths, TaskFile
from hpcgear.scheduler.transport import Transport
from hpcgear.spec import InputSpec, JobSpec, TreeFile, safe_relpath
from hpcgear.staging.checksums import is_local, remote_sha256, sha256_local
from hpcgear.storage.objects import ObjectStore
from hpcgear.text import dump_sections_json

logger = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
SCRIPT_MODE = 0o700


@dataclass(frozen=True, slots=True)
class StagedFile:
    """One input file as it lies in the job directory."""

    input_name: str
    file_name: str
    path: str  # on the scheduler's side
    sha256: str
    size: int
    copied: bool  # False when a previous run had already staged it


@dataclass(frozen=True, slots=True)
class StageInResult:
    paths: JobPaths
    inputs: tuple[StagedFile, ...]
    config_sha256: str
    env_sha256: str
    script_sha256: str  # same form as RenderedScript.sha256
    tree_dir: str | None = None  # where a staged tree (a BIDS view) went
    tree_files: int = 0

    @property
    def bytes_copied(self) -> int:
        return sum(f.size for f in self.inputs if f.copied)


def _text_sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_inputs(spec: JobSpec) -> list[InputSpec]:
    out: list[InputSpec] = []
    for item in spec.inputs:
        if item.base != "file":
            continue
        if not item.file_name or not item.sha256:
            raise StagingError(
                f"job {spec.job_id}: file input {item.name!r} has no file name or content hash",
                "the job's input snapshot is incomplete; retry the job from the hierarchy",
            )
        out.append(item)
    return out


def _wrap(job_id: str, what: str, exc: HpcgearError) -> StagingError:
    if isinstance(exc, StagingError):
        return exc
    return StagingError(f"job {job_id}: {what}: {exc.message}", exc.hint,
                        transient=exc.transient)


def stage_in(
    transport: Transport,
    store: ObjectStore,
    spec: JobSpec,
    paths: JobPaths,
    *,
    config_json: Mapping[str, object],
    gear_env: str,
    script_text: str,
    tree: Sequence[TreeFile] = (),
    tree_dir: str | None = None,
) -> StageInResult:
    """Create (or finish) the job directory for ``spec`` at ``paths``.

    Parameters
    ----------
    transport
        Where the job directory lives (local file system or a login node).
    store
        Permanent storage holding each input's bytes under its hash.
    config_json
        The ``config.json`` document (``hpcgear.gears.configjson.build_config_json``).
    gear_env
        Env-file text (``hpcgear.runtimes.envfile.render_gear_env``).
    script_text
        The rendered sbatch script (``RenderedScript.text``).
    tree, tree_dir
        Files to write below ``flywheel/v0/<tree_dir>`` (a gear's BIDS view,
        ``hpcgear.ingest.bids.bids_view``); the directory is written afresh,
        stored objects hash-checked as inputs are.

    Raises
    ------
    StagingError
        A directory or file could not be written, an object is missing or
        corrupt in storage, or a copy did not arrive intact.
    """
    inputs = _file_inputs(spec)
    try:
        config_text = dump_sections_json(config_json)
    except (TypeError, ValueError) as exc:
        raise StagingError(f"job {spec.job_id}: config.json is not JSON data: {exc}",
                           "config values must be JSON (no NaN, no objects)") from None
    try:
        fresh = not transport.exists(paths.root)
        if not fresh:
            _reset_run_state(transport, paths)
        for d in paths.directories():
            transport.mkdir(d, mode=DIR_MODE)
        if not fresh:
            _prune_inputs(transport, paths, {i.name: i.file_name or "" for i in inputs})
        staged = _stage_inputs(transport, store, spec, inputs, paths)
        tree_root = None
        if tree_dir is not None:
            tree_root = _stage_tree(transport, store, spec, paths, tree_dir, tree)
        transport.write_text(paths.config_json, config_text, mode=FILE_MODE)
        transport.write_text(paths.env_file, gear_env, mode=FILE_MODE)
        transport.write_text(paths.sbatch, script_text, mode=SCRIPT_MODE)
    except HpcgearError as exc:
        raise _wrap(spec.job_id, "stage-in", exc) from None
    except OSError as exc:
        raise StagingError(f"job {spec.job_id}: stage-in: {exc}",
                           "check free space and permissions on scratch",
                           transient=True) from None
    logger.info("job %s a%s: staged %d input(s) in %s (%d copied)", spec.job_id, spec.attempt,
                len(staged), paths.root, sum(1 for s in staged if s.copied))
    return StageInResult(paths, tuple(staged), _text_sha256(config_text),
                         _text_sha256(gear_env), _text_sha256(script_text),
                         tree_root, len(tree) if tree_root else 0)


def _stage_tree(transport: Transport, store: ObjectStore, spec: JobSpec, paths: JobPaths,
                tree_dir: str, tree: Sequence[TreeFile]) -> str:
    """Write ``tree`` afresh below ``flywheel/v0/<tree_dir>``; returns that directory."""
    parts = tree_dir.split("/")
    if not safe_relpath(tree_dir) or parts[0] not in ("work", "input") or len(parts) < 2:
        raise StagingError(f"job {spec.job_id}: tree directory {tree_dir!r} is not below "
                           "work/ or input/", 'use e.g. "work/bids"')
    root = posixpath.join(paths.flywheel, *parts)
    bad = [t.path for t in tree if not safe_relpath(t.path)
           or (t.text is None) == (t.sha256 is None)]
    if bad:
        raise StagingError(f"job {spec.job_id}: tree file {bad[0]!r} is not a relative path "
                           "with one source", "this is a bug in the tree's producer")
    if transport.exists(root):
        transport.remove_tree(root)
    transport.mkdir(root, mode=DIR_MODE)
    targets = [(t, posixpath.join(root, t.path)) for t in tree]
    dirs = {posixpath.join(root, *t.path.split("/")[:n])
            for t in tree for n in range(1, t.path.count("/") + 1)}
    for d in sorted(dirs):  # parents first, each 0700 (mkdir -p would use the umask)
        transport.mkdir(d, mode=DIR_MODE)
    objects = []
    for t, path in targets:
        if t.text is not None:
            transport.write_text(path, t.text, mode=FILE_MODE)
        else:
            objects.append((t.sha256 or "", t.size, path))
    _put_objects(transport, store, spec, objects)
    logger.info("job %s a%s: staged a tree of %d file(s) in %s", spec.job_id, spec.attempt,
                len(tree), root)
    return root


def _reset_run_state(transport: Transport, paths: JobPaths) -> None:
    """Empty what a previous (unsubmitted) try may have left that the gear would see."""
    for p in (paths.output_dir, paths.work_dir, paths.tmp_dir, paths.home_dir, paths.boot_dir,
              paths.apptainer_dir, paths.exit_json):
        if transport.exists(p):
            transport.remove_tree(p)


def _prune_inputs(transport: Transport, paths: JobPaths, wanted: Mapping[str, str]) -> None:
    """Remove input directories and files that are not this job's inputs."""
    if not transport.exists(paths.input_dir):
        return
    for name in transport.listdir(paths.input_dir):
        target = posixpath.join(paths.input_dir, name)
        if name not in wanted:
            transport.remove_tree(target)
            continue
        st = transport.stat(target)
        if not st.is_dir:
            transport.remove_tree(target)
            continue
        for entry in transport.listdir(target):
            if entry != wanted[name]:
                logger.info("stage-in: removing stray %s", posixpath.join(target, entry))
                transport.remove_tree(posixpath.join(target, entry))


def _present(transport: Transport, items: list[tuple[InputSpec, str]]) -> dict[str, str]:
    """Hashes of the input files already on scratch (missing ones left out)."""
    if is_local(transport):
        out: dict[str, str] = {}
        for _item, path in items:
            with contextlib.suppress(OSError, StagingError):
                out[path] = sha256_local(path)[0]
        return out
    existing = [p for _i, p in items if transport.exists(p)]
    total = sum(i.size or 0 for i, p in items if p in existing)
    return remote_sha256(transport, existing, total_bytes=total) if existing else {}


def _stage_inputs(transport: Transport, store: ObjectStore, spec: JobSpec,
                  inputs: list[InputSpec], paths: JobPaths) -> list[StagedFile]:
    items = [(i, paths.input_file(i.name, i.file_name or "")) for i in inputs]
    for _i, path in items:
        transport.mkdir(posixpath.dirname(path), mode=DIR_MODE)
    have = _present(transport, items)
    staged: list[StagedFile] = []
    todo: list[tuple[InputSpec, str]] = []
    for item, path in items:
        digest = item.sha256 or ""
        if have.get(path) == digest:
            staged.append(StagedFile(item.name, item.file_name or "", path, digest,
                                     item.size or 0, copied=False))
        else:
            if path in have:
                logger.info("job %s: %s on scratch differs from %s; copying again",
                            spec.job_id, path, digest)
            todo.append((item, path))
    if not todo:
        return staged
    _put_objects(transport, store, spec, [(i.sha256 or "", i.size or 0, p) for i, p in todo])
    for item, path in todo:
        staged.append(StagedFile(item.name, item.file_name or "", path, item.sha256 or "",
                                 item.size or 0, copied=True))
    return staged


def _put_objects(transport: Transport, store: ObjectStore, spec: JobSpec,
                 todo: Sequence[tuple[str, int, str]]) -> None:
    """Copy stored objects ``(sha256, size, path)`` to the scheduler's side, verified."""
    if not todo:
        return
    if is_local(transport):
        for digest, _size, path in todo:
            store.copy_to(digest, Path(path))  # hashed while copying
            os.chmod(path, FILE_MODE)
        return
    store.ensure()
    # The verified local copy goes next to storage (room for large inputs), not /tmp.
    with tempfile.TemporaryDirectory(prefix="stagein-", dir=store.tmp) as tmp:
        for n, (digest, _size, path) in enumerate(todo):
            local = Path(tmp) / f"in-{n}"
            store.copy_to(digest, local)  # verified on the way out of storage
            transport.put(local, path, mode=FILE_MODE)
            local.unlink()
    remote = remote_sha256(transport, [p for _d, _s, p in todo],
                           total_bytes=sum(size for _d, size, _p in todo))
    for digest, _size, path in todo:
        got = remote.get(path)
        if got != digest:
            raise StagingError(
                f"job {spec.job_id}: input {path} arrived as {got or 'nothing'}, "
                f"expected {digest}",
                "the copy was damaged or the scratch file system is failing; hpcgear retries",
                transient=True,
            )


# ------------------------------------------------------------- arrays: tasks.dat


@dataclass(frozen=True, slots=True)
class ArrayTask:
    """What one array task's job directory must hold (``stage_array``'s input)."""

    spec: JobSpec
    paths: JobPaths
    config_json: Mapping[str, object]
    gear_env: str
    tree: Sequence[TreeFile] = ()
    tree_dir: str | None = None


@dataclass(frozen=True, slots=True)
class ArrayStageResult:
    """Per task (in order): its files in ``tasks.dat``, or None and why it failed."""

    files: tuple[tuple[TaskFile, ...] | None, ...]
    errors: Mapping[int, StagingError]
    bytes_written: int


class _TasksDat:
    """``tasks.dat`` being written: each distinct content once, found by its sha256."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.where: dict[str, tuple[int, int]] = {}  # hex -> (offset, length)
        self.size = 0

    def add_bytes(self, relpath: str, data: bytes) -> TaskFile:
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.where:
            self.fh.write(data)
            self.where[digest] = (self.size, len(data))
            self.size += len(data)
        off, length = self.where[digest]
        return TaskFile(relpath, off, length, digest)

    def add_object(self, store: ObjectStore, relpath: str, digest: str) -> TaskFile:
        """A stored object's bytes, hashed on the way (a corrupt object is refused)."""
        hexd = digest.removeprefix("sha256:")
        if hexd not in self.where:
            start = self.size
            h = hashlib.sha256()
            with store.open(digest) as src:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    self.fh.write(chunk)
                    self.size += len(chunk)
            if h.hexdigest() != hexd:
                self.fh.seek(start)
                self.fh.truncate()
                self.size = start
                raise StagingError(f"object {digest} is corrupt in storage {store.root}",
                                   "restore it from backup")
            self.where[hexd] = (start, self.size - start)
        off, length = self.where[hexd]
        return TaskFile(relpath, off, length, hexd)


def _task_files(dat: _TasksDat, store: ObjectStore, task: ArrayTask) -> tuple[TaskFile, ...]:
    spec, paths = task.spec, task.paths
    inputs = _file_inputs(spec)
    try:
        config_text = dump_sections_json(task.config_json)
    except (TypeError, ValueError) as exc:
        raise StagingError(f"job {spec.job_id}: config.json is not JSON data: {exc}",
                           "config values must be JSON (no NaN, no objects)") from None
    planned: list[tuple[str, bytes | None, str | None]] = [
        (REL_CONFIG_JSON, config_text.encode("utf-8"), None),
        (REL_ENV_FILE, task.gear_env.encode("utf-8"), None),
    ]
    for item in inputs:
        rel = JobPaths.input_file_relpath(item.name, item.file_name or "")
        planned.append((rel, None, item.sha256 or ""))
    if task.tree_dir is not None:
        parts = task.tree_dir.split("/")
        if not safe_relpath(task.tree_dir) or parts[0] not in ("work", "input") or len(parts) < 2:
            raise StagingError(f"job {spec.job_id}: tree directory {task.tree_dir!r} is not "
                               "below work/ or input/", 'use e.g. "work/bids"')
        root = paths.relpath(posixpath.join(paths.flywheel, *parts))
        for t in task.tree:
            if not safe_relpath(t.path) or (t.text is None) == (t.sha256 is None):
                raise StagingError(f"job {spec.job_id}: tree file {t.path!r} is not a relative "
                                   "path with one source", "this is a bug in the tree's producer")
            rel = posixpath.join(root, t.path)
            if t.text is not None:
                planned.append((rel, t.text.encode("utf-8"), None))
            else:
                planned.append((rel, None, t.sha256))
    out = []
    for rel, data, digest in planned:
        if data is not None:
            out.append(dat.add_bytes(rel, data))
        else:
            out.append(dat.add_object(store, rel, digest or ""))
    return tuple(out)


def stage_array(
    transport: Transport,
    store: ObjectStore,
    tasks_dat: str,
    tasks: Sequence[ArrayTask],
) -> ArrayStageResult:
    """Stage a whole job array as ONE file, ``tasks_dat`` (in the array's directory).

    Instead of a job directory per task (a dozen directories and three files
    each, written before sbatch), every file a task's job directory needs
    (``config.json``, ``gear.env``, inputs, a BIDS view) goes into one file,
    identical contents once; the array script lists where each lies and each
    task creates its own job directory from it when it starts, checking every
    file's sha256. Through SSH the file is sent by SFTP and hashed on the far side.

    A task whose files cannot be planned (bad config, missing or corrupt object)
    is left out with its :class:`StagingError`; the others still go.

    Raises
    ------
    StagingError
        ``tasks_dat`` could not be written (or arrived damaged): no task is staged.
    """
    files: list[tuple[TaskFile, ...] | None] = []
    errors: dict[int, StagingError] = {}
    local = is_local(transport)
    store.ensure()
    tmp_dir = posixpath.dirname(tasks_dat) if local else str(store.tmp)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tasks-", suffix=".dat", dir=tmp_dir)
    except OSError as exc:
        raise StagingError(f"array stage-in: {tasks_dat}: {exc}",
                           "check free space and permissions on scratch",
                           transient=True) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            dat = _TasksDat(fh)
            for n, task in enumerate(tasks):
                try:
                    files.append(_task_files(dat, store, task))
                except StagingError as exc:
                    errors[n] = exc
                    files.append(None)
                except HpcgearError as exc:
                    errors[n] = _wrap(task.spec.job_id, "stage-in", exc)
                    files.append(None)
            fh.flush()
            os.fsync(fh.fileno())
        if local:
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, tasks_dat)
        else:
            digest = sha256_local(tmp)[0]
            transport.put(tmp, tasks_dat, mode=FILE_MODE)
            got = remote_sha256(transport, [tasks_dat], total_bytes=dat.size).get(tasks_dat)
            if got != digest:
                raise StagingError(
                    f"array stage-in: {tasks_dat} arrived as {got or 'nothing'}, "
                    f"expected {digest}",
                    "the copy was damaged or the scratch file system is failing; hpcgear "
                    "retries", transient=True)
    except HpcgearError as exc:
        raise _wrap("(array)", f"writing {tasks_dat}", exc) from None
    except OSError as exc:
        raise StagingError(f"array stage-in: {tasks_dat}: {exc}",
                           "check free space and permissions on scratch",
                           transient=True) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    logger.info("array stage-in: %d task(s) in %s (%d bytes, %d failed)", len(tasks), tasks_dat,
                dat.size, len(errors))
    return ArrayStageResult(tuple(files), errors, dat.size)
