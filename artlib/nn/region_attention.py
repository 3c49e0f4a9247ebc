"""RegionAttention: a drop-in for nn.MultiheadAttention when K queries attend to one frame's L tokens.

Legend: N frames (or any leading dims such as B T), K region queries, L tokens, d width, heads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from artlib.ops.region_attention import region_attention, region_attention_form

__all__ = ["RegionAttention"]


class RegionAttention(nn.Module):
    """Multi-head cross-attention from K queries to the L tokens of the same frame (Eq. 3).

    ``forward(query (..., K, d), x (..., L, d), need_weights=False)`` returns out (..., K, d), and with
    ``need_weights`` also the per-head maps (..., heads, K, L). Equivalent to
    ``nn.MultiheadAttention(dim, num_heads, batch_first=True)(query, x, x,
    average_attn_weights=False)`` on the flattened frames, but for small K it never projects x to keys
    and values (:func:`artlib.ops.region_attention`). Parameters and ``state_dict`` keys and shapes are
    nn.MultiheadAttention's (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``,
    ``out_proj.bias``), so ``load_state_dict`` works both ways; so is the initialization.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim, **factory))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(dim, dim, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.MultiheadAttention's initialization (and its order of random draws, so that the same
        seed gives the same weights): out_proj.weight keeps nn.Linear's default, in_proj_weight is
        xavier-uniform, the biases are zero."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def form(self, num_queries: int, device: torch.device | str = "cpu") -> str:
        """The form (``"absorbed"`` or ``"standard"``) that runs for K = ``num_queries``."""
        return region_attention_form(num_queries, self.embed_dim, self.num_heads, device)

    def forward(self, query: Tensor, x: Tensor, need_weights: bool = False):
        return region_attention(
            query,
            x,
            self.in_proj_weight,
            self.in_proj_bias,
            self.out_proj.weight,
            self.out_proj.bias,
            self.num_heads,
            need_weights=need_weights,
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"bias={self.in_proj_bias is not None}"
        )
