"""Stage-out: what a gear left in ``flywheel/v0/output``, copied safely to storage.

Two steps, both free of the database:

1. :func:`scan_outputs` walks the output directory **once** and hashes every
   regular file on scratch (locally: ``os.scandir`` + ``lstat`` + hashing in
   process; through SSH: one ``find -P DIR -printf`` listing plus one
   ``find -P DIR -type f -exec sha256sum -- {} +``). Nothing is ever followed
   out of the output directory. Refused, listed with a reason and never read:

   * paths with ``..``, empty or absolute components (only a crafted listing
     can hold them, but the parser does not trust its input),
   * absolute symlinks, symlinks whose target leaves the output directory,
     symlinks to directories, dangling symlinks, symlink loops,
   * fifos, sockets, devices and anything else that is not a file or a directory,
   * top-level names the hierarchy cannot hold (control characters, ``\\``).

   A *relative symlink to a regular file inside the output directory* is
   accepted and published as a copy of its target's bytes (the target is read,
   never the link). ``.metadata.json`` at the top level is not an output: it
   is kept aside for :mod:`hpcgear.staging.metadata`.

2. :func:`fetch_outputs` copies each output into the object store: the store
   streams it into a temporary name, checks the hash computed **on scratch**
   (``ObjectStore.put_stream(expected=...)``) and renames it into place. A
   copy that was killed half-way leaves only a temp file in ``<storage>/tmp``
   (``ObjectStore.clean_tmp``); rerunning gives the same objects (content
   addressed), so nothing is published twice.

Nested outputs
--------------
Flywheel outputs are flat files. A top-level *directory* ``output/<d>/`` is
published as **one zip file** ``<d>.zip`` holding ``<d>/...`` (members sorted,
fixed 1980-01-01 timestamps, mode 0644, deflate level 6), so the same tree
always gives the same bytes and a rerun adds no new version. Each member is
checked against its scratch hash while it is written into the zip. If a
top-level file is already called ``<d>.zip`` the archive is named
``<d>.dir.zip`` (then ``<d>.dir-2.zip``, ...). Empty directories are not
published. Why zip and not flatten: flattened names (``d__sub__f.txt``) can
collide, lose the tree, and flood a container with thousands of files; a zip
keeps the tree and Flywheel users already know zipped outputs.

Scratch is removed only by :func:`remove_job_dir`, which the controller calls
after the database commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import stat as stat_mod
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from hpcgear.errors import HpcgearError, InvalidInputError, NotFoundError, StagingError
from hpcgear.hierarchy.paths import check_file_name
from hpcgear.render.paths import JobPaths
from hpcgear.scheduler.transport import Transport
from hpcgear.staging.checksums import (
    CHUNK,
    digest_timeout,
    is_local,
    remote_sha256,
    sha256_local,
    tree_sha256,
)
from hpcgear.storage.objects import ObjectStore, StoredObject

logger = logging.getLogger(__name__)

METADATA_NAME = ".metadata.json"
#: Symlink hops followed inside the output directory before giving up.
MAX_LINK_HOPS = 40
#: Fixed zip member time: the earliest a zip can hold; keeps archives reproducible.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_LEVEL = 6

_KIND_NAMES = {
    "p": "a fifo",
    "s": "a socket",
    "c": "a character device",
    "b": "a block device",
    "D": "a door",
}


# ------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class OutputEntry:
    """One accepted regular file below the output directory."""

    relpath: str  # POSIX path below output/
    size: int
    sha256: str  # "sha256:<hex>", taken on scratch
    source: str  # relpath whose bytes are read (the target, for an in-tree symlink)


@dataclass(frozen=True, slots=True)
class RefusedEntry:
    relpath: str
    reason: str


@dataclass(frozen=True, slots=True)
class PlannedOutput:
    """One file to publish: a top-level file, or a top-level directory as a zip."""

    name: str  # the file name in the hierarchy
    relpath: str  # the file, or the directory that is zipped
    kind: Literal["file", "zip"]
    members: tuple[OutputEntry, ...]

    @property
    def size(self) -> int:
        return sum(m.size for m in self.members)


@dataclass(frozen=True, slots=True)
class OutputScan:
    """The result of walking one output directory."""

    output_dir: str
    files: tuple[OutputEntry, ...]  # every accepted regular file, nested ones too
    outputs: tuple[PlannedOutput, ...]  # what gets published, by name
    refused: tuple[RefusedEntry, ...]
    metadata: OutputEntry | None  # the top-level .metadata.json, if a regular file
    metadata_problem: str | None = None  # set when .metadata.json exists but was refused

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True, slots=True)
class StoredOutput:
    """An output that is now in permanent storage (what ``publish_outputs`` takes)."""

    relpath: str
    name: str
    sha256: str
    size: int
    kind: Literal["file", "zip", "log"] = "file"
    members: int = 1


@dataclass(frozen=True, slots=True)
class RawEntry:
    """One listing line: what ``find -printf`` or ``lstat`` said about a path."""

    relpath: str
    kind: str  # f d l p s c b D (find's %y letters); "?" unknown
    size: int
    link_target: str = ""


# -------------------------------------------------------------------------- scan


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates
        return False
    return True


def _bad_relpath(rel: str) -> str | None:
    if not rel or rel.startswith("/"):
        return "absolute or empty path"
    if "\0" in rel:
        return "NUL byte in the name"
    if "\ufffd" in rel or not _utf8(rel):
        return "name is not valid UTF-8"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "path escapes the output directory ('..', '.' or empty component)"
    return None


def _resolve_link(rel: str, table: Mapping[str, RawEntry]) -> tuple[str | None, str]:
    """Follow symlink ``rel`` as the kernel would, using only the listing.

    Returns (relpath of the regular file it ends at, "") or (None, reason).
    Every component the kernel would pass through must be a real directory of
    the listing, so ``..`` is resolved exactly and nothing outside is touched.
    """
    seen: set[str] = set()
    current = rel
    for _hop in range(MAX_LINK_HOPS):
        if current in seen:
            break
        seen.add(current)
        target = table[current].link_target
        if not target:
            return None, "symlink without a target"
        if target.startswith("/"):
            return None, f"absolute symlink to {target!r}"
        stack = current.split("/")[:-1]
        parts = [p for p in target.split("/") if p not in ("", ".")]
        for i, part in enumerate(parts):
            if part == "..":
                if not stack:
                    return None, f"symlink to {target!r} points outside the output directory"
                stack.pop()
                continue
            stack.append(part)
            if i < len(parts) - 1:
                entry = table.get("/".join(stack))
                if entry is None:
                    return None, f"dangling symlink to {target!r}"
                if entry.kind == "l":
                    return None, f"symlink to {target!r} goes through another symlink"
                if entry.kind != "d":
                    return None, f"symlink to {target!r} goes through a non-directory"
        final = "/".join(stack)
        if not final:
            return None, f"symlinked directory (to {target!r}, the output directory)"
        entry = table.get(final)
        if entry is None:
            return None, f"dangling symlink to {target!r}"
        if entry.kind == "d":
            return None, f"symlinked directory (to {target!r})"
        if entry.kind == "f":
            return final, ""
        if entry.kind != "l":
            return None, f"symlink to {_KIND_NAMES.get(entry.kind, 'a special file')}"
        current = final
    return None, "symlink loop"


def build_scan(output_dir: str, raw: Sequence[RawEntry], hashes: Mapping[str, str]) -> OutputScan:
    """Classify a listing (pure): accepted files, planned outputs, refused entries.

    ``hashes`` maps relpaths of regular files to their ``sha256:<hex>``.
    """
    refused: list[RefusedEntry] = []
    table: dict[str, RawEntry] = {}
    for entry in raw:
        problem = _bad_relpath(entry.relpath)
        if problem:
            # Refusals are stored (job events, provenance): undecodable bytes as \xNN escapes.
            shown = entry.relpath if _utf8(entry.relpath) else entry.relpath.encode(
                "utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            refused.append(RefusedEntry(shown, problem))
        else:
            table[entry.relpath] = entry

    def parent_problem(rel: str) -> str | None:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = table.get("/".join(parts[:i]))
            if parent is None or parent.kind != "d":
                return "below a path that is not a plain directory"
        return None

    files: dict[str, OutputEntry] = {}
    metadata: OutputEntry | None = None
    metadata_problem: str | None = None
    for rel in sorted(table):
        entry = table[rel]
        problem = parent_problem(rel)
        if problem:
            refused.append(RefusedEntry(rel, problem))
            continue
        if entry.kind == "d":
            continue
        accepted: OutputEntry | None = None
        if entry.kind == "f":
            digest = hashes.get(rel)
            if digest is None:
                refused.append(RefusedEntry(rel, "could not be read on scratch"))
                continue
            accepted = OutputEntry(rel, entry.size, digest, rel)
        elif entry.kind == "l":
            target, reason = _resolve_link(rel, table)
            if target is None or target not in hashes:
                refused.append(RefusedEntry(rel, reason or "link target could not be read"))
                continue
            accepted = OutputEntry(rel, table[target].size, hashes[target], target)
        else:
            refused.append(RefusedEntry(
                rel, f"{_KIND_NAMES.get(entry.kind, 'not a regular file')}, not a file"))
            continue
        if rel == METADATA_NAME:
            if entry.kind != "f":
                metadata_problem = "the metadata file is a symlink, not a regular file"
                refused.append(RefusedEntry(rel, metadata_problem))
            else:
                metadata = accepted
            continue
        files[rel] = accepted
    for r in refused:
        if r.relpath == METADATA_NAME and metadata_problem is None:
            metadata_problem = f"the metadata file was refused: {r.reason}"
    outputs, more_refused = _plan_outputs(files)
    refused.extend(more_refused)
    accepted_files = tuple(f for rel, f in sorted(files.items())
                           if rel not in {r.relpath for r in more_refused})
    return OutputScan(output_dir, accepted_files, outputs,
                      tuple(sorted(refused, key=lambda r: r.relpath)), metadata, metadata_problem)


def _valid_name(name: str) -> str | None:
    try:
        check_file_name(name)
    except InvalidInputError as exc:
        return exc.message
    return None


def _plan_outputs(
    files: Mapping[str, OutputEntry],
) -> tuple[tuple[PlannedOutput, ...], list[RefusedEntry]]:
    refused: list[RefusedEntry] = []
    top: dict[str, PlannedOutput] = {}
    dirs: dict[str, list[OutputEntry]] = {}
    for rel, entry in sorted(files.items()):
        if "/" not in rel:
            problem = _valid_name(rel)
            if problem:
                refused.append(RefusedEntry(rel, f"cannot be published: {problem}"))
                continue
            top[rel] = PlannedOutput(rel, rel, "file", (entry,))
        else:
            dirs.setdefault(rel.split("/", 1)[0], []).append(entry)
    planned = dict(top)
    for d, members in sorted(dirs.items()):
        name = f"{d}.zip"
        n = 1
        while name in planned:
            name = f"{d}.dir.zip" if n == 1 else f"{d}.dir-{n}.zip"
            n += 1
        problem = _valid_name(name)
        if problem:
            refused.extend(RefusedEntry(m.relpath, f"its directory cannot be published as "
                                        f"{name!r}: {problem}") for m in members)
            continue
        planned[name] = PlannedOutput(name, d, "zip", tuple(members))
    return tuple(planned[k] for k in sorted(planned)), refused


def _local_listing(output_dir: str) -> tuple[list[RawEntry], dict[str, str]]:
    raw: list[RawEntry] = []
    hashes: dict[str, str] = {}

    def walk(directory: str, prefix: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = f"{prefix}{e.name}"
            st = e.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat_mod.S_ISDIR(mode):
                raw.append(RawEntry(rel, "d", 0))
                walk(e.path, rel + "/")
            elif stat_mod.S_ISREG(mode):
                raw.append(RawEntry(rel, "f", st.st_size))
                try:
                    hashes[rel] = sha256_local(e.path)[0]
                except (OSError, StagingError) as exc:
                    logger.warning("stage-out: cannot read %s: %s", e.path, exc)
            elif stat_mod.S_ISLNK(mode):
                raw.append(RawEntry(rel, "l", st.st_size, os.readlink(e.path)))
            else:
                kind = ("p" if stat_mod.S_ISFIFO(mode) else "s" if stat_mod.S_ISSOCK(mode)
                        else "c" if stat_mod.S_ISCHR(mode) else "b" if stat_mod.S_ISBLK(mode)
                        else "?")
                raw.append(RawEntry(rel, kind, 0))

    walk(output_dir, "")
    return raw, hashes


_FIND_FORMAT = "%y\\0%s\\0%l\\0%P\\0"


def parse_find_listing(stdout: str) -> list[RawEntry]:
    """Records of ``find -printf '%y\\0%s\\0%l\\0%P\\0'`` (type, size, link, relpath)."""
    fields = stdout.split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    if len(fields) % 4:
        raise StagingError("the output listing from find is truncated or malformed",
                           "the login node's find must be GNU findutils; hpcgear retries",
                           transient=True)
    out: list[RawEntry] = []
    for i in range(0, len(fields), 4):
        kind, size, link, rel = fields[i : i + 4]
        try:
            n = int(size)
        except ValueError:
            n = 0
        out.append(RawEntry(rel, kind or "?", n, link))
    return out


def _remote_listing(transport: Transport, output_dir: str) -> tuple[list[RawEntry], dict[str, str]]:
    # -mindepth 0: the first record is the output directory itself (relpath "")
    result = transport.run(["find", "-P", output_dir, "-printf", _FIND_FORMAT], timeout=600)
    if not result.ok:
        first = result.stderr.strip().splitlines()[0] if result.stderr.strip() else "no output"
        raise StagingError(f"listing {output_dir} failed (exit {result.returncode}): {first}",
                           "check permissions of the output directory; hpcgear retries",
                           transient=True)
    raw = parse_find_listing(result.stdout)
    top = [r for r in raw if r.relpath == ""]
    if len(top) != 1 or top[0].kind != "d":
        raise StagingError(f"the output directory {output_dir} is not a plain directory",
                           "the gear must not replace /flywheel/v0/output")
    raw = [r for r in raw if r.relpath != ""]
    total = sum(r.size for r in raw if r.kind == "f")
    prefix = output_dir.rstrip("/") + "/"
    hashes = {p[len(prefix):]: d
              for p, d in tree_sha256(transport, output_dir, total_bytes=total).items()
              if p.startswith(prefix)}
    return raw, hashes


def scan_outputs(transport: Transport, paths: JobPaths) -> OutputScan:
    """Walk ``paths.output_dir`` once, hash on scratch, refuse what escapes (module doc)."""
    out = paths.output_dir
    try:
        if not transport.exists(out):
            raise StagingError(f"the output directory {out} is missing",
                               "the gear must not remove /flywheel/v0/output")
        if is_local(transport) and not stat_mod.S_ISDIR(os.lstat(out).st_mode):
            raise StagingError(f"the output directory {out} is not a plain directory",
                               "the gear must not replace /flywheel/v0/output")
        raw, hashes = _local_listing(out) if is_local(transport) else _remote_listing(
            transport, out)
    except OSError as exc:
        raise StagingError(f"cannot list {out}: {exc.strerror or exc}",
                           "check permissions of the output directory", transient=True) from None
    except HpcgearError as exc:
        if isinstance(exc, StagingError):
            raise
        raise StagingError(f"cannot list {out}: {exc.message}", exc.hint,
                           transient=exc.transient) from None
    scan = build_scan(out, raw, hashes)
    for r in scan.refused:
        logger.warning("stage-out %s: refused %r: %s", out, r.relpath, r.reason)
    return scan


# ------------------------------------------------------------------------- fetch


def _open_local(path: str) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    fh = os.fdopen(fd, "rb")
    if not stat_mod.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise StagingError(f"{path} is no longer a regular file", "rerun stage-out")
    return fh


@contextlib.contextmanager
def _source(transport: Transport, scan: OutputScan, entry: OutputEntry,
            work: Path) -> Iterator[BinaryIO]:
    """An open stream of ``entry``'s bytes (from scratch, or a local copy of them)."""
    path = posixpath.join(scan.output_dir, entry.source)
    if is_local(transport):
        with _open_local(path) as fh:
            yield fh
        return
    fd, name = tempfile.mkstemp(prefix="get-", dir=work)
    os.close(fd)
    local = Path(name)
    try:
        transport.get(path, local)
        with local.open("rb") as fh:
            yield fh
    finally:
        local.unlink(missing_ok=True)


def _stage_error(what: str, exc: BaseException) -> StagingError:
    if isinstance(exc, StagingError):
        return exc
    if isinstance(exc, HpcgearError):
        return StagingError(f"{what}: {exc.message}", exc.hint, transient=exc.transient)
    return StagingError(f"{what}: {exc}", "check scratch and storage; hpcgear retries",
                        transient=True)


def _fetch_file(transport: Transport, store: ObjectStore, scan: OutputScan,
                out: PlannedOutput, work: Path) -> StoredOutput:
    entry = out.members[0]
    with _source(transport, scan, entry, work) as fh:
        obj = store.put_stream(fh, expected=entry.sha256)
    return StoredOutput(out.relpath, out.name, obj.hash, obj.size, "file", 1)


class _HashingReader:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.h = hashlib.sha256()

    def chunks(self) -> Iterator[bytes]:
        while chunk := self.fh.read(CHUNK):
            self.h.update(chunk)
            yield chunk


def _fetch_zip(transport: Transport, store: ObjectStore, scan: OutputScan,
               out: PlannedOutput, work: Path) -> StoredOutput:
    fd, name = tempfile.mkstemp(prefix="zip-", dir=work)
    os.close(fd)
    zpath = Path(name)
    try:
        with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED,
                             compresslevel=ZIP_LEVEL, allowZip64=True) as zf:
            for member in sorted(out.members, key=lambda m: m.relpath):
                info = zipfile.ZipInfo(member.relpath, date_time=ZIP_DATE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                info.external_attr = (stat_mod.S_IFREG | 0o644) << 16
                with _source(transport, scan, member, work) as fh, \
                        zf.open(info, "w", force_zip64=member.size >= 2**31) as dst:
                    reader = _HashingReader(fh)
                    for chunk in reader.chunks():
                        dst.write(chunk)
                got = f"sha256:{reader.h.hexdigest()}"
                if got != member.sha256:
                    raise StagingError(
                        f"{member.relpath} changed after it was scanned "
                        f"({member.sha256} on scratch, {got} now)",
                        "something is still writing into the output directory; hpcgear retries",
                        transient=True,
                    )
        obj: StoredObject = store.put_file(zpath)
    finally:
        zpath.unlink(missing_ok=True)
    return StoredOutput(out.relpath, out.name, obj.hash, obj.size, "zip", len(out.members))


def fetch_outputs(transport: Transport, store: ObjectStore, scan: OutputScan) -> list[StoredOutput]:
    """Copy every planned output into ``store``, verified against the scratch hashes.

    Safe to rerun after a crash: objects are content addressed, so a rerun
    stores the same hashes and a half-done copy only leaves a temp file.

    Raises
    ------
    StagingError
        A file changed after the scan, could not be read, or storage failed.
    """
    store.ensure()
    work = Path(tempfile.mkdtemp(prefix="stageout-", dir=store.tmp))
    stored: list[StoredOutput] = []
    try:
        for out in scan.outputs:
            try:
                if out.kind == "file":
                    stored.append(_fetch_file(transport, store, scan, out, work))
                else:
                    stored.append(_fetch_zip(transport, store, scan, out, work))
            except (HpcgearError, OSError) as exc:
                raise _stage_error(f"stage-out of {out.relpath!r}", exc) from None
            logger.debug("stage-out %s: stored %s as %s", scan.output_dir, out.name,
                         stored[-1].sha256)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return stored


def fetch_file(transport: Transport, store: ObjectStore, path: str, *,
               name: str | None = None) -> StoredOutput | None:
    """Store one file from scratch (e.g. the job log), verified; None if it is missing.

    Hashes on scratch first (``sha256sum`` remotely), then copies with that as
    the expected hash.
    """
    label = name or posixpath.basename(path)
    store.ensure()
    try:
        if is_local(transport):
            if not os.path.lexists(path):
                return None
            digest, _size = sha256_local(path)
            with _open_local(path) as fh:
                obj = store.put_stream(fh, expected=digest)
            return StoredOutput(path, label, obj.hash, obj.size, "log")
        if not transport.exists(path):
            return None
        st = transport.stat(path)
        found = remote_sha256(transport, [path], total_bytes=st.size)
        if path not in found:
            raise StagingError(f"cannot hash {path} on scratch", "check its permissions")
        work = Path(tempfile.mkdtemp(prefix="fetch-", dir=store.tmp))
        try:
            local = work / "f"
            transport.get(path, local)
            obj = store.put_file(local, expected=found[path])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return StoredOutput(path, label, obj.hash, obj.size, "log")
    except (HpcgearError, OSError) as exc:
        raise _stage_error(f"fetching {path}", exc) from None


def read_text_file(transport: Transport, path: str, *, max_bytes: int = 1 << 20) -> str | None:
    """The last ``max_bytes`` of a text file on scratch (bad UTF-8 replaced); None if missing."""
    try:
        if is_local(transport):
            try:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size > max_bytes:
                        fh.seek(size - max_bytes)
                    return fh.read(max_bytes).decode("utf-8", errors="replace")
            except FileNotFoundError:
                return None
        if not transport.exists(path):
            return None
        result = transport.run(["tail", "-c", str(max_bytes), "--", path],
                               timeout=digest_timeout(max_bytes))
        if not result.ok:
            raise StagingError(f"cannot read {path}: {result.output[:200]}",
                               "check its permissions", transient=True)
        return result.stdout
    except NotFoundError:
        return None
    except (HpcgearError, OSError) as exc:
        raise _stage_error(f"reading {path}", exc) from None


def read_metadata(transport: Transport, scan: OutputScan, *,
                  max_bytes: int = 16 * 1024 * 1024) -> str | None:
    """The text of the gear's ``.metadata.json``; None when the gear wrote none.

    Raises :class:`~hpcgear.staging.metadata.InvalidMetadataError` when it exists
    but was refused (a symlink), is too large, changed, or is not UTF-8.
    """
    from hpcgear.staging.metadata import InvalidMetadataError

    if scan.metadata is None:
        if scan.metadata_problem:
            raise InvalidMetadataError(f".metadata.json: {scan.metadata_problem}",
                                       "write .metadata.json as a regular file")
        return None
    entry = scan.metadata
    if entry.size > max_bytes:
        raise InvalidMetadataError(
            f".metadata.json is {entry.size} bytes (at most {max_bytes})",
            "keep large results in output files, not in metadata")
    path = posixpath.join(scan.output_dir, entry.source)
    try:
        if is_local(transport):
            with _open_local(path) as fh:
                data = fh.read(max_bytes + 1)
        else:
            data = transport.read_text(path).encode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMetadataError(".metadata.json is not UTF-8 text",
                                   "write the file as UTF-8 JSON") from None
    except (HpcgearError, OSError) as exc:
        raise _stage_error("reading .metadata.json", exc) from None
    if f"sha256:{hashlib.sha256(data).hexdigest()}" != entry.sha256:
        raise StagingError(".metadata.json changed after the output scan",
                           "something is still writing into the output directory", transient=True)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMetadataError(".metadata.json is not UTF-8 text",
                                   "write the file as UTF-8 JSON") from None


def remove_job_dir(transport: Transport, paths: JobPaths) -> None:
    """Remove one attempt's directory, and the job's directory if that left it empty.

    Call only after the outputs and provenance are committed to the database.
    """
    try:
        transport.remove_tree(paths.root)
        parent = posixpath.dirname(paths.root)
        if is_local(transport):
            with contextlib.suppress(OSError):
                os.rmdir(parent)  # fails, as it should, while another attempt lives there
        else:
            transport.run(["rmdir", "--", parent], timeout=60)
    except HpcgearError as exc:
        raise _stage_error(f"removing {paths.root}", exc) from None
