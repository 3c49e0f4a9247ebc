"""artlib.ops.tracklet_aggregate (Eq. 9): every implementation against the plain-PyTorch reference,
values and gradients (responses and semantics).

Shapes: B T K d; R (B, T, K, d), S (B, K, d). The Triton kernels run on CPU under TRITON_INTERPRET=1
(set in conftest), so their shapes stay small; K = 17 exercises a 32-row tile and d = 300 two
d-chunks, d = 37 a masked chunk.
"""

from __future__ import annotations

import os

import pytest
import torch

import artlib.ops as ops
from artlib.ops import _backend, _native
from artlib.ops.tracklet_aggregate import (
    _OP,
    tracklet_aggregate_backward_ref,
    tracklet_aggregate_ref,
)
from tests.helpers import assert_close, ops_run

OP = "tracklet_aggregate"
triton_only = pytest.mark.skipif(not _backend.triton_available(), reason="triton not installed")


@pytest.fixture
def native():
    """The native kernels are built (a failure unless they cannot be, or with ARTLIB_REQUIRE_NATIVE=1)."""
    if not _native.available(OP):
        if os.environ.get("ARTLIB_REQUIRE_NATIVE", "0") == "1":
            pytest.fail(
                "ARTLIB_REQUIRE_NATIVE=1 but the native kernels failed: " + _native.reason()
            )
        pytest.skip("native kernels unavailable: " + _native.reason())


def inputs(shape, dtype=torch.float32, noncontiguous=False, scale=0.3):
    """R and S at a scale that gives the softmax over t some contrast without saturating it."""
    b, t, k, d = shape
    if noncontiguous:  # R stored as (B, K, T, d + 1), S as (B, d, K)
        r = (torch.randn(b, k, t, d + 1) * scale).to(dtype).transpose(1, 2)[..., :d]
        s = (torch.randn(b, d, k) * scale).to(dtype).transpose(1, 2)
        return r, s
    return (torch.randn(b, t, k, d) * scale).to(dtype), (torch.randn(b, k, d) * scale).to(dtype)


def with_grad(fn, r, s, grad, tau):
    r = r.detach().requires_grad_()
    s = s.detach().requires_grad_()
    out = fn(r, s, "saliency", tau)
    dr, ds = torch.autograd.grad(out, (r, s), grad.to(out))  # out's device and dtype
    return out.detach(), dr, ds


def check_against_reference(r, s, tau, dtype):
    grad = torch.randn(r.shape[0], r.shape[2], r.shape[3])
    got = with_grad(ops.tracklet_aggregate, r, s, grad, tau)
    expected = with_grad(tracklet_aggregate_ref, r.double(), s.double(), grad, tau)
    lowp = with_grad(tracklet_aggregate_ref, r, s, grad, tau)
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == dtype
    for name, a, e, lo in zip(("out", "dR", "dS"), got, expected, lowp):
        assert_close(a, e.to(dtype), lowp_ref=lo, name=name)


SHAPES = [(2, 3, 4, 5), (2, 1, 3, 6), (2, 4, 1, 6), (3, 5, 3, 37)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_closed_form_backward_matches_autograd(shape, tau):
    r, s = inputs(shape, torch.float64, scale=1.0)
    grad = torch.randn(shape[0], shape[2], shape[3], dtype=torch.float64)
    _, exp_dr, exp_ds = with_grad(tracklet_aggregate_ref, r, s, grad, tau)
    dr, ds = tracklet_aggregate_backward_ref(grad, r, s, tau)
    assert_close(dr, exp_dr, name="dR")
    assert_close(ds, exp_ds, name="dS")


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 5, 3, 37)])
def test_op_matches_reference(use_backend, shape):
    """The reference forward with its closed-form backward."""
    use_backend("reference", OP)
    assert ops.backend(OP, "cpu") == "reference"
    r, s = inputs(shape)
    check_against_reference(r, s, 1.0, torch.float32)


@pytest.mark.parametrize(
    "shape,dtype,noncontiguous,tau",
    [
        ((2, 3, 4, 5), torch.float32, False, 1.0),
        ((3, 5, 3, 37), torch.float64, False, 0.7),
        ((2, 1, 3, 37), torch.float32, True, 1.0),  # T = 1, non-contiguous R and S
        ((2, 4, 1, 6), torch.float64, True, 0.5),  # K = 1
        ((1, 2, 17, 300), torch.float32, False, 1.0),  # K = 17, d = 300
        ((5, 7, 33, 19), torch.float32, False, 2.0),  # K > 32, B*K tasks over several chunks
        ((2, 3, 3, 37), torch.bfloat16, False, 1.0),  # computed in float32
    ],
)
def test_native_matches_reference(native, use_backend, shape, dtype, noncontiguous, tau):
    """The CPU default once built: csrc/tracklet_aggregate.cpp, forward and both gradients."""
    use_backend("native", OP)
    r, s = inputs(shape, dtype, noncontiguous)
    check_against_reference(r, s, tau, dtype)


def test_native_is_the_cpu_default_and_runs(native):
    """auto on CPU runs the native kernels (the profiler sees both), and they agree."""
    assert ops.backend(OP, "cpu") == "native"
    r, s = inputs((3, 4, 5, 6))
    grad = torch.randn(3, 5, 6)
    got, ran = ops_run(with_grad, ops.tracklet_aggregate, r, s, grad, 1.0)
    want = {"artlib::native_tracklet_aggregate_fwd", "artlib::native_tracklet_aggregate_bwd"}
    assert want <= ran, sorted(n for n in ran if n.startswith("artlib"))
    expected = with_grad(tracklet_aggregate_ref, r.double(), s.double(), grad, 1.0)
    for name, a, e in zip(("out", "dR", "dS"), got, expected):
        assert_close(a, e.float(), name=name)


def test_native_threads_agree(native):
    """One thread and two give the same bits (a fixed reduction order per task)."""
    r, s = inputs((6, 5, 9, 40))
    grad = torch.randn(6, 9, 40)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = with_grad(ops.tracklet_aggregate, r, s, grad, 1.0)
        torch.set_num_threads(2)
        two = with_grad(ops.tracklet_aggregate, r, s, grad, 1.0)
    finally:
        torch.set_num_threads(before)
    for name, a, b in zip(("out", "dR", "dS"), one, two):
        assert torch.equal(a, b), f"{name}: 1 vs 2 threads differ by {(a - b).abs().max():.3g}"


def test_native_gradcheck(native, use_backend):
    """float64 through the native kernels, checked numerically."""
    use_backend("native", OP)
    r, s = inputs((2, 3, 3, 4), torch.float64, scale=1.0)
    r.requires_grad_()
    s.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda r, s: ops.tracklet_aggregate(r, s, temperature=0.7), (r, s)
    )


def test_native_errors_name_the_argument(native):
    r, s = inputs((2, 3, 4, 5))
    with pytest.raises(ValueError, match="semantics"):
        _native.tracklet_aggregate_forward(r, s[:, :3], 1.0)
    with pytest.raises(ValueError, match="responses"):
        _native.tracklet_aggregate_forward(r[0], s, 1.0)
    out, p, w = _native.tracklet_aggregate_forward(r, s, 1.0)
    with pytest.raises(ValueError, match="grad"):
        _native.tracklet_aggregate_backward(out[:, :2], r, s, p, w, 1.0)
    with pytest.raises(ValueError, match="p must be"):
        _native.tracklet_aggregate_backward(out, r, s, p[:, :, :2], w, 1.0)


@triton_only
@pytest.mark.parametrize(
    "shape,dtype,noncontiguous,tau",
    [
        ((2, 3, 4, 5), torch.float32, False, 1.0),
        ((2, 1, 3, 37), torch.float32, True, 1.0),  # T = 1, d not a power of two, non-contiguous
        ((2, 4, 1, 6), torch.float32, False, 0.5),  # K = 1, a temperature
        ((1, 2, 17, 300), torch.float32, False, 1.0),  # K > 16: a 32-row tile, two d-chunks
        ((2, 3, 3, 37), torch.float16, False, 1.0),
        ((2, 3, 3, 37), torch.bfloat16, True, 1.0),
    ],
)
def test_triton_matches_reference(use_backend, shape, dtype, noncontiguous, tau):
    use_backend("triton", OP)
    r, s = inputs(shape, dtype, noncontiguous)
    assert r.is_contiguous() != noncontiguous
    check_against_reference(r, s, tau, dtype)


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_edge_cases(request, use_backend, backend):
    """Zero responses and semantics: uniform weights, zero output, finite gradients."""
    if backend == "triton" and not _backend.triton_available():
        pytest.skip("triton not installed")
    if backend == "native":
        request.getfixturevalue("native")
    use_backend(backend, OP)
    r, s = torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 5)
    out, dr, ds = with_grad(ops.tracklet_aggregate, r, s, torch.ones(2, 4, 5), 1.0)
    assert (out == 0).all()
    assert torch.isfinite(dr).all() and torch.isfinite(ds).all()
    # w_t = 1/T, so dR = g / T^2 and nothing reaches S
    assert_close(dr, torch.full_like(dr, 1 / 9), name="dR")
    assert_close(ds, torch.zeros_like(ds), name="dS")


def test_gradcheck():
    """float64 takes the reference forward and the closed-form backward: check it numerically."""
    r, s = inputs((2, 3, 3, 4), torch.float64, scale=1.0)
    r.requires_grad_()
    s.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda r, s: ops.tracklet_aggregate(r, s, temperature=0.7), (r, s)
    )


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_pooling_modes(mode):
    r = torch.randn(2, 3, 4, 5, requires_grad=True)
    out = ops.tracklet_aggregate(r, None, mode)
    expected = r.mean(1) if mode == "mean" else r.sum(1)
    assert_close(out, expected, name=mode)


def test_errors_before_dispatch(use_backend):
    use_backend("triton", OP, interpret=False)  # triton cannot run on CPU now
    r, s = inputs((2, 3, 4, 5))
    with pytest.raises(ValueError, match="mode"):
        ops.tracklet_aggregate(r, s, "max")
    with pytest.raises(ValueError, match="responses"):
        ops.tracklet_aggregate(r[0], s)
    with pytest.raises(TypeError, match="semantics"):
        ops.tracklet_aggregate(r, None)
    with pytest.raises(ValueError, match="semantics"):
        ops.tracklet_aggregate(r, s[:, :2])
    with pytest.raises(TypeError, match="semantics"):
        ops.tracklet_aggregate(r, s.double())
    with pytest.raises(ValueError, match="temperature"):
        ops.tracklet_aggregate(r, s, temperature=0.0)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ops.tracklet_aggregate(r, s)


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_opcheck(request, use_backend, backend):
    if backend == "triton" and not _backend.triton_available():
        pytest.skip("triton not installed")
    if backend == "native":
        request.getfixturevalue("native")
    use_backend(backend, OP)
    r = torch.randn(2, 3, 4, 5, requires_grad=True)
    s = torch.randn(2, 4, 5, requires_grad=True)
    torch.library.opcheck(_OP.op, (r, s, 0.7))
    _, *res = _OP.op(r.detach(), s.detach(), 0.7)
    args = ([torch.randn(2, 4, 5)], [r.detach(), s.detach()], res, 0.7)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(_OP.backward_op, args, test_utils=utils)


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_compile_fullgraph(request, use_backend, backend):
    """Tracklet aggregation and the MTC loss trace whole into one graph, as the model calls them."""

    def f(r, s):
        agg = ops.tracklet_aggregate(r, s, "saliency", 1.0)
        total, *_ = ops.mtc_loss(r)
        return agg.square().sum() + total

    if backend == "native":
        request.getfixturevalue("native")
    use_backend(backend, OP)
    r = torch.randn(2, 3, 4, 5, requires_grad=True)
    s = torch.randn(2, 4, 5, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(r, s)
    got = torch.autograd.grad(out, (r, s))
    expected = torch.autograd.grad(f(r, s), (r, s))
    assert_close(out, f(r, s), name="out")
    assert_close(got[0], expected[0], name="dR")
    assert_close(got[1], expected[1], name="dS")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 2, 8, 32, 64])
def test_cuda_matches_reference(dtype, k):
    r, s = inputs((4, 16, k, 256), dtype)
    check_against_reference(r.cuda(), s.cuda(), 1.0, dtype)
