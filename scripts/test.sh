#!/usr/bin/env bash
# Set up everything the tests need and run them: .venv with sparsebench[test,ray], and Chromium for the
# HTML test (installed from Debian's packages when run as root; otherwise that one test skips, except under CI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test ray
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  . scripts/quietly.sh
  quietly "installing chromium (apt-get)" bash -c 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium'
fi
exec .venv/bin/python -m pytest "$@"
