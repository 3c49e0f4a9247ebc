"""artlib.ops.mtc_loss: every implementation against the plain-PyTorch reference, values and
gradients.

Shapes: B T K d. The Triton kernels run on CPU under TRITON_INTERPRET=1 (set in conftest), so their
shapes stay small; K = 17 exercises a 32-row tile and d = 300 two d-chunks, d = 37 a masked
d-chunk.
"""

from __future__ import annotations

import os

import pytest
import torch

import artlib.ops as ops
from artlib.ops import _backend
from artlib.ops.mtc_loss import (
    _OP,
    mtc_loss_backward_ref,
    mtc_loss_ref,
)
from tests.helpers import assert_close, assert_mtc_grad_close, ops_run

OP = "mtc_loss"

NAMES = ("total", "spatial", "temporal", "tracklet")


def ref_with_grad(r: torch.Tensor, grad: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (4,), dR) of the reference by autograd."""
    r = r.detach().requires_grad_()
    out = torch.stack(mtc_loss_ref(r, **kw))
    if not out.requires_grad:  # K = 1 and T = 1: every term is a constant
        return out.detach(), torch.zeros_like(r)
    (dr,) = torch.autograd.grad(out, r, grad.to(out.dtype))
    return out.detach(), dr


def op_with_grad(r: torch.Tensor, grad: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    r = r.detach().requires_grad_()
    out = torch.stack(ops.mtc_loss(r, **kw))
    (dr,) = torch.autograd.grad(out, r, grad.to(out.dtype))
    return out.detach(), dr


def responses(shape, dtype=torch.float32, zero=True, noncontiguous=False):
    b, t, k, d = shape
    if noncontiguous:  # stored as (B, K, T, d + 1), seen as (B, T, K, d)
        r = torch.randn(b, k, t, d + 1, dtype=dtype).transpose(1, 2)[..., :d]
    else:
        r = torch.randn(b, t, k, d).to(dtype)
    if zero:
        r[0, 0, 0] = 0.0  # a zero-vector response: cos is 0, the gradient goes through eps
    return r


KW = [
    dict(lam=0.6, temporal="hinge", weights=(1.0, 1.0, 1.0)),
    dict(lam=0.3, temporal="linear", weights=(0.5, 2.0, 1.5)),
]
SHAPES = [(2, 3, 4, 5), (2, 1, 3, 6), (2, 4, 1, 6), (1, 1, 1, 3), (3, 5, 3, 37)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kw", KW, ids=["hinge", "linear"])
def test_closed_form_backward_matches_autograd(shape, kw):
    r = responses(shape, torch.float64)
    grad = torch.randn(4, dtype=torch.float64)
    _, expected = ref_with_grad(r, grad, **kw)
    assert_close(mtc_loss_backward_ref(grad, r, **kw), expected, name="dR")


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 5, 3, 37)])
def test_op_matches_reference(use_backend, backend, shape):
    """The public op (the reference with its closed-form backward, or what auto picks on CPU)."""
    use_backend(backend, OP)
    r = responses(shape)
    grad = torch.randn(4)
    for kw in KW:
        out, dr = op_with_grad(r, grad, **kw)
        exp_out, exp_dr = ref_with_grad(r.double(), grad, **kw)
        low_out, low_dr = ref_with_grad(r, grad, **kw)
        assert_close(out, exp_out, lowp_ref=low_out, name="out")
        assert_mtc_grad_close(dr, exp_dr, r, lowp_ref=low_dr)


triton_only = pytest.mark.skipif(not _backend.triton_available(), reason="triton not installed")


@triton_only
@pytest.mark.parametrize(
    "shape,dtype,noncontiguous",
    [
        ((2, 3, 4, 5), torch.float32, False),
        ((2, 1, 3, 37), torch.float32, False),  # T = 1, d not a power of two
        ((2, 4, 1, 6), torch.float32, True),  # K = 1, non-contiguous
        ((1, 2, 17, 300), torch.float32, False),  # K > 16: a 32-row tile, two d-chunks
        ((2, 3, 3, 37), torch.float16, False),
        ((2, 3, 3, 37), torch.bfloat16, True),
    ],
)
def test_triton_matches_reference(use_backend, shape, dtype, noncontiguous):
    use_backend("triton", OP)
    assert ops.backend("mtc_loss", "cpu") == "triton"
    # a zero vector's gradient is ~1/eps: beyond fp16, and meaningless to compare in bf16
    r = responses(shape, dtype, zero=dtype == torch.float32, noncontiguous=noncontiguous)
    assert r.is_contiguous() != noncontiguous
    grad = torch.randn(4)
    for kw in KW:
        out, dr = op_with_grad(r, grad, **kw)
        exp_out, exp_dr = ref_with_grad(r.double(), grad, **kw)
        low_out, low_dr = ref_with_grad(r, grad, **kw)
        assert out.dtype == torch.float32 and dr.dtype == dtype
        for i, name in enumerate(NAMES):
            assert_close(out[i], exp_out[i], dtype=torch.float32, lowp_ref=low_out[i], name=name)
        assert_mtc_grad_close(dr, exp_dr.to(dtype), r, lowp_ref=low_dr)
    # only some terms reach the loss: the others get no gradient (None, not zeros)
    r = responses(shape, dtype, zero=False, noncontiguous=noncontiguous)
    grad = torch.tensor([1.5, 0.0, -2.0, 0.0])
    _, exp_dr = ref_with_grad(r.double(), grad)
    _, low_dr = ref_with_grad(r, grad)
    rr = r.detach().requires_grad_()
    total, _, temporal, _ = ops.mtc_loss(rr)
    (dr,) = torch.autograd.grad(1.5 * total - 2.0 * temporal, rr)
    assert_close(dr, exp_dr.to(dtype), lowp_ref=low_dr, name="dR (total, temporal)")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_edge_cases(use_backend, backend):
    """K = 1: spatial and tracklet are 0; T = 1: temporal is 0; zero responses: no NaN or inf."""
    if backend == "triton" and not _backend.triton_available():
        pytest.skip("triton not installed")
    use_backend(backend, OP)
    grad = torch.ones(4)
    out, dr = op_with_grad(torch.randn(2, 3, 1, 5), grad)
    assert out[1] == 0 and out[3] == 0 and torch.isfinite(dr).all()
    out, dr = op_with_grad(torch.randn(2, 1, 3, 5), grad)
    assert out[2] == 0 and torch.isfinite(dr).all()
    out, dr = op_with_grad(torch.zeros(2, 3, 3, 5), grad, lam=0.6)
    assert torch.isfinite(out).all() and torch.isfinite(dr).all()
    # every cosine of a zero vector is 0: spatial = tracklet = 0, the hinge is lam
    assert_close(out, torch.tensor([0.6, 0.0, 0.6, 0.0]), name="zeros")


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_gradcheck(use_backend, backend):
    """Numerical gradients in float64: the reference with its closed-form backward, and what auto
    picks on CPU (native when built; the Triton kernels are fp32-only)."""
    use_backend(backend, OP)
    r = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    for kw in KW:
        assert torch.autograd.gradcheck(lambda r, kw=kw: torch.stack(ops.mtc_loss(r, **kw)), (r,))


@triton_only
def test_triton_backward_after_other_forward(use_backend):
    """A backward on Triton after a forward on another backend rebuilds H instead of using it."""
    r = responses((2, 3, 4, 5)).requires_grad_()
    use_backend("reference", OP)
    total = ops.mtc_loss(r)[0]
    use_backend("triton", OP)
    (dr,) = torch.autograd.grad(total, r)
    _, expected = ref_with_grad(r.double(), torch.tensor([1.0, 0, 0, 0]))
    assert_close(dr, expected.float(), name="dR")


def test_native_is_wired(use_backend):
    """The auto dispatch on CPU runs the native kernels (the profiler sees their ops, forward and
    backward, and no reference op), and they agree with the reference."""
    from artlib.ops import _native

    if not _native.available("mtc_loss"):
        if os.environ.get("ARTLIB_REQUIRE_NATIVE", "0") == "1":
            pytest.fail(
                "ARTLIB_REQUIRE_NATIVE=1 but the native kernels failed: " + _native.reason()
            )
        pytest.skip("native kernels unavailable: " + _native.reason())
    use_backend("auto", OP)
    assert ops.backend("mtc_loss", "cpu") == "native"
    r = responses((2, 3, 4, 5))
    kw = dict(lam=0.3, temporal="linear", weights=(1, 2, 3))
    (out, dr), ran = ops_run(op_with_grad, r, torch.ones(4), **kw)
    assert {"artlib::native_mtc_loss_fwd", "artlib::native_mtc_loss_bwd"} <= ran, sorted(ran)
    assert not any("linalg_vector_norm" in name for name in ran)  # the reference did not run
    exp_out, exp_dr = ref_with_grad(r, torch.ones(4), **kw)
    assert_close(out, exp_out, name="out")
    assert_close(dr, exp_dr, name="dR")


def test_errors_before_dispatch(use_backend):
    # a backend that cannot run here: argument errors must still come first
    use_backend("triton", OP, interpret=False)
    with pytest.raises(ValueError, match="responses"):
        ops.mtc_loss(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="responses"):
        ops.mtc_loss(torch.ones(2, 3, 4, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="temporal"):
        ops.mtc_loss(torch.randn(2, 3, 4, 5), temporal="cosine")
    with pytest.raises(ValueError, match="weights"):
        ops.mtc_loss(torch.randn(2, 3, 4, 5), weights=(1.0, 1.0))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_opcheck(use_backend, backend):
    if backend == "triton" and not _backend.triton_available():
        pytest.skip("triton not installed")
    use_backend(backend, OP)
    r = torch.randn(2, 3, 4, 5, requires_grad=True)
    torch.library.opcheck(_OP.op, (r, 0.6, True, 1.0, 0.5, 2.0))
    _, stats = _OP.op(r.detach(), 0.6, True, 1.0, 0.5, 2.0)
    args = ([torch.randn(4)], [r.detach()], [stats], 0.6, True, 1.0, 0.5, 2.0)
    torch.library.opcheck(_OP.backward_op, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_compile_fullgraph(use_backend, backend):
    """The op traces whole into a graph (dynamo + fake tensors + AOT autograd)."""
    if backend == "triton" and not _backend.triton_available():
        pytest.skip("triton not installed")
    use_backend(backend, OP)

    def f(r):
        total, spatial, temporal, tracklet = ops.mtc_loss(r, 0.5, "hinge", (1.0, 2.0, 0.5))
        return total * 2 + spatial

    r = torch.randn(2, 3, 4, 5, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(r)
    (dr,) = torch.autograd.grad(out, r)
    (expected,) = torch.autograd.grad(f(r), r)
    assert_close(out, f(r), name="out")
    assert_close(dr, expected, name="dR")


def check_large_shape(k: int, dtype: torch.dtype, device: str) -> None:
    """The op at a paper-sized shape against the float64 reference (and the reference at ``dtype``).

    The planted zero response (fp32 only) has a gradient of ~|r|/eps, 1e5-1e9 per element: beyond
    fp16's range (the fp16 reference overflows too), and in fp32 only right relative to that row's
    own scale, so that row is compared at its scale and the rest element by element."""
    zero = dtype == torch.float32
    r = responses((4, 16, k, 256), dtype, zero=zero).to(device)
    grad = torch.randn(4, device=device)
    out, dr = op_with_grad(r, grad)
    exp_out, exp_dr = ref_with_grad(r.double(), grad)
    low_out, low_dr = ref_with_grad(r, grad)
    assert_close(out, exp_out, dtype=torch.float32, lowp_ref=low_out, name="out")
    if zero:
        row, exp_row = dr[0, 0, 0].double(), exp_dr[0, 0, 0]
        scale = exp_row.abs().max()
        assert scale > 1e3  # the eps path was taken
        err = (row - exp_row).abs().max()
        assert err <= 1e-5 * scale, f"zero row: max |err| {err:.3g} at scale {scale:.3g}"
        dr, exp_dr, low_dr = dr.clone(), exp_dr.clone(), low_dr.clone()
        for t in (dr, exp_dr, low_dr):
            t[0, 0, 0] = 0
    assert_close(dr, exp_dr.to(dtype), lowp_ref=low_dr, name="dR")


@pytest.mark.parametrize("k", [1, 2])
def test_large_shape_check_on_cpu(use_backend, k):
    """The same check as on CUDA, run here through the Triton kernel under the interpreter."""
    use_backend("triton", OP)
    check_large_shape(k, torch.float32, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 2, 8, 32, 64])
def test_cuda_matches_reference(dtype, k):
    check_large_shape(k, dtype, "cuda")
