"""The MTC loss (Eq. 5-8) and tracklet aggregation (Eq. 9), forward + backward, against the eager
reference and ``torch.compile(reference)``, on the same inputs in the same run.

    pytest benchmarks/bench_mtc.py --benchmark-only
    pytest benchmarks/bench_mtc.py --benchmark-only --benchmark-json mtc.json && python benchmarks/table.py mtc.json

Paper shape: B = 24 videos, T = 16 frames, d = 256, K in {2, 8, 32}; fp32 on CPU (the GPU run is
benchmarks/gpu_mtc.py). One call = forward + ``torch.autograd.grad`` of everything the op returns.

- ``artlib``: the public op as the auto dispatch runs it here (``artlib.ops.backend(op)``: the
  native C++ kernels once built).
- ``custom-op-reference``: the op forced onto its reference path (``use_backend("reference", op)``):
  the op layer's overhead plus the closed-form backward, against ``eager-reference``.
- ``eager-reference``: ``mtc_loss_ref`` / ``tracklet_aggregate_ref`` under autograd.
- ``compiled-reference``: the same under ``torch.compile(dynamic=True)`` (compiled once, outside the
  timing; the first run of this file spends ~1-2 min in inductor, later runs hit its cache).

On a shared or busy machine, wall-clock times of multi-threaded CPU code mean little; measure CPU
time on one thread instead (how the table in docs/mtc_kernels.md was made):

    ARTLIB_BENCH_THREADS=1 pytest benchmarks/bench_mtc.py --benchmark-only --benchmark-timer time.process_time
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from artlib.ops import (
    backend,
    mtc_loss,
    mtc_loss_ref,
    tracklet_aggregate,
    tracklet_aggregate_ref,
    use_backend,
)

if os.environ.get("ARTLIB_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["ARTLIB_BENCH_THREADS"]))

SMOKE = os.environ.get("ARTLIB_BENCH_SMOKE", "0") not in ("", "0")  # tiny shapes (conftest.py)
B, T, D = (2, 4, 32) if SMOKE else (24, 16, 256)
K_VALUES = (2,) if SMOKE else (2, 8, 32)
ROUNDS = 15


@functools.cache
def _inputs(k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(k)
    r = torch.randn(B, T, k, D, generator=g).requires_grad_()
    s = torch.randn(B, k, D, generator=g).requires_grad_()
    grad = torch.randn(B, k, D, generator=g)
    return r, s, grad


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=True)


def _mtc_step(fn, r):
    out = torch.stack(fn(r))
    return torch.autograd.grad(out, r, torch.ones_like(out))


def _ta_step(fn, r, s, grad):
    return torch.autograd.grad(fn(r, s, "saliency", 1.0), (r, s), grad)


def _run(benchmark, step):
    step()  # warm-up outside the timing (the compiled case compiles here)
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)


MTC_CASES = ("artlib", "custom-op-reference", "eager-reference", "compiled-reference")


@pytest.mark.parametrize("k", K_VALUES, ids=lambda k: f"K{k}")
@pytest.mark.parametrize("case", MTC_CASES)
def test_mtc_loss(benchmark, case, k):
    benchmark.group = f"mtc_loss fwd+bwd B{B} T{T} K{k} d{D}"
    r, _, _ = _inputs(k)
    fn = {"eager-reference": mtc_loss_ref, "compiled-reference": _compiled(mtc_loss_ref)}.get(
        case, mtc_loss
    )
    with use_backend("reference" if case == "custom-op-reference" else "auto", "mtc_loss"):
        if fn is mtc_loss:
            benchmark.extra_info["backend"] = backend("mtc_loss", "cpu")
        benchmark.extra_info["threads"] = torch.get_num_threads()
        _run(benchmark, lambda: _mtc_step(fn, r))


TA_CASES = ("artlib", "custom-op-reference", "eager-reference", "compiled-reference")


@pytest.mark.parametrize("k", K_VALUES, ids=lambda k: f"K{k}")
@pytest.mark.parametrize("case", TA_CASES)
def test_tracklet_aggregate(benchmark, case, k):
    benchmark.group = f"tracklet_aggregate fwd+bwd B{B} T{T} K{k} d{D}"
    r, s, grad = _inputs(k)
    fn = {
        "eager-reference": tracklet_aggregate_ref,
        "compiled-reference": _compiled(tracklet_aggregate_ref),
    }.get(case, tracklet_aggregate)
    op = "tracklet_aggregate"
    with use_backend("reference" if case == "custom-op-reference" else "auto", op):
        if fn is tracklet_aggregate:
            benchmark.extra_info["backend"] = backend(op, "cpu")
        benchmark.extra_info["threads"] = torch.get_num_threads()
        _run(benchmark, lambda: _ta_step(fn, r, s, grad))


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(pytest.main([__file__, "--benchmark-only", *sys.argv[1:]]))
