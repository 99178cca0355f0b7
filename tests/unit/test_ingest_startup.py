"""What ``hpcgear ingest dicom`` loads: only what its input needs (start-up is part
of every ingest's time; issue 10 compares a whole command with a bare dcmread loop)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CliEnv, modules_loaded_by
from tests.unit.test_ingest_dicom import GROUP, write_series

pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")

_PROBE = """
import json, sys
from hpcgear.cli.main import main
code = main(sys.argv[1:], standalone=False)
print(json.dumps({"code": code, "loaded": sorted(m for m in sys.modules if m in WATCHED)}),
      file=sys.stderr)
"""

#: Modules a plain DICOM ingest (no de-identification, --jobs 1) has no use for.
WATCHED = (
    "hpcgear.ingest.deid",  # de-identification profiles
    "hpcgear.ingest.nifti",  # NIfTI reading
    "multiprocessing",  # worker processes (--jobs N)
    "concurrent.futures.process",
    "pydicom",  # the plain header reader and the zip builder read these files
    "sqlalchemy.orm",  # the DICOM ingest writes in Core (hpcgear.ingest.dicom_ingest)
    "hpcgear.db.models",
)


def _ingest_loads(env: CliEnv, folder: Path, *options: str) -> list[str]:
    argv = ["--config", str(env.config), "ingest", "dicom", str(folder), "--group", GROUP,
            "--no-progress", *options]  # fmt: skip
    return modules_loaded_by(f"WATCHED = {WATCHED!r}\n" + _PROBE, argv)


def test_a_plain_dicom_ingest_loads_no_deid_nifti_or_process_pool(
    cli_env: CliEnv, tmp_path: Path
) -> None:
    cli_env.ok("group", "create", GROUP)
    cli_env.ok("project", "create", f"{GROUP}/demo")
    folder = tmp_path / "in"
    write_series(folder, study="s1", series="a", number=1, description="T1", count=2,
                 accession="demo/sub-01/ses-01")  # fmt: skip
    assert _ingest_loads(cli_env, folder, "--jobs", "1") == []
    stored = cli_env.ok("ls", f"{GROUP}/demo/sub-01/ses-01").out
    assert "1 - T1" in stored
    # Asked for de-identification, the same command loads the profile machinery.
    loaded = _ingest_loads(cli_env, folder, "--jobs", "1", "--de-identify", "--dry-run")
    assert "hpcgear.ingest.deid" in loaded
