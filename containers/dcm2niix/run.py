#!/usr/bin/env python3
"""hpcgear dcm2niix gear: DICOM series -> NIfTI (+ BIDS sidecar) with Debian's dcm2niix.

Reads /flywheel/v0/config.json, unpacks the `dicom` input (a zip archive of the
series, or a single DICOM file) under /flywheel/v0/work when that directory is
writable (else a temporary directory), runs dcm2niix with options mapped from the
config, and writes the results and a Flywheel `.metadata.json` to
/flywheel/v0/output. Standard library only (the image has python3 and dcm2niix).

Exit status: 0 on success; 1 when the input is unusable, dcm2niix fails (unless
`ignore_errors`) or nothing was converted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

FLYWHEEL = Path(os.environ.get("FLYWHEEL", "/flywheel/v0"))
INPUT_NAME = "dicom"

# config key -> (dcm2niix flag, value map). Booleans map to y/n.
YES_NO = {True: "y", False: "n"}
FLAGS = {
    "bids_sidecar": ("-b", None),
    "anonymize_bids": ("-ba", YES_NO),
    "compress_images": ("-z", None),
    "merge2d": ("-m", {"auto": "2", "y": "y", "n": "n"}),
    "ignore_derived": ("-i", YES_NO),
    "single_file_mode": ("-s", YES_NO),
    "crop": ("-x", YES_NO),
    "philips_scaling": ("-p", YES_NO),
    "lossless_scaling": ("-l", None),
    "output_nrrd": ("-e", YES_NO),
    "search_depth": ("-d", None),
    "dcm2niix_verbose": ("-v", YES_NO),
}
DEFAULTS = {
    "bids_sidecar": "y",
    "anonymize_bids": True,
    "compress_images": "y",
    "compression_level": 6,
    "filename": "%f_%s",
    "merge2d": "auto",
    "ignore_derived": False,
    "single_file_mode": False,
    "crop": False,
    "philips_scaling": True,
    "lossless_scaling": "o",
    "comment": "",
    "output_nrrd": False,
    "search_depth": 5,
    "ignore_errors": False,
    "dcm2niix_verbose": False,
}
# Flywheel file types of what dcm2niix writes, by suffix.
FILE_TYPES = (
    (".nii.gz", "nifti"),
    (".nii", "nifti"),
    (".nhdr", "nrrd"),
    (".nrrd", "nrrd"),
    (".raw.gz", "nrrd"),
    (".json", "source code"),
    (".bval", "bval"),
    (".bvec", "bvec"),
)


class GearError(Exception):
    """A failure explained to the user in one line."""


def log(message: str) -> None:
    print(f"dcm2niix gear: {message}", flush=True)


def dcm2niix_argv(config: dict, source: Path, output: Path) -> list[str]:
    """The dcm2niix command line for ``config`` (every value already validated by hpcgear)."""
    settings = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    argv = ["dcm2niix"]
    for key, (flag, mapping) in FLAGS.items():
        value = settings[key]
        argv += [flag, str(mapping[value] if mapping is not None else value)]
    level = int(settings["compression_level"])
    if not 1 <= level <= 9:
        raise GearError(f"compression_level must be 1..9, got {level}")
    argv.append(f"-{level}")
    pattern = str(settings["filename"])
    if not pattern or "/" in pattern:
        raise GearError(f"filename pattern {pattern!r} must be a non-empty name without '/'")
    argv += ["-f", pattern]
    if settings["comment"]:
        argv += ["-c", str(settings["comment"])[:24]]
    argv += ["-w", "1", "-o", str(output), str(source)]
    return argv


def series_name(file_name: str) -> str:
    """The folder name dcm2niix sees (``%f``): the input's name without archive suffixes."""
    name = re.sub(r"(\.dicom)?\.(zip|dcm|ima)$", "", file_name, flags=re.IGNORECASE)
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "dicom"
    return name


def unpack(archive: Path, target: Path) -> int:
    """Extract the regular files of a zip archive into ``target``; refuse unsafe names."""
    count = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if not parts or info.filename.startswith("/") or ".." in parts:
                raise GearError(f"the archive member {info.filename!r} escapes the archive")
            dest = target.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
    return count


def stage_input(path: Path, work: Path) -> Path:
    """The directory dcm2niix converts: the unpacked archive, or a folder with the one file."""
    folder = work / series_name(path.name)
    folder.mkdir(parents=True)
    if zipfile.is_zipfile(path):
        count = unpack(path, folder)
        log(f"unpacked {count} files from {path.name}")
        if count == 0:
            raise GearError(f"{path.name} is an empty archive")
    else:
        shutil.copyfile(path, folder / path.name)
        log(f"converting the single file {path.name}")
    return folder


def file_type(name: str) -> str | None:
    for suffix, kind in FILE_TYPES:
        if name.endswith(suffix):
            return kind
    return None


def sidecar_for(path: Path) -> Path:
    stem = re.sub(r"(\.nii\.gz|\.nii|\.nhdr|\.nrrd)$", "", path.name)
    return path.with_name(stem + ".json")


def build_metadata(output: Path, input_object: dict, container_type: str) -> dict:
    """Flywheel .metadata.json: each output file with type, modality, classification, info."""
    classification = input_object.get("classification") or {}
    input_modality = input_object.get("modality")
    files = []
    for path in sorted(p for p in output.iterdir() if p.is_file() and not p.name.startswith(".")):
        kind = file_type(path.name)
        if kind is None:
            continue
        entry: dict = {"name": path.name, "type": kind}
        sidecar = sidecar_for(path) if kind != "source code" else path
        info = {}
        if sidecar.is_file():
            try:
                info = json.loads(sidecar.read_text(encoding="utf-8", errors="replace"))
            except ValueError:
                info = {}
        modality = input_modality or info.get("Modality")
        if modality:
            entry["modality"] = modality
        if classification:
            entry["classification"] = classification
        if info and kind in ("nifti", "nrrd"):
            entry["info"] = info
        files.append(entry)
    return {container_type: {"files": files}}


def main() -> int:
    config_path = FLYWHEEL / "config.json"
    output = FLYWHEEL / "output"
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
        config = document.get("config") or {}
        item = (document.get("inputs") or {}).get(INPUT_NAME)
        if not item:
            raise GearError(f"config.json has no input {INPUT_NAME!r}")
        source = Path(item["location"]["path"])
        if not source.is_file():
            raise GearError(f"input file {source} does not exist")
        destination = document.get("destination") or {}
        # Outputs (and so their metadata) go to the destination container.
        container_type = destination.get("type") or "acquisition"
        work_root = FLYWHEEL / "work"
        if not (work_root.is_dir() and os.access(work_root, os.W_OK)):
            work_root = Path(tempfile.mkdtemp(prefix="dcm2niix-"))
        work = Path(tempfile.mkdtemp(prefix="dicom-", dir=work_root))
        folder = stage_input(source, work)
        argv = dcm2niix_argv(config, folder, output)
        log("running " + " ".join(argv))
        proc = subprocess.run(argv, check=False)
        if proc.returncode != 0:
            if config.get("ignore_errors"):
                log(f"dcm2niix exited {proc.returncode}; keeping outputs (ignore_errors)")
            else:
                for p in output.iterdir():
                    if p.is_file() and file_type(p.name):
                        p.unlink()
                raise GearError(f"dcm2niix exited with status {proc.returncode}")
        converted = [p for p in output.iterdir() if file_type(p.name) in ("nifti", "nrrd")]
        only_sidecar = config.get("bids_sidecar") == "o"
        if not converted and not only_sidecar:
            raise GearError("dcm2niix wrote no NIfTI: is the input a DICOM image series?")
        metadata = build_metadata(output, item.get("object") or {}, container_type)
        (output / ".metadata.json").write_text(json.dumps(metadata, indent=2) + "\n",
                                              encoding="utf-8")
        log(f"wrote {len(metadata[container_type]['files'])} files: "
            + ", ".join(f["name"] for f in metadata[container_type]["files"]))
        shutil.rmtree(work, ignore_errors=True)
        return 0
    except GearError as exc:
        print(f"dcm2niix gear: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        print(f"dcm2niix gear: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
