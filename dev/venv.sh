#!/usr/bin/env bash
# Create (or reuse) the project virtualenv and install hpcgear with its test extras.
# Sourced by dev/test.sh and dev/demo.sh; prints the venv's bin dir on the last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HPCGEAR_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: hpcgear needs Python >= 3.11 ($PY is $("$PY" --version 2>&1))" >&2
  echo "hint: set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.hpcgear-install-stamp"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c 'import hpcgear' 2>/dev/null; then
  echo "==> installing hpcgear and its test tools into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test,bench]" >&2
  echo "$want" > "$stamp"
fi
echo "$VENV/bin"
