"""Build the bundled gears with the real Apptainer and run them on real data.

Images come from the persistent build cache (``hpcgear.gears.build.default_cache_dir``:
``$HPCGEAR_BUILD_CACHE``, else the dev cluster's ``cache/gears``), so only the first run
on a machine pays for debootstrap + ``apptainer build`` (about 5 minutes for all four
images); later runs reuse them unless a recipe or gear file changed.

Each gear runs as a job would: ``config.json`` made by hpcgear's own
``resolve_config`` + ``build_config_json``, the manifest environment in an env file,
and the argv from hpcgear's Apptainer command builder (``--containall --cleanenv
--pwd /flywheel/v0``, input read-only, output, work and config.json bound in). The
data is what pydicom and nibabel ship for their own tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hpcgear.gears.build import BuildResult, GearBuilder, default_cache_dir, load_recipe
from hpcgear.gears.configjson import build_config_json, dump_config_json
from hpcgear.gears.gear_config import resolve_config
from hpcgear.gears.manifest import load_manifest
from hpcgear.runtimes import ApptainerRuntime, ContainerInvocation, ContainerMount
from hpcgear.runtimes.envfile import render_env_file
from hpcgear.spec import InputSpec

if TYPE_CHECKING:
    from tests.conftest import CliEnv
    from tests.integration.conftest import DevEnv

pytestmark = [pytest.mark.integration, pytest.mark.apptainer]

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
GEARS = ("test-gear", "dcm2niix", "dicom-header", "nifti-header")
HOSTILE = "-- $(touch pwned); '\"`*?[x] {a,b} ünï ✓.txt"


def pydicom_data() -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


def nibabel_data() -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data"


# ----------------------------------------------------------------- building


@pytest.fixture(scope="session")
def images(dev_env: DevEnv) -> dict[str, BuildResult]:
    """Every bundled image, built (or found) in the persistent build cache."""
    builder = GearBuilder(default_cache_dir(), apptainer=str(dev_env.apptainer),
                          progress=lambda line: print(f"==> {line}", flush=True))
    return {name: builder.build(load_recipe(CONTAINERS / name)) for name in GEARS}


@dataclass
class GearRun:
    rc: int
    stdout: str
    stderr: str
    jobdir: Path
    config: dict[str, Any]

    @property
    def output(self) -> Path:
        return self.jobdir / "output"

    def outputs(self) -> list[str]:
        return sorted(p.name for p in self.output.iterdir())

    def metadata(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.output / ".metadata.json").read_text())
        return data


def prepare(dev_env: DevEnv, sif: Path, gear: str, jobdir: Path, config: Mapping[str, Any],
            inputs: Mapping[str, tuple[Path, Mapping[str, Any]]] | None = None,
            destination: tuple[str, str] = ("acquisition", "acq-1")) -> list[str]:
    """Lay out a job directory the way stage-in does; return the argv that runs the gear."""
    manifest = load_manifest(CONTAINERS / gear)
    for sub in ("input", "output", "work", "home", "tmp", "marker", "apptainer"):
        (jobdir / sub).mkdir(parents=True, exist_ok=True)
    specs = []
    for name, (path, obj) in (inputs or {}).items():
        (jobdir / "input" / name).mkdir()
        shutil.copyfile(path, jobdir / "input" / name / path.name)
        specs.append(InputSpec(name=name, base="file", file_name=path.name,
                               size=path.stat().st_size, container_type="acquisition",
                               container_id="acq-1", object=dict(obj)))
    document = build_config_json(resolve_config(manifest, config), specs, *destination,
                                 manifest=manifest)
    (jobdir / "config.json").write_text(dump_config_json(document))
    (jobdir / "gear.env").write_text(render_env_file(
        [*manifest.environment, ("HPCGEAR_JOB_ID", "job-1")]))
    invocation = ContainerInvocation(
        image=str(sif),
        command=manifest.command,
        env_file=str(jobdir / "gear.env"),
        workdir=str(jobdir / "apptainer"),
        home=str(jobdir / "home"),
        marker_dir=str(jobdir / "marker"),
        mounts=(
            ContainerMount(str(jobdir / "input"), "/flywheel/v0/input", read_only=True),
            ContainerMount(str(jobdir / "output"), "/flywheel/v0/output"),
            ContainerMount(str(jobdir / "work"), "/flywheel/v0/work"),
            ContainerMount(str(jobdir / "config.json"), "/flywheel/v0/config.json",
                           read_only=True),
            ContainerMount(str(jobdir / "tmp"), "/tmp"),
        ),
    )
    return ApptainerRuntime(executable=str(dev_env.apptainer)).build_argv(invocation)


def run_gear(dev_env: DevEnv, images: Mapping[str, BuildResult], gear: str, jobdir: Path,
             config: Mapping[str, Any],
             inputs: Mapping[str, tuple[Path, Mapping[str, Any]]] | None = None,
             destination: tuple[str, str] = ("acquisition", "acq-1"),
             image: str | None = None) -> GearRun:
    sif = images[image or gear].sif
    argv = prepare(dev_env, sif, gear, jobdir, config, inputs, destination)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=jobdir,
                          check=False)
    assert (jobdir / "marker" / "started").exists(), f"the container did not start: {proc.stderr}"
    return GearRun(proc.returncode, proc.stdout, proc.stderr, jobdir,
                   json.loads((jobdir / "config.json").read_text()))


def apptainer(dev_env: DevEnv, *args: str) -> str:
    proc = subprocess.run([str(dev_env.apptainer), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ----------------------------------------------------------------- the images


def test_images_carry_their_recipe(dev_env: DevEnv, images: dict[str, BuildResult]) -> None:
    for name, result in images.items():
        labels = json.loads(apptainer(dev_env, "inspect", "--json", "--labels",
                                      str(result.sif)))["data"]["attributes"]["labels"]
        assert labels["org.hpcgear.recipe-sha256"] == result.recipe_hash
        assert labels["org.hpcgear.gear"].startswith(f"{name}@")
        inside = apptainer(dev_env, "exec", "--containall", str(result.sif),
                           "cat", "/flywheel/v0/manifest.json")
        assert json.loads(inside) == json.loads((CONTAINERS / name / "manifest.json").read_text())
    sizes = {name: r.size for name, r in images.items()}
    assert sizes["test-gear"] < 5_000_000, sizes  # lean images stay lean
    assert all(size < 150_000_000 for size in sizes.values()), sizes


def test_a_second_build_is_a_cache_hit(dev_env: DevEnv, images: dict[str, BuildResult]) -> None:
    builder = GearBuilder(default_cache_dir(), apptainer=str(dev_env.apptainer))
    started = time.monotonic()
    again = builder.build(load_recipe(CONTAINERS / "nifti-header"))
    assert again.cached and again.sif == images["nifti-header"].sif
    assert time.monotonic() - started < 10


# ----------------------------------------------------------------- test-gear


def test_test_gear_outputs_match_its_config(dev_env: DevEnv, images: dict[str, BuildResult],
                                            tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(4096))
    config = {"label": "run.1", "num_files": 3, "file_format": "json", "scratch_mb": 2,
              "hostile_filename": True, "write_metadata": True, "tags": ["a b", "ünï"],
              "exit_code": 3, "fail_message": "configured failure", "sleep_seconds": 0.2}
    run = run_gear(dev_env, images, "test-gear", tmp_path / "job", config,
                   {"input_file": (payload, {"type": "binary"})})
    assert run.rc == 3, run.stderr
    assert "configured failure" in run.stderr
    assert run.outputs() == sorted([".metadata.json", "config.json", "env.txt", "report.txt",
                                    "run.1-1.json", "run.1-2.json", "run.1-3.json", "tags.txt",
                                    HOSTILE])
    assert (run.output / "config.json").read_bytes() == (run.jobdir / "config.json").read_bytes()
    for i in (1, 2, 3):
        assert json.loads((run.output / f"run.1-{i}.json").read_text()) == {
            "index": i, "count": 3, "label": "run.1"}
    assert (run.output / "tags.txt").read_text() == "a b\nünï\n"
    report = dict(line.split("=", 1) for line in (run.output / "report.txt").read_text().split(
        "\n") if line)
    assert report["pwd"] == "/flywheel/v0" and report["home"] == "/home/hpcgear"
    assert report["input_name"] == "payload.bin"
    assert report["input_sha256"] == hashlib.sha256(payload.read_bytes()).hexdigest()
    assert report["scratch_tmp_bytes"] == report["scratch_home_bytes"] == str(2 * 1024 * 1024)
    # scratch data landed in the job directory's home and tmp, not in the container
    assert (run.jobdir / "home" / "test-gear-scratch.bin").stat().st_size == 2 * 1024 * 1024
    assert (run.jobdir / "tmp" / "test-gear-scratch.bin").stat().st_size == 2 * 1024 * 1024
    env = (run.output / "env.txt").read_text().splitlines()
    assert "FLYWHEEL=/flywheel/v0" in env and "HPCGEAR_JOB_ID=job-1" in env
    assert run.metadata() == {"acquisition": {"files": [{
        "name": "run.1-1.json", "type": "source code",
        "info": {"test_gear": {"index": 1, "label": "run.1"}}, "tags": ["test-gear"]}]}}
    assert not list(run.jobdir.rglob("pwned"))


def test_test_gear_defaults(dev_env: DevEnv, images: dict[str, BuildResult],
                            tmp_path: Path) -> None:
    run = run_gear(dev_env, images, "test-gear", tmp_path / "job", {})
    assert run.rc == 0, run.stderr
    assert run.outputs() == ["config.json", "env.txt", "out-1.txt", "report.txt"]
    assert (run.output / "out-1.txt").read_text() == "test-gear file 1 of 1\nlabel=out\n"


def test_test_gear_stops_on_sigterm(dev_env: DevEnv, images: dict[str, BuildResult],
                                    tmp_path: Path) -> None:
    jobdir = tmp_path / "job"
    argv = prepare(dev_env, images["test-gear"].sif, "test-gear", jobdir,
                   {"sleep_seconds": 120})
    proc = subprocess.Popen(argv, cwd=jobdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not (jobdir / "output" / "report.txt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "gear did not start"
            time.sleep(0.2)
        time.sleep(1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143
    assert time.monotonic() - started < 20
    assert "SIGTERM during sleep" in out


def test_test_analysis_runs_the_same_image(dev_env: DevEnv, images: dict[str, BuildResult],
                                           tmp_path: Path) -> None:
    recipe = load_recipe(CONTAINERS / "test-analysis")
    assert recipe.manifest.is_analysis
    run = run_gear(dev_env, images, "test-analysis", tmp_path / "job",
                   {"num_files": 2, "write_metadata": True}, destination=("analysis", "an-1"),
                   image="test-gear")
    assert run.rc == 0, run.stderr
    assert "out-2.txt" in run.outputs()
    assert list(run.metadata()) == ["analysis"]


# ----------------------------------------------------------------- dcm2niix


def zip_series(files: list[Path], dest: Path, folder: str) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in files:
            zf.write(f, f"{folder}/{f.name}")
    return dest


def synthetic_volume(tmp_path: Path, slices: int = 5, rows: int = 48) -> list[Path]:
    """A real stacked series: pydicom's MR_small (64x64) cut to 64 columns x ``rows`` rows,
    repeated along the slice normal with fresh UIDs."""
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    series = generate_uid()
    out = []
    for k in range(slices):
        ds = pydicom.dcmread(pydicom_data() / "MR_small.dcm")
        pixels = ds.pixel_array[:rows, :].astype(np.int16)
        ds.PixelData = pixels.tobytes()
        ds.Rows = rows
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-83.9063, -91.2, 6.6406 + 0.8 * k]
        ds.SliceLocation = 6.6406 + 0.8 * k
        ds.SeriesDescription = "t1_synthetic"
        path = tmp_path / f"slice{k:02d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def test_dcm2niix_converts_a_stacked_series(dev_env: DevEnv, images: dict[str, BuildResult],
                                            tmp_path: Path) -> None:
    import nibabel as nib

    files = synthetic_volume(tmp_path, slices=5, rows=48)
    archive = zip_series(files, tmp_path / "t1.dicom.zip", "t1")
    obj = {"type": "dicom", "modality": "MR",
           "classification": {"Intent": ["Structural"], "Measurement": ["T1"]}}
    run = run_gear(dev_env, images, "dcm2niix", tmp_path / "job",
                   {"compress_images": "n", "filename": "%f_%s_%d"}, {"dicom": (archive, obj)})
    assert run.rc == 0, run.stdout + run.stderr
    niftis = [n for n in run.outputs() if n.endswith(".nii")]
    assert niftis == ["t1_1_t1_synthetic.nii"], run.outputs()
    img = nib.load(str(run.output / niftis[0]))
    assert img.shape == (64, 48, 5)  # Columns x Rows x slices
    assert img.header.get_zooms()[:2] == pytest.approx((0.3125, 0.3125))
    files_meta = {f["name"]: f for f in run.metadata()["acquisition"]["files"]}
    nifti = files_meta["t1_1_t1_synthetic.nii"]
    assert nifti["type"] == "nifti" and nifti["modality"] == "MR"
    assert nifti["classification"] == obj["classification"]
    assert nifti["info"]["SeriesDescription"] == "t1_synthetic"
    assert files_meta["t1_1_t1_synthetic.json"]["type"] == "source code"


def test_dcm2niix_on_pydicoms_mr700_series(dev_env: DevEnv, images: dict[str, BuildResult],
                                           tmp_path: Path) -> None:
    import nibabel as nib
    import pydicom

    files = sorted((pydicom_data() / "dicomdirtests" / "98892003" / "MR700").iterdir())
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    archive = zip_series(files, tmp_path / "MR700.dicom.zip", "MR700")
    run = run_gear(dev_env, images, "dcm2niix", tmp_path / "job", {},
                   {"dicom": (archive, {"type": "dicom"})})
    assert run.rc == 0, run.stdout + run.stderr
    niftis = [n for n in run.outputs() if n.endswith(".nii.gz")]
    # the seven MIP projections change orientation, so dcm2niix writes one 2D image each
    assert len(niftis) == len(files) == 7
    for name in niftis:
        img = nib.load(str(run.output / name))
        assert img.shape[:2] == (headers[0].Columns, headers[0].Rows)
        assert int(img.header["dim"][0]) in (2, 3) and img.shape[2:] in ((), (1,))
        sidecar = json.loads((run.output / name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["SeriesNumber"] == 700
    meta = run.metadata()["acquisition"]["files"]
    assert sorted(f["name"] for f in meta if f["type"] == "nifti") == sorted(niftis)
    assert all(f["modality"] == "MR" for f in meta)  # from the sidecar: the input had none


def test_dcm2niix_refuses_what_is_not_dicom(dev_env: DevEnv, images: dict[str, BuildResult],
                                            tmp_path: Path) -> None:
    bogus = tmp_path / "notes.dicom.zip"
    zip_series([Path(__file__)], bogus, "notes")
    run = run_gear(dev_env, images, "dcm2niix", tmp_path / "job", {},
                   {"dicom": (bogus, {"type": "dicom"})})
    assert run.rc == 1
    assert "Unable to find any DICOM images" in run.stderr  # dcm2niix's own words
    assert "dcm2niix exited with status 2" in run.stderr
    assert run.outputs() == []


# ----------------------------------------------------------------- dicom-header


def test_dicom_header_info_and_classification(dev_env: DevEnv, images: dict[str, BuildResult],
                                              tmp_path: Path) -> None:
    import pydicom

    from hpcgear.ingest import classifier

    files = sorted((pydicom_data() / "dicomdirtests" / "98892003" / "MR700").iterdir())
    archive = zip_series(files, tmp_path / "MR700.dicom.zip", "MR700")
    run = run_gear(dev_env, images, "dicom-header", tmp_path / "job", {},
                   {"dicom": (archive, {"type": "dicom"})})
    assert run.rc == 0, run.stderr
    assert run.outputs() == [".metadata.json"]
    (entry,) = run.metadata()["acquisition"]["files"]
    assert entry["name"] == "MR700.dicom.zip" and entry["type"] == "dicom"
    assert entry["modality"] == "MR"
    header = entry["info"]["header"]["dicom"]
    first = min((pydicom.dcmread(f, stop_before_pixels=True) for f in files),
                key=lambda ds: int(ds.InstanceNumber))
    assert header["InstanceNumber"] == 1
    for key in ("Rows", "Columns", "SeriesNumber"):
        assert header[key] == int(first.get(key))
    for key in ("SeriesInstanceUID", "SeriesDescription", "Manufacturer", "Modality"):
        assert header[key] == str(first.get(key))
    assert header["ImageType"] == list(first.ImageType)
    assert header["RepetitionTime"] == float(first.RepetitionTime)
    assert "PixelData" not in header and not any("," in k for k in header)
    assert entry["info"]["header"]["dicom_array"]["InstanceNumber"] == [1, 2, 3, 4, 5, 6, 7]
    # the vendored classifier gives what hpcgear's own module gives on the same header
    assert entry["classification"] == classifier.classify(header)
    assert entry["classification"]["Intent"] == ["Structural"]
    assert "Angio" in entry["classification"]["Features"]
    assert entry["info"]["classifier"]["version"] == classifier.CLASSIFIER_VERSION


def test_dicom_header_single_file_with_private_tags(dev_env: DevEnv,
                                                    images: dict[str, BuildResult],
                                                    tmp_path: Path) -> None:
    source = pydicom_data() / "CT_small.dcm"  # one CT image with GE private tags
    run = run_gear(dev_env, images, "dicom-header", tmp_path / "job",
                   {"include_private_tags": True, "classify": False},
                   {"dicom": (source, {"type": "dicom"})})
    assert run.rc == 0, run.stderr
    (entry,) = run.metadata()["acquisition"]["files"]
    assert entry["name"] == "CT_small.dcm" and entry["modality"] == "CT"
    assert "classification" not in entry and "classifier" not in entry["info"]
    header = entry["info"]["header"]["dicom"]
    assert header["Rows"] == 128 and "dicom_array" not in entry["info"]["header"]
    assert "0009,0010" in header  # private tags keyed GGGG,EEEE


# ----------------------------------------------------------------- nifti-header


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz"])
def test_nifti_header_matches_nibabel(dev_env: DevEnv, images: dict[str, BuildResult],
                                      tmp_path: Path, name: str) -> None:
    import nibabel as nib

    path = nibabel_data() / name
    run = run_gear(dev_env, images, "nifti-header", tmp_path / "job", {"decimals": 4},
                   {"nifti": (path, {"type": "nifti"})})
    assert run.rc == 0, run.stderr
    (entry,) = run.metadata()["acquisition"]["files"]
    assert entry["name"] == name and entry["type"] == "nifti"
    info = entry["info"]["header"]["nifti"]
    img = nib.load(str(path))
    assert info["dims"] == list(img.shape)
    zooms = img.header.get_zooms()
    assert info["voxel_size"] == pytest.approx([round(float(z), 4) for z in zooms[:3]])
    assert info["orientation"] == "".join(nib.aff2axcodes(img.affine))
    assert info["datatype"] == img.header.get_data_dtype().name
    assert info["units"] == dict(zip(("space", "time"), img.header.get_xyzt_units(),
                                     strict=True))
    assert info["qform_code"] == int(img.header["qform_code"])
    assert info["sform_code"] == int(img.header["sform_code"])
    for got, want in zip(info["affine"], img.affine.tolist(), strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    if len(img.shape) == 4:
        scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}[img.header.get_xyzt_units()[1]]
        assert info["tr_seconds"] == pytest.approx(float(zooms[3]) * scale)
        assert info["volumes"] == img.shape[3]
    else:
        assert "tr_seconds" not in info


# ----------------------------------------------------------------- the CLI


def test_cli_builds_and_installs_a_bundled_gear(dev_env: DevEnv, cli_env: CliEnv,
                                                images: dict[str, BuildResult],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCGEAR_APPTAINER", str(dev_env.apptainer))
    res = cli_env.ok("gear", "build", str(CONTAINERS / "test-gear"),
                     str(CONTAINERS / "test-analysis"), "--json")
    rows = res.json()
    digest = "sha256:" + hashlib.sha256(images["test-gear"].sif.read_bytes()).hexdigest()
    assert [(r["gear"], r["cached"], r["image_digest"], r["installed"]) for r in rows] == [
        ("test-gear@1.0.0", True, digest, True),
        ("test-analysis@1.0.0", True, digest, True),
    ]
    shown = cli_env.ok("gear", "show", "test-analysis", "--json").json()
    assert shown["category"] == "analysis" and shown["image_digest"] == digest
    again = cli_env.ok("gear", "build", str(CONTAINERS / "test-gear"))
    assert "already installed" in again.out
