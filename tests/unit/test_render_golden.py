"""Golden files: the scripts rendered for each example site, byte for byte.

A change to the templates, the runtime argv or the site examples shows up here as a
readable unified diff. If the change is intended, regenerate the golden files with

    HPCGEAR_REGEN_GOLDEN=1 .venv/bin/pytest tests/unit/test_render_golden.py

and review ``git diff tests/unit/golden/`` before committing.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path

import pytest

from hpcgear.config.site import SiteConfig, load_site, load_site_text
from hpcgear.jobs.resources import resolve_resources
from hpcgear.render import JobPaths, TaskFile, render_array, render_sbatch
from hpcgear.runtimes import render_gear_env
from hpcgear.spec import GearRef, InputSpec, JobSpec
from tests.unit.test_site import render_dev_template

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
REGEN = os.environ.get("HPCGEAR_REGEN_GOLDEN") == "1"


@pytest.fixture(autouse=True)
def _service_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sites whose jobs run as the controller's login fill {user} with it: fix it."""
    monkeypatch.setenv("LOGNAME", "hpcgear-svc")


def site_named(name: str) -> SiteConfig:
    if name == "dev-site":
        return load_site_text(render_dev_template(), "dev/dev-site.yaml.template")
    return load_site(REPO / "site_configs" / f"{name}.yaml")


# site file -> the tags the example job carries there (exercising routing and GPUs)
SITES = {
    "dev": ("local",),
    "dev-site": ("hpc", "short"),
    "curc-alpine": ("hpc", "gpu", "cpu=4", "time=3h"),
    "curc-blanca": ("hpc", "ram=16G"),
}


def gear(site: SiteConfig) -> GearRef:
    digest = "sha256:" + "ab" * 32
    return GearRef(
        name="bids-mriqc", version="24.0.2",
        manifest_sha256="sha256:" + "cd" * 32,
        image_ref="docker://nipreps/mriqc:24.0.2", image_digest=digest,
        sif_path=f"{site.runtime.image_cache}/{digest.replace(':', '-')}.sif",
        command="/flywheel/v0/run.py --verbose",
        environment=(("PATH", "/opt/conda/bin:/usr/local/bin:/usr/bin:/bin"),
                     ("FLYWHEEL", "/flywheel/v0"), ("LANG", "C.UTF-8")),
    )


def spec_for(name: str, site: SiteConfig, job_id: str = "01HXYZJOB0001") -> JobSpec:
    tags = SITES[name]
    resolved = resolve_resources(site, manifest={"slurm-ram": "2G"}, tags=tags)
    return JobSpec(
        job_id=job_id, attempt=1, gear=gear(site), config={"modality": "T1w"},
        inputs=(InputSpec(name="nifti", base="file", file_name="sub-01_T1w.nii.gz",
                          sha256="sha256:" + "ef" * 32, size=123456),),
        destination_type="session", destination_id="01HXYZSES0001",
        resources=resolved.resources, site=site.name, user="alice", tags=tags,
    )


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; create it with "
                    "HPCGEAR_REGEN_GOLDEN=1 pytest tests/unit/test_render_golden.py")
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile=f"golden/{name}", tofile="rendered now"))
        pytest.fail(f"rendered output differs from golden/{name}:\n{diff}\nIf intended: "
                    "HPCGEAR_REGEN_GOLDEN=1 pytest tests/unit/test_render_golden.py", pytrace=False)


@pytest.mark.parametrize("name", sorted(SITES))
def test_job_script_matches_golden(name: str) -> None:
    site = site_named(name)
    spec = spec_for(name, site)
    rendered = render_sbatch(spec, site, JobPaths.for_spec(spec, site))
    check_golden(f"{name}-job.sbatch", rendered.text)


@pytest.mark.parametrize("name", sorted(SITES))
def test_array_script_matches_golden(name: str) -> None:
    site = site_named(name)
    specs = [spec_for(name, site, f"01HXYZJOB000{i}") for i in (1, 2)]
    specs[1] = dataclasses.replace(specs[1], attempt=2, destination_id="01HXYZSES0002")
    # As the controller renders it: each task builds its job directory from tasks.dat.
    files = [
        [TaskFile("flywheel/v0/config.json", 0, 120, "a" * 64),
         TaskFile(".hpcgear/gear.env", 120, 40, "b" * 64),
         TaskFile("flywheel/v0/input/dicom/a b's.dcm", 160, 1000, "c" * 64)],
        [TaskFile("flywheel/v0/config.json", 1160, 121, "d" * 64),
         TaskFile(".hpcgear/gear.env", 120, 40, "b" * 64)],
    ]
    rendered = render_array(specs, site, array_id="01HXYZBATCH1", task_files=files)
    check_golden(f"{name}-array.sbatch", rendered.text)


def test_env_file_matches_golden() -> None:
    site = site_named("curc-alpine")
    check_golden("gear.env", render_gear_env(spec_for("curc-alpine", site)))


def test_golden_directory_has_no_stale_files() -> None:
    expected = {f"{n}-{kind}.sbatch" for n in SITES for kind in ("job", "array")} | {"gear.env"}
    assert {p.name for p in GOLDEN.iterdir()} == expected


def test_rendering_twice_is_byte_identical() -> None:
    for name in SITES:
        site = site_named(name)
        a = render_sbatch(spec_for(name, site), site, JobPaths.for_spec(spec_for(name, site), site))
        b = render_sbatch(spec_for(name, site), site, JobPaths.for_spec(spec_for(name, site), site))
        assert a.text == b.text and a.sha256 == b.sha256
