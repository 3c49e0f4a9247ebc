"""The custom op ``artlib::region_attention`` (absorbed form) and its dispatched core.

The projections run around the core in PyTorch; the core ``(q~, x) -> (A, lse)`` and its backward
run on the backend that ``artlib.ops.backend("region_attention", device)`` names: Triton for CUDA
tensors, the native csrc kernels for CPU tensors once built, else the reference.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from artlib.ops import _backend
from artlib.ops._template import define_op
from artlib.ops.region_attention.reference import (
    _acc_dtype,
    _split_in_proj,
    region_attention_core_backward_ref,
    region_attention_core_ref,
)

__all__ = ["region_attention_core", "REGION_ATTENTION"]

_OP = "region_attention"


# --------------------------------------------------------------------------------------------------
# the core, dispatched. The op keeps q~, A and their gradients heads-major, (heads, N, K, d): the
# layout of the per-head projections around the core, one bmm each. The Triton kernels read and
# write it as it is; the native and reference cores take (N, M, d) with rows ordered (h k).


def _core_backend(t: Tensor) -> str:
    return _backend.implementation(_OP, t)


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


def _core_forward(q4: Tensor, x: Tensor, name: str | None = None) -> tuple[Tensor, Tensor]:
    """q~ (heads, N, K, d) -> (A (heads, N, K, d) contiguous, lse (N, heads K))."""
    name = name or _core_backend(q4)
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


def _core_backward(
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


# --------------------------------------------------------------------------------------------------
# the absorbed op's forward and backward: projections around the dispatched core. On CPU with the
# native kernels built, the whole of it is one C++ call (csrc/region_attention.cpp, op_fwd/op_bwd);
# elsewhere the same steps run here in PyTorch.


def _weights_from_lse(q_hm: Tensor, x: Tensor, lse: Tensor, heads: int) -> Tensor:
    """P = exp(q~ x^T - lse) in lse's precision, (N, heads K, L)."""
    q = _to_rows(q_hm.unflatten(1, (x.shape[0], -1)))
    s = torch.bmm(q.to(lse.dtype), x.to(lse.dtype).transpose(1, 2))
    return torch.exp(s - lse.unsqueeze(-1))


def _forward(
    query,
    x,
    in_proj_weight,
    in_proj_bias,
    out_proj_weight,
    out_proj_bias,
    h,
    need_weights,
    impl=None,
):
    """Absorbed region attention on query (N, K, d), x (N, L, d) -> out (N, K, d), the maps
    (N, heads, K, L) or an empty tensor when not asked, and what the backward needs: q~ and A
    heads-major (heads, N K, d), lse (N, heads K) fp32, Q W_q^T scaled (N K, d), the context
    before the output projection (N K, d). The native op (:func:`_saves_weights`) keeps the
    softmax weights P (N, heads K, L) in lse's place, so its backward skips recomputing the scores,
    and not q~ (an empty tensor in its place): its backward recomputes q~ per block of frames.
    ``impl``: the core's backend when already known."""
    impl = impl or _core_backend(query)
    if _saves_weights(impl, need_weights):
        out, *saved = torch.ops.artlib.native_region_attention_fwd(
            query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, h
        )
        return (out, query.new_empty(0), query.new_empty(0), *saved)  # no maps, q~ not kept
    n, k, d = query.shape
    nk, dh = n * k, d // h
    w_q, w_k, w_v, b_q, _, b_v = _split_in_proj(in_proj_weight, in_proj_bias)
    # qs = (query W_q^T + b_q) / sqrt(d_h);  q~_h = qs_h W_k,h  (the key bias cancels)
    q2 = query.reshape(nk, d)
    scale = dh**-0.5
    if b_q is None:
        qs = torch.mm(q2, w_q.t()).mul_(scale)
    else:
        qs = torch.addmm(b_q, q2, w_q.t(), beta=scale, alpha=scale)
    q_hm = torch.bmm(qs.view(nk, h, dh).transpose(0, 1), w_k.view(h, dh, d))  # (h, NK, d)
    a4, lse = _core_forward(q_hm.view(h, n, k, d), x, impl)
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


def _saves_weights(impl: str, need_weights: bool) -> bool:
    """True when :func:`_forward` runs the native op, which keeps P instead of lse."""
    return impl == "native" and not need_weights


def _backward(saved, h, has_in_bias, has_out_bias, d_out, d_weights):
    """The gradients (query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias) of
    :func:`_forward` from d_out and d_weights (None when the maps were not asked for or not used)."""
    query, x, w_in, w_out, q_hm, a_hm, lse, qs, context = saved
    if lse.dim() == 3:  # the native forward ran and kept P (N, heads K, L): its backward runs
        d_query, dx, d_w_in, d_b_in, d_w_out, d_b_out = (
            torch.ops.artlib.native_region_attention_bwd(
                d_out, query, x, w_in, w_out, a_hm, lse, qs, context, h
            )
        )
        return (
            d_query,
            dx,
            d_w_in,
            d_b_in if has_in_bias else None,
            d_w_out,
            d_b_out if has_out_bias else None,
        )
    n, k, d = query.shape
    nk, dh = n * k, d // h
    w_q, w_k, w_v = w_in.chunk(3)
    w_k, w_v = w_k.view(h, dh, d), w_v.view(h, dh, d)

    # out = context W_o^T + b_o;  context_h = A_h W_v,h^T + b_v,h
    d_out = d_out.reshape(nk, d)
    d_w_out = d_out.t().mm(context)
    d_b_out = d_out.sum(0) if has_out_bias else None
    d_context = d_out.mm(w_out)
    d_c_hm = d_context.view(nk, h, dh).transpose(0, 1)  # (h, NK, dh)
    d_w_v = torch.bmm(d_c_hm.transpose(1, 2), a_hm)  # (h, dh, d)
    d_a = torch.bmm(d_c_hm, w_v)  # (h, NK, d)

    # the core
    dq, dx = _core_backward(
        d_a.view(h, n, k, d), q_hm.view(h, n, k, d), x, a_hm.view(h, n, k, d), lse
    )
    dq = dq.view(h, nk, d)
    if d_weights is not None:
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
    if has_in_bias:  # the key bias cancels in the softmax: its gradient is exactly 0
        d_b_in = torch.cat([d_qp.sum(0), d_qp.new_zeros(d), d_context.sum(0)])
    return d_query, dx, d_w_in, d_b_in, d_w_out, d_b_out


# --------------------------------------------------------------------------------------------------
# the op (artlib/ops/_template.py): the custom op artlib::region_attention (torch.compile, export)
# and an autograd.Function (eager), both over _forward / _backward


def _host_forward(query, x, w_in, b_in, w_out, b_out, heads, need_weights):
    """-> (out, the maps or an empty tensor, then the residuals q~, A, lse, qs, context)."""
    return _forward(query, x, w_in, b_in, w_out, b_out, heads, need_weights)


def _host_backward(grads, inputs, residuals):
    d_out, d_weights = grads
    query, x, w_in, b_in, w_out, b_out, heads, need_weights = inputs
    if d_out is None:
        d_out = torch.zeros_like(residuals[-1]).view(query.shape)
    if not need_weights or (d_weights is not None and d_weights.numel() == 0):
        d_weights = None
    saved = (query, x, w_in, w_out, *residuals)
    return _backward(saved, heads, b_in is not None, b_out is not None, d_out, d_weights)


def _fake(
    query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads, need_weights
):
    n, k, d = query.shape
    h, nk = num_heads, n * k
    weights = query.new_empty(n, h, k, x.shape[1]) if need_weights else query.new_empty(0)
    acc = _acc_dtype(query.dtype)
    # planned(): plain dict reads, the choice select() makes (a fake may run inside a trace, where
    # making the choice would change what the trace guards on)
    q_hm, a_hm = query.new_empty(h, nk, d), query.new_empty(h, nk, d)
    if _saves_weights(_backend.planned(_OP, query.device.type), need_weights):
        lse = query.new_empty(n, h * k, x.shape[1], dtype=acc)  # P in lse's place
        q_hm = query.new_empty(0)  # not kept
    else:
        lse = query.new_empty(n, h * k, dtype=acc)
    return (
        query.new_empty(n, k, d),
        weights,
        q_hm,
        a_hm,
        lse,
        query.new_empty(nk, d),
        query.new_empty(nk, d),
    )


REGION_ATTENTION = define_op(
    "region_attention",
    schema="(Tensor query, Tensor x, Tensor in_proj_weight, Tensor? in_proj_bias, "
    "Tensor out_proj_weight, Tensor? out_proj_bias, int num_heads, bool need_weights) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    num_tensors=6,
    num_outputs=2,
    forward=_host_forward,
    backward=_host_backward,
    fake=_fake,
)
