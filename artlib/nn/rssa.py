"""Region-Specific Semantics Activation (RSSA), Sec. III-B, Eq. 1-3.

Legend: B videos, T frames, L tokens per frame, K region queries, d latent width, heads.

    X (B,T,L,d), S^topk (B,K,d)
      -> SE: per frame, pre-norm transformer layers over concat(X_t, S^topk)   (Eq. 1)
      -> X^_t (L,d), S^_t (K,d)
      -> Q_t = P_t + S^_t, P learnable (T,K,d)                                 (Eq. 2)
      -> decoder layers: R = MCA(Q, X^_t) + Q; R = R + FFN(R)                  (Eq. 3)
      -> R (B,T,K,d)
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from artlib.nn._checks import check_positive, check_tensor

__all__ = ["RSSA", "RegionDecoderLayer"]


def _cross_attention(dim: int, heads: int, dropout: float, temperature: float = 1.0) -> nn.Module:
    """K-query cross-attention: artlib's fused RegionAttention when available (same state_dict layout
    as nn.MultiheadAttention), else nn.MultiheadAttention (which has no temperature)."""
    try:
        from artlib.nn.region_attention import RegionAttention
    except ImportError:
        RegionAttention = None
    if RegionAttention is None or dropout > 0:  # the fused op has no attention dropout
        if temperature != 1.0:
            raise ValueError(
                f"attn_temperature={temperature} needs RegionAttention without attention dropout "
                f"(attn_dropout={dropout})"
            )
        return nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
    return RegionAttention(dim, heads, temperature=temperature)


class RegionDecoderLayer(nn.Module):
    """One pre-norm decoder layer of Eq. 3: cross-attention from K queries to the L tokens of the same
    frame, residual, FFN, residual. Inputs are folded frames: query (N, K, d), memory (N, L, d)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        attn_temperature: float = 1.0,
    ):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.attn = _cross_attention(
            dim, heads, attn_dropout, check_positive("attn_temperature", attn_temperature)
        )
        self.norm_ffn = nn.LayerNorm(dim)
        hidden = int(dim * ffn_ratio)
        self.ffn = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, query: Tensor, memory: Tensor, need_weights: bool = False):
        q = self.norm_q(query)
        if isinstance(self.attn, nn.MultiheadAttention):
            out, maps = self.attn(
                q, memory, memory, need_weights=need_weights, average_attn_weights=False
            )
        else:
            res = self.attn(q, memory, need_weights=need_weights)
            out, maps = res if need_weights else (res, None)
        r = query + self.drop(out)  # Eq. 3: R_t = MCA(Q_t, X^_t) + Q_t
        r = r + self.drop(self.ffn(self.norm_ffn(r)))
        return r, maps


class RSSA(nn.Module):
    """Region-specific semantics activation: region responses R (B,T,K,d) from frame tokens and the
    top-K text semantics.

    Args:
        dim: latent width d.
        heads: attention heads.
        num_queries: K, queries per frame (= tracklets).
        num_frames: T; the learnable prompts P are (T, K, d).
        se_layers: transformer layers of the spatial semantic enhancement (Eq. 1); 0 or
            ``use_se=False`` skips it (the "no SE" ablation: X^ = X, S^_t = S^topk).
        act_layers: cross-attention decoder layers (Eq. 3).
        ffn_ratio, dropout, attn_dropout: transformer layer settings.
        attn_temperature: t of the decoder's cross-attention, softmax(q k^T / (t sqrt(d_head)))
            (1 = the paper's 1/sqrt(d_head) scaling; < 1 sharpens the region maps). The SE
            layers (Eq. 1) keep the standard scaling.

    ``forward(x (B,T,L,d), semantics (B,K,d), return_attention=False)`` returns R (B,T,K,d), and with
    ``return_attention`` also the last decoder layer's maps (B,T,heads,K,L).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        num_queries: int = 2,
        num_frames: int = 16,
        se_layers: int = 4,
        act_layers: int = 4,
        ffn_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        use_se: bool = True,
        attn_temperature: float = 1.0,
    ):
        super().__init__()
        self.attn_temperature = check_positive("attn_temperature", attn_temperature)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if num_queries < 1 or num_frames < 1 or act_layers < 1:
            raise ValueError(
                f"num_queries, num_frames and act_layers must be >= 1, got {num_queries}, "
                f"{num_frames}, {act_layers}"
            )
        self.dim, self.heads = dim, heads
        self.num_queries, self.num_frames = num_queries, num_frames
        self.use_se = use_se and se_layers > 0
        if self.use_se:  # Eq. 1: MSA over concat(X_t, S^topk), standard pre-norm layers
            layer = nn.TransformerEncoderLayer(
                dim,
                heads,
                int(dim * ffn_ratio),
                dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.se = nn.TransformerEncoder(layer, se_layers, enable_nested_tensor=False)
        else:
            self.se = None
        self.prompts = nn.Parameter(torch.randn(num_frames, num_queries, dim) * 0.02)  # P (Eq. 2)
        self.memory_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            RegionDecoderLayer(dim, heads, ffn_ratio, dropout, attn_dropout, self.attn_temperature)
            for _ in range(act_layers)
        )
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, semantics: Tensor, return_attention: bool = False):
        check_tensor("x", x, ("B", "T", "L", "d"), sizes={"T": self.num_frames, "d": self.dim})
        b, t, l, _ = x.shape
        check_tensor(
            "semantics",
            semantics,
            ("B", "K", "d"),
            sizes={"B": b, "K": self.num_queries, "d": self.dim},
        )
        k = self.num_queries
        frames = rearrange(x, "b t l d -> (b t) l d")
        sem = repeat(semantics, "b k d -> (b t) k d", t=t)
        if self.se is not None:  # Eq. 1
            enhanced = self.se(torch.cat([frames, sem], dim=1))
            frames, sem = enhanced[:, :l], enhanced[:, l:]
        query = sem + repeat(self.prompts, "t k d -> (b t) k d", b=b)  # Eq. 2
        memory = self.memory_norm(frames)
        maps = None
        for i, layer in enumerate(self.layers):  # Eq. 3
            last = i == len(self.layers) - 1
            query, m = layer(query, memory, need_weights=return_attention and last)
            if m is not None:
                maps = m
        r = rearrange(self.out_norm(query), "(b t) k d -> b t k d", b=b, k=k)
        if return_attention:
            return r, rearrange(maps, "(b t) h k l -> b t h k l", b=b)
        return r
