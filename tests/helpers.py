"""The one tolerance helper for artlib's tests.

Rule (from flash-attention): an implementation run at low precision may differ from the fp32/fp64
reference by at most ``factor`` times the error that plain PyTorch makes at that same precision
(``lowp_ref``), plus a small absolute floor. Without a low-precision reference, a per-dtype table is
used. On failure the message names the worst index and the fraction of elements out of tolerance.

The relative rule has a per-dtype floor of one unit in the last place of the result's format,
``torch.finfo(dtype).eps * |expected|`` (float16: 2^-10 relative, bfloat16: 2^-7). Why: a kernel and
plain PyTorch both accumulate in fp32 and round the result to the low-precision format once; when
their fp32 values differ only in the order of the additions, they can round to *neighbouring*
representable numbers. Where PyTorch's rounding happens to land next to the exact value, ``factor *
|lowp_ref - expected|`` is near 0 and would ask the kernel for more than the format can hold. How
often that happens depends on the CPU: on AVX-512 machines PyTorch's float16 reference sums in a
different order than on AVX2 ones and is often a little more exact (seen: a float16 dq element
3.85e-3 from fp64 where PyTorch's error was ~0, i.e. one float16 ulp at 5.78). One ulp of the output
format is the smallest tolerance that does not depend on the instruction set, and it is still far
below any real bug (a wrong index or a missing term is off by whole units).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor, nn

# (atol, rtol) per dtype, for comparisons against a reference computed in float32/float64.
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

# The floor of the relative rule: one unit in the last place, relative (see the module docstring).
ULP = {
    dt: torch.finfo(dt).eps for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
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
        element is ``max(factor * |lowp_ref - expected|, one ulp of dtype at |expected|) + atol``.
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
        ulp = ULP.get(dtype, ULP[torch.float32]) * e.abs()  # the floor: one ulp of the format
        allowed = torch.maximum(factor * base, ulp) + atol + rtol * 0.1 * e.abs()
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


def assert_mtc_grad_close(dr, exp_dr, r, *, dtype=None, lowp_ref=None, name="dR") -> None:
    """An MTC loss gradient against its float64 reference: element by element (``assert_close``),
    except the rows of zero responses (``r`` all zero on the last dim), compared at their own
    scale. Their gradient is 1/eps times a sum of unit vectors that nearly cancel (values of
    1e5-1e7): float32 gets it right to the row's scale only, and how close plain PyTorch's float32
    lands on one element is luck (the element rule failed for 1-4 in 200 seeds). Each such row:
    max |err| <= 1e-5 x its largest |value|, as check_large_shape of test_ops_mtc (measured: at
    most 0.3x that over 200 seeds; an error of 1e-4 relative in the row is 10x over it)."""
    zero = r.abs().amax(-1) == 0  # (B, T, K)
    if (dtype or dr.dtype) != torch.float64 and zero.any():
        for idx in zero.nonzero().tolist():
            row, exp_row = dr[tuple(idx)].double(), exp_dr[tuple(idx)].double()
            scale, err = exp_row.abs().max(), (row - exp_row).abs().max()
            assert err <= 1e-5 * scale, (
                f"{name} of the zero response {idx}: max |err| {err:.3g} > 1e-5 x its scale "
                f"{scale:.3g}"
            )
        keep = ~zero[..., None]  # the other rows, element by element
        dr, exp_dr = dr * keep, exp_dr * keep
        lowp_ref = None if lowp_ref is None else lowp_ref * keep
    assert_close(dr, exp_dr, dtype=dtype, lowp_ref=lowp_ref, name=name)


def ops_run(fn, *args, **kwargs) -> tuple[object, set[str]]:
    """Run ``fn(*args, **kwargs)`` under the PyTorch profiler; return its result and the names of
    every dispatcher op that ran (e.g. ``"artlib::native_mtc_loss_fwd"``), backward passes inside
    ``fn`` included. Proves which kernel ran without replacing any of them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn(*args, **kwargs)
    return out, {e.name for e in prof.events()}


def mha_with_biases(d: int, heads: int, dtype=torch.float32, bias: bool = True, device="cpu"):
    """``nn.MultiheadAttention(d, heads, batch_first=True)``, the stock peer of region attention,
    with random biases (it zero-initializes them, so their gradients would go untested)."""
    m = nn.MultiheadAttention(d, heads, batch_first=True, bias=bias, device=device)
    if bias:
        with torch.no_grad():
            m.in_proj_bias.normal_(0, 0.5)
            m.out_proj.bias.normal_(0, 0.5)
    return m.to(dtype)


def mha_params(m) -> list:
    """The four parameters of an nn.MultiheadAttention in region_attention's argument order."""
    return [m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias]


# ------------------------------------------------------------------------ processes (Linux /proc)
def process_gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie waiting for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            state = next(ln for ln in fh if ln.startswith("State:"))
        return "Z" in state.split()[1]
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return True


def wait_gone(pid: int, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``process_gone(pid)`` -> whether it is gone."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.05)
    return process_gone(pid)


def child_pids(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (/proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found
