#!/usr/bin/env bash
# The test command (README, second command; .ci/run calls exactly this):
#   bash dev/test.sh [pytest args]
# Installs hpcgear into .venv, brings the single-node dev cluster up (SLURM +
# slurmdbd + Apptainer + sshd, dev/cluster.sh), then runs every test tier.
# Integration tests may not be skipped here: HPCGEAR_REQUIRE_INTEGRATION=1
# turns a skip into a failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$(bash dev/venv.sh | tail -n1)"
if [ "${HPCGEAR_SKIP_CLUSTER:-0}" != "1" ]; then
  bash dev/cluster.sh up
fi
bash dev/chromium.sh  # headless browser for the HTML report test
DEV_ROOT="${HPCGEAR_DEV_ROOT:-/var/lib/hpcgear-dev}"
if [ -f "$DEV_ROOT/env.sh" ]; then
  # shellcheck disable=SC1091
  source "$DEV_ROOT/env.sh"
fi
export HPCGEAR_REQUIRE_INTEGRATION="${HPCGEAR_REQUIRE_INTEGRATION:-1}"
export PATH="$BIN:$PATH"
exec "$BIN/pytest" "$@"
