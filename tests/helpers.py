"""The one tolerance helper for artlib's tests.

Rule (from flash-attention): an implementation run at low precision may differ from the fp32/fp64
reference by at most ``factor`` times the error that plain PyTorch makes at that same precision
(``lowp_ref``), plus a small absolute floor. Without a low-precision reference, a per-dtype table is
used. On failure the message names the worst index and the fraction of elements out of tolerance.
"""

from __future__ import annotations

import torch
from torch import Tensor

# (atol, rtol) per dtype, for comparisons against a reference computed in float32/float64.
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def assert_close(
    actual: Tensor,
    expected: Tensor,
    *,
    dtype: torch.dtype | None = None,
    lowp_ref: Tensor | None = None,
    factor: float = 2.0,
    atol: float | None = None,
    rtol: float | None = None,
    name: str = "tensor",
) -> None:
    """Assert ``actual`` matches ``expected`` (the high-precision reference).

    dtype: the precision ``actual`` was computed at (defaults to ``actual.dtype``), picks the table row.
    lowp_ref: the same computation by plain PyTorch at that precision; if given, the allowed error per
        element is ``factor * |lowp_ref - expected| + atol``.
    """
    if actual.shape != expected.shape:
        raise AssertionError(
            f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
        )
    dtype = dtype or actual.dtype
    t_atol, t_rtol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    atol = t_atol if atol is None else atol
    rtol = t_rtol if rtol is None else rtol
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if not torch.isfinite(a).all():
        bad = (~torch.isfinite(a)).nonzero()[0].tolist()
        raise AssertionError(f"{name}: non-finite value at index {bad}")
    err = (a - e).abs()
    if lowp_ref is not None:
        base = (lowp_ref.detach().to(torch.float64).cpu() - e).abs()
        allowed = factor * base + atol + rtol * 0.1 * e.abs()
    else:
        allowed = atol + rtol * e.abs()
    over = err > allowed
    if over.any():
        excess = err - allowed
        worst = int(excess.argmax())
        idx = list(torch.unravel_index(torch.tensor(worst), a.shape)) if a.dim() else []
        idx = [int(i) for i in idx]
        raise AssertionError(
            f"{name}: {int(over.sum())}/{over.numel()} elements ({float(over.float().mean()):.2%}) out "
            f"of tolerance; worst at index {idx}: got {a.flatten()[worst].item():.6g}, expected "
            f"{e.flatten()[worst].item():.6g} (|err| {err.flatten()[worst].item():.3g} > allowed "
            f"{allowed.flatten()[worst].item():.3g}); max |err| {err.max().item():.3g}"
        )
