#!/usr/bin/env bash
# The main job (README, first command):  bash dev/demo.sh
# Sets up an embedded hpcgear instance (SQLite + local storage) in .dev/demo,
# creates a hierarchy, uploads real DICOM and NIfTI files shipped inside
# pydicom and nibabel, and lists what landed. Safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$(bash dev/venv.sh | tail -n1)"
DEMO="${HPCGEAR_DEMO_DIR:-$ROOT/.dev/demo}"
export HPCGEAR_CONFIG="$DEMO/config.yaml"
hg() { "$BIN/hpcgear" "$@"; }
step() { printf '\n==> %s\n' "$*"; }
fail() { echo "demo FAILED at: $*" >&2; exit 1; }
trap 'fail "line $LINENO (see the error above)"' ERR

step "init an embedded instance in $DEMO"
hg init --db "sqlite:///$DEMO/hpcgear.db" --storage "$DEMO/storage" --scratch "$DEMO/scratch"

step "create group 'imaging' and project 'imaging/demo'"
hg ls imaging >/dev/null 2>&1 || hg group create imaging --label "Imaging Research Center"
hg ls imaging/demo >/dev/null 2>&1 || hg project create imaging/demo

DATA="$("$BIN/python" - <<'PY'
import pathlib, pydicom, nibabel
d = pathlib.Path(pydicom.__file__).parent / "data" / "test_files"
n = pathlib.Path(nibabel.__file__).parent / "tests" / "data"
print(d / "dicomdirtests" / "98892003" / "MR700")
print(n / "anatomical.nii")
print(n / "example4d.nii.gz")
PY
)"
DICOM_DIR="$(sed -n 1p <<<"$DATA")"
ANAT="$(sed -n 2p <<<"$DATA")"
FUNC="$(sed -n 3p <<<"$DATA")"

step "upload a DICOM series shipped with pydicom ($(ls "$DICOM_DIR" | wc -l) files)"
hg upload imaging/demo/sub-01/ses-01/MR700 "$DICOM_DIR"/*
step "upload NIfTI images shipped with nibabel"
hg upload imaging/demo/sub-01/ses-01/anat "$ANAT"
hg upload imaging/demo/sub-01/ses-01/func "$FUNC"
hg info set imaging/demo/sub-01/ses-01 scanner.model=demo-scanner
hg tag add imaging/demo/sub-01/ses-01/anat/anatomical.nii hpc 2>/dev/null || true

step "the hierarchy"
hg ls imaging/demo
hg ls imaging/demo/sub-01/ses-01
hg ls imaging/demo/sub-01/ses-01/anat
hg ls imaging/demo/sub-01/ses-01/MR700

step "demo finished: instance config $HPCGEAR_CONFIG"
