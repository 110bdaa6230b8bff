#!/usr/bin/env bash
# The one script a session with a lent H200 runs (benchmarks/README.md: "Running the GPU session").
#
#   device run:  command "bash benchmarks/gpu_session.sh", carry [".gpu"], timeout_s 600
#   CPU rehearsal (no GPU, synthetic data, ~2 min):  TINY=1 bash benchmarks/gpu_session.sh
#
# It unpacks the carried split and judge (.gpu, made by `python -m benchmarks.carry pack`), runs the GPU
# tests, the throughput benchmark (-> $OUT/h200.json), then the five-variant ablation at 128 px for as
# many epochs as the time left allows, translate + evaluate + report, and leaves at most 8 files in
# $OUT. Knobs (environment): BUDGET_S (total wall time, default 450), BENCH_BUDGET_S (no benchmark
# mode starts after it, default 240; lower it to give the ablation more time), ABLATION_BATCH (1).
set -uo pipefail
cd "$(dirname "$0")/.."

TINY="${TINY:-0}"
OUT="${OUT:-$PWD/.gpu-out}"
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
  # Here the project's virtualenv; on the device machine its image's python3 (torch, no venv).
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
# The modules the device image lacks (cityscapesscripts.helpers.labels, pytorch_fid) travel in .gpu/site.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpu/site ]; then export PYTHONPATH="$PYTHONPATH:$PWD/.gpu/site"; fi

args=(run --out "$OUT" --budget-s "${BUDGET_S:-450}" --bench-budget-s "${BENCH_BUDGET_S:-240}"
      --batch "${ABLATION_BATCH:-1}")
if [ "$TINY" = "1" ]; then
  args+=(--tiny --work "${WORK:-/tmp/gpu-session-tiny}")
else
  if [ ! -f .gpu/split.zip ]; then
    echo "error: .gpu/split.zip missing: run 'python -m benchmarks.carry pack --split data/split --judge models/fcn --judge-metrics metrics/fcn.json --out .gpu' and carry .gpu" >&2
    exit 2
  fi
  args+=(--pack .gpu --work "${WORK:-/tmp/gpu-session}")
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv
fi
exec "$PYTHON" -m benchmarks.gpu_session "${args[@]}"
