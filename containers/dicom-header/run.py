#!/usr/bin/env python3
"""hpcgear dicom-header gear: DICOM header -> file info, modality and classification.

Reads /flywheel/v0/config.json, reads the headers of the `dicom` input (a zip
archive of a series, or one DICOM file) with pydicom (pixel data is never
read), and writes /flywheel/v0/output/.metadata.json updating the *input* file:

    {"acquisition": {"files": [{"name": "<input file name>", "type": "dicom",
        "modality": "MR",
        "classification": {"Intent": [...], "Measurement": [...], "Features": [...]},
        "info": {"header": {"dicom": {...first file...},
                            "dicom_array": {...fields that vary across files...}},
                 "classifier": {"name": "hpcgear.ingest.classifier", "version": "..."}}}]}}

The classifier is hpcgear's own module, copied verbatim into the image at build
time (/flywheel/v0/classifier.py), so the gear and hpcgear's ingest classify alike.
"""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

FLYWHEEL = Path(os.environ.get("FLYWHEEL", "/flywheel/v0"))
sys.path.insert(0, str(FLYWHEEL))
import classifier  # noqa: E402  (vendored hpcgear.ingest.classifier)

INPUT_NAME = "dicom"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
MAX_SEQUENCE_DEPTH = 3
MAX_ARRAY_FIELDS = 200


class GearError(Exception):
    """A failure explained to the user in one line."""


def log(message: str) -> None:
    print(f"dicom-header gear: {message}", flush=True)


def json_value(elem: Any, private: bool, limit: int, depth: int = 0) -> Any:
    """A JSON-safe value for a data element, or None to leave it out."""
    if elem.VR in BINARY_VRS:
        return None
    if elem.VR == "SQ":
        if depth >= MAX_SEQUENCE_DEPTH:
            return None
        return [dataset_dict(item, private, limit, depth + 1) for item in elem.value]
    value = elem.value
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, bytes):
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        items = [scalar(v) for v in value]
        return items if items else None
    return scalar(value)


def scalar(value: Any) -> Any:
    """pydicom value types (DSfloat, IS, PersonName, UID, ...) as plain JSON values."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        f = float(value)
        return f if f == f and f not in (float("inf"), float("-inf")) else str(value)
    name = type(value).__name__
    if name in ("DSfloat", "DSdecimal"):
        return float(value)
    if name == "IS":
        return int(value)
    return str(value)


def dataset_dict(ds: Any, private: bool, limit: int, depth: int = 0) -> dict[str, Any]:
    """Public elements by keyword (private ones by "GGGG,EEEE" when asked)."""
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag.group == 0x7FE0:  # pixel data
            continue
        if elem.tag.is_private:
            if not private:
                continue
            key = f"{elem.tag.group:04X},{elem.tag.element:04X}"
        else:
            key = elem.keyword or f"{elem.tag.group:04X},{elem.tag.element:04X}"
        try:
            value = json_value(elem, private, limit, depth)
        except (ValueError, TypeError):
            continue
        if value is None:
            continue
        if len(json.dumps(value, ensure_ascii=False)) > limit:
            continue
        out[key] = value
    return out


def read_headers(path: Path) -> list[Any]:
    """Headers (no pixel data) of every DICOM image in the archive or file, in order."""
    datasets = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                try:
                    ds = pydicom.dcmread(io.BytesIO(zf.read(info)), stop_before_pixels=True)
                except (InvalidDicomError, ValueError, EOFError, OSError):
                    continue
                datasets.append(ds)
    else:
        try:
            datasets.append(pydicom.dcmread(str(path), stop_before_pixels=True))
        except (InvalidDicomError, ValueError, EOFError) as exc:
            raise GearError(f"{path.name} is not a DICOM file: {exc}") from None
    images = [ds for ds in datasets if str(ds.get("SOPClassUID", "")) != DICOMDIR_SOP_CLASS]

    def order(ds: Any) -> tuple[int, str]:
        number = ds.get("InstanceNumber")
        try:
            return (int(number), "")
        except (TypeError, ValueError):
            return (2**31, str(ds.get("SOPInstanceUID", "")))

    return sorted(images, key=order)


def varying_fields(headers: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Fields whose value differs between files, as one list per field (file order)."""
    if len(headers) < 2:
        return {}
    keys = sorted({k for h in headers for k in h})
    out: dict[str, list[Any]] = {}
    for key in keys:
        values = [h.get(key) for h in headers]
        if any(isinstance(v, list) and v and isinstance(v[0], dict) for v in values):
            continue  # sequences stay per file
        if any(v != values[0] for v in values[1:]):
            out[key] = values
            if len(out) >= MAX_ARRAY_FIELDS:
                break
    return out


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
        private = bool(config.get("include_private_tags", False))
        limit = int(config.get("max_value_length", 1024))
        datasets = read_headers(path)
        if not datasets:
            raise GearError(f"{path.name} holds no DICOM image")
        headers = [dataset_dict(ds, private, limit) for ds in datasets]
        header = headers[0]
        info: dict[str, Any] = {"header": {"dicom": header}}
        array = varying_fields(headers)
        if array:
            info["header"]["dicom_array"] = array
        entry: dict[str, Any] = {"name": item["location"].get("name", path.name), "type": "dicom"}
        if header.get("Modality"):
            entry["modality"] = header["Modality"]
        if config.get("classify", True):
            entry["classification"] = classifier.classify(header)
            info["classifier"] = {"name": "hpcgear.ingest.classifier",
                                  "version": classifier.CLASSIFIER_VERSION}
        entry["info"] = info
        # The metadata updates the input file, so it is keyed by the input's container.
        container = (item.get("hierarchy") or {}).get("type") or (
            document.get("destination") or {}).get("type") or "acquisition"
        metadata = {container: {"files": [entry]}}
        out = FLYWHEEL / "output" / ".metadata.json"
        out.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n",
                       encoding="utf-8")
        log(f"{len(datasets)} DICOM files, {len(header)} header fields, modality "
            f"{entry.get('modality', '?')}, classification {entry.get('classification')}")
        return 0
    except GearError as exc:
        print(f"dicom-header gear: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        print(f"dicom-header gear: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
