#!/usr/bin/env bash
# One run on a lent GPU (H100/H200): check every CUDA kernel against its reference (fp32, fp16, bf16,
# forward and gradients) and time it against the stock alternatives. Prints a short table last.
# Needs only torch, triton, einops, numpy (no av/open_clip/DALI). Finishes in < 8 minutes.
#   bash benchmarks/gpu_check.sh            (from the repository root)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
status=0
exec > >(tee "${OUT:-/tmp}/gpu_check.log") 2>&1
for script in benchmarks/gpu_region_attention.py benchmarks/gpu_mtc.py benchmarks/gpu_model.py; do
  [ -f "$script" ] || { echo "missing $script"; continue; }
  echo "=== $script"
  timeout "${GPU_CHECK_TIMEOUT:-150}" python "$script" || { echo "FAILED: $script (exit $?)"; status=1; }
done
exit $status
