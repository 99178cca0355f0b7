#!/usr/bin/env bash
# Installs headless Chromium (Debian's package) for the browser tests of the HTML
# report (tests/integration/test_report_browser.py). Idempotent: does nothing when
# chromium is already on PATH. dev/test.sh runs it before the test tiers.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "dev/chromium.sh: chromium is missing; run as root (apt-get install -y chromium)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 || {
  apt-get update >/dev/null
  apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/dev/null
}
command -v chromium >/dev/null
