"""The native CPU kernels (csrc/) against plain PyTorch: values and gradients, odd shapes, float32
and float64, 1 vs 2 threads, opcheck, and the no-compiler path.

Shapes: N frames, M query rows per frame (heads*K), L tokens, d width; B videos, T frames, K queries.
The first test to run builds the extension (about a minute, cached in ~/.cache/artlib/native). Without
a compiler these tests skip, unless ARTLIB_REQUIRE_NATIVE=1 (set it in CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_close, assert_mtc_grad_close

from artlib.ops import _native
from artlib.ops.mtc_loss import mtc_loss_ref

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _built():
    if not _native.available():
        if os.environ.get("ARTLIB_REQUIRE_NATIVE", "0") == "1":
            pytest.fail(
                "ARTLIB_REQUIRE_NATIVE=1 but the native kernels failed: " + _native.reason()
            )
        pytest.skip("native kernels unavailable: " + _native.reason())


@pytest.fixture
def threads():
    """Set the intra-op thread count for one test and restore it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


# ---- region-attention core -----------------------------------------------------------------------


def core_ref(q, x):
    """Plain PyTorch: S = q x^T, P = softmax_rows(S), a = P x; lse = logsumexp_rows(S)."""
    s = q @ x.mT
    return s.softmax(-1) @ x, s.logsumexp(-1)


def core_ref_grads(q, x, da):
    q = q.detach().requires_grad_()
    x = x.detach().requires_grad_()
    a, lse = core_ref(q, x)
    dq, dx = torch.autograd.grad(a, (q, x), da)
    return a.detach(), lse.detach(), dq, dx


def core_inputs(n, m, l, d, dtype, contiguous=True):
    if contiguous:
        q = torch.randn(n, m, d, dtype=dtype) * d**-0.5 * 2
        x = torch.randn(n, l, d, dtype=dtype)
    else:  # transposed storage: q (N, d, M) and x (L, N, d), viewed as (N, M, d) and (N, L, d)
        q = (torch.randn(n, d, m, dtype=dtype) * d**-0.5 * 2).transpose(1, 2)
        x = torch.randn(l, n, d, dtype=dtype).transpose(0, 1)
    da = torch.randn(n, m, d, dtype=dtype)
    return q, x, da


def check_core(q, x, da, dtype):
    a, lse = _native.region_attention_core_forward(q, x)
    dq, dx = _native.region_attention_core_backward(da, q, x, a, lse)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert a.dtype == dtype and dq.dtype == dtype and dx.dtype == dtype and lse.dtype == acc
    # ground truth in float64; for float32 the allowed error scales with eager float32's own error
    want = core_ref_grads(q.double(), x.double(), da.double())
    lowp = core_ref_grads(q, x, da) if dtype != torch.float64 else [None] * 4
    for name, got, exp, lp in zip(("a", "lse", "dq", "dx"), (a, lse, dq, dx), want, lowp):
        assert_close(got, exp, dtype=dtype, lowp_ref=lp, name=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(
    "shape",
    [(2, 1, 49, 40), (3, 3, 50, 33), (2, 16, 196, 72)],
    ids=lambda s: "N{}M{}L{}d{}".format(*s),
)
def test_core_matches_reference(shape, dtype):
    check_core(*core_inputs(*shape, dtype), dtype)


@pytest.mark.parametrize("gemm", ["own", "blas", "aten"])
def test_core_each_gemm_path(gemm, monkeypatch):
    """The micro-kernels, libtorch's BLAS and at::mm (auto picks by M) all give the reference."""
    monkeypatch.setenv("ARTLIB_NATIVE_GEMM", gemm)
    for shape in ((2, 3, 50, 33), (2, 40, 49, 20)):
        check_core(*core_inputs(*shape, torch.float32), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_core_noncontiguous(dtype):
    q, x, da = core_inputs(3, 16, 50, 24, dtype, contiguous=False)
    assert not q.is_contiguous() and not x.is_contiguous()
    check_core(q, x, da.transpose(1, 2).contiguous().transpose(1, 2), dtype)


def test_core_float64_backward_with_float32_lse():
    """A float32 lse (e.g. from another backend) still gives float64-exact gradients."""
    q, x, da = core_inputs(2, 3, 50, 20, torch.float64)
    a, lse = _native.region_attention_core_forward(q, x)
    dq, dx = _native.region_attention_core_backward(da, q, x, a, lse.float())
    _, _, want_dq, want_dx = core_ref_grads(q, x, da)
    assert_close(dq, want_dq, name="dq")
    assert_close(dx, want_dx, name="dx")


def test_core_bfloat16_runs_in_float32():
    """bfloat16 in and out, float32 inside. The forward against float64 on the same inputs; the
    backward against the float64 backward of what it is given: the bfloat16 ``a`` (the exact a
    rounded once) enters delta = da . a, and that rounding alone moves dq end to end by up to ~3x
    the bfloat16 tolerance on unlucky inputs (5 of 40 seeds), an error of the format, not of the
    kernel. Given its inputs the kernel stays within 0.2x of the tolerance (40 seeds); a delta
    taken from the wrong row of a is >= 100x out."""
    from artlib.ops.region_attention import region_attention_core_backward_ref

    q, x, da = core_inputs(2, 3, 49, 32, torch.bfloat16)
    a, lse = _native.region_attention_core_forward(q, x)
    dq, dx = _native.region_attention_core_backward(da, q, x, a, lse)
    want = core_ref_grads(q.double(), x.double(), da.double())
    for name, got, exp in zip(("a", "lse"), (a, lse), want):
        assert_close(got, exp, dtype=torch.bfloat16, name=name)
    given = region_attention_core_backward_ref(*(t.double() for t in (da, q, x, a, lse)))
    for name, got, exp in zip(("dq", "dx"), (dq, dx), given):
        assert_close(got, exp, dtype=torch.bfloat16, name=f"{name} (given the bfloat16 a, lse)")


def test_core_threads_agree(threads):
    q, x, da = core_inputs(6, 16, 196, 256, torch.float32)  # one frame per task
    out = []
    for n in (1, 2):
        threads(n)
        a, lse = _native.region_attention_core_forward(q, x)
        out.append((a, lse, *_native.region_attention_core_backward(da, q, x, a, lse)))
    for name, one, two in zip(("a", "lse", "dq", "dx"), *out):
        assert_close(two, one, name=name)


def test_core_errors_name_the_argument():
    q, x, _ = core_inputs(2, 3, 5, 8, torch.float32)
    with pytest.raises(ValueError, match="q must be"):
        _native.region_attention_core_forward(q[0], x)
    with pytest.raises(ValueError, match="x must be"):
        _native.region_attention_core_forward(q, x[:, :, :4])
    with pytest.raises(TypeError, match="share a dtype"):
        _native.region_attention_core_forward(q, x.double())
    with pytest.raises(TypeError, match="floating point"):
        _native.region_attention_core_forward(q.int(), x)


# ---- MTC loss ------------------------------------------------------------------------------------


def mtc_inputs(b, t, k, d, dtype):
    """Responses where even queries stay correlated over time (cos > lam: hinge inactive) and odd
    ones do not (hinge active), so both branches of Eq. 6's hinge are exercised."""
    base = torch.randn(b, 1, k, d, dtype=dtype)
    keep = (torch.arange(k) % 2 == 0).to(dtype).view(1, 1, k, 1) * 4.0
    return base * keep + torch.randn(b, t, k, d, dtype=dtype)


def mtc_ref_grads(r, lam, hinge, weights, grad):
    r = r.detach().requires_grad_()
    out = torch.stack(mtc_loss_ref(r, lam, "hinge" if hinge else "linear", weights))
    if out.requires_grad:
        (dr,) = torch.autograd.grad(out, r, grad.to(out.dtype))
    else:  # T = 1 and K = 1: no term depends on r
        dr = torch.zeros_like(r)
    return out.detach(), dr


def check_mtc(r, dtype, hinge, weights=(1.0, 0.5, 2.0), lam=0.6):
    grad = torch.randn(4, dtype=torch.float64)
    out = _native.mtc_loss_forward(r, lam, hinge, *weights)
    dr = _native.mtc_loss_backward(grad.to(out.dtype), r, lam, hinge, *weights)
    assert out.shape == (4,) and out.dtype == (
        torch.float64 if dtype == torch.float64 else torch.float32
    )
    assert dr.shape == r.shape and dr.dtype == dtype
    want = mtc_ref_grads(r.double(), lam, hinge, weights, grad)
    lowp = mtc_ref_grads(r, lam, hinge, weights, grad) if dtype != torch.float64 else (None, None)
    assert_close(
        out, want[0], dtype=dtype, lowp_ref=lowp[0], name="[total, spatial, temporal, tracklet]"
    )
    assert_mtc_grad_close(dr, want[1], r, dtype=dtype, lowp_ref=lowp[1], name="dr")


@pytest.mark.parametrize("hinge", [True, False], ids=["hinge", "linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(
    "shape",
    [(3, 5, 2, 16), (2, 1, 1, 8), (2, 4, 1, 9), (2, 1, 3, 9), (2, 4, 5, 33), (1, 3, 64, 8)],
    ids=lambda s: "B{}T{}K{}d{}".format(*s),
)
def test_mtc_matches_reference(shape, dtype, hinge):
    check_mtc(mtc_inputs(*shape, dtype), dtype, hinge)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.0, 1.0, 0.0)], ids=["default", "temporal"])
def test_mtc_weights(weights):
    check_mtc(mtc_inputs(2, 4, 3, 16, torch.float64), torch.float64, True, weights=weights, lam=0.3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_mtc_zero_vectors_and_noncontiguous(dtype):
    """|r| < eps takes the u = r / eps branch (for a response and for a whole tracklet)."""
    r = mtc_inputs(2, 4, 3, 12, dtype)
    r[0, 1, 0] = 0
    r[1, :, 2] = 0
    r = r.transpose(0, 1).contiguous().transpose(0, 1)
    assert not r.is_contiguous()
    check_mtc(r, dtype, True)


def test_mtc_threads_agree(threads):
    r = mtc_inputs(48, 16, 4, 256, torch.float32)  # 3 tasks of 16 videos (>= 2^18 elements each)
    grad = torch.tensor([1.0, 0.3, -0.2, 0.5])
    out = []
    for n in (1, 2):
        threads(n)
        out.append(
            (
                _native.mtc_loss_forward(r, 0.6, True, 1.0, 1.0, 1.0),
                _native.mtc_loss_backward(grad, r, 0.6, True, 1.0, 1.0, 1.0),
            )
        )
    assert_close(out[1][0], out[0][0], name="loss")
    assert_close(out[1][1], out[0][1], name="dr")


def test_mtc_errors_name_the_argument():
    r = torch.randn(2, 3, 2, 4)
    with pytest.raises(ValueError, match=r"r must be \(B, T, K, d\)"):
        _native.mtc_loss_forward(r[0], 0.6, True, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="grad must be"):
        _native.mtc_loss_backward(torch.ones(3), r, 0.6, True, 1.0, 1.0, 1.0)


# ---- registration, opcheck, loading --------------------------------------------------------------


def test_opcheck():
    ops = torch.ops.artlib
    q, x, da = core_inputs(2, 3, 7, 5, torch.float32)
    a, lse = ops.native_region_attention_core_fwd(q, x)
    r = mtc_inputs(2, 3, 2, 5, torch.float32)
    cases = [
        (ops.native_region_attention_core_fwd.default, (q, x)),
        (ops.native_region_attention_core_bwd.default, (da, q, x, a, lse)),
        (ops.native_mtc_loss_fwd.default, (r, 0.6, True, 1.0, 1.0, 1.0)),
        (ops.native_mtc_loss_bwd.default, (torch.randn(4), r, 0.6, False, 1.0, 0.5, 2.0)),
    ]
    # the whole absorbed op (projections + core), with and without biases
    qq, xx = torch.randn(3, 2, 8), torch.randn(3, 5, 8)
    w_in, b_in, w_out, b_out = (
        torch.randn(24, 8),
        torch.randn(24),
        torch.randn(8, 8),
        torch.randn(8),
    )
    for bi, bo in ((b_in, b_out), (None, None)):
        out, *saved = ops.native_region_attention_fwd(qq, xx, w_in, bi, w_out, bo, 2)
        cases.append((ops.native_region_attention_fwd.default, (qq, xx, w_in, bi, w_out, bo, 2)))
        bwd_args = (torch.randn_like(out), qq, xx, w_in, w_out, *saved, 2)
        cases.append((ops.native_region_attention_bwd.default, bwd_args))
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_backend_reports_native(use_backend):
    from artlib.ops import backend

    use_backend("auto")
    assert backend() == "native"
    assert backend("mtc_loss") == backend("region_attention") == "native"
    assert backend("tracklet_aggregate") == "native"
    assert not _native.available("no_such_op")


def test_disabled_by_env():
    """ARTLIB_NO_NATIVE=1 (read once, at the first op call of a process): the reference runs and
    backend() says why."""
    code = """
import json
from artlib.ops import _native, backend
print("RESULT", json.dumps([_native.available("mtc_loss"), _native.reason(),
      backend("region_attention", "cpu"), backend()]))
"""
    out = _run(code, ARTLIB_NO_NATIVE="1")
    res = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
    assert res[0] is False and "ARTLIB_NO_NATIVE" in res[1], res
    assert res[2] == "reference" and "ARTLIB_NO_NATIVE" in res[3], res


def _run(code: str, **env: str) -> str:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_no_compiler_falls_back_and_cache_needs_none(tmp_path):
    real_cache = os.environ.get("ARTLIB_CACHE", "")
    code = f"""
import json, os
from artlib.ops import _backend, _native, backend
# a fresh cache and no compiler: no exception, the reference runs, and backend() says why
res = [_native.available("mtc_loss"), backend("mtc_loss", "cpu"), backend()]
# the library already built in the real cache loads without a compiler
if {real_cache!r}:
    os.environ["ARTLIB_CACHE"] = {real_cache!r}
else:
    del os.environ["ARTLIB_CACHE"]
_native._state["error"] = None
_backend.reset()  # choose again: the environment changed on purpose
res += [_native.available("mtc_loss"), backend("mtc_loss", "cpu")]
print("RESULT", json.dumps(res))
"""
    out = _run(code, CXX="/nonexistent/c++", ARTLIB_CACHE=str(tmp_path))
    res = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
    assert res[:2] == [False, "reference"]
    assert res[2].startswith("reference (native unavailable:")
    assert res[3:] == [True, "native"]


def test_region_attention_runs_the_native_op(use_backend):
    """The public op on CPU tensors runs the native kernels (the whole absorbed op, projections
    included, one call each way: the profiler sees them), and agrees with nn.MultiheadAttention."""
    from helpers import ops_run

    from artlib.ops import region_attention

    use_backend("auto")
    torch.manual_seed(3)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    params = [mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias]
    q = torch.randn(3, 2, 32, requires_grad=True)
    x = torch.randn(3, 13, 32, requires_grad=True)

    def step(fn):
        out = fn()
        return out, torch.autograd.grad(out.square().sum(), [q, x, *params])

    (out, grads), ran = ops_run(step, lambda: region_attention(q, x, *params, 4, form="absorbed"))
    want = {"artlib::native_region_attention_fwd", "artlib::native_region_attention_bwd"}
    assert want <= ran, sorted(n for n in ran if n.startswith("artlib"))
    ref, ref_grads = step(lambda: mha(q, x, x, need_weights=False)[0])
    assert_close(out, ref, name="out")
    for i, (a, e) in enumerate(zip(grads, ref_grads)):
        assert_close(a, e, name=f"grad {i}")


def test_build_command_reports():
    """python -m artlib.ops.build: the library (cached here), compiler, flags; a bad flag exits 2."""
    full = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "artlib.ops.build"]
    proc = subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fields = dict(ln.split(":", 1) for ln in proc.stdout.splitlines() if ":" in ln)
    assert Path(fields["library"].strip()).is_file(), proc.stdout
    assert "-O3" in fields["cflags"] and fields["compiler"].strip(), proc.stdout
    assert "No CUDA runtime" not in proc.stderr
    bad = subprocess.run([*cmd, "--bogus"], env=full, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--bogus" in bad.stderr


def test_cpp_extension_import_has_no_cuda_warning():
    """The build imports torch.utils.cpp_extension without its CUDA_HOME warning (CPU-only kernels)."""
    code = "from artlib.ops import _native; _native._cpp_extension(); print('RESULT ok')"
    full = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "RESULT ok" in proc.stdout, proc.stderr[-2000:]
    assert "No CUDA runtime" not in proc.stderr, proc.stderr[-2000:]
