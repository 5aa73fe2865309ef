#!/usr/bin/env bash
# Create .venv (if missing) and install sparsebench into it, with any extras given: scripts/setup.sh test ray
# torch is installed first at a pinned CPU-friendly release (override with SPARSEBENCH_TORCH, e.g. "torch==2.14.1"),
# so pip does not pull a multi-GB CUDA build on a CPU-only machine; the project itself accepts torch >= 2.3.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip show torch >/dev/null 2>&1 || .venv/bin/python -m pip install -q "${SPARSEBENCH_TORCH:-torch==2.13.0}"
extras=$(IFS=,; echo "$*")
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
