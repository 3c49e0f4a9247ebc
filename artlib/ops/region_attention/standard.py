"""The standard form of region attention, as nn.MultiheadAttention computes it: project x to keys
and values (one GEMM for both), ``F.scaled_dot_product_attention`` per head, output projection.

Stock PyTorch end to end (autograd, torch.compile and every device as they come); the form
:func:`artlib.ops.region_attention` runs where K * heads is too large for the absorbed form to pay.
Checked against ``region_attention_ref(form="standard")``, which writes the softmax out.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = ["standard_forward"]


def standard_forward(
    query: Tensor,
    x: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    heads: int,
    need_weights: bool,
) -> tuple[Tensor, Tensor | None]:
    """query (N, K, d), x (N, L, d) -> (out (N, K, d), the maps (N, heads, K, L) or None)."""
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
