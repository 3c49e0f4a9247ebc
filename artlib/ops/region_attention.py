"""Region cross-attention, the hot op of RSSA (Eq. 3 of the ART paper).

Shapes: N frames (any leading dims such as B T, flattened), K region queries per frame, L tokens per
frame, d width, ``heads`` heads of width d_h = d / heads, and M = heads K folded query rows.

``region_attention(query, x, ...)`` is equivalent to
``nn.MultiheadAttention(d, heads, batch_first=True)(query, x, x)`` (and, with ``need_weights=True``,
to its ``average_attn_weights=False`` per-head maps), but in its *absorbed* form it never projects x
to keys and values. Because keys and values are linear in x, the projections fold into the queries
(DESIGN.md, "Region attention")::

    q~[n, (h k)] = (query W_q,h^T + b_q,h) W_k,h / sqrt(d_h)         (M x d: the heads become rows)
    S = q~ x^T,   P = softmax_rows(S),   A = P x                      (the core: M x L, M x d)
    out = concat_h(A_h W_v,h^T + b_v,h) W_o^T + b_o

The key bias cancels in the softmax; the value bias is added after, because each row of P sums to 1.
The absorbed form costs about 2 K heads L d multiply-adds per frame against 2 L d^2 for projecting x,
so it wins while K heads is well under d; :func:`region_attention_form` picks the cheaper form and says
which. The *core* ``(q~, x) -> (A, lse)`` and its backward ``(dA, q~, x, A, lse) -> (dq~, dx)`` are
the fused part: Triton for CUDA tensors, the native csrc kernels for CPU tensors once built, else
:func:`region_attention_core_ref`. ``artlib.ops.backend("region_attention", device)`` says which runs;
``ARTLIB_BACKEND_REGION_ATTENTION`` (or ``ARTLIB_BACKEND``) forces one.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from artlib.ops import _backend

__all__ = [
    "region_attention",
    "region_attention_ref",
    "region_attention_core",
    "region_attention_core_ref",
    "region_attention_core_backward_ref",
    "region_attention_form",
    "FORMS",
    "ABSORBED_MAX_ROWS_PER_DIM",
]

FORMS = ("auto", "absorbed", "standard")

# The absorbed form is picked while K * heads <= ratio * d, the ratio depending on where its core runs.
# Measured crossovers, fwd+bwd at N = 384 frames, L = 196, d = 256, 8 heads, absorbed vs standard:
#   cuda, triton (H200, bf16, CUDA-graph replay, benchmarks/gpu_region_attention.py): 182 vs 700 us
#        at K = 2, 359 vs 714 at K = 8, 758 vs 741 at K = 16, 1369 vs 770 at K = 32 -> 0.4 (K <= 12)
#   cpu, native (2-core dev machine, fp32, eager): standard/absorbed time 3.8x at K = 2, 1.6x at
#        K = 16, 0.88x at K = 24 -> 0.65 (K <= 20)
#   cpu, reference (the same): 2.9x at K = 2, 1.65x at K = 8, 1.15x at K = 12, 0.78x at K = 16
#        -> 0.45 (K <= 14)
ABSORBED_MAX_ROWS_PER_DIM = {
    ("cuda", "triton"): 0.4,
    ("cpu", "native"): 0.65,
    ("cpu", "reference"): 0.45,
}
_DEFAULT_RATIO = 0.45

_OP = "region_attention"


# --------------------------------------------------------------------------------------------------
# argument checks and the form rule


def check_region_attention_args(
    query: Tensor,
    x: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
) -> tuple[tuple[int, ...], int, int, int]:
    """Validate the arguments; return (leading dims, K, L, d)."""
    named = {
        "query": query,
        "x": x,
        "in_proj_weight": in_proj_weight,
        "out_proj_weight": out_proj_weight,
    }
    if in_proj_bias is not None:
        named["in_proj_bias"] = in_proj_bias
    if out_proj_bias is not None:
        named["out_proj_bias"] = out_proj_bias
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if query.dim() < 2 or x.dim() < 2:
        raise ValueError(
            f"query must be (..., K, d) and x (..., L, d), got shapes {tuple(query.shape)} and "
            f"{tuple(x.shape)}"
        )
    k, d = query.shape[-2:]
    lead, l = tuple(query.shape[:-2]), x.shape[-2]
    if tuple(x.shape[:-2]) != lead:
        raise ValueError(
            f"query (..., K, d) and x (..., L, d) must share their leading dims (frames N): query has "
            f"{lead}, x has {tuple(x.shape[:-2])}"
        )
    if x.shape[-1] != d:
        raise ValueError(f"x must be (..., L, d={d}) like query, got shape {tuple(x.shape)}")
    if k < 1 or l < 1 or d < 1:
        raise ValueError(f"need K, L, d >= 1, got K={k}, L={l}, d={d}")
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if d % num_heads:
        raise ValueError(f"d={d} must be divisible by num_heads={num_heads}")
    expected = {
        "in_proj_weight": (3 * d, d),
        "in_proj_bias": (3 * d,),
        "out_proj_weight": (d, d),
        "out_proj_bias": (d,),
    }
    for name, shape in expected.items():
        if name in named and tuple(named[name].shape) != shape:
            raise ValueError(f"{name} must be {shape} for d={d}, got {tuple(named[name].shape)}")
    if not query.is_floating_point():
        raise TypeError(f"query must be a floating-point tensor, got {query.dtype}")
    for name, t in named.items():
        if t.dtype != query.dtype:
            raise TypeError(f"{name} must have query's dtype {query.dtype}, got {t.dtype}")
        if t.device != query.device:
            raise ValueError(f"{name} must be on query's device {query.device}, got {t.device}")
    return lead, k, l, d


@torch.compiler.assume_constant_result
def _form_ratio(device_type: str) -> float:
    """The crossover ratio for the core backend that runs on this device type (a constant per
    process, so torch.compile takes it as one instead of tracing the backend lookup)."""
    try:
        name = _backend.select(_OP, device_type)
    except RuntimeError:  # a forced backend that cannot run here: the core will say so if it runs
        name = "reference"
    return ABSORBED_MAX_ROWS_PER_DIM.get((device_type, name), _DEFAULT_RATIO)


def region_attention_form(
    num_queries: int, dim: int, num_heads: int, device: torch.device | str = "cpu"
) -> str:
    """The form :func:`region_attention` runs for this shape: ``"absorbed"`` while
    K * heads <= ratio * d, else ``"standard"``; the ratio is the measured crossover for the backend
    that runs the core on ``device`` (:data:`ABSORBED_MAX_ROWS_PER_DIM`). L does not enter: both
    forms' costs are linear in it."""
    ratio = _form_ratio(torch.device(device).type)
    return "absorbed" if num_queries * num_heads <= ratio * dim else "standard"


# --------------------------------------------------------------------------------------------------
# references (plain PyTorch, float64-capable, differentiable by autograd)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def region_attention_core_ref(q: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """The core, single-head attention whose keys and values are x itself.

    q (N, M, d) already scaled, x (N, L, d) -> A = softmax(q x^T) x (N, M, d) in q's dtype and
    lse = logsumexp of each row of q x^T (N, M) in fp32 (fp64 for fp64 inputs). Computed in fp32.
    """
    acc = _acc_dtype(q.dtype)
    qa, xa = q.to(acc), x.to(acc)
    s = torch.bmm(qa, xa.transpose(1, 2))  # (N, M, L)
    lse = torch.logsumexp(s, dim=-1)
    a = torch.bmm(torch.exp(s - lse.unsqueeze(-1)), xa)
    return a.to(q.dtype), lse


def region_attention_core_backward_ref(
    da: Tensor, q: Tensor, x: Tensor, a: Tensor, lse: Tensor
) -> tuple[Tensor, Tensor]:
    """Backward of :func:`region_attention_core_ref` -> (dq (N, M, d), dx (N, L, d)):
    dP = dA x^T, delta = rowsum(dA * A), dS = P * (dP - delta), dq = dS x, dx = P^T dA + dS^T q."""
    acc = _acc_dtype(q.dtype)
    m = q.shape[1]
    xa = x.to(acc)
    qda = torch.cat([q, da], dim=1).to(acc)  # one pass over x for both S and dP
    s_dp = torch.bmm(qda, xa.transpose(1, 2))  # (N, 2M, L)
    p = torch.exp(s_dp[:, :m] - lse.to(acc).unsqueeze(-1))
    delta = (qda[:, m:] * a.to(acc)).sum(-1, keepdim=True)
    ds = p * (s_dp[:, m:] - delta)
    dq = torch.bmm(ds, xa)
    # dx = dS^T q + P^T dA as one product: [dS; P]^T [q; dA]
    dx = torch.bmm(torch.cat([ds, p], dim=1).transpose(1, 2), qda)
    return dq.to(q.dtype), dx.to(x.dtype)


def _split_in_proj(w: Tensor, b: Tensor | None):
    w_q, w_k, w_v = w.chunk(3)
    b_q, b_k, b_v = b.chunk(3) if b is not None else (None, None, None)
    return w_q, w_k, w_v, b_q, b_k, b_v


def _fold_queries(query: Tensor, w_q: Tensor, b_q: Tensor | None, w_k: Tensor, heads: int):
    """query (N, K, d) -> q~ (N, heads K, d), rows ordered (h k): (Q W_q,h^T + b_q,h) W_k,h / sqrt(d_h)."""
    d = query.shape[-1]
    qh = (
        rearrange(F.linear(query, w_q, b_q), "n k (h j) -> n k h j", h=heads) * (d // heads) ** -0.5
    )
    qt = einsum(qh, rearrange(w_k, "(h j) c -> h j c", h=heads), "n k h j, h j c -> n h k c")
    return rearrange(qt, "n h k c -> n (h k) c")


def _value_heads(a: Tensor, w_v: Tensor, b_v: Tensor | None, heads: int) -> Tensor:
    """A (N, heads K, d) -> concat_h(A_h W_v,h^T + b_v,h) (N, K, d)."""
    ah = rearrange(a, "n (h k) c -> n h k c", h=heads)
    ctx = einsum(ah, rearrange(w_v, "(h j) c -> h j c", h=heads), "n h k c, h j c -> n k h j")
    ctx = rearrange(ctx, "n k h j -> n k (h j)")
    return ctx if b_v is None else ctx + b_v


def _standard(
    query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, heads, need_weights
):
    """nn.MultiheadAttention's computation on (N, K, d), (N, L, d): project x to keys and values."""
    d = query.shape[-1]
    b_q, b_kv = (None, None) if in_proj_bias is None else (in_proj_bias[:d], in_proj_bias[d:])
    q = rearrange(F.linear(query, in_proj_weight[:d], b_q), "n k (h j) -> n h k j", h=heads)
    kv = F.linear(x, in_proj_weight[d:], b_kv)  # keys and values in one GEMM
    k, v = (rearrange(t, "n l (h j) -> n h l j", h=heads) for t in kv.chunk(2, dim=-1))
    weights = None
    if need_weights:
        weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2), dim=-1)
        ctx = weights @ v
    else:
        ctx = F.scaled_dot_product_attention(q, k, v)
    out = F.linear(rearrange(ctx, "n h k j -> n k (h j)"), out_proj_weight, out_proj_bias)
    return out, weights


def _absorbed_ref(
    query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, heads, need_weights
):
    w_q, w_k, w_v, b_q, _, b_v = _split_in_proj(in_proj_weight, in_proj_bias)
    q = _fold_queries(query, w_q, b_q, w_k, heads)
    a, lse = region_attention_core_ref(q, x)
    out = F.linear(_value_heads(a, w_v, b_v, heads), out_proj_weight, out_proj_bias)
    weights = None
    if need_weights:
        s = torch.bmm(q.to(lse.dtype), x.to(lse.dtype).transpose(1, 2))
        weights = rearrange(torch.exp(s - lse.unsqueeze(-1)), "n (h k) l -> n h k l", h=heads)
        weights = weights.to(query.dtype)
    return out, weights


def _fold(query: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(..., K, d), (..., L, d) -> (N, K, d), (N, L, d): the leading dims become one frame axis."""
    return query.reshape(-1, *query.shape[-2:]), x.reshape(-1, *x.shape[-2:])


def _unfold(out: Tensor, weights: Tensor | None, lead: tuple, num_heads: int, need_weights: bool):
    """The inverse of :func:`_fold` on the results: out (..., K, d), maps (..., heads, K, L)."""
    out = out.reshape(*lead, *out.shape[-2:])
    if need_weights:
        return out, weights.reshape(*lead, num_heads, *weights.shape[-2:])
    return out


def region_attention_ref(
    query: Tensor,
    x: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
    need_weights: bool = False,
    form: str = "standard",
):
    """Plain-PyTorch region attention in either form (``"standard"``: project x to keys and values,
    as nn.MultiheadAttention does; ``"absorbed"``: fold the projections into the queries). Same
    arguments and result as :func:`region_attention`; differentiable by autograd, float64-capable."""
    if form not in ("standard", "absorbed"):
        raise ValueError(f"form must be 'standard' or 'absorbed', got {form!r}")
    lead, *_ = check_region_attention_args(
        query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads
    )
    impl = _standard if form == "standard" else _absorbed_ref
    out, weights = impl(
        *_fold(query, x),
        in_proj_weight,
        in_proj_bias,
        out_proj_weight,
        out_proj_bias,
        num_heads,
        need_weights,
    )
    return _unfold(out, weights, lead, num_heads, need_weights)


# --------------------------------------------------------------------------------------------------
# the core, dispatched. The op keeps q~, A and their gradients heads-major, (heads, N, K, d): the
# layout of the per-head projections around the core, one bmm each. The Triton kernels read and
# write it as it is; the native and reference cores take (N, M, d) with rows ordered (h k).


def _core_backend(t: Tensor) -> str:
    name = _backend.select(_OP, t.device)
    if name == "triton" and t.dtype == torch.float64:
        return "reference"  # the Triton kernels take fp32/fp16/bf16; float64 is the ground truth's
    return name


def _to_rows(t4: Tensor) -> Tensor:
    """(heads, N, K, d) -> (N, heads K, d)."""
    h, n, k, d = t4.shape
    return t4.permute(1, 0, 2, 3).reshape(n, h * k, d)


def _to_heads(t3: Tensor, heads: int) -> Tensor:
    """(N, heads K, d) -> (heads, N, K, d), contiguous."""
    n, m, d = t3.shape
    return t3.reshape(n, heads, m // heads, d).permute(1, 0, 2, 3).contiguous()


def region_attention_core(q: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """The core ``(q~ (N, M, d), x (N, L, d)) -> (A (N, M, d), lse (N, M) fp32)`` on the active
    backend; equivalent to :func:`region_attention_core_ref`. Not differentiable by itself: the
    custom op ``artlib::region_attention`` carries the backward."""
    a4, lse = _core_forward(q.unsqueeze(0), x)
    return a4[0], lse


def _core_forward(q4: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """q~ (heads, N, K, d) -> (A (heads, N, K, d) contiguous, lse (N, heads K))."""
    name = _core_backend(q4)
    if name == "triton":
        from artlib.ops.triton.region_attention import core_forward

        return core_forward(q4, x)
    q = _to_rows(q4)
    if name == "native":
        from artlib.ops import _native

        a, lse = _native.region_attention_core_forward(q.contiguous(), x.contiguous())
    else:
        a, lse = region_attention_core_ref(q, x)
    return _to_heads(a, q4.shape[0]), lse


@torch.library.custom_op("artlib::region_attention_core_backward", mutates_args=())
def _core_backward_op(
    da: Tensor, q: Tensor, x: Tensor, a: Tensor, lse: Tensor
) -> tuple[Tensor, Tensor]:
    """Backward of the core on heads-major (heads, N, K, d) da, q, a -> (dq (heads, N, K, d), dx)."""
    name = _core_backend(q)
    if name == "triton":
        from artlib.ops.triton.region_attention import core_backward

        return core_backward(da, q, x, a, lse)
    args = (_to_rows(da), _to_rows(q), x, _to_rows(a), lse)
    if name == "native":
        from artlib.ops import _native

        dq, dx = _native.region_attention_core_backward(*(t.contiguous() for t in args))
    else:
        dq, dx = region_attention_core_backward_ref(*args)
    return _to_heads(dq, q.shape[0]), dx


@_core_backward_op.register_fake
def _(da, q, x, a, lse):
    fmt = torch.contiguous_format  # what every backend returns
    return torch.empty_like(q, memory_format=fmt), torch.empty_like(x, memory_format=fmt)


# --------------------------------------------------------------------------------------------------
# the custom op: absorbed form, projections around the dispatched core, one autograd node


def _weights_from_lse(q_hm: Tensor, x: Tensor, lse: Tensor, heads: int) -> Tensor:
    """P = exp(q~ x^T - lse) in lse's precision, (N, heads K, L)."""
    q = _to_rows(q_hm.unflatten(1, (x.shape[0], -1)))
    s = torch.bmm(q.to(lse.dtype), x.to(lse.dtype).transpose(1, 2))
    return torch.exp(s - lse.unsqueeze(-1))


@torch.library.custom_op("artlib::region_attention", mutates_args=())
def _region_attention_op(
    query: Tensor,
    x: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Optional[Tensor],  # noqa: UP045 - custom_op's schema
    out_proj_weight: Tensor,
    out_proj_bias: Optional[Tensor],  # noqa: UP045
    num_heads: int,
    need_weights: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Absorbed region attention on query (N, K, d), x (N, L, d) -> out (N, K, d), the maps
    (N, heads, K, L) or an empty tensor when not asked, and what the backward needs: q~ and A
    heads-major (heads, N K, d), lse (N, heads K) fp32, Q W_q^T scaled (N K, d), the context
    before the output projection (N K, d)."""
    n, k, d = query.shape
    h, nk = num_heads, n * k
    dh = d // h
    w_q, w_k, w_v, b_q, _, b_v = _split_in_proj(in_proj_weight, in_proj_bias)
    # qs = (query W_q^T + b_q) / sqrt(d_h);  q~_h = qs_h W_k,h  (the key bias cancels)
    q2 = query.reshape(nk, d)
    scale = dh**-0.5
    if b_q is None:
        qs = torch.mm(q2, w_q.t()).mul_(scale)
    else:
        qs = torch.addmm(b_q, q2, w_q.t(), beta=scale, alpha=scale)
    q_hm = torch.bmm(qs.view(nk, h, dh).transpose(0, 1), w_k.view(h, dh, d))  # (h, NK, d)
    a4, lse = _core_forward(q_hm.view(h, n, k, d), x)
    a_hm = a4.view(h, nk, d)
    # context_h = A_h W_v,h^T + b_v,h, concatenated over heads; out = context W_o^T + b_o
    c_hm = torch.bmm(a_hm, w_v.view(h, dh, d).transpose(1, 2))  # (h, NK, dh)
    context = torch.empty((nk, h, dh), device=query.device, dtype=query.dtype)
    if b_v is None:
        context.copy_(c_hm.transpose(0, 1))
    else:
        torch.add(c_hm.transpose(0, 1), b_v.view(h, dh), out=context)
    context = context.view(nk, d)
    out = F.linear(context, out_proj_weight, out_proj_bias).view(n, k, d)
    if need_weights:
        weights = _weights_from_lse(q_hm, x, lse, h).to(query.dtype)
        weights = weights.view(n, h, k, x.shape[1])
    else:
        weights = query.new_empty(0)
    return out, weights, q_hm, a_hm, lse, qs, context


@_region_attention_op.register_fake
def _(
    query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads, need_weights
):
    n, k, d = query.shape
    h, nk = num_heads, n * k
    weights = query.new_empty(n, h, k, x.shape[1]) if need_weights else query.new_empty(0)
    lse = query.new_empty(n, h * k, dtype=_acc_dtype(query.dtype))
    q_hm, a_hm = query.new_empty(h, nk, d), query.new_empty(h, nk, d)
    return (
        query.new_empty(n, k, d),
        weights,
        q_hm,
        a_hm,
        lse,
        query.new_empty(nk, d),
        query.new_empty(nk, d),
    )


def _setup_context(ctx, inputs, output):
    query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, heads, need_weights = (
        inputs
    )
    _, _, q_hm, a_hm, lse, qs, context = output
    ctx.save_for_backward(query, x, in_proj_weight, out_proj_weight, q_hm, a_hm, lse, qs, context)
    ctx.heads, ctx.need_weights = heads, need_weights
    ctx.has_in_bias, ctx.has_out_bias = in_proj_bias is not None, out_proj_bias is not None
    ctx.mark_non_differentiable(q_hm, a_hm, lse, qs, context)


def _backward(ctx, d_out, d_weights, *_):
    query, x, w_in, w_out, q_hm, a_hm, lse, qs, context = ctx.saved_tensors
    h = ctx.heads
    n, k, d = query.shape
    nk, dh = n * k, d // h
    w_q, w_k, w_v = w_in.chunk(3)
    w_k, w_v = w_k.view(h, dh, d), w_v.view(h, dh, d)

    # out = context W_o^T + b_o;  context_h = A_h W_v,h^T + b_v,h
    d_out = d_out.reshape(nk, d)
    d_w_out = d_out.t().mm(context)
    d_b_out = d_out.sum(0) if ctx.has_out_bias else None
    d_context = d_out.mm(w_out)
    d_c_hm = d_context.view(nk, h, dh).transpose(0, 1)  # (h, NK, dh)
    d_w_v = torch.bmm(d_c_hm.transpose(1, 2), a_hm)  # (h, dh, d)
    d_a = torch.bmm(d_c_hm, w_v)  # (h, NK, d)

    # the core
    dq, dx = torch.ops.artlib.region_attention_core_backward(
        d_a.view(h, n, k, d), q_hm.view(h, n, k, d), x, a_hm.view(h, n, k, d), lse
    )
    dq = dq.view(h, nk, d)
    if ctx.need_weights and d_weights is not None:
        # the maps are P (N, heads K, L): dS += P * (dW - rowsum(P * dW))
        p = _weights_from_lse(q_hm, x, lse, h)
        dw = d_weights.reshape(n, h * k, -1).to(p.dtype)
        ds = p * (dw - (p * dw).sum(-1, keepdim=True))
        dq = dq + _to_heads(torch.bmm(ds, x.to(p.dtype)), h).view(h, nk, d).to(dq.dtype)
        q_rows = _to_rows(q_hm.view(h, n, k, d)).to(p.dtype)
        dx = dx + torch.bmm(ds.transpose(1, 2), q_rows).to(dx.dtype)

    # q~_h = qs_h W_k,h with qs = (query W_q^T + b_q) / sqrt(d_h)
    d_w_k = torch.bmm(qs.view(nk, h, dh).transpose(0, 1).transpose(1, 2), dq)  # (h, dh, d)
    d_qs = torch.bmm(dq, w_k.transpose(1, 2))  # (h, NK, dh)
    d_qp = d_qs.transpose(0, 1).reshape(nk, d).mul_(dh**-0.5)
    d_w_q = d_qp.t().mm(query.reshape(nk, d))
    d_query = d_qp.mm(w_q).view(n, k, d)
    d_w_in = torch.cat([d_w_q, d_w_k.reshape(d, d), d_w_v.reshape(d, d)])
    d_b_in = None
    if ctx.has_in_bias:  # the key bias cancels in the softmax: its gradient is exactly 0
        d_b_in = torch.cat([d_qp.sum(0), d_qp.new_zeros(d), d_context.sum(0)])
    return d_query, dx, d_w_in, d_b_in, d_w_out, d_b_out, None, None


_region_attention_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# the public function


def region_attention(
    query: Tensor,
    x: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
    need_weights: bool = False,
    form: str = "auto",
):
    """K region queries attend to the L tokens of their own frame.

    query (..., K, d), x (..., L, d) with the same leading dims (e.g. N, or B T); the parameters in
    nn.MultiheadAttention's layout: in_proj_weight (3d, d), in_proj_bias (3d,) or None,
    out_proj_weight (d, d), out_proj_bias (d,) or None. Returns out (..., K, d), and with
    ``need_weights`` also the per-head attention maps (..., heads, K, L), each row summing to 1.

    Equivalent to ``nn.MultiheadAttention(d, heads, batch_first=True)(query, x, x,
    need_weights=need_weights, average_attn_weights=False)`` on the flattened frames, but the
    ``"absorbed"`` form never projects x to keys and values. ``form="auto"`` picks the cheaper form
    for the shape and device (:func:`region_attention_form`); the standard form runs stock PyTorch
    (projections + SDPA), the absorbed one the custom op ``artlib::region_attention``.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if isinstance(query, Tensor) and torch.is_autocast_enabled(query.device.type):
        # Custom ops sit outside autocast's op lists, so cast as nn.Linear would: under bf16
        # autocast a LayerNorm hands over fp32 while a Linear hands over bf16 (seen on an H200 in
        # the ART step), a mix the kernels reject.
        dt = torch.get_autocast_dtype(query.device.type)
        query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias = (
            t.to(dt) if isinstance(t, Tensor) else t
            for t in (query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias)
        )
    lead, k, _, d = check_region_attention_args(
        query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads
    )
    if form == "auto":
        form = region_attention_form(k, d, num_heads, query.device)
    args = (*_fold(query, x), in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias)
    if form == "standard":
        out, weights = _standard(*args, num_heads, need_weights)
    else:
        out, weights, *_ = torch.ops.artlib.region_attention(*args, num_heads, need_weights)
    return _unfold(out, weights, lead, num_heads, need_weights)
