"""Copy one small CT study shipped inside pydicom into DIR (the README tour's data).

    python dev/sample_dicom.py DIR

Study 98892001 of pydicom's test files: series 4 "Scout" (2 images) and series 5
"SmartScore - Gated 0.5 sec" (5 images). Uses the pydicom that hpcgear installs.
"""

from __future__ import annotations

import pathlib
import shutil
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    import pydicom

    src = pathlib.Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    dst = pathlib.Path(sys.argv[1])
    for rel in ("98892001/CT2N", "98892001/CT5N"):
        shutil.copytree(src / rel, dst / rel, dirs_exist_ok=True)
    n = sum(1 for p in dst.rglob("*") if p.is_file())
    print(f"copied {n} DICOM files to {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
