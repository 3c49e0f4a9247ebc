"""Which form region attention runs for a shape: the measured crossover table.

The absorbed form costs about 2 K heads L d multiply-adds per frame against 2 L d^2 for projecting x
(the standard form), so it wins while K heads is well under d. How far under depends on the backend
that runs its core, so the ratio is measured per (device type, backend).
"""

import torch

from artlib.ops import _backend

__all__ = ["FORMS", "ABSORBED_MAX_ROWS_PER_DIM", "region_attention_form"]

FORMS = ("auto", "absorbed", "standard")

# The absorbed form is picked while K * heads <= ratio * d, the ratio depending on where its core runs.
# Measured crossovers, fwd+bwd at N = 384 frames, L = 196, d = 256, 8 heads, absorbed vs standard:
#   cuda, triton (H200, bf16, CUDA-graph replay, benchmarks/gpu_region_attention.py): 182 vs 700 us
#        at K = 2, 359 vs 714 at K = 8, 758 vs 741 at K = 16, 1369 vs 770 at K = 32 -> 0.4 (K <= 12)
#   cpu, native (2-core CPU, fp32, eager, one thread, CPU time; the whole absorbed op in C++):
#        standard/absorbed time 10.3x at K = 2, 1.71x at K = 16, 1.21x at K = 24, 0.89x at K = 32
#        (1549 vs 2833 ms at K = 64) -> 0.85 (K <= 27)
#   cpu, reference (the same): 2.9x at K = 2, 1.65x at K = 8, 1.15x at K = 12, 0.78x at K = 16
#        -> 0.45 (K <= 14)
ABSORBED_MAX_ROWS_PER_DIM = {
    ("cuda", "triton"): 0.4,
    ("cpu", "native"): 0.85,
    ("cpu", "reference"): 0.45,
}
_DEFAULT_RATIO = 0.45

_OP = "region_attention"


# device type -> the ratio for the backend chosen there (forgotten with the backend choices)
_RATIOS: dict[str, float] = _backend.register_cache({})


def _form_ratio(device_type: str) -> float:
    """The crossover ratio for the core backend that runs on this device type: resolved once per
    device type and remembered in a plain dict, so that torch.compile reads a constant (a guarded
    dict lookup) instead of tracing the backend choice (no private torch attribute needed)."""
    ratio = _RATIOS.get(device_type)
    if ratio is None and torch.compiler.is_compiling():
        # a compile before any eager call here: the choice select() will make, without building
        # the native kernels inside the trace
        planned = _backend.planned(_OP, device_type)
        return ABSORBED_MAX_ROWS_PER_DIM.get((device_type, planned), _DEFAULT_RATIO)
    if ratio is None:
        try:
            name = _backend.select(_OP, device_type)
        except RuntimeError:  # a forced backend that cannot run here: the core says so if it runs
            name = "reference"
        ratio = ABSORBED_MAX_ROWS_PER_DIM.get((device_type, name), _DEFAULT_RATIO)
        _RATIOS[device_type] = ratio
    return ratio


def region_attention_form(
    num_queries: int, dim: int, num_heads: int, device: torch.device | str = "cpu"
) -> str:
    """The form :func:`region_attention` runs for this shape: ``"absorbed"`` while
    K * heads <= ratio * d, else ``"standard"``; the ratio is the measured crossover for the backend
    that runs the core on ``device`` (:data:`ABSORBED_MAX_ROWS_PER_DIM`). L does not enter: both
    forms' costs are linear in it."""
    ratio = _form_ratio(torch.device(device).type)
    return "absorbed" if num_queries * num_heads <= ratio * dim else "standard"
