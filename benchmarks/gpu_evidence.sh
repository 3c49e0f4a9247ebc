#!/usr/bin/env bash
# The README's evidence table on a CUDA machine: examples/synthetic_evidence.py (ART vs --baseline over
# seeds, plus the ablations), every run in its own process, many at once on one GPU.
#   [VARIANTS="no SE,no MTC"] [SEEDS="0 1 2 3 4"] [ABLATION_SEEDS="0 1 2"] [PRETRAIN_EPOCHS=30] \
#     bash benchmarks/gpu_evidence.sh [JOBS] [-- extra trainer flags]
# PRETRAIN_EPOCHS: the pretrained-backbone regime (synthetic_evidence.py --pretrain-epochs).
# The device image has no PyAV: carry its wheel in .whl/ (see CONTRIBUTING.md); it is installed to
# /tmp/site. Writes $OUT/evidence.md (the table) and $OUT/evidence_runs.tar.gz (every run's
# summary.json, metrics.csv and log).
set -u
cd "$(dirname "$0")/.."
JOBS=${1:-18}
shift || true
[ "${1:-}" = "--" ] && shift
OUT=${OUT:-/tmp/gpu_evidence}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export ARTLIB_CACHE=${ARTLIB_CACHE:-/tmp/artlib_cache}
unset TRITON_INTERPRET
exec > >(tee "$OUT/gpu_evidence.log") 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, av; print('torch', torch.__version__, 'av', av.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" || exit 1
# the synthetic set once, before the runs share it
python3 - "$@" <<'EOF' || exit 1
import sys
from artlib.engine.cli import parse
from artlib.engine.trainer import build_data
from artlib.engine.distributed import DistInfo
cfg = parse(sys.argv[1:])
build_data(cfg, DistInfo())
print("synthetic set ready")
EOF
# VARIANTS: comma-separated names from examples/synthetic_evidence.py (default: all of them)
# shellcheck disable=SC2086
timeout "${EVIDENCE_TIMEOUT:-480}" python3 examples/synthetic_evidence.py --seeds ${SEEDS:-0 1 2} \
  ${ABLATION_SEEDS:+--ablation-seeds $ABLATION_SEEDS} \
  --ablations ${VARIANTS:+--variants "$VARIANTS"} --jobs "$JOBS" \
  ${PRETRAIN_EPOCHS:+--pretrain-epochs "$PRETRAIN_EPOCHS"} \
  --out /tmp/evidence --table "$OUT/evidence.md" -- --workers 1 "$@"
status=$?
tar czf "$OUT/evidence_runs.tar.gz" --exclude='*.pt' --exclude='*.pth' --exclude='events.*' \
  -C /tmp evidence 2>/dev/null
exit $status
