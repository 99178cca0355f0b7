"""BIDS in and out: ``ingest bids`` (keeps every BIDS file), ``ingest folder --template``
(Flywheel CLI template ingest), and ``export bids`` (a BIDS tree from the hierarchy).

Ingest: images and their sidecars are placed as ``ingest nifti`` places them;
every other file of the dataset is kept where BIDS puts it: top-level files
(``dataset_description.json``, ``participants.tsv``, ``README``, task JSONs...)
on the project, ``*_sessions.tsv`` on the subject, ``*_scans.tsv`` on the
session, and files in a datatype folder (``*_events.tsv``, ``*_physio.tsv.gz``)
beside the images of that folder. Each carries ``info.BIDS`` = ``{Path,
Filename}`` (Flywheel's key), which export uses to put it back.
``derivatives/``, ``sourcedata/``, ``code/`` and hidden files are reported
(``not_bids_raw``), not stored.

Export: NIfTI files become ``sub-<s>[/ses-<t>]/<datatype>/<name>``, named from
``info.BIDS`` or their BIDS file name, else from the classification (T1 ->
``anat/..._T1w``, Functional -> ``func/..._task-<task>_bold``, Diffusion ->
``dwi/..._dwi``); each image gets its JSON sidecar (the stored one, or one
written from the sidecar keys kept in the image's info), bval/bvec follow their
image, ``dataset_description.json``, ``participants.tsv`` and ``README`` are
copied when stored, written otherwise. Files that cannot be named are reported.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File, FileVersion
from hpcgear.errors import InvalidInputError, NotFoundError
from hpcgear.hierarchy.paths import check_label
from hpcgear.hierarchy.permissions import RoleName, require_role
from hpcgear.hierarchy.service import (
    add_file_version,
    container_path,
    ensure_path,
    file_version,
    guess_file_type,
    resolve_container,
)
from hpcgear.ingest.dicom import SkippedFile, list_files, relative
from hpcgear.ingest.nifti import NOT_NIFTI, ORPHAN_SIDECAR, image_stem, parse_bids_name
from hpcgear.ingest.report import FileOutcome, IngestReport
from hpcgear.spec import BIDS_DATATYPES, TreeFile, safe_relpath
from hpcgear.storage.objects import ObjectStore

logger = logging.getLogger(__name__)

NOT_BIDS_RAW = "not_bids_raw"
NO_TEMPLATE_MATCH = "no_template_match"
BIDS_VERSION = "1.9.0"
NOT_RAW_DIRS = ("derivatives", "sourcedata", "code")
DEFAULT_SESSION = "default"


# ------------------------------------------------------------------ ingest


def _bids_place(rel: str) -> tuple[list[str], str] | str:
    """Where a non-image BIDS file goes: (labels below the project, BIDS dir), or a reason."""
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts) or parts[0] in NOT_RAW_DIRS:
        return f"{parts[0]}/ is not raw BIDS data"
    folder = "/".join(parts[:-1])
    if len(parts) == 1 or not parts[0].startswith("sub-"):
        return [], folder
    subject = parts[0]
    rest = parts[1:]
    session = DEFAULT_SESSION
    if len(rest) >= 2 and rest[0].startswith("ses-"):
        session, rest = rest[0], rest[1:]
    if len(rest) == 1:
        if parts[-1].endswith("_sessions.tsv") or parts[-1].endswith("_sessions.json"):
            return [subject], folder
        return [subject, session], folder
    if len(rest) == 2:
        return [subject, session, rest[0]], folder
    return f"{rel} is nested deeper than sub-/ses-/datatype/"


def _store_one(
    session: Session,
    store: ObjectStore,
    actor: str,
    path: str,
    src: Path,
    info: dict[str, Any],
) -> FileOutcome:
    target = ensure_path(session, actor, path)
    obj = store.put_file(src)
    result = add_file_version(
        session,
        target,
        src.name,
        obj.hash,
        obj.size,
        actor,
        origin_type="ingest",
        origin_id=actor,
        metadata={"type": guess_file_type(src.name), "info": info},
    )
    session.commit()
    status = (
        "unchanged" if not result.created else ("new" if result.version == 1 else "new_version")
    )
    return FileOutcome(
        container=path,
        name=src.name,
        status=status,
        type=guess_file_type(src.name),
        version=result.version,
        hash=result.hash,
        size=result.size,
    )


def ingest_bids_extras(
    session: Session,
    store: ObjectStore,
    actor: str,
    root: Path,
    project_path: str,
    report: IngestReport,
    *,
    dry_run: bool = False,
) -> None:
    """After ``ingest_nifti``: store the dataset's other files (see the module docstring).

    ``report`` is the NIfTI ingest's; the files it skipped as ``not_nifti`` are
    stored (or re-reported with a BIDS reason) here.
    """
    project = resolve_container(session, project_path, min_depth=2, max_depth=2)
    require_role(session, actor, project, RoleName.READ_WRITE, "ingesting")
    rest: list[SkippedFile] = []
    seen: set[tuple[str, str]] = set()
    for skipped in report.skipped:
        if skipped.reason not in (NOT_NIFTI, ORPHAN_SIDECAR):
            rest.append(skipped)
            continue
        place = _bids_place(skipped.path)
        if isinstance(place, str):
            rest.append(SkippedFile(skipped.path, NOT_BIDS_RAW, place))
            continue
        labels, folder = place
        src = Path(root) / skipped.path
        for label in labels:
            check_label(label)
        path = "/".join([project_path, *labels])
        if (path, src.name) in seen:
            rest.append(
                SkippedFile(skipped.path, "duplicate", f"another {src.name} goes to {path}")
            )
            continue
        seen.add((path, src.name))
        info = {"BIDS": {"Path": folder, "Filename": src.name}}
        if dry_run:
            report.files.append(
                FileOutcome(
                    container=path,
                    name=src.name,
                    status="planned",
                    type=guess_file_type(src.name),
                    sources=(skipped.path,),
                )
            )
            continue
        report.files.append(_store_one(session, store, actor, path, src, info))
    report.skipped[:] = rest


# ------------------------------------------------------------ template ingest

_PLACEHOLDER = re.compile(r"\{(subject|session|acquisition)\}")
TEMPLATE_LEVELS = ("subject", "session", "acquisition")


@dataclass(frozen=True, slots=True)
class FolderTemplate:
    """``{subject}/{session}/{acquisition}/*``: one regex per path segment."""

    text: str
    segments: tuple[re.Pattern[str], ...]

    def match(self, rel: str) -> dict[str, str] | None:
        parts = rel.split("/")
        if len(parts) != len(self.segments):
            return None
        found: dict[str, str] = {}
        for part, rx in zip(parts, self.segments, strict=True):
            m = rx.fullmatch(part)
            if m is None:
                return None
            found.update({k: v for k, v in m.groupdict().items() if v})
        return found


def parse_template(text: str) -> FolderTemplate:
    """Parse a Flywheel CLI style folder template; placeholders subject, session, acquisition."""
    segs = [s for s in text.strip().strip("/").split("/") if s]
    if not segs:
        raise InvalidInputError("--template is empty", "e.g. '{subject}/{session}/{acquisition}/*'")
    names = _PLACEHOLDER.findall(text)
    bad = re.findall(r"\{([^}]*)\}", text)
    unknown = [b for b in bad if b not in TEMPLATE_LEVELS]
    if unknown or len(names) != len(set(names)) or "subject" not in names:
        raise InvalidInputError(
            f"--template {text!r} must name {{subject}} once, and may name {{session}} and "
            f"{{acquisition}} once each" + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
            "e.g. --template '{subject}/{session}/{acquisition}/*'",
        )
    if "acquisition" in names and "session" not in names:
        raise InvalidInputError(
            f"--template {text!r} names {{acquisition}} but no {{session}}",
            "add {session}: acquisitions live in sessions",
        )
    compiled = []
    for seg in segs:
        pieces = re.split(r"(\{(?:subject|session|acquisition)\})", seg)
        rx = ""
        for piece in pieces:
            m = _PLACEHOLDER.fullmatch(piece)
            if m:
                rx += f"(?P<{m.group(1)}>[^/]+?)"
            else:
                rx += fnmatch.translate(piece).removeprefix("(?s:").removesuffix(")\\Z")
        compiled.append(re.compile(rx))
    return FolderTemplate(text, tuple(compiled))


def ingest_folder(
    session: Session,
    store: ObjectStore,
    actor: str,
    root: Path,
    project_path: str,
    template: str,
    *,
    dry_run: bool = False,
) -> IngestReport:
    """Upload every file under ``root`` to the place its path names under ``template``.

    Files whose relative path does not match are reported (``no_template_match``).
    Without ``{session}`` files go to session ``default``; without
    ``{acquisition}`` they stay on the session. Uploads go through the same
    path as ``hpcgear upload`` (a project's de-identification profile applies).
    """
    from hpcgear.ingest.upload import upload_deidentified

    tpl = parse_template(template)
    project = resolve_container(session, project_path, min_depth=2, max_depth=2)
    require_role(session, actor, project, RoleName.READ_WRITE, "ingesting")
    files = list_files(Path(root))
    report = IngestReport(
        kind="folder", group=project.group_id, dry_run=dry_run, files_seen=len(files)
    )
    for p in files:
        rel = relative(p, Path(root))
        found = tpl.match(rel)
        if found is None:
            report.skipped.append(
                SkippedFile(rel, NO_TEMPLATE_MATCH, f"does not match {tpl.text!r}")
            )
            continue
        labels = [found["subject"], found.get("session", DEFAULT_SESSION)]
        if "acquisition" in found:
            labels.append(found["acquisition"])
        try:
            for label in labels:
                check_label(label)
        except InvalidInputError as exc:
            report.skipped.append(SkippedFile(rel, "bad_label", exc.message))
            continue
        path = "/".join([project_path, *labels])
        if dry_run:
            report.files.append(
                FileOutcome(
                    container=path,
                    name=p.name,
                    status="planned",
                    type=guess_file_type(p.name),
                    sources=(rel,),
                )
            )
            continue
        [r] = upload_deidentified(session, store, actor, path, [p], origin_type="ingest")
        session.commit()
        report.files.append(
            FileOutcome(
                container=path,
                name=r.name,
                status="unchanged"
                if not r.created
                else ("new" if r.version == 1 else "new_version"),
                type=guess_file_type(r.name),
                version=r.version,
                hash=r.hash,
                size=r.size,
            )
        )
    return report


# ------------------------------------------------------------------ export

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_MEASUREMENT_SUFFIX = {"T1": "T1w", "T2": "T2w", "PD": "PDw", "T2*": "T2starw", "FLAIR": "FLAIR"}
_SKIP_INFO = {"hpcgear", "nifti", "header", "BIDS"}


@dataclass(slots=True)
class BidsExport:
    out: Path | None
    written: list[str] = field(default_factory=list)  # relative paths
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (hierarchy path, reason)
    files: list[TreeFile] = field(default_factory=list)  # what each written path holds

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out) if self.out is not None else None,
            "written": self.written,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "files": [t.as_dict() for t in self.files],
        }


def bids_label(label: str, prefix: str) -> str:
    """``sub-01`` / ``01`` / ``Sub 01!`` -> ``01`` (BIDS labels are alphanumeric)."""
    text = label[len(prefix) :] if label.startswith(prefix) else label
    return _NON_ALNUM.sub("", text) or "x"


def _bids_name_for(f: File, sub: str, ses: str | None) -> tuple[str, str] | None:
    """(datatype, file name) for an image file, or None when it cannot be named."""
    info = f.info or {}
    bids_info = info.get("BIDS") if isinstance(info.get("BIDS"), dict) else None
    stem = image_stem(f.name)
    ext = f.name[len(stem) :] if stem else ""
    prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
    if bids_info and bids_info.get("Filename"):
        name = str(bids_info["Filename"])
        parsed = parse_bids_name(Path(str(bids_info.get("Path") or "x")) / name)
        if parsed is not None and parsed.datatype:
            return parsed.datatype, name
    parsed = parse_bids_name(Path("x") / f.name)
    if parsed is not None and stem:
        ents = "".join(f"_{k}-{v}" for k, v in parsed.entities.items() if k not in ("sub", "ses"))
        datatype = _datatype_of(parsed.suffix)
        if datatype:
            return datatype, f"{prefix}{ents}_{parsed.suffix}{ext}"
    cls = f.classification or {}
    measurement = [str(m) for m in cls.get("Measurement") or []]
    intent = [str(i) for i in cls.get("Intent") or []]
    if not stem:
        return None
    if "Functional" in intent:
        task = bids_label(str(info.get("TaskName") or "unknown"), "task-")
        return "func", f"{prefix}_task-{task}_bold{ext}"
    if "Diffusion" in measurement or "Diffusion" in intent:
        return "dwi", f"{prefix}_dwi{ext}"
    if "Structural" in intent or any(m in _MEASUREMENT_SUFFIX for m in measurement):
        for m in measurement:
            if m in _MEASUREMENT_SUFFIX:
                return "anat", f"{prefix}_{_MEASUREMENT_SUFFIX[m]}{ext}"
    return None


def _datatype_of(suffix: str) -> str | None:
    if suffix in ("T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "angio"):
        return "anat"
    if suffix in ("bold", "cbv", "sbref", "events", "physio"):
        return "func"
    if suffix == "dwi":
        return "dwi"
    if suffix in ("phasediff", "magnitude1", "magnitude2", "epi", "fieldmap"):
        return "fmap"
    return None


def _with_run(name: str, n: int) -> str:
    # insert run-N before the suffix: sub-01_T1w.nii.gz -> sub-01_run-2_T1w.nii.gz
    head, _, tail = name.rpartition("_")
    return f"{head}_run-{n}_{tail}"


@dataclass(slots=True)
class BidsPlan:
    """What a BIDS export of one container writes: the files (stored or generated)
    and the hierarchy files that could not be named."""

    files: list[TreeFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (hierarchy path, reason)
    paths: set[str] = field(default_factory=set)

    def add_copy(self, rel: str, f: File, fv: FileVersion) -> None:
        if rel not in self.paths:
            self.paths.add(rel)
            self.files.append(
                TreeFile(rel, sha256=fv.hash, size=fv.size, file_id=f.id, version=fv.version,
                         container_id=f.container_id, name=f.name)
            )

    def add_text(self, rel: str, text: str) -> None:
        if rel not in self.paths:
            self.paths.add(rel)
            self.files.append(TreeFile(rel, text=text, size=len(text.encode())))


def export_bids(
    session: Session,
    store: ObjectStore,
    actor: str,
    path: str,
    out: Path | None,
    *,
    dry_run: bool = False,
) -> BidsExport:
    """Write the BIDS tree of ``PROJECT[/SUBJECT[/SESSION]]`` under ``out`` (read-only role).

    With ``dry_run`` nothing is written (``out`` may be None); the result lists what
    would be, and what each file holds (a stored file version, or generated text).
    """
    root = resolve_container(session, path, min_depth=2, max_depth=4)
    require_role(session, actor, root, RoleName.READ_ONLY, "exporting BIDS")
    plan = plan_bids(session, root, source=path)
    if not dry_run:
        if out is None:
            raise InvalidInputError("export bids needs --out DIR", "e.g. --out ./bids")
        write_tree(store, plan.files, Path(out))
    return BidsExport(out, sorted(t.path for t in plan.files), plan.skipped, plan.files)


def bids_view(
    session: Session,
    actor: str,
    container_type: str,
    container_id: str,
    *,
    data_types: Sequence[str] = (),
) -> BidsPlan:
    """The BIDS tree of a job's destination (a gear's ``bids-view``), as the job's user sees it.

    An analysis stands for its parent; an acquisition gives its own files only.
    """
    root = session.get(Container, container_id)
    if root is None or root.type != container_type:
        raise NotFoundError(
            f"{container_type} {container_id} does not exist",
            "the job's destination was deleted; run the gear on an existing container",
        )
    if root.type == "analysis" and root.parent_id:
        parent = session.get(Container, root.parent_id)
        assert parent is not None
        root = parent
    if root.type == "group":
        raise InvalidInputError(
            "a BIDS view needs a project, subject, session or acquisition destination",
            "run the gear on a project or below",
        )
    require_role(session, actor, root, RoleName.READ_ONLY, "staging a BIDS view")
    return plan_bids(session, root, data_types=data_types,
                     source=container_path(session, root))


def write_tree(store: ObjectStore, files: Sequence[TreeFile], out: Path) -> None:
    """Write ``files`` under ``out``: stored objects hash-checked, text as UTF-8."""
    out.mkdir(parents=True, exist_ok=True)
    for t in files:
        dest = out / t.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if t.text is not None:
            dest.write_text(t.text, encoding="utf-8")
        else:
            store.copy_to(t.sha256 or "", dest)


def plan_bids(
    session: Session, root: Container, *, source: str, data_types: Sequence[str] = ()
) -> BidsPlan:
    """The BIDS tree of ``root`` (project, subject, session or acquisition); no role check.

    ``data_types`` keeps only those datatype folders (``anat``, ``func``...; empty: all).
    Top-level files are always part of it.
    """
    project = root if root.type == "project" else session.get(Container, root.project_id)
    assert project is not None
    plan = BidsPlan()
    wanted = frozenset(data_types)

    def copy(rel: str, f: File) -> None:
        if not safe_relpath(rel):
            holder = session.get(Container, f.container_id)
            assert holder is not None
            plan.skipped.append((f"{container_path(session, holder)}/{f.name}",
                                 f"BIDS path {rel!r} leaves the dataset"))
            return
        folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if wanted and folder.rsplit("/", 1)[-1] in BIDS_DATATYPES and (
            folder.rsplit("/", 1)[-1] not in wanted
        ):
            return
        plan.add_copy(rel, f, file_version(session, f))

    # top-level BIDS files stored on the project
    for f in session.scalars(
        select(File).where(File.container_id == project.id).order_by(File.name)
    ).all():
        bids_info = (f.info or {}).get("BIDS")
        if isinstance(bids_info, dict) and bids_info.get("Filename"):
            rel = "/".join(p for p in (bids_info.get("Path") or "", f.name) if p)
            copy(rel, f)
    only: Container | None = None
    if root.type in ("session", "acquisition"):
        sess = root if root.type == "session" else session.get(Container, root.session_id)
        subject = session.get(Container, root.subject_id)
        assert sess is not None and subject is not None
        subjects, fixed = [subject], [sess]
        only = root if root.type == "acquisition" else None
    else:
        subjects, fixed = _containers_under(session, root, "subject"), []
    participants: list[str] = []
    for subject in subjects:
        sub = bids_label(subject.label, "sub-")
        participants.append(f"sub-{sub}")
        all_sessions = _containers_under(session, subject, "session")
        sessions = fixed or all_sessions
        named = [s for s in all_sessions if s.label != DEFAULT_SESSION]
        if only is None:  # files stored on the subject (*_sessions.tsv)
            for f in session.scalars(
                select(File).where(File.container_id == subject.id).order_by(File.name)
            ).all():
                bids_info = (f.info or {}).get("BIDS")
                if isinstance(bids_info, dict) and bids_info.get("Filename"):
                    copy(f"sub-{sub}/{f.name}", f)
        for sess in sessions:
            ses = bids_label(sess.label, "ses-") if named else None
            base = f"sub-{sub}" + (f"/ses-{ses}" if ses else "")
            _export_session(session, sess, sub, ses, base, copy, plan, wanted, only)
    if "dataset_description.json" not in plan.paths:
        desc = {
            "Name": project.label,
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "GeneratedBy": [{"Name": "hpcgear", "Description": f"export of {source}"}],
        }
        plan.add_text("dataset_description.json", json.dumps(desc, indent=2) + "\n")
    if "participants.tsv" not in plan.paths:
        rows = "participant_id\n" + "".join(f"{p}\n" for p in participants)
        plan.add_text("participants.tsv", rows)
    if "README" not in plan.paths and "README.md" not in plan.paths:
        plan.add_text("README", f"BIDS export of {source} by hpcgear.\n")
    plan.files.sort(key=lambda t: t.path)
    return plan


def _containers_under(session: Session, node: Container, ctype: str) -> list[Container]:
    if node.type == ctype:
        return [node]
    column = {"project": Container.project_id, "subject": Container.subject_id}.get(node.type)
    if column is None:
        return []
    return list(
        session.scalars(
            select(Container)
            .where(column == node.id, Container.type == ctype)
            .order_by(Container.label)
        ).all()
    )


def _export_session(
    session: Session,
    sess: Container,
    sub: str,
    ses: str | None,
    base: str,
    copy: Callable[[str, File], None],
    plan: BidsPlan,
    wanted: frozenset[str],
    only: Container | None,
) -> None:
    holders = [only] if only is not None else [sess, *_containers_under_session(session, sess)]
    for holder in holders:
        files = session.scalars(
            select(File).where(File.container_id == holder.id).order_by(File.name)
        ).all()
        by_stem = {image_stem(f.name) or f.name: f for f in files}
        for f in files:
            where = f"{container_path(session, holder)}/{f.name}"
            bids_info = (f.info or {}).get("BIDS")
            stem = image_stem(f.name)
            if stem is None:
                if isinstance(bids_info, dict) and bids_info.get("Filename"):
                    folder = str(bids_info.get("Path") or "")
                    copy(f"{folder}/{f.name}" if folder else f"{base}/{f.name}", f)
                continue
            named = _bids_name_for(f, sub, ses)
            if named is None:
                plan.skipped.append((where, "no BIDS name (no BIDS info or classification)"))
                continue
            datatype, name = named
            if wanted and datatype not in wanted:
                continue
            rel = f"{base}/{datatype}/{name}"
            n = 2
            while rel in plan.paths:
                rel = f"{base}/{datatype}/{_with_run(name, n)}"
                n += 1
            copy(rel, f)
            new_stem = image_stem(rel) or rel
            sidecar = next(
                (g for g in files if g.name.endswith(".json") and g.name[: -len(".json")] == stem),
                None,
            )
            if sidecar is not None:
                copy(f"{new_stem}.json", sidecar)
            else:
                keys = {k: v for k, v in (f.info or {}).items() if k not in _SKIP_INFO}
                plan.add_text(f"{new_stem}.json", json.dumps(keys, indent=2, default=str))
            for ext in (".bval", ".bvec"):
                extra = by_stem.get(f"{stem}{ext}") or next(
                    (g for g in files if g.name == f"{stem}{ext}"), None
                )
                if extra is not None:
                    copy(f"{new_stem}{ext}", extra)


def _containers_under_session(session: Session, sess: Container) -> list[Container]:
    return list(
        session.scalars(
            select(Container)
            .where(Container.session_id == sess.id, Container.type == "acquisition")
            .order_by(Container.label)
        ).all()
    )
