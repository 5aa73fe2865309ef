#!/usr/bin/env bash
# The GPU check, one prepared script: the CUDA tests, the transformer suite and the default suite on the GPU
# (bf16 autocast, each run's seeds batched, from an empty cache) and the GPU benchmark, within BUDGET seconds
# (default 480: under 9 minutes with start-up), into ONE report. A stage that runs out of its share of the
# budget is stopped and reported as timed out (a suite's report says how many records it wrote by then).
#
#   scripts/gpu-check.sh [--dry-run] [OUT]
#
# OUT: the argument, else $OUT, else gpu-check/. It receives report.md, one log per stage, bench.json and the
# suites' boards (board.md, default-board.md): eight files. The suite's model cache and records go to a temporary folder, so
# OUT holds only what is worth reading.
# --dry-run: on a machine without a GPU, run the same stages on the CPU at toy size (the CUDA tests skip
# with their reason, the transformer suite trains 100 steps, the default suite one seed at one width for 100
# steps, the bench one repeat of 2 steps of the transformer regime) to check the script and every command
# it calls.
# Environment: PY (default .venv/bin/python, else python3; it must have sparsebench installed with its
# dependencies: pip install -e '.[test]'), BUDGET (seconds for all stages), PEAK_TFLOPS (the card's nominal
# dense bf16 TFLOP/s; found from the GPU's name for H100/H200/A100 otherwise), TX_STEPS (the transformer
# suite's training steps, with a warm-up of a tenth of them; default the suite's own 5000 and 500),
# BENCH_REPEATS (default 5).
# docs/performance.md ("On a GPU") says what the report's figures mean.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-${OUT:-gpu-check}}
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
BUDGET=${BUDGET:-480}
BENCH_REPEATS=${BENCH_REPEATS:-5}
SB=("$PY" -m sparsebench)

die() { echo "error: $*" >&2; exit 2; }
case "$BUDGET$BENCH_REPEATS${TX_STEPS:-1}" in *[!0-9]*) die "BUDGET, BENCH_REPEATS and TX_STEPS are whole numbers";; esac
"$PY" -c "import sparsebench, transformer_lens, pydantic" 2>/dev/null \
  || die "$PY cannot import sparsebench and its dependencies (transformer_lens, pydantic); install with: $PY -m pip install -e '.[test]'"
"${SB[@]}" list > /dev/null 2>&1 \
  || die "'$PY -m sparsebench list' fails: sparsebench is importable but not installed (its built-ins register through entry points); run: $PY -m pip install -e '.[test]'"
if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  TX_STEPS=${TX_STEPS:-100}
  CPU_WORKER=(--workers 2)  # single-threaded workers, as on any CPU (docs/transformer.md)
  DEFAULT_TOY=(--seeds 0 --widths 16 --set train.steps=100 --set train.warmup=10)
  BENCH=(bench --device cpu --regime transformer --repeats 1 --steps 2)
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "no CUDA device visible to $PY; run this on a GPU machine (or with --dry-run to check the script)"
  DEVICE=cuda
  CPU_WORKER=()
  DEFAULT_TOY=()
  GPU_NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
  if [ -z "${PEAK_TFLOPS:-}" ]; then
    case "$GPU_NAME" in  # nominal dense bf16 tensor-core peaks (vendor data sheets, SXM parts)
      *H200*|*H100*) PEAK_TFLOPS=989.4 ;;
      *A100*) PEAK_TFLOPS=312 ;;
      *) PEAK_TFLOPS= ;;
    esac
  fi
  BENCH=(bench --device cuda --repeats "$BENCH_REPEATS" ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"})
fi
STEPS=()  # the recipe's warm-up is a tenth of its steps; a shorter run keeps that ratio (warmup <= steps)
[ -n "${TX_STEPS:-}" ] && STEPS=(--set train.steps="$TX_STEPS" --set train.warmup=$(( TX_STEPS / 10 )))
mkdir -p "$OUT" || die "cannot create $OUT"
WORK=$(mktemp -d) || die "cannot create a temporary folder"
trap 'rm -rf "$WORK"' EXIT
REPORT="$OUT/report.md"
DEADLINE=$(( $(date +%s) + BUDGET ))

{
  echo "# sparsebench GPU check$([ "$DRY" = 1 ] && echo " (DRY RUN on the CPU: no GPU figures)")"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); git commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  [ "$DRY" = 1 ] || echo "- GPU: $GPU_NAME; nominal dense bf16 peak used: ${PEAK_TFLOPS:-not known} TFLOP/s"
  echo "- $("$PY" -c "import torch, platform; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, python {platform.python_version()}')")"
  echo "- CPU: $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg); budget: $BUDGET s"
  [ "$DRY" = 1 ] || nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null \
    | sed 's/^/    /'
} > "$REPORT"

# stage NAME LOG RESERVE COMMAND...: run COMMAND with what is left of the budget less RESERVE seconds (kept for
# the later stages) as its timeout; append its exit status, wall time and the load to the report.
stage() {
  local name=$1 log=$2 reserve=$3; shift 3
  local limit=$(( DEADLINE - $(date +%s) - reserve )) t0 t1 rc
  echo >> "$REPORT"; echo "## $name" >> "$REPORT"; echo >> "$REPORT"
  if [ "$limit" -lt 30 ]; then
    echo "- not run: under 30 s of the budget left for it" | tee -a "$REPORT"
    return 124
  fi
  echo "[$(date +%T)] $name (at most $limit s)"
  t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  {
    echo "- command: \`$*\`"
    echo "- exit status: $rc$([ "$rc" = 124 ] && echo " (timed out after $limit s)"); wall time:" \
      "$(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- full output: \`$log\`"
  } >> "$REPORT"
  return $rc
}

# 1. The CUDA tests: mlp1 and the transformer train with batched seeds in fp32 and bf16, no host sync per step, seeds
#    together equal seeds alone, bf16 close to fp32, every probe on a GPU-trained model, evaluate.
stage "CUDA tests (pytest -m gpu)" tests.log 330 "$PY" -m pytest -m gpu -v -rs -p no:cacheprovider tests/unit/test_gpu.py
{ echo; echo '```'; grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed|skipped" "$OUT/tests.log" | tail -30; echo '```'; } \
  >> "$REPORT"

# 2. The transformer suite (the recipe, 3 seeds in one batched model) from an empty cache, bf16 autocast.
stage "transformer suite on $DEVICE (bf16, empty cache)" suite.log 230 \
  "${SB[@]}" evaluate transformer --device "$DEVICE" --set train.precision=bf16 "${STEPS[@]}" "${CPU_WORKER[@]}" \
  --cache "$WORK/cache" --out "$WORK/results" --no-progress --no-leaderboard
{
  echo
  echo "Training seconds (the checkpoints' run.json):"
  echo '```'
  "$PY" - "$WORK/cache" <<'EOF'
import json, pathlib, sys
runs = {}
for p in sorted(pathlib.Path(sys.argv[1]).glob("models/*/run.json")):
    r = json.loads(p.read_text())
    key = (r["model"]["name"], json.dumps(r["model"]["config"], sort_keys=True), r["train"]["steps"],
           r["train"]["precision"], r["train_seconds"], r["backend"])
    runs.setdefault(key, []).append(r["seed"])
for (model, cfg, steps, precision, secs, backend), seeds in runs.items():
    print(f"{model} {cfg}, {steps} steps, {precision}: seeds {seeds} trained together in {secs:.1f} s "
          f"(step: {backend})")
if not runs:
    print("no trained model in the cache")
EOF
  echo '```'
} >> "$REPORT" 2>&1
"${SB[@]}" leaderboard "$WORK/results" --format markdown --out "$OUT/board.md" > /dev/null 2>&1
{ echo; echo "Did the transformer learn the code? (the findings board; all boards in \`board.md\`)"; echo;
  grep -A8 "findings, measured" "$OUT/board.md" 2>/dev/null || echo "(no findings board: see suite.log)"; } >> "$REPORT"

# 3. The default suite (mlp1 on both top-k tasks, 3 seeds, the width sweep, every construction, mechanism and probe)
#    from an empty cache, bf16 autocast. It gets what the transformer suite left, less the bench's share; if that
#    runs out, the report says how far it got (records written of the suite's).
stage "default suite on $DEVICE (bf16, empty cache)" default.log 110 \
  "${SB[@]}" evaluate --device "$DEVICE" --set train.precision=bf16 "${DEFAULT_TOY[@]}" "${CPU_WORKER[@]}" \
  --cache "$WORK/cache-default" --out "$WORK/default" --no-progress --no-leaderboard
{
  echo
  echo "- records written: $(find "$WORK/default" -name '*.json' 2>/dev/null | wc -l)" \
    "(the full default suite writes 234; the dry run's toy size fewer)"
  tail -n 1 "$OUT/default.log" | sed 's/^/- last line: /'
} >> "$REPORT"
"${SB[@]}" leaderboard "$WORK/default" --format markdown --out "$OUT/default-board.md" > /dev/null 2>&1

# 4. The benchmark: plain one-model loops (fp32 and bf16 autocast) against the trainer at N = 1, 4, 16.
stage "bench on $DEVICE" bench.log 0 "${SB[@]}" "${BENCH[@]}" --json "$OUT/bench.json"
{ echo; echo '```'; cat "$OUT/bench.log"; echo '```'; } >> "$REPORT"

echo "wrote $REPORT"
