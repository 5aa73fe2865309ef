#!/usr/bin/env bash
# Create .venv (if missing) and install sparsebench into it, with any extras given: scripts/setup.sh test ray
# torch is installed first as torch==2.13.0 (the local CPU build on this project's CI machines); override with
# SPARSEBENCH_TORCH, e.g. "torch --index-url https://download.pytorch.org/whl/cpu". The project accepts torch >= 2.3.
# Prints one line per step; pip's own output (hundreds of lines) goes to .venv/setup.log, named with its last
# lines if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .venv
. scripts/quietly.sh
: >"$log"
[ -x .venv/bin/python ] || quietly "creating .venv" python3 -m venv .venv
quietly "upgrading pip" .venv/bin/python -m pip install --upgrade pip
torch=${SPARSEBENCH_TORCH:-torch==2.13.0}
# $torch is split into words on purpose, so it may carry pip options (e.g. --index-url).
# shellcheck disable=SC2086
.venv/bin/python -m pip show torch >/dev/null 2>&1 || quietly "installing $torch" .venv/bin/python -m pip install $torch
extras=$(IFS=,; echo "$*")
quietly "installing sparsebench${extras:+[$extras]} and its dependencies" \
  .venv/bin/python -m pip install -e ".${extras:+[$extras]}"
echo "setup: ready: $(.venv/bin/python -c 'import sparsebench, torch; print(f"sparsebench {sparsebench.__version__}, torch {torch.__version__}")') in .venv (pip's output: $log)"
