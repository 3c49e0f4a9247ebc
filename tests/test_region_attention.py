"""artlib.ops.region_attention and artlib.nn.RegionAttention against nn.MultiheadAttention (the stock
peer), forward and every gradient; the Triton kernels under TRITON_INTERPRET=1 on small grids."""

import copy

import pytest
import torch
import torch.nn as nn
from helpers import TOLERANCES, assert_close, mha_params, mha_with_biases

import artlib.ops as ops
from artlib.nn.region_attention import RegionAttention
from artlib.ops import region_attention, region_attention_form, region_attention_ref
from artlib.ops.region_attention import (
    _to_rows,
    region_attention_core,
    region_attention_core_backward_ref,
    region_attention_core_ref,
)

OP = "region_attention"


_mha = mha_with_biases
_params = mha_params


def _inputs(n, k, l, d, dtype=torch.float32, lead=None):
    lead = (n,) if lead is None else lead
    q = torch.randn(*lead, k, d, dtype=dtype, requires_grad=True)
    x = torch.randn(*lead, l, d, dtype=dtype, requires_grad=True)
    return q, x


def _grads(out, wrt, cot):
    wrt = [w for w in wrt if w is not None]
    return torch.autograd.grad(out, wrt, cot.to(out.dtype))


def _peer(m, q, x, need_weights=False):
    """nn.MultiheadAttention on the flattened frames, reshaped back."""
    k, d, l = q.shape[-2], q.shape[-1], x.shape[-2]
    out, w = m(
        q.reshape(-1, k, d),
        x.reshape(-1, l, d),
        x.reshape(-1, l, d),
        need_weights=need_weights,
        average_attn_weights=False,
    )
    out = out.reshape(q.shape)
    if need_weights:
        return out, w.reshape(*q.shape[:-2], m.num_heads, k, l)
    return out


def _compare(m, q, x, form, dtype=torch.float32, backend=None, use_backend=None, lowp=False):
    """region_attention at ``dtype`` against MHA in float64 (and MHA at ``dtype`` as the low-precision
    yardstick): output and the gradients of query, x and every weight."""
    if backend is not None:
        use_backend(backend, OP)
    m64 = copy.deepcopy(m).double()
    q64 = q.detach().double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    ref = _peer(m64, q64, x64)
    cot = torch.randn_like(ref)
    g_ref = _grads(ref, [q64, x64, *_params(m64)], cot)

    mp = copy.deepcopy(m).to(dtype)
    ql = q.detach().to(dtype).requires_grad_()
    xl = x.detach().to(dtype).requires_grad_()
    out = region_attention(ql, xl, *_params(mp), m.num_heads, form=form)
    g = _grads(out, [ql, xl, *_params(mp)], cot)
    low, g_low = None, [None] * len(g)
    if lowp:
        ml = copy.deepcopy(m).to(dtype)
        qq = q.detach().to(dtype).requires_grad_()
        xx = x.detach().to(dtype).requires_grad_()
        low = _peer(ml, qq, xx)
        g_low = _grads(low, [qq, xx, *_params(ml)], cot)
    names = [
        "out",
        "d_query",
        "d_x",
        "d_in_proj_weight",
        "d_in_proj_bias",
        "d_out_proj_weight",
        "d_out_proj_bias",
    ]
    for name, a, e, lo in zip(names, [out, *g], [ref, *g_ref], [low, *g_low]):
        assert_close_lowp(a, e, lo, dtype, name)


def assert_close_lowp(actual, expected, lowp, dtype, name):
    """With ``lowp`` (nn.MultiheadAttention at the same low precision), flash-attention's rule per
    tensor: the largest error may be at most 2x MHA's largest error, plus the dtype's atol."""
    if lowp is None:
        return assert_close(actual, expected, dtype=dtype, name=name)
    mha_err = (lowp.detach().double() - expected.detach().double()).abs().max().item()
    atol = TOLERANCES[dtype][0]
    assert_close(
        actual,
        expected,
        dtype=dtype,
        atol=2 * mha_err + atol,
        rtol=0.0,
        name=f"{name} (MHA's max error {mha_err:.3g})",
    )


# ---- against nn.MultiheadAttention on the active CPU backend (native or reference) -----------------


@pytest.mark.parametrize("form", ["absorbed", "standard"])
@pytest.mark.parametrize("heads", [1, 8])
@pytest.mark.parametrize("k", [1, 2, 3, 64])
@pytest.mark.parametrize("l", [196, 49, 50])
def test_matches_mha_fp32(l, k, heads, form):
    m = _mha(64, heads)
    q, x = _inputs(3, k, l, 64)
    _compare(m, q, x, form)


@pytest.mark.parametrize("heads", [1, 8])
@pytest.mark.parametrize("k", [1, 2, 3, 64])
@pytest.mark.parametrize("l", [196, 49, 50])
def test_matches_mha_fp16(l, k, heads):
    m = _mha(64, heads)
    q, x = _inputs(3, k, l, 64)
    _compare(m, q, x, "absorbed", dtype=torch.float16, lowp=True)


def test_leading_dims_and_auto_form():
    """(B, T, K, d) inputs keep their leading dims; "auto" equals both forms."""
    m = _mha(64, 8)
    q, x = _inputs(0, 2, 49, 64, lead=(2, 3))
    out = region_attention(q, x, *_params(m), 8)
    assert out.shape == (2, 3, 2, 64)
    for form in ("absorbed", "standard"):
        assert_close(out, region_attention(q, x, *_params(m), 8, form=form), name=form)
    _compare(m, q, x, "auto")


def test_non_contiguous_inputs():
    m = _mha(64, 8)
    qt = torch.randn(3, 64, 2).transpose(1, 2)  # (3, 2, 64), last dim strided
    xb = torch.randn(3, 60, 96)[:, 5:55, 16:80]  # (3, 50, 64), a window of a larger tensor
    assert not qt.is_contiguous() and not xb.is_contiguous()
    for form in ("absorbed", "standard"):
        _compare(m, qt, xb, form)


@pytest.mark.parametrize("form", ["absorbed", "standard"])
def test_weights_match_mha_and_sum_to_one(form):
    m = _mha(64, 8)
    q, x = _inputs(3, 3, 50, 64)
    out, w = region_attention(q, x, *_params(m), 8, need_weights=True, form=form)
    ref, w_ref = _peer(m, q, x, need_weights=True)
    assert w.shape == (3, 8, 3, 50)
    assert_close(out, ref, name="out")
    assert_close(w, w_ref, name="weights")
    assert_close(w.sum(-1), torch.ones(3, 8, 3), name="row sums")
    # gradients flow through the maps too
    cot_w = torch.randn_like(w)
    g = _grads((out * 0.3).sum() + (w * cot_w).sum(), [q, x, *_params(m)], torch.ones(()))
    g_ref = _grads((ref * 0.3).sum() + (w_ref * cot_w).sum(), [q, x, *_params(m)], torch.ones(()))
    for i, (a, e) in enumerate(zip(g, g_ref)):
        assert_close(a, e, atol=1e-5, rtol=1e-4, name=f"grad {i}")


def test_no_bias():
    m = _mha(64, 8, bias=False)
    q, x = _inputs(3, 2, 49, 64)
    out = region_attention(q, x, m.in_proj_weight, None, m.out_proj.weight, None, 8)
    ref = _peer(m, q, x)
    assert_close(out, ref, name="out")
    g = _grads(out, [q, x, m.in_proj_weight, m.out_proj.weight], torch.ones_like(out))
    g_ref = _grads(ref, [q, x, m.in_proj_weight, m.out_proj.weight], torch.ones_like(out))
    for i, (a, e) in enumerate(zip(g, g_ref)):
        assert_close(a, e, name=f"grad {i}")


def test_references_agree_in_float64():
    m = _mha(48, 4).double()
    q, x = _inputs(2, 3, 50, 48, dtype=torch.float64)
    std, w_std = region_attention_ref(q, x, *_params(m), 4, need_weights=True, form="standard")
    ab, w_ab = region_attention_ref(q, x, *_params(m), 4, need_weights=True, form="absorbed")
    ref, w_ref = _peer(m, q, x, need_weights=True)
    for name, a in [("standard", std), ("absorbed", ab)]:
        assert_close(a, ref, name=name)
    assert_close(w_std, w_ref, name="standard weights")
    assert_close(w_ab, w_ref, name="absorbed weights")


def test_core_reference_backward_matches_autograd():
    q = (torch.randn(2, 6, 16, dtype=torch.float64) * 0.3).requires_grad_()
    x = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
    a, lse = region_attention_core_ref(q, x)
    s = q @ x.mT
    assert_close(lse, s.logsumexp(-1), name="lse")
    assert_close(a, s.softmax(-1) @ x, name="a")
    da = torch.randn_like(a)
    dq, dx = region_attention_core_backward_ref(
        da, q.detach(), x.detach(), a.detach(), lse.detach()
    )
    eq, ex = torch.autograd.grad(a, [q, x], da)
    assert_close(dq, eq, name="dq")
    assert_close(dx, ex, name="dx")


@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
def test_core_dispatch(backend, use_backend):
    """region_attention_core (N, M, d) on each backend equals the reference."""
    if backend == "triton":
        if not ops.triton_available():
            pytest.skip("needs triton")
        use_backend(backend, OP)
    q = torch.randn(2, 16, 32) * 0.2
    x = torch.randn(2, 19, 32)
    a, lse = region_attention_core(q, x)
    a_ref, lse_ref = region_attention_core_ref(q, x)
    assert_close(a, a_ref, name="a")
    assert_close(lse, lse_ref, name="lse")


def _native_or_skip():
    from artlib.ops import _native

    if not _native.available(OP):
        pytest.skip("native kernels unavailable: " + _native.reason())


def _native_op_args(seed, dtype, n=192, k=6, l=57, d=64, bias=True, scale=0.2):
    """Random (query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias) that
    require grad, and a cotangent (n, k, d); the weights scaled by ``scale``."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype)

    args = [
        r(n, k, d),
        r(n, l, d),
        r(3 * d, d, s=scale),
        r(3 * d) if bias else None,
        r(d, d, s=scale),
        r(d) if bias else None,
    ]
    args = [a.requires_grad_() if a is not None else None for a in args]
    return args, r(n, k, d)


# the native op runs the per-head projections on blocks of frames inside the core and sums the
# weight gradients per chunk of blocks: shapes with a partial last block (N % G != 0), more blocks
# than chunks (K = 70: one frame per block, 37 blocks in 13 chunks), head width not a multiple of
# the vector width (d_h = 10, 12), with and without biases; float64 against the float64 reference.
@pytest.mark.parametrize(
    "n, k, l, d, heads, bias",
    [
        (37, 5, 23, 40, 4, True),
        (37, 70, 9, 24, 2, False),
        (1, 1, 7, 16, 8, True),
        (5, 16, 50, 64, 8, True),
    ],
)
def test_native_op_blocks_match_reference(n, k, l, d, heads, bias, use_backend):
    _native_or_skip()
    args, cot = _native_op_args(n * 1000 + k, torch.float64, n, k, l, d, bias, scale=0.3)
    wrt = [a for a in args if a is not None]
    results = {}
    for backend in ("native", "reference"):
        with ops.use_backend(backend, OP):
            assert ops.backend(OP, "cpu") == backend
            out = region_attention(*args, heads, form="absorbed")
            results[backend] = (out, *torch.autograd.grad(out, wrt, cot))
    names = ["out", "d_query", "d_x", "d_in_proj_weight"] + (["d_in_proj_bias"] if bias else [])
    names += ["d_out_proj_weight"] + (["d_out_proj_bias"] if bias else [])
    for name, a, b in zip(names, results["native"], results["reference"], strict=True):
        assert_close(a, b, name=f"{name} (N={n} K={k} L={l} d={d} heads={heads})")


# The native op keeps the softmax weights P (N, heads K, L) for its backward instead of lse and q~
# (recomputed per block), in buffers reused across calls (csrc/native.h, BufferPool: 1 MB and more).
# These shapes make A and P over 1 MB (float32 and float64), so several live forwards hold pooled
# buffers at once and the later calls get freed ones back; every output and gradient is checked
# against the reference.
def _ref_grads(args, heads, cot, dtype=torch.float64):
    """The plain-PyTorch reference at ``dtype``: out and the gradients of every tensor input."""
    args_ = [a.detach().to(dtype).requires_grad_() if a is not None else None for a in args]
    out = region_attention_ref(*args_, heads, form="absorbed")
    wrt = [a for a in args_ if a is not None]
    return (out, *torch.autograd.grad(out, wrt, cot.to(dtype)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_op_keeps_weights(dtype, use_backend):
    """The native forward's residuals: P in lse's place (equal to the reference maps), no q~."""
    from artlib.ops.region_attention.op import _forward

    _native_or_skip()
    use_backend("native", OP)
    heads = 4
    args, _ = _native_op_args(7, dtype, n=5, k=3, l=11, d=16)
    with torch.no_grad():
        out, maps, q_hm, a_hm, p, qs, context = _forward(*args, heads, False)
        _, w_ref = region_attention_ref(
            *[a.double() for a in args], heads, need_weights=True, form="absorbed"
        )
    assert maps.numel() == 0 and q_hm.numel() == 0, (maps.shape, q_hm.shape)
    assert p.shape == (5, heads * 3, 11) and p.dtype == dtype, (p.shape, p.dtype)
    assert a_hm.shape == (heads, 5 * 3, 16), a_hm.shape
    assert_close(p.view(5, heads, 3, 11), w_ref, name=f"saved P ({dtype})")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_op_reused_buffers(dtype, use_backend):
    """Three forwards alive at once (distinct pooled buffers), backwards in another order, then
    more calls on freed buffers, with and without biases: each against the float64 reference."""
    _native_or_skip()
    use_backend("native", OP)
    heads = 4
    names = ["d_query", "d_x", "d_in_proj_weight", "d_in_proj_bias", "d_out_proj_weight"]
    names += ["d_out_proj_bias"]

    def check(out, grads, args, cot, tag):
        ref = _ref_grads(args, heads, cot)
        lowp = _ref_grads(args, heads, cot, dtype)  # the reference's own rounding at dtype
        used = [name for name, a in zip(names, args) if a is not None]
        for name, a, b, c in zip(["out", *used], (out, *grads), ref, lowp, strict=True):
            c = c if dtype != torch.float64 else None
            assert_close_lowp(a, b, c, dtype, f"{name} ({tag}, {dtype})")

    live = []
    for seed in range(3):
        args, cot = _native_op_args(seed, dtype, bias=seed != 1)
        live.append((args, cot, region_attention(*args, heads, form="absorbed")))
    for i in (1, 2, 0):
        args, cot, out = live[i]
        wrt = [a for a in args if a is not None]
        check(out, torch.autograd.grad(out, wrt, cot), args, cot, f"live call {i}")
    del live
    for seed in (3, 4):  # the buffers freed above come back
        args, cot = _native_op_args(seed, dtype, bias=seed == 3)
        out = region_attention(*args, heads, form="absorbed")
        wrt = [a for a in args if a is not None]
        check(out, torch.autograd.grad(out, wrt, cot), args, cot, f"after reuse {seed}")


def test_native_forward_reference_backward(use_backend):
    """A backward run under another backend than its forward: the residuals say which ran (P kept:
    the native backward), so the gradients stay right."""
    _native_or_skip()
    args, cot = _native_op_args(11, torch.float64, n=7, k=3, l=13, d=16)
    with ops.use_backend("native", OP):
        out = region_attention(*args, 4, form="absorbed")
    with ops.use_backend("reference", OP):
        grads = torch.autograd.grad(out, args, cot)
    ref = _ref_grads(args, 4, cot)
    for i, (a, b) in enumerate(zip((out, *grads), ref, strict=True)):
        assert_close(a, b, name=f"output {i} (native forward, backward under reference)")


# ---- gradcheck, opcheck, torch.compile --------------------------------------------------------------


def _small64(bias=True):
    g = torch.Generator().manual_seed(1)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).requires_grad_()

    d = 8
    return (
        r(2, 3, d),
        r(2, 5, d),
        r(3 * d, d, s=0.5),
        r(3 * d) if bias else None,
        r(d, d, s=0.5),
        r(d) if bias else None,
    )


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_gradcheck_float64(backend, need_weights, use_backend):
    use_backend(backend, OP)
    args = _small64()
    assert torch.autograd.gradcheck(
        lambda *a: region_attention(*a, 2, need_weights=need_weights, form="absorbed"), args
    )
    q, x, wi, _, wo, _ = _small64(bias=False)
    assert torch.autograd.gradcheck(
        lambda q, x, wi, wo: region_attention(q, x, wi, None, wo, None, 2, form="absorbed"),
        (q, x, wi, wo),
    )


def _op_args(bias=True, need_weights=True):
    torch.manual_seed(2)
    d, h = 32, 4
    q, x = _inputs(3, 2, 13, d)
    wi = (torch.randn(3 * d, d) * 0.2).requires_grad_()
    wo = (torch.randn(d, d) * 0.2).requires_grad_()
    bi = torch.randn(3 * d, requires_grad=True) if bias else None
    bo = torch.randn(d, requires_grad=True) if bias else None
    return (q, x, wi, bi, wo, bo, h, need_weights)


@pytest.mark.parametrize("need_weights", [True, False], ids=["maps", "no-maps"])
@pytest.mark.parametrize("backend", ["reference", "native"])
def test_opcheck(use_backend, backend, need_weights):
    """The forward custom op and its backward op (schema, fakes, autograd registration)."""
    from artlib.ops import _native
    from artlib.ops.region_attention.op import REGION_ATTENTION

    if backend == "native" and not _native.available(OP):
        pytest.skip("native kernels unavailable: " + _native.reason())
    use_backend(backend, OP)
    args = _op_args(need_weights=need_weights)  # native without maps: the op that keeps P
    torch.library.opcheck(torch.ops.artlib.region_attention.default, args)
    out, weights, *res = REGION_ATTENTION.op(
        *(a.detach() if torch.is_tensor(a) else a for a in args)
    )
    tensors = [a.detach() if a is not None else None for a in args[:6]]
    bwd_args = ([torch.randn_like(out), torch.randn_like(weights)], tensors, res, *args[6:])
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(REGION_ATTENTION.backward_op, bwd_args, test_utils=utils)


@pytest.mark.slow
def test_opcheck_no_bias_no_weights():
    torch.library.opcheck(
        torch.ops.artlib.region_attention.default, _op_args(bias=False, need_weights=False)
    )


def _compiled_matches(backend, need_weights=True):
    q, x, wi, bi, wo, bo, h, _ = _op_args()
    leaves = [q, x, wi, bi, wo, bo]

    def f(q, x, wi, bi, wo, bo):
        if not need_weights:  # on CPU with the native kernels: the op that keeps P
            return region_attention(q, x, wi, bi, wo, bo, h, form="absorbed").square().sum()
        out, w = region_attention(q, x, wi, bi, wo, bo, h, need_weights=True, form="absorbed")
        return out.square().sum() + (w * w).sum()

    loss = torch.compile(f, fullgraph=True, backend=backend)(*leaves)
    g = torch.autograd.grad(loss, leaves)
    loss_ref = f(*leaves)
    g_ref = torch.autograd.grad(loss_ref, leaves)
    assert_close(loss, loss_ref, name="loss")
    for i, (a, e) in enumerate(zip(g, g_ref)):
        assert_close(a, e, name=f"grad {i}")


@pytest.mark.parametrize("need_weights", [True, False], ids=["maps", "no-maps"])
def test_compile_fullgraph(need_weights):
    torch._dynamo.reset()
    _compiled_matches("aot_eager", need_weights)


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    torch._dynamo.reset()
    _compiled_matches("inductor")


# ---- the form rule, backend selection, errors --------------------------------------------------------


def test_form_rule(use_backend):
    for device in ("cpu", "cuda"):
        assert region_attention_form(2, 256, 8, device) == "absorbed"
        assert region_attention_form(64, 256, 8, device) == "standard"
    assert region_attention_form(16, 256, 8, "cuda") == "standard"  # measured crossover ~K = 16
    assert RegionAttention(256, 8).form(2) == "absorbed"
    use_backend("reference", OP)
    assert region_attention_form(12, 256, 8, "cpu") == "absorbed"
    assert region_attention_form(16, 256, 8, "cpu") == "standard"


def test_backend_selection(use_backend):
    use_backend("auto", OP)
    assert ops.backend("region_attention", "cpu") in ("native", "reference")
    use_backend("reference", OP)
    assert ops.backend("region_attention", "cpu") == "reference"
    use_backend("triton", OP, interpret=False)
    with pytest.raises(RuntimeError, match="CUDA"):
        ops.backend("region_attention", "cpu")


def test_errors():
    m = _mha(64, 8)
    w = _params(m)
    q, x = _inputs(3, 2, 49, 64)
    with pytest.raises(ValueError, match="divisible"):
        region_attention(q, x, *w, 6)
    with pytest.raises(ValueError, match="leading dims"):
        region_attention(q, x[:2], *w, 8)
    with pytest.raises(ValueError, match="x must be"):
        region_attention(q, x[..., :32], *w, 8)
    with pytest.raises(TypeError, match="dtype"):
        region_attention(q, x.double(), *w, 8)
    with pytest.raises(TypeError, match="floating"):
        region_attention(q.long(), x.long(), *w, 8)
    with pytest.raises(ValueError, match="device"):
        region_attention(q, x.to("meta"), *w, 8)
    with pytest.raises(ValueError, match="in_proj_weight must be"):
        region_attention(q, x, w[0][:64], *w[1:], 8)
    with pytest.raises(ValueError, match="form"):
        region_attention(q, x, *w, 8, form="fast")
    with pytest.raises(ValueError, match="divisible"):
        RegionAttention(64, 6)


# ---- the module ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_module_state_dict_both_ways(bias):
    torch.manual_seed(5)
    mha = nn.MultiheadAttention(64, 8, batch_first=True, bias=bias)
    torch.manual_seed(5)
    ra = RegionAttention(64, 8, bias=bias)
    sd_m, sd_r = mha.state_dict(), ra.state_dict()
    assert list(sd_m) == list(sd_r)
    for key in sd_m:  # same seed, same initialization
        assert torch.equal(sd_m[key], sd_r[key]), key
    other = RegionAttention(64, 8, bias=bias)
    other.load_state_dict(sd_m)
    mha2 = nn.MultiheadAttention(64, 8, batch_first=True, bias=bias)
    mha2.load_state_dict(other.state_dict())
    q, x = _inputs(2, 2, 49, 64, lead=(2, 3))
    out, w = other(q, x, need_weights=True)
    ref, w_ref = _peer(mha, q, x, need_weights=True)
    assert_close(out, ref, name="out")
    assert_close(w, w_ref, name="weights")
    assert_close(other(q, x), _peer(mha2, q, x), name="out (round trip)")


# ---- the Triton kernels under TRITON_INTERPRET=1 (tiny grids: ~20 ms a program) -----------------


needs_triton = pytest.mark.skipif(not ops.triton_available(), reason="needs triton")


@needs_triton
@pytest.mark.parametrize(
    "heads,n,k,l,d",
    [
        (8, 2, 2, 50, 64),  # M = 16: one fused program per frame, L not a multiple of the tile
        (3, 1, 2, 17, 48),  # M = 6 and d padded
        (8, 1, 10, 20, 16),  # M = 80, two row blocks: the split dq / dx backward
        (4, 1, 20, 21, 300),  # d > 256: scores reduced over d slices; split backward too
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_core_matches_reference(heads, n, k, l, d, dtype, use_backend):
    from artlib.ops.triton.region_attention import core_backward, core_forward

    q4 = torch.randn(heads, n, k, d, dtype=torch.float64) * d**-0.5
    x = torch.randn(n, l, d, dtype=torch.float64)
    da4 = torch.randn(heads, n, k, d, dtype=torch.float64)
    q, da = _to_rows(q4), _to_rows(da4)
    a_ref, lse_ref = region_attention_core_ref(q, x)
    dq_ref, dx_ref = region_attention_core_backward_ref(da, q, x, a_ref, lse_ref)
    ql, xl = q.to(dtype), x.to(dtype)
    a_low, lse_low = region_attention_core_ref(ql, xl)  # plain PyTorch at this precision
    dq_low, dx_low = region_attention_core_backward_ref(da.to(dtype), ql, xl, a_low, lse_low)
    # q read through strides: frames-major memory seen as (heads, N, K, d)
    q4l = q4.to(dtype).permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    a4, lse = core_forward(q4l, xl)
    dq4, dx = core_backward(da4.to(dtype), q4l, xl, a4, lse)
    assert a4.dtype == dtype and lse.dtype == torch.float32 and dx.dtype == dtype
    lowp = dtype != torch.float32
    assert_close(_to_rows(a4), a_ref, lowp_ref=a_low if lowp else None, name="a")
    assert_close(lse, lse_ref, dtype=dtype, name="lse")
    assert_close(_to_rows(dq4), dq_ref, lowp_ref=dq_low if lowp else None, name="dq")
    assert_close(dx, dx_ref, lowp_ref=dx_low if lowp else None, name="dx")


@needs_triton
@pytest.mark.parametrize("k,heads,l", [(1, 1, 49), (3, 8, 50), (2, 4, 33)])
def test_triton_op_matches_mha(k, heads, l, use_backend):
    m = _mha(32, heads)
    q, x = _inputs(2, k, l, 32)
    _compare(m, q, x, "absorbed", backend="triton", use_backend=use_backend)


@needs_triton
def test_triton_op_fp16_weights_and_noncontiguous(use_backend):
    use_backend("triton", OP)
    m = _mha(32, 4)
    xb = torch.randn(2, 40, 48)[:, 3:38, 8:40]  # (2, 35, 32), strided
    q = torch.randn(2, 32, 2).transpose(1, 2)
    _compare(
        m,
        q,
        xb,
        "absorbed",
        dtype=torch.float16,
        lowp=True,
        backend="triton",
        use_backend=use_backend,
    )
    out, w = region_attention(q, xb, *_params(m), 4, need_weights=True, form="absorbed")
    ref, w_ref = _peer(m, q, xb, need_weights=True)
    assert_close(out, ref, name="out")
    assert_close(w, w_ref, name="weights")


# ---- on a GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "k,heads,l,d", [(2, 8, 196, 256), (1, 1, 49, 64), (64, 8, 50, 256), (3, 16, 196, 1024)]
)
def test_cuda_matches_mha(k, heads, l, d, dtype, use_backend):
    use_backend("triton", OP)
    m = _mha(d, heads).cuda()
    q, x = _inputs(6, k, l, d)
    _compare(
        m,
        q.detach().cuda(),
        x.detach().cuda(),
        "absorbed",
        dtype=dtype,
        lowp=dtype != torch.float32,
        backend="triton",
        use_backend=use_backend,
    )


def test_exports():
    """The drop-in module is importable from the package and from artlib.nn."""
    import artlib
    import artlib.nn

    assert artlib.RegionAttention is RegionAttention
    assert artlib.nn.RegionAttention is RegionAttention
    assert "RegionAttention" in artlib.__all__ and "RegionAttention" in artlib.nn.__all__


def test_compile_fullgraph_in_a_fresh_process():
    """form="auto" under torch.compile(fullgraph=True) before any eager call: the form's backend
    lookup traces as constants (no build, lock or environment read inside the trace)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """
import torch
from artlib.ops import region_attention
torch.manual_seed(0)  # the same numbers in every run
mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
p = [mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias]
q, x = torch.randn(3, 2, 32, requires_grad=True), torch.randn(3, 13, 32)
f = lambda q, x: region_attention(q, x, *p, 4).square().sum()
out = torch.compile(f, fullgraph=True, backend="aot_eager")(q, x)
(g,) = torch.autograd.grad(out, q)
(e,) = torch.autograd.grad(f(q, x), q)
print("RESULT", float((out - f(q, x)).abs()), float((g - e).abs().max()))
"""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    d_out, d_grad = (float(v) for v in line.split()[1:])
    assert d_out < 1e-5 and d_grad < 1e-5, line
