#!/usr/bin/env bash
# Everything docs/gpu.md reports, in one go on a machine with a CUDA GPU:
#   bash bench/on_gpu.sh [OUT_DIR]
# 1. the CUDA-only tests (CUDA graphs, the worker's CUDA defaults against float32);
# 2. python -m bench.gpu: one forward pass of the celeba256 architecture, every variant and batch size;
# 3. python -m bench.throughput --device cuda: the service end to end at concurrency 1, 8, 32.
# Each step has its own time limit so that a slow one cannot cost the others their figures; every
# result is written under OUT_DIR as it comes. With no network on the GPU machine, the service's
# Python packages may travel as wheels in .whl/ (see docs/gpu.md); they are installed first.
set -u
OUT=${1:-${OUT:-bench/results/gpu}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} PATH=/tmp/site/bin:$PATH
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
  nproc; } 2>&1 | tee "$OUT/machine.txt"

timeout "${TESTS_S:-80}" "$PY" -m pytest -q -p no:cacheprovider tests/worker/test_speed.py 2>&1 | tee "$OUT/tests.log" | tail -5
timeout "${GPU_S:-220}" "$PY" -m bench.gpu --time-budget "${GPU_BUDGET_S:-170}" --repeats "${REPEATS:-10}" \
  --json "$OUT/gpu.json" --markdown "$OUT/gpu.md" 2>&1 | tee "$OUT/gpu.log" | grep -v '^{' | tail -40
timeout "${THROUGHPUT_S:-280}" "$PY" -m bench.throughput --device cuda --time-budget "${THROUGHPUT_BUDGET_S:-190}" \
  --config batched: --config unbatched:REPAINT_MAX_BATCH=1 --config eager:REPAINT_COMPILE=false,REPAINT_CUDA_GRAPHS=false \
  --json "$OUT/throughput.json" --out "$OUT/throughput.md" 2>&1 | tee "$OUT/throughput.log" | tail -25
