#!/usr/bin/env bash
# Set up .venv and run the main job: `sparsebench evaluate` on the built-in default suite (arguments pass through).
# Jobs run in one single-threaded process per core, up to 4 (SPARSEBENCH_WORKERS=1: all in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cores=$(nproc 2>/dev/null || echo 1)
workers=(--workers "${SPARSEBENCH_WORKERS:-$(( cores < 4 ? cores : 4 ))}")
for arg in "$@"; do  # --workers given, or another executor (Ray places its own jobs): pass the arguments as they are
  case "$arg" in --workers|--workers=*|-w|--executor|--executor=*) workers=() ;; esac
done
exec .venv/bin/sparsebench evaluate ${workers[@]+"${workers[@]}"} "$@"
