#!/usr/bin/env bash
# One call on a lent GPU (device tool `run`, command "bash scripts/gpu_train.sh", timeout_s 540):
# trains the teacher (200 s) and distils edge-xs from it (230 s) into $OUT. README: "GPU run".
# Extra arguments go to `python -m datprl_edge.train.gpu_run` (the CPU test passes tiny settings).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu-out}"
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
PY="${PYTHON:-python3}"
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  df -h /dev/shm 2>/dev/null | tail -1 || true  # the batch workers pass batches through shared memory
  "$PY" -m datprl_edge.train.gpu_run --out "$OUT" --work "${WORK:-/tmp/datprl-gpu-work}" "$@"
} 2>&1 | tee "$OUT/log.txt"
