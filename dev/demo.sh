#!/usr/bin/env bash
# The main job (README, first command):  bash dev/demo.sh
#
# On a fresh Debian machine (root): installs hpcgear into .venv, brings the
# single-node dev cluster up (SLURM + slurmdbd + Apptainer), builds the bundled
# gears (cached by content hash), creates an embedded instance in .dev/demo
# (SQLite + local storage) with two gear rules
#     dicom -> dcm2niix      (tag hpc: runs on SLURM)
#     dicom -> dicom-header  (runs on this host through the local backend)
# ingests real DICOM series shipped inside pydicom, runs the controller until
# idle, and prints the hierarchy with the NIfTI outputs, the job table with the
# SLURM ids, and one provenance record. Exits non-zero naming what failed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STEP="start"
step() { STEP="$*"; printf '\n==> %s\n' "$*"; }
trap 'echo "demo FAILED during: $STEP (see the error above)" >&2' ERR

step "install hpcgear into .venv"
BIN="$(bash dev/venv.sh | tail -n1)"
hg() { "$BIN/hpcgear" "$@"; }

step "bring the dev cluster up (SLURM, slurmdbd, Apptainer)"
bash dev/cluster.sh up
DEV_ROOT="${HPCGEAR_DEV_ROOT:-/var/lib/hpcgear-dev}"
# shellcheck disable=SC1091
source "$DEV_ROOT/env.sh"

DEMO="${HPCGEAR_DEMO_DIR:-$ROOT/.dev/demo}"
export HPCGEAR_CONFIG="$DEMO/config.yaml"
step "create a fresh embedded instance in $DEMO (SQLite + local storage)"
rm -rf "$DEMO"
mkdir -p "$DEMO"
hg init --db "sqlite:///$DEMO/hpcgear.db" --storage "$DEMO/storage" --scratch "$DEMO/scratch"
printf 'sites: [%s]\n' "$HPCGEAR_DEV_SITE" >> "$HPCGEAR_CONFIG"
# The local site's image cache lives in the dev root, which the Apptainer wrapper binds.
sed -i "s|^image_cache:.*|image_cache: $DEV_ROOT/images|" "$HPCGEAR_CONFIG"
hg site show

step "build and install the bundled gears dcm2niix and dicom-header (cached)"
hg gear build containers/dcm2niix
hg gear build containers/dicom-header
hg gear list

step "create imaging/demo and its gear rules"
hg group create imaging --label "Imaging Research Center"
hg project create imaging/demo
hg rule add imaging/demo --name dicom-to-nifti --gear dcm2niix --when file.type=dicom \
    --input dicom --tag hpc
hg rule add imaging/demo --name dicom-header --gear dicom-header --when file.type=dicom \
    --input dicom
hg rule list imaging/demo

step "ingest DICOM series shipped with pydicom"
DATA="$DEMO/incoming"
"$BIN/python" - "$DATA" <<'PY'
import pathlib, shutil, sys
import pydicom
src = pathlib.Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
dst = pathlib.Path(sys.argv[1])
# one CT study (scout + a 5-slice series) and one MR study (localizers + angio MIPs)
for rel in ("98892001/CT2N", "98892001/CT5N", "98892003/MR1", "98892003/MR2"):
    shutil.copytree(src / rel, dst / rel)
print(f"copied {sum(1 for p in dst.rglob('*') if p.is_file())} DICOM files to {dst}")
PY
hg ingest dicom "$DATA" --group imaging --project demo --subject demo-01

step "run the controller until every job is done (rules -> jobs -> SLURM/local -> publish)"
hg controller run --until-idle --interval 2 --timeout 900

step "the hierarchy: sessions, acquisitions and their files"
"$BIN/python" - <<'PY'
import json, subprocess, sys
def ls(path):
    out = subprocess.run([sys.executable.replace("python", "hpcgear"), "ls", path, "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)
for ses in ls("imaging/demo/demo-01"):
    print(f"session {ses['label']}")
    for acq in ls(f"imaging/demo/demo-01/{ses['label']}"):
        if acq["kind"] != "acquisition":
            continue
        print(f"  acquisition {acq['label']}")
        for f in ls(f"imaging/demo/demo-01/{ses['label']}/{acq['label']}"):
            if f["kind"] == "file":
                cls = ",".join(f["classification"].get("Intent", []) +
                               f["classification"].get("Measurement", []))
                print(f"    {f['name']:<48} v{f['version']} {f['type'] or '':<11} "
                      f"{f['hash'][:19]} {cls}")
PY

step "the job table"
hg jobs

step "one provenance record (a dcm2niix job on SLURM)"
JOB="$("$BIN/hpcgear" jobs --state complete --json | "$BIN/python" -c '
import json, sys
jobs = [j for j in json.load(sys.stdin) if j["gear"].startswith("dcm2niix")]
print(jobs[0]["id"] if jobs else "")')"
if [ -z "$JOB" ]; then STEP="finding a completed dcm2niix job"; false; fi
hg provenance show "$JOB"

step "check: every job completed"
"$BIN/hpcgear" jobs --json > "$DEMO/jobs.json"
"$BIN/python" - "$DEMO/jobs.json" <<'PY'
import json, sys
jobs = json.load(open(sys.argv[1]))
bad = [j for j in jobs if j["state"] != "complete"]
for j in bad:
    why = " ".join(x for x in (j["failure_kind"], j["failure_message"]) if x)
    print(f"job {j['id']} ({j['gear']} on {j['destination']}): {j['state']} {why}",
          file=sys.stderr)
    print(f"  see: hpcgear job show {j['id']}; hpcgear job logs {j['id']}", file=sys.stderr)
n_slurm = sum(1 for j in jobs if j["site"] != "local")
print(f"{len(jobs) - len(bad)} of {len(jobs)} jobs complete ({n_slurm} on SLURM)")
sys.exit(1 if bad or not jobs else 0)
PY

step "demo finished (instance: $HPCGEAR_CONFIG; try: HPCGEAR_CONFIG=$HPCGEAR_CONFIG $BIN/hpcgear ls imaging/demo)"
