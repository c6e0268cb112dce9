#!/usr/bin/env bash
# Every check that needs a GPU, in one command: the gpu-marked tests, the detector and attack benchmarks, distributed
# generation on N GPUs (when there are 2 or more), the 238-face adaptive experiment and the 238-face benchmark (every
# detector, every attack set); each writes its figures under
# $OUT and, where the README has a block for them, the block (scripts/readme_tables.py). Planned for at most about
# 20 minutes on one H100 / H200 (the benchmark at most 10 of them); each step has its own time limit so that one slow
# step cannot eat the others.
#
#   bash scripts/gpu_check.sh             # on a machine with CUDA; commit what it wrote (README.md, docs/*.md, docs/results/)
#   bash scripts/gpu_check.sh --dry-run   # anywhere: checks that every command resolves, runs nothing heavy
#
# Environment: PYTHON (default .venv/bin/python; its folder must hold the ami-* console scripts), OUT (default
# logs/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
OUT=${OUT:-logs/gpu_check}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"
failed=()

# step NAME SECONDS COMMAND... : run COMMAND (its output in $OUT/NAME.log) within SECONDS; a failure is reported at the
# end and does not stop the other steps.
step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s): $*"
  if ! timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    echo "   FAILED, see $OUT/$name.log"
    tail -n 20 "$OUT/$name.log"
    failed+=("$name")
  fi
}

if [ "$DRY" = 1 ]; then
  step pytest-collect 120 "$PY" -m pytest --collect-only -q -m gpu -n 0 -p no:cacheprovider
  grep -q -E '^[0-9]+(/[0-9]+)? tests? (collected|selected)' "$OUT/pytest-collect.log" || failed+=("pytest-collect (no gpu test)")
  for script in bench_detector bench_attacks bench_distributed readme_tables; do
    step "$script-help" 120 "$PY" -m "scripts.$script" --help
  done
  step adaptive-config 120 "$BIN/ami-run" experiment=adaptive trainer=gpu --cfg job
  step benchmark-config 120 "$BIN/ami-run" experiment=benchmark data.attack_faces=null trainer=gpu --cfg job
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: run with --dry-run here')" \
    || exit 1
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  step pytest-gpu 120 "$PY" -m pytest -m gpu -q -n 0 -p no:cacheprovider
  step bench-detector 90 "$PY" -m scripts.bench_detector --device cuda --batch-size 64 --faces 128 --images 512 \
    --out "$OUT/bench_detector"
  step bench-attacks 90 "$PY" -m scripts.bench_attacks --model dlib --devices cuda
  if [ "$gpus" -ge 2 ]; then
    step bench-distributed 120 "$PY" -m scripts.bench_distributed --accelerator gpu --processes "$gpus" \
      --faces $((16 * gpus)) --out "$OUT/bench_distributed"
  else
    echo "== bench-distributed: skipped, $gpus GPU (needs 2 or more)"
  fi
  step adaptive 300 "$BIN/ami-run" experiment=adaptive trainer=gpu logger=none "paths.log_dir=$OUT/logs"
  step benchmark 600 "$BIN/ami-run" experiment=benchmark data.attack_faces=null trainer=gpu logger=none \
    "paths.log_dir=$OUT/benchmark"
  bench=$(ls -d "$OUT"/benchmark/run/*/ 2>/dev/null | tail -n 1)
  [ -n "$bench" ] && step table-benchmark 60 "$PY" -m scripts.readme_tables matrix "$bench" --block benchmark-gpu
  [ -f "$OUT/bench_detector/results.json" ] && step table-detector-speed 60 "$PY" -m scripts.readme_tables \
    detector-speed "$OUT/bench_detector" --block detector-speed-gpu
  run=$(ls -d "$OUT"/logs/run/*/ 2>/dev/null | tail -n 1)
  [ -n "$run" ] && step table-adaptive 60 "$PY" -m scripts.readme_tables attacks-on-detectors "$run" \
    --block adaptive-gpu
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed; logs and figures under $OUT"
