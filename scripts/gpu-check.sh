#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, run the CUDA tests, the default and transformer suites (bf16
# autocast, batched seeds, each timed from an empty cache) and the GPU benchmark, and write ONE report file.
#
#   scripts/gpu-check.sh [OUT]        # default OUT: gpu-check/ ; the report is OUT/report.md
#
# Environment: PY (default .venv/bin/python), PEAK_TFLOPS (the card's nominal dense bf16 TFLOP/s; found from
# the GPU's name for H100/H200/A100 otherwise), STAGE_TIMEOUT (seconds per stage, default 420). Each stage's
# full output is kept beside the report (OUT/*.log); a failing stage is reported and the next one still runs.
# docs/performance.md ("GPU") says what the report's figures mean.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-gpu-check}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-420}
mkdir -p "$OUT"
REPORT="$OUT/report.md"
SB=("$PY" -m sparsebench)

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible to $PY; run this on a GPU machine" >&2
  exit 2
fi
GPU_NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
if [ -z "${PEAK_TFLOPS:-}" ]; then
  case "$GPU_NAME" in  # nominal dense bf16 tensor-core peaks (vendor data sheets, SXM parts)
    *H200*|*H100*) PEAK_TFLOPS=989.4 ;;
    *A100*) PEAK_TFLOPS=312 ;;
    *) PEAK_TFLOPS= ;;
  esac
fi

{
  echo "# sparsebench GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); git commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "- GPU: $GPU_NAME; nominal dense bf16 peak used: ${PEAK_TFLOPS:-not known} TFLOP/s"
  echo "- $("$PY" -c "import torch, platform; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, python {platform.python_version()}')")"
  echo "- CPU: $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null | sed 's/^/    /'
} > "$REPORT"

stage() {  # stage NAME LOG COMMAND...: run with a timeout, append status, wall time and load to the report
  local name=$1 log=$2; shift 2
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout "$STAGE_TIMEOUT" "$@" > "$OUT/$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  {
    echo
    echo "## $name"
    echo
    echo "- command: \`$*\`"
    echo "- exit status: $rc$([ "$rc" = 124 ] && echo " (timed out after ${STAGE_TIMEOUT} s)"); wall time: $(printf '%.1f' "$(echo "$t1 - $t0" | bc)") s; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- full output: \`$log\`"
  } >> "$REPORT"
  return $rc
}

# 1. The CUDA tests (training both families, fp32 and bf16, no host sync per step; probes; evaluate).
stage "CUDA tests (pytest -m gpu)" tests.log "$PY" -m pytest -m gpu -v -rs -p no:cacheprovider tests/unit/test_gpu.py
{ echo; echo '```'; grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed" "$OUT/tests.log" | tail -40; echo '```'; } >> "$REPORT"

# 2. The suites on the GPU from an empty cache, bf16 autocast, all seeds of a run batched.
for suite in default transformer; do
  rm -rf "$OUT/cache-$suite" "$OUT/results-$suite"
  stage "suite '$suite' on the GPU (bf16, empty cache)" "suite-$suite.log" \
    "${SB[@]}" evaluate "$suite" --device cuda --set train.precision=bf16 --cache "$OUT/cache-$suite" \
    --out "$OUT/results-$suite" --no-progress
  {
    echo
    echo "Training seconds per run (run.json of each cached model):"
    echo '```'
    "$PY" - "$OUT/cache-$suite" <<'EOF'
import json, pathlib, sys
seen = {}
for p in sorted(pathlib.Path(sys.argv[1]).glob("models/*/run.json")):
    r = json.loads(p.read_text())
    m = r["model"]
    key = (m["name"], json.dumps(m["config"], sort_keys=True), r["train"]["steps"], r["train_seconds"], r["backend"])
    seen.setdefault(key, []).append(r["seed"])
for (model, cfg, steps, secs, backend), seeds in seen.items():
    print(f"{model} {cfg}, {steps} steps: seeds {seeds} trained together in {secs:.1f} s (step: {backend})")
EOF
    echo '```'
  } >> "$REPORT" 2>&1
  "${SB[@]}" leaderboard "$OUT/results-$suite" --format markdown > "$OUT/board-$suite.md" 2>/dev/null || true
done
{ echo; echo "Transformer suite: the findings board (did it learn the code?):"; echo;
  grep -A12 "findings, measured" "$OUT/board-transformer.md" | head -14; } >> "$REPORT" 2>/dev/null

# 3. The benchmark on the GPU: plain loops against the trainer at N = 1, 4, 16, fp32 and bf16.
stage "bench on the GPU" bench.log "${SB[@]}" bench --device cuda --repeats 5 --json "$OUT/bench.json" \
  ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"}
{ echo; echo '```'; cat "$OUT/bench.log"; echo '```'; } >> "$REPORT"

echo "wrote $REPORT"
