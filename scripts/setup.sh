#!/usr/bin/env bash
# Create .venv (if missing) and install sparsebench into it, with any extras given: scripts/setup.sh test ray
# torch is installed first as torch==2.13.0 (the local CPU build on this project's CI machines); override with
# SPARSEBENCH_TORCH, e.g. "torch --index-url https://download.pytorch.org/whl/cpu". The project accepts torch >= 2.3.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# SPARSEBENCH_TORCH is split into words on purpose, so it may carry pip options (e.g. --index-url).
# shellcheck disable=SC2086
.venv/bin/python -m pip show torch >/dev/null 2>&1 || .venv/bin/python -m pip install -q ${SPARSEBENCH_TORCH:-torch==2.13.0}
extras=$(IFS=,; echo "$*")
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
