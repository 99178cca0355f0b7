"""NIfTI on disk: header facts (nibabel), sidecars and BIDS names. No database here.

An image is ``*.nii`` or ``*.nii.gz``; files with the same stem and ``.json``,
``.bval`` or ``.bvec`` are its sidecars and go beside it. BIDS names
(``sub-01[_ses-02]_..._<suffix>.nii.gz``) give the subject (``sub-01``), the
session (``ses-02``) and the acquisition (the BIDS datatype folder such as
``anat``, else the suffix such as ``T1w``).

Reason codes: ``not_nifti`` (not an image or sidecar), ``orphan_sidecar`` (a
sidecar without its image), ``unreadable`` (nibabel cannot read the header, or
the file is truncated / its gzip stream is corrupt).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgear.ingest.dicom import (
    UNREADABLE,
    ProgressCallback,
    ProgressEvent,
    SkippedFile,
    list_files,
    parallel_map,
    relative,
)

logger = logging.getLogger(__name__)

NOT_NIFTI = "not_nifti"
ORPHAN_SIDECAR = "orphan_sidecar"
IMAGE_SUFFIXES = (".nii.gz", ".nii")
SIDECAR_SUFFIXES = (".json", ".bval", ".bvec")
MAX_SIDECAR_JSON = 1024 * 1024

BIDS_DATATYPES = frozenset(
    {"anat", "func", "dwi", "fmap", "perf", "pet", "beh", "micr", "nirs", "motion"}
)
_BIDS_RE = re.compile(
    r"^sub-(?P<sub>[A-Za-z0-9]+)"
    r"(?:_ses-(?P<ses>[A-Za-z0-9]+))?"
    r"(?P<entities>(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*)"
    r"_(?P<suffix>[A-Za-z0-9]+)$"
)

#: BIDS suffix -> (Intent, Measurement, Features) in Flywheel's vocabulary.
BIDS_CLASSIFICATION: dict[str, tuple[list[str], list[str], list[str]]] = {
    "T1w": (["Structural"], ["T1"], []),
    "T2w": (["Structural"], ["T2"], []),
    "PDw": (["Structural"], ["PD"], []),
    "T2starw": (["Structural"], ["T2*"], []),
    "FLAIR": (["Structural"], ["T2"], ["FLAIR"]),
    "T1map": (["Structural"], ["T1"], ["Quantitative"]),
    "T2map": (["Structural"], ["T2"], ["Quantitative"]),
    "UNIT1": (["Structural"], ["T1"], ["MP2RAGE", "Uniform"]),
    "angio": (["Structural"], ["T1"], ["Angio"]),
    "bold": (["Functional"], ["T2*"], []),
    "sbref": (["Functional"], ["T2*"], ["SBRef"]),
    "dwi": (["Structural"], ["Diffusion"], []),
    "epi": (["Fieldmap"], ["B0"], ["SE-EPI"]),
    "phasediff": (["Fieldmap"], ["B0"], ["Phase"]),
    "phase1": (["Fieldmap"], ["B0"], ["Phase"]),
    "phase2": (["Fieldmap"], ["B0"], ["Phase"]),
    "magnitude": (["Fieldmap"], ["B0"], ["Magnitude"]),
    "magnitude1": (["Fieldmap"], ["B0"], ["Magnitude"]),
    "magnitude2": (["Fieldmap"], ["B0"], ["Magnitude"]),
    "fieldmap": (["Fieldmap"], ["B0"], []),
    "TB1map": (["Fieldmap"], ["B1"], []),
    "asl": (["Structural"], ["Perfusion"], []),
    "m0scan": (["Calibration"], ["Perfusion"], []),
}
_MR_DATATYPES = frozenset({"anat", "func", "dwi", "fmap", "perf"})


@dataclass(frozen=True, slots=True)
class BidsName:
    subject: str  # "sub-01"
    session: str | None  # "ses-02"
    entities: dict[str, str]
    suffix: str
    datatype: str | None  # the parent folder when it is a BIDS datatype


def image_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def sidecar_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in SIDECAR_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def parse_bids_name(path: Path) -> BidsName | None:
    stem = image_stem(path.name)
    if stem is None:
        return None
    m = _BIDS_RE.match(stem)
    if m is None:
        return None
    entities = dict(
        part.split("-", 1) for part in m.group("entities").strip("_").split("_") if part
    )
    parent = path.parent.name
    return BidsName(
        subject=f"sub-{m.group('sub')}",
        session=f"ses-{m.group('ses')}" if m.group("ses") else None,
        entities=entities,
        suffix=m.group("suffix"),
        datatype=parent if parent in BIDS_DATATYPES else None,
    )


def bids_classification(bids: BidsName | None) -> dict[str, list[str]]:
    if bids is None or bids.suffix not in BIDS_CLASSIFICATION:
        return {}
    intent, measurement, features = BIDS_CLASSIFICATION[bids.suffix]
    return {"Intent": list(intent), "Measurement": list(measurement), "Features": list(features)}


@dataclass(frozen=True, slots=True)
class NiftiImage:
    path: Path
    rel: str
    sidecars: tuple[Path, ...]
    bids: BidsName | None
    facts: dict[str, Any]
    sidecar_info: dict[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> str | None:
        declared = self.sidecar_info.get("Modality")
        if isinstance(declared, str) and declared:
            return declared
        if self.bids is not None:
            if self.bids.datatype == "pet":
                return "PT"
            if self.bids.datatype in _MR_DATATYPES or self.bids.suffix in BIDS_CLASSIFICATION:
                return "MR"
        return None


_TIME_SCALE = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def _num(value: Any) -> float | None:
    f = float(value)
    return f if math.isfinite(f) else None


def _gzip_check(path: Path, needed: int) -> str | None:
    """Stream the whole gzip member: truncation and CRC errors show here."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1024 * 1024):
                total += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        return f"corrupt gzip stream: {exc}"
    if total < needed:
        return f"image data is cut short ({total} of {needed} bytes)"
    return None


def read_facts(path: Path) -> dict[str, Any]:
    """Header facts of one image; raises ValueError naming the problem when unusable."""
    import nibabel as nib
    import numpy as np

    try:
        img: Any = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types on corrupt input
        raise ValueError(f"not a readable NIfTI header: {type(exc).__name__}: {exc}") from None
    header: Any = img.header
    if not hasattr(header, "get_xyzt_units"):
        raise ValueError(f"not a NIfTI image ({type(img).__name__})")
    shape = [int(d) for d in img.shape]
    dtype = np.dtype(header.get_data_dtype())
    offset = int(getattr(img.dataobj, "offset", 0) or 0)
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.name.lower().endswith(".gz"):
        problem = _gzip_check(path, needed)
    else:
        size = path.stat().st_size
        problem = f"image data is cut short ({size} of {needed} bytes)" if size < needed else None
    if problem is not None:
        raise ValueError(problem)
    zooms = [_num(z) for z in header.get_zooms()]
    space_unit, time_unit = header.get_xyzt_units()
    facts: dict[str, Any] = {
        "format": type(img).__name__.replace("Image", ""),
        "dims": shape,
        "ndim": len(shape),
        "voxel_size": zooms[:3],
        "space_units": space_unit,
        "datatype": str(dtype.name),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "orientation": "".join(str(c) for c in _axcodes(img.affine) if c is not None),
    }
    if len(shape) >= 4:
        tr = _num(header["pixdim"][4])
        facts["tr"] = tr
        facts["tr_units"] = time_unit
        scale = _TIME_SCALE.get(time_unit)
        if tr is not None and scale is not None:
            facts["tr_seconds"] = tr * scale
        facts["volumes"] = shape[3]
    return facts


def _axcodes(affine: Any) -> tuple[str | None, ...]:
    from nibabel.orientations import aff2axcodes

    codes: tuple[str | None, ...] = aff2axcodes(affine)  # type: ignore[no-untyped-call]
    return codes


def _sidecar_info(sidecars: tuple[Path, ...]) -> dict[str, Any]:
    for p in sidecars:
        if p.name.lower().endswith(".json") and p.stat().st_size <= MAX_SIDECAR_JSON:
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError, OSError):
                logger.warning("sidecar %s is not valid JSON; not copied into info", p)
                return {}
            if isinstance(data, dict):
                return {k: v for k, v in data.items() if isinstance(k, str) and k != "hpcgear"}
    return {}


@dataclass(frozen=True, slots=True)
class NiftiScan:
    images: list[NiftiImage]
    skipped: list[SkippedFile]
    files_seen: int


def scan_nifti(root: Path, *, jobs: int = 4, progress: ProgressCallback | None = None) -> NiftiScan:
    """Find images and their sidecars under ``root``; read headers in ``jobs`` threads."""
    root = Path(root)
    files = list_files(root)
    images: dict[tuple[Path, str], Path] = {}
    sidecars: dict[tuple[Path, str], list[Path]] = {}
    skipped: list[SkippedFile] = []
    for p in files:
        stem = image_stem(p.name)
        if stem is not None:
            images[(p.parent, stem)] = p
            continue
        stem = sidecar_stem(p.name)
        if stem is not None:
            sidecars.setdefault((p.parent, stem), []).append(p)
            continue
        skipped.append(SkippedFile(relative(p, root), NOT_NIFTI, "not a NIfTI image or sidecar"))
    for key, paths in sidecars.items():
        if key not in images:
            for p in paths:
                skipped.append(
                    SkippedFile(relative(p, root), ORPHAN_SIDECAR, "no image with the same name")
                )
    ordered = sorted(images.items(), key=lambda kv: str(kv[1]))
    total = len(files)
    others = total - len(ordered)
    done_base = others
    read: Callable[[Path], dict[str, Any] | str] = _read_or_reason
    out: list[NiftiImage] = []
    with parallel_map(read, [p for _k, p in ordered], jobs, "nifti-scan") as results:
        for i, ((key, path), facts) in enumerate(zip(ordered, results, strict=True), start=1):
            rel = relative(path, root)
            if isinstance(facts, str):
                skipped.append(SkippedFile(rel, UNREADABLE, facts))
                for p in sidecars.get(key, []):
                    skipped.append(
                        SkippedFile(relative(p, root), UNREADABLE, "its image is unreadable")
                    )
            else:
                cars = tuple(sorted(sidecars.get(key, [])))
                out.append(
                    NiftiImage(
                        path=path,
                        rel=rel,
                        sidecars=cars,
                        bids=parse_bids_name(path),
                        facts=facts,
                        sidecar_info=_sidecar_info(cars),
                    )
                )
            if progress is not None:
                progress(ProgressEvent("scan", done_base + i, total))
    skipped.sort(key=lambda s: s.path)
    return NiftiScan(out, skipped, total)


def _read_or_reason(path: Path) -> dict[str, Any] | str:
    try:
        return read_facts(path)
    except ValueError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
