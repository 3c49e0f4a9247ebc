"""Region attention (RSSA's cross-attention, Eq. 3) against the stock alternatives, on the same inputs in
the same run: forward and forward + backward.

    pytest benchmarks/bench_region_attention.py --benchmark-only
    pytest benchmarks/bench_region_attention.py --benchmark-only --benchmark-json ra.json && python benchmarks/table.py ra.json

Shape: N = 24*16 frames, L = 196 tokens, d = 256, 8 heads, K in {2, 16, 64} region queries; fp32 on
CPU (bf16 on CUDA when there is one: the GPU run with CUDA graphs and the checks is
benchmarks/gpu_region_attention.py). One fwd+bwd call = forward + ``torch.autograd.grad`` of the
output w.r.t. query, x and the four weights for a fixed random upstream gradient.

- ``artlib``: ``artlib.ops.region_attention`` as dispatched (the form picked per shape, see
  ``extra_info["form"]``; the absorbed form's core on ``extra_info["backend"]``).
- ``mha``: ``nn.MultiheadAttention(d, heads, batch_first=True)(query, x, x, need_weights=False)``.
- ``sdpa``: the in/out projections + ``F.scaled_dot_product_attention`` (the standard form, written
  the fast way: one GEMM for keys and values).
- ``absorbed-sdpa``: the absorbed form in stock PyTorch, SDPA as its core (head dim d, scale 1,
  k = v = x): DESIGN.md's strongest stock alternative.
- ``flex``: the projections + compiled FlexAttention; CUDA only (on CPU it has no backward and its
  compile takes minutes), skipped where it does not run.

``extra_info``: ``saved_mib`` (what autograd keeps for the backward, both devices), ``peak_mib``
(CUDA: peak allocation above the inputs).
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from artlib.ops import backend, region_attention, region_attention_form

SMOKE = os.environ.get("ARTLIB_BENCH_SMOKE", "0") not in ("", "0")  # tiny shapes (conftest.py)
N, L, D, HEADS = 24 * 16, 196, 256, 8
KS = (2, 16, 64)
if SMOKE:
    N, L, D, HEADS, KS = 4, 49, 64, 8, (2, 16)
IMPLS = ("artlib", "mha", "sdpa", "absorbed-sdpa", "flex")


# ---- the stock alternatives (also used by benchmarks/gpu_region_attention.py) -----------------------


def _split_heads(t, heads):
    """(N, S, d) -> (N, heads, S, d / heads)."""
    n, s, d = t.shape
    return t.view(n, s, heads, d // heads).transpose(1, 2)


def _project(q, x, p, heads):
    w_in, b_in, _, _ = p
    d = q.shape[-1]
    qh = _split_heads(F.linear(q, w_in[:d], b_in[:d]), heads)
    kv = F.linear(x, w_in[d:], b_in[d:])  # one GEMM for keys and values
    return qh, _split_heads(kv[..., :d], heads), _split_heads(kv[..., d:], heads)


def _merge(ctx, p):
    n, h, k, dh = ctx.shape
    return F.linear(ctx.transpose(1, 2).reshape(n, k, h * dh), p[2], p[3])


def stock_sdpa(q, x, p, heads):
    """The standard form: project x to keys and values, SDPA, output projection."""
    return _merge(F.scaled_dot_product_attention(*_project(q, x, p, heads)), p)


def stock_absorbed_sdpa(q, x, p, heads):
    """The absorbed form in stock PyTorch: fold the projections into the queries (per-head bmm),
    SDPA with k = v = x (head dim d, scale 1), then the per-head value and output projections."""
    w_in, b_in, w_out, b_out = p
    n, k, d = q.shape
    dh, nk = d // heads, n * k
    qs = F.linear(q.reshape(nk, d), w_in[:d], b_in[:d]) * dh**-0.5
    qt = torch.bmm(qs.view(nk, heads, dh).transpose(0, 1), w_in[d : 2 * d].view(heads, dh, d))
    qt = qt.view(heads, n, k, d).transpose(0, 1).reshape(n, 1, heads * k, d)
    a = F.scaled_dot_product_attention(qt, x[:, None], x[:, None], scale=1.0)  # (N, 1, M, d)
    a = a.view(n, heads, k, d).transpose(0, 1).reshape(heads, nk, d)
    ctx = torch.bmm(a, w_in[2 * d :].view(heads, dh, d).transpose(1, 2))  # (heads, NK, dh)
    ctx = ctx.transpose(0, 1).reshape(nk, d) + b_in[2 * d :]
    return F.linear(ctx, w_out, b_out).view(n, k, d)


@functools.cache
def _flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def stock_flex(q, x, p, heads):
    """The standard form with compiled FlexAttention as the attention."""
    return _merge(_flex()(*_project(q, x, p, heads)), p)


def make_cases(mha: nn.MultiheadAttention):
    """name -> fn(query, x, params) for every implementation, params in MHA's layout."""
    h = mha.num_heads
    return {
        "artlib": lambda q, x, p: region_attention(q, x, *p, h),
        "mha": lambda q, x, p: mha(q, x, x, need_weights=False)[0],
        "sdpa": lambda q, x, p: stock_sdpa(q, x, p, h),
        "absorbed-sdpa": lambda q, x, p: stock_absorbed_sdpa(q, x, p, h),
        "flex": lambda q, x, p: stock_flex(q, x, p, h),
    }


def saved_mib(fn) -> float:
    """MiB of distinct tensor storage that autograd keeps for the backward of ``fn()``."""
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values()) / 2**20


# ---- the benchmark -------------------------------------------------------------------------------


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@functools.cache
def _setup(device: str, k: int):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(D, HEADS, batch_first=True, device=device, dtype=dtype)
    with torch.no_grad():
        mha.in_proj_bias.normal_(0, 0.1)
        mha.out_proj.bias.normal_(0, 0.1)
    q = torch.randn(N, k, D, device=device, dtype=dtype, requires_grad=True)
    x = torch.randn(N, L, D, device=device, dtype=dtype, requires_grad=True)
    cot = torch.randn(N, k, D, device=device, dtype=dtype)
    params = [mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias]
    return mha, q, x, cot, params


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k", KS, ids=lambda k: f"K{k}")
@pytest.mark.parametrize("train", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("device", DEVICES)
def test_region_attention(benchmark, device, train, k, impl):
    if impl == "flex" and device == "cpu":
        pytest.skip("FlexAttention has no backward on CPU and compiles for minutes there")
    mha, q, x, cot, params = _setup(device, k)
    fn = make_cases(mha)[impl]
    leaves = [q, x, *params]

    def fwd():
        with torch.no_grad():
            out = fn(q, x, params)
        _sync(device)
        return out

    def fwd_bwd():
        grads = torch.autograd.grad(fn(q, x, params), leaves, cot)
        _sync(device)
        return grads

    step = fwd_bwd if train else fwd
    try:
        step()  # warm-up outside the timing (flex compiles here)
    except Exception as exc:  # noqa: BLE001 - "where it runs"
        if impl == "flex":
            pytest.skip(f"FlexAttention does not run here: {type(exc).__name__}: {exc}"[:200])
        raise
    benchmark.group = f"region_attention {'fwd+bwd' if train else 'fwd'} {device} K{k}"
    info = benchmark.extra_info
    info.update(
        N=N, L=L, d=D, heads=HEADS, K=k, dtype=str(q.dtype)[6:], threads=torch.get_num_threads()
    )
    if impl == "artlib":
        info["form"] = region_attention_form(k, D, HEADS, device)
        info["backend"] = backend("region_attention", device)
    if train:
        info["saved_mib"] = round(saved_mib(lambda: fn(q, x, params)), 1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        info["peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    rounds = 20 if device == "cuda" else (3 if train else 5)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)


# ---- per-call overhead at a launch-bound shape -----------------------------------------------------
# What eager GPU time is made of at the paper's K = 2: the op's Python, dispatch and autograd cost per
# call, measured on CPU at a shape whose arithmetic is negligible (N = 2 frames, K = 2, L = 16,
# d = 32, 4 heads, fp32, one thread). Median of many calls; the stock routes on the same inputs.

OVERHEAD_SHAPE = dict(n=2, k=2, l=16, d=32, heads=4)


@functools.cache
def _overhead_setup():
    s = OVERHEAD_SHAPE
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(s["d"], s["heads"], batch_first=True)
    q = torch.randn(s["n"], s["k"], s["d"], requires_grad=True)
    x = torch.randn(s["n"], s["l"], s["d"], requires_grad=True)
    params = [mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias]
    return mha, q, x, torch.randn(s["n"], s["k"], s["d"]), params


@pytest.mark.parametrize("impl", ["artlib", "artlib-absorbed", "mha", "sdpa", "absorbed-sdpa"])
@pytest.mark.parametrize("train", [False, True], ids=["fwd", "fwd+bwd"])
def test_region_attention_overhead(benchmark, train, impl):
    mha, q, x, cot, params = _overhead_setup()
    cases = make_cases(mha)
    if impl == "artlib-absorbed":
        fn = lambda q, x, p: region_attention(q, x, *p, mha.num_heads, form="absorbed")  # noqa: E731
    else:
        fn = cases[impl]
    leaves = [q, x, *params]

    def fwd():
        with torch.no_grad():
            return fn(q, x, params)

    def fwd_bwd():
        return torch.autograd.grad(fn(q, x, params), leaves, cot)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        benchmark.group = f"region_attention per-call overhead {'fwd+bwd' if train else 'fwd'} cpu"
        benchmark.extra_info.update(OVERHEAD_SHAPE, threads=1)
        benchmark.pedantic(fwd_bwd if train else fwd, rounds=300, iterations=1, warmup_rounds=20)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(pytest.main([__file__, "--benchmark-only", *sys.argv[1:]]))
