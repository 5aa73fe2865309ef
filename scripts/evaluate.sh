#!/usr/bin/env bash
# Set up .venv and run the main job: `sparsebench evaluate` on the built-in default suite (arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sparsebench evaluate "$@"
