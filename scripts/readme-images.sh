#!/usr/bin/env bash
# Regenerate the README's images with the project's own commands:
#   docs/img/hash_matrix.png  from `sparsebench report` (the default suite's width-64 mlp1, seed 0)
#   docs/img/leaderboard.png  a headless-Chromium screenshot of the top of `sparsebench leaderboard --format html`:
#                             the filters, the scaling figure and its "how to read this" (256 colours, to stay small)
# Usage: scripts/readme-images.sh [RESULTS_DIR]   (default: results/, as written by `sparsebench evaluate`)
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-results}
sb=.venv/bin/sparsebench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p docs/img
$sb report --set task.V=1000 --set task.k=5 --set model.d_model=64 --set model.d_mlp=64 --seed 0 --out "$tmp/report"
cp "$tmp/report/hash_matrix.png" docs/img/hash_matrix.png
$sb leaderboard "$results" --format html --out "$tmp/leaderboard.html"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$tmp/profile" --hide-scrollbars \
  --window-size=1200,1000 --screenshot="$tmp/leaderboard.png" "file://$tmp/leaderboard.html" 2>/dev/null
.venv/bin/python -c "import sys; from PIL import Image
Image.open(sys.argv[1]).convert('RGB').quantize(256).save(sys.argv[2], optimize=True)" "$tmp/leaderboard.png" \
  docs/img/leaderboard.png
echo "wrote docs/img/hash_matrix.png and docs/img/leaderboard.png"
