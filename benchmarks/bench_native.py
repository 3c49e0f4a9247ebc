"""The native CPU kernels (csrc/) against plain PyTorch on the same inputs in the same run: the
region-attention core (absorbed form) and the MTC loss, forward and forward + backward, fp32.

    pytest benchmarks/bench_native.py --benchmark-only
    pytest benchmarks/bench_native.py --benchmark-only --benchmark-json native.json && python benchmarks/table.py native.json

Core shapes: N = 2*16 and 24*16 frames, L = 196 tokens, d = 256, 8 heads, K = 2 and 16
region queries, i.e. M = heads*K = 16 and 128 query rows per frame; q is (N, M, d), x is (N, L, d).
One fwd+bwd call = forward + the gradients of q and x for a fixed random da.

- ``artlib-native``: ``_native.region_attention_core_forward`` (+ ``_backward``).
- ``eager``: ``softmax(q x^T) x`` in eager PyTorch under autograd (the absorbed reference's core,
  written with softmax: a little faster than ``region_attention_core_ref``'s logsumexp form).
- ``compiled``: the same under ``torch.compile(dynamic=True)``, compiled outside the timing.
- ``sdpa``: ``F.scaled_dot_product_attention(q, x, x, scale=1)``, the strongest stock kernel.

MTC: B = 24, T = 16, K = 2, d = 256 against ``mtc_loss_ref`` eager and compiled.

``ARTLIB_BENCH_THREADS=1`` runs everything on one thread: on a shared, busy machine a descheduled
OpenMP thread stalls 2-thread calls by milliseconds, which swamps the small cases. Without a
compiler the native cases skip and say why. The file takes ~2-3 min on a 2-core CPU
(mostly the N = 384, M = 128 cases and inductor's first compile).
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.nn.functional as F

from artlib.ops import _native
from artlib.ops.mtc_loss import mtc_loss_ref

if os.environ.get("ARTLIB_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["ARTLIB_BENCH_THREADS"]))

SMOKE = os.environ.get("ARTLIB_BENCH_SMOKE", "0") not in ("", "0")  # tiny shapes (conftest.py)
L, D = (49, 64) if SMOKE else (196, 256)
CORE_CASES = [(32, 16), (32, 128), (384, 16), (384, 128)]  # (N, M)
if SMOKE:
    CORE_CASES = [(4, 16)]
CORE_IMPLS = ["artlib-native", "eager", "compiled", "sdpa"]
MTC_IMPLS = ["artlib-native", "eager", "compiled"]


def _rounds(n: int, m: int) -> int:
    return 20 if n * m <= 32 * 128 else (5 if m <= 16 else 3)


def _need_native(impl: str) -> None:
    if impl == "artlib-native" and not _native.available():
        pytest.skip("native kernels unavailable: " + _native.reason())


@functools.cache
def _core_inputs(n: int, m: int):
    g = torch.Generator().manual_seed(n * 1000 + m)
    q = (torch.randn(n, m, D, generator=g) * D**-0.5).requires_grad_()
    x = torch.randn(n, L, D, generator=g).requires_grad_()
    da = torch.randn(n, m, D, generator=g)
    return q, x, da


def core_eager(q, x):
    """S = q x^T, P = softmax_rows(S), a = P x."""
    return torch.softmax(q @ x.mT, dim=-1) @ x


def core_sdpa(q, x):
    return F.scaled_dot_product_attention(q, x, x, scale=1.0)


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=True)


def _core_fn(impl: str, train: bool):
    if impl == "artlib-native":
        if not train:
            return lambda q, x, da: _native.region_attention_core_forward(q.detach(), x.detach())

        def native_step(q, x, da):
            q, x = q.detach(), x.detach()
            a, lse = _native.region_attention_core_forward(q, x)
            return _native.region_attention_core_backward(da, q, x, a, lse)

        return native_step
    fn = {"eager": core_eager, "compiled": _compiled(core_eager), "sdpa": core_sdpa}[impl]
    if not train:

        def fwd(q, x, da):
            with torch.no_grad():
                return fn(q, x)

        return fwd
    return lambda q, x, da: torch.autograd.grad(fn(q, x), (q, x), da)


@pytest.mark.parametrize("impl", CORE_IMPLS)
@pytest.mark.parametrize("n,m", CORE_CASES, ids=[f"N{n}-M{m}" for n, m in CORE_CASES])
@pytest.mark.parametrize("train", [False, True], ids=["fwd", "fwd+bwd"])
def test_core(benchmark, train, n, m, impl):
    _need_native(impl)
    benchmark.group = f"core {'fwd+bwd' if train else 'fwd'} N={n} M={m}"
    q, x, da = _core_inputs(n, m)
    fn = _core_fn(impl, train)
    benchmark.extra_info.update(N=n, M=m, L=L, d=D)
    benchmark.pedantic(fn, args=(q, x, da), rounds=_rounds(n, m), iterations=1, warmup_rounds=1)


# ---- MTC loss ------------------------------------------------------------------------------------

MTC_SHAPE = (2, 4, 2, 32) if SMOKE else (24, 16, 2, 256)  # B, T, K, d


def _mtc_stacked(r):
    return torch.stack(mtc_loss_ref(r))


def _mtc_fn(impl: str, train: bool):
    grad = torch.ones(4)
    if impl == "artlib-native":
        if not train:
            return lambda r: _native.mtc_loss_forward(r.detach(), 0.6, True, 1.0, 1.0, 1.0)

        def native_step(r):
            r = r.detach()
            _native.mtc_loss_forward(r, 0.6, True, 1.0, 1.0, 1.0)
            return _native.mtc_loss_backward(grad, r, 0.6, True, 1.0, 1.0, 1.0)

        return native_step
    fn = _mtc_stacked if impl == "eager" else _compiled(_mtc_stacked)
    if not train:

        def fwd(r):
            with torch.no_grad():
                return fn(r)

        return fwd
    return lambda r: torch.autograd.grad(fn(r), r, grad)


@pytest.mark.parametrize("impl", MTC_IMPLS)
@pytest.mark.parametrize("train", [False, True], ids=["fwd", "fwd+bwd"])
def test_mtc_loss(benchmark, train, impl):
    _need_native(impl)
    benchmark.group = f"mtc_loss {'fwd+bwd' if train else 'fwd'} B=24 T=16 K=2 d=256"
    r = torch.randn(*MTC_SHAPE, generator=torch.Generator().manual_seed(0)).requires_grad_()
    benchmark.pedantic(_mtc_fn(impl, train), args=(r,), rounds=30, iterations=1, warmup_rounds=2)
