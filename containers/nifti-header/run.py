#!/usr/bin/env python3
"""hpcgear nifti-header gear: a NIfTI header summary -> the input file's info.

Reads /flywheel/v0/config.json, loads the `nifti` input's header with nibabel
(the image data is never read) and writes /flywheel/v0/output/.metadata.json
updating the *input* file's info::

    {"acquisition": {"files": [{"name": "<input>", "type": "nifti",
        "info": {"header": {"nifti": {"dims": [64, 64, 10], "voxel_size": [...],
                                      "tr_seconds": 2.0, "orientation": "RAS", ...}}}}]}}
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import nibabel as nib

FLYWHEEL = Path(os.environ.get("FLYWHEEL", "/flywheel/v0"))
INPUT_NAME = "nifti"
#: Seconds per unit of the NIfTI time unit (xyzt_units); "unknown" is taken as seconds.
TIME_SCALE = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}


class GearError(Exception):
    """A failure explained to the user in one line."""


def log(message: str) -> None:
    print(f"nifti-header gear: {message}", flush=True)


def number(value: Any, decimals: int) -> Any:
    f = float(value)
    if not math.isfinite(f):
        return None
    r = round(f, decimals)
    return int(r) if r.is_integer() and decimals == 0 else r


def text(value: Any) -> str:
    raw = value.item() if hasattr(value, "item") else value
    if isinstance(raw, bytes):
        raw = raw.split(b"\0", 1)[0].decode("latin-1")
    return str(raw).strip()


def summarize(img: Any, decimals: int, include_affine: bool) -> dict[str, Any]:
    """The header summary stored in info.header.nifti."""
    header = img.header
    shape = [int(n) for n in img.shape]
    zooms = [number(z, decimals) for z in header.get_zooms()]
    space_unit, time_unit = header.get_xyzt_units()
    summary: dict[str, Any] = {
        "format": "NIfTI-2" if isinstance(header, nib.Nifti2Header) else "NIfTI-1",
        "dims": shape,
        "ndim": len(shape),
        "voxel_size": zooms[:3],
        "zooms": zooms,
        "units": {"space": space_unit, "time": time_unit},
        "orientation": "".join(str(c) for c in nib.aff2axcodes(img.affine)),
        "datatype": header.get_data_dtype().name,
        "byte_order": "big" if header.endianness == ">" else "little",
        "datatype_code": int(header["datatype"]),
        "bitpix": int(header["bitpix"]),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "intent": str(header.get_intent()[0]),
        "description": text(header["descrip"]),
    }
    if len(shape) >= 4 and len(zooms) >= 4 and zooms[3] is not None:
        summary["tr_seconds"] = number(float(header.get_zooms()[3])
                                       * TIME_SCALE.get(time_unit, 1.0), decimals)
        summary["volumes"] = shape[3]
    slope, inter = header.get_slope_inter()
    if slope is not None:
        summary["scl_slope"] = number(slope, decimals)
        summary["scl_inter"] = number(inter if inter is not None else 0.0, decimals)
    freq, phase, slice_dim = header.get_dim_info()
    summary["dim_info"] = {"freq": freq, "phase": phase, "slice": slice_dim}
    if include_affine:
        summary["affine"] = [[number(v, decimals) for v in row] for row in img.affine.tolist()]
    return summary


def main() -> int:
    try:
        document = json.loads((FLYWHEEL / "config.json").read_text(encoding="utf-8"))
        config = document.get("config") or {}
        item = (document.get("inputs") or {}).get(INPUT_NAME)
        if not item:
            raise GearError(f"config.json has no input {INPUT_NAME!r}")
        path = Path(item["location"]["path"])
        if not path.is_file():
            raise GearError(f"input file {path} does not exist")
        decimals = int(config.get("decimals", 6))
        try:
            img = nib.load(str(path))
        except (nib.filebasedimages.ImageFileError, OSError, ValueError) as exc:
            raise GearError(f"{path.name} is not a NIfTI image nibabel can read: {exc}") from None
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise GearError(f"{path.name} is a {type(img).__name__}, not NIfTI")
        summary = summarize(img, decimals, bool(config.get("include_affine", True)))
        entry = {
            "name": item["location"].get("name", path.name),
            "type": "nifti",
            "info": {"header": {"nifti": summary}},
        }
        container = (item.get("hierarchy") or {}).get("type") or (
            document.get("destination") or {}).get("type") or "acquisition"
        out = FLYWHEEL / "output" / ".metadata.json"
        out.write_text(json.dumps({container: {"files": [entry]}}, indent=2) + "\n",
                       encoding="utf-8")
        log(f"{path.name}: {summary['format']} {'x'.join(map(str, summary['dims']))} "
            f"{summary['datatype']} {summary['orientation']} voxel {summary['voxel_size']}")
        return 0
    except GearError as exc:
        print(f"nifti-header gear: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"nifti-header gear: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
