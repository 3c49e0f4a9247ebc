"""Region attention in plain PyTorch: the argument checks and the references, float64-capable and
differentiable by autograd, the ground truth of every test and of the CPU fallback.

Shapes: N frames (any leading dims, flattened), K queries, L tokens, d width, heads; M = heads K.
See :mod:`artlib.ops.region_attention` for the two forms and the core.
"""

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

__all__ = [
    "check_region_attention_args",
    "region_attention_ref",
    "region_attention_core_ref",
    "region_attention_core_backward_ref",
]


def check_region_attention_args(
    query: Tensor,
    x: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
) -> tuple[tuple[int, ...], int, int, int]:
    """Validate the arguments; return (leading dims, K, L, d).

    The common case (every check passes) is one expression, ~2 us; anything else goes through
    the checks one by one, which raise the error that names the argument.
    """
    try:
        qs, xs = query.shape, x.shape
        k, d = qs[-2], qs[-1]
        dt, dev = query.dtype, query.device
        ok = (
            isinstance(query, Tensor)
            and isinstance(x, Tensor)
            and isinstance(in_proj_weight, Tensor)
            and isinstance(out_proj_weight, Tensor)
            and len(qs) >= 2
            and len(xs) == len(qs)
            and all(a == b for a, b in zip(xs[:-2], qs[:-2]))
            and xs[-1] == d
            and k >= 1
            and xs[-2] >= 1
            and type(num_heads) is int
            and num_heads >= 1
            and d % num_heads == 0
            and query.is_floating_point()
            and in_proj_weight.dim() == 2
            and in_proj_weight.shape[0] == 3 * d
            and in_proj_weight.shape[1] == d
            and out_proj_weight.dim() == 2
            and out_proj_weight.shape[0] == d
            and out_proj_weight.shape[1] == d
            and x.dtype == dt
            and in_proj_weight.dtype == dt
            and out_proj_weight.dtype == dt
            and x.device == dev
            and in_proj_weight.device == dev
            and out_proj_weight.device == dev
            and (
                in_proj_bias is None
                or (
                    isinstance(in_proj_bias, Tensor)
                    and in_proj_bias.dim() == 1
                    and in_proj_bias.shape[0] == 3 * d
                    and in_proj_bias.dtype == dt
                    and in_proj_bias.device == dev
                )
            )
            and (
                out_proj_bias is None
                or (
                    isinstance(out_proj_bias, Tensor)
                    and out_proj_bias.dim() == 1
                    and out_proj_bias.shape[0] == d
                    and out_proj_bias.dtype == dt
                    and out_proj_bias.device == dev
                )
            )
        )
    except (AttributeError, IndexError, TypeError):
        ok = False
    if ok:
        return tuple(qs[:-2]), k, xs[-2], d
    # the same checks one by one, each with its own error
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


def _standard_ref(
    query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, heads, need_weights
):
    """nn.MultiheadAttention's computation on (N, K, d), (N, L, d), written out: project x to keys
    and values, softmax(q k^T / sqrt(d_h)) v per head (the production standard form, with SDPA, is
    artlib.ops.region_attention.standard)."""
    w_q, w_k, w_v, b_q, b_k, b_v = _split_in_proj(in_proj_weight, in_proj_bias)
    q = rearrange(F.linear(query, w_q, b_q), "n k (h j) -> n h k j", h=heads)
    k = rearrange(F.linear(x, w_k, b_k), "n l (h j) -> n h l j", h=heads)
    v = rearrange(F.linear(x, w_v, b_v), "n l (h j) -> n h l j", h=heads)
    weights = torch.softmax(einsum(q, k, "n h k j, n h l j -> n h k l") * q.shape[-1] ** -0.5, -1)
    ctx = einsum(weights, v, "n h k l, n h l j -> n k h j")
    out = F.linear(rearrange(ctx, "n k h j -> n k (h j)"), out_proj_weight, out_proj_bias)
    return out, (weights if need_weights else None)


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
    if query.dim() == 3:  # already (N, K, d), (N, L, d)
        return query, x
    return query.reshape(-1, *query.shape[-2:]), x.reshape(-1, *x.shape[-2:])


def _unfold(out: Tensor, weights: Tensor | None, lead: tuple, num_heads: int, need_weights: bool):
    """The inverse of :func:`_fold` on the results: out (..., K, d), maps (..., heads, K, L)."""
    if len(lead) != 1:  # with one leading dim the results already have their shape
        out = out.reshape(*lead, *out.shape[-2:])
        if need_weights:
            weights = weights.reshape(*lead, num_heads, *weights.shape[-2:])
    return (out, weights) if need_weights else out


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
    impl = _standard_ref if form == "standard" else _absorbed_ref
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
