"""RegionAttention: a drop-in for nn.MultiheadAttention when K queries attend to one frame's L tokens.

Legend: N frames (or any leading dims such as B T), K region queries, L tokens, d width, heads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from artlib.nn._checks import check_positive
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

    ``temperature`` t divides the attention logits: softmax(q k^T / (t sqrt(d_head))). t = 1 (the
    default) is the paper's and nn.MultiheadAttention's scaling; t < 1 sharpens the maps, t > 1
    flattens them. The op scales by 1/sqrt(d_head) itself, so t is applied by dividing the query
    projection (W_q and b_q, the first d rows of ``in_proj``) by t before the call: the same
    logits, and the parameters keep their meaning and layout.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        bias: bool = True,
        device=None,
        dtype=None,
        temperature: float = 1.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.temperature = check_positive("temperature", temperature)
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

    def _scaled_in_proj(self) -> tuple[Tensor, Tensor | None]:
        """in_proj (3d, d) and its bias (3d,) with the query rows divided by the temperature."""
        w, b, t = self.in_proj_weight, self.in_proj_bias, self.temperature
        if t == 1.0:
            return w, b
        d = self.embed_dim
        w = torch.cat([w[:d] / t, w[d:]])
        if b is not None:
            b = torch.cat([b[:d] / t, b[d:]])
        return w, b

    def forward(self, query: Tensor, x: Tensor, need_weights: bool = False):
        w, b = self._scaled_in_proj()
        return region_attention(
            query,
            x,
            w,
            b,
            self.out_proj.weight,
            self.out_proj.bias,
            self.num_heads,
            need_weights=need_weights,
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"bias={self.in_proj_bias is not None}"
            + (f", temperature={self.temperature}" if self.temperature != 1.0 else "")
        )
