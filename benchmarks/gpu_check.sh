#!/usr/bin/env bash
# On a CUDA machine (run on H100 and H200 cards): check every CUDA kernel against its reference (fp32, fp16, bf16,
# forward and gradients) and time it against the stock alternatives. Prints a short table last.
# Needs only torch, triton, einops, numpy, pytest (no av/open_clip/DALI). About 9 minutes at most
# (the timeouts below); ARTLIB_GPU_COMPILE=0 skips the compiled model rows (~2 minutes less).
#   bash benchmarks/gpu_check.sh            (from the repository root)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
status=0
exec > >(tee "${OUT:-/tmp}/gpu_check.log") 2>&1
# the CUDA tests of the ops (fp32/fp16/bf16 against the references, forward and gradients)
echo "=== pytest -m gpu (ops)"
timeout "${GPU_TEST_TIMEOUT:-150}" python -m pytest -q -m gpu -p no:cacheprovider \
  tests/test_region_attention.py tests/test_ops_mtc.py tests/test_ops_tracklet.py \
  || { echo "FAILED: pytest -m gpu (exit $?)"; status=1; }
# checks + timings; gpu_model.py prints the UniFormerV2-B/16 table (B=8, T=16, 224², bf16, eager
# and compiled), gpu_region_attention.py the region-attention tables (CUDA graphs, then eager)
for script in benchmarks/gpu_region_attention.py benchmarks/gpu_mtc.py benchmarks/gpu_model.py; do
  [ -f "$script" ] || { echo "missing $script"; continue; }
  echo "=== $script"
  limit="${GPU_CHECK_TIMEOUT:-150}"
  [ "$script" = benchmarks/gpu_model.py ] && limit="${GPU_MODEL_TIMEOUT:-240}"  # + two compiles
  timeout "$limit" python "$script" || { echo "FAILED: $script (exit $?)"; status=1; }
done
exit $status
