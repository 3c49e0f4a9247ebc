"""Layers shared by the backbones, with CLIP's parameter names so CLIP checkpoints load as they are.

Legend: B videos, T frames, N tokens per frame (1 + L with a class token), C width, h heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def plain(value):
    """``value`` as JSON types: tuples and ranges -> lists, dict keys -> str (a config to save)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, range)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"config: {value!r} ({type(value).__name__}) is not a JSON value")


def init_args(local_vars: dict) -> dict:
    """A constructor's arguments (``locals()`` at its top) as a plain dict: what rebuilds it."""
    return {k: plain(v) for k, v in local_vars.items() if k not in ("self", "__class__")}


class VideoBackbone(nn.Module):
    """What every backbone declares about its input (timm's ``pretrained_cfg`` habit):
    ``mean``/``std`` (0-1 scale, what its weights expect), ``img_size`` (S), ``frames_out(T)``
    (T -> T'), ``num_tokens(H, W)`` (L), and ``init_kwargs`` (its constructor arguments)."""

    mean: tuple
    std: tuple
    img_size: int
    init_kwargs: dict

    def frames_out(self, T: int) -> int:
        return T

    def data_config(self, num_frames: int = 16) -> dict:
        """The input contract: {"mean", "std", "input_size" (3, S, S), "num_frames" T,
        "token_frames" T', "tokens_per_frame" L}, plain types."""
        size = int(self.img_size)
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "input_size": [3, size, size],
            "num_frames": int(num_frames),
            "token_frames": int(self.frames_out(num_frames)),
            "tokens_per_frame": int(self.num_tokens(size, size)),
        }


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth on a residual branch: each sample along dim 0 keeps the branch with
    probability 1 − p, scaled by 1/(1 − p) (timm's ``DropPath``); the identity when not training."""
    if p <= 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class QuickGELU(nn.Module):
    """x·σ(1.702x), the activation of OpenAI's CLIP weights."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (as CLIP does), so bf16/fp16 inputs stay stable."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled():
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


def temporal_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Depthwise temporal convolution along dim 1, zero padding, 'same' length.

    x: (B, T, ...), weight: (k, *S) with k odd and *S broadcastable against x[:, 0] (e.g. (k, C) for
    channels-last tokens (B, T, N, C), or (k, C, 1, 1) for (B, T, C, H, W) maps). Equivalent to a
    grouped ``nn.Conv3d`` with kernel (k, 1, 1), but needs no layout change: it sums k shifted copies.
    """
    k = weight.shape[0]
    r = k // 2
    T = x.shape[1]
    out = x * weight[r]
    for j in range(k):
        s = j - r  # tap j reads frame t + s
        if s == 0 or abs(s) >= T:
            continue
        if s > 0:
            out = torch.cat([out[:, : T - s] + x[:, s:] * weight[j], out[:, T - s :]], dim=1)
        else:
            out = torch.cat([out[:, :-s], out[:, -s:] + x[:, : T + s] * weight[j]], dim=1)
    if bias is not None:
        out = out + bias
    return out


class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's (and CLIP's) parameter layout
    (``in_proj_weight`` (3C, C), ``in_proj_bias``, ``out_proj``), run through
    ``F.scaled_dot_product_attention``.

    ``forward(x (B, N, C)) → (B, N, C)`` is equivalent to
    ``nn.MultiheadAttention(C, heads, batch_first=True)(x, x, x, need_weights=False)[0]``.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads: width {dim} is not divisible by heads = {heads}")
        self.dim, self.heads = dim, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(o.transpose(1, 2).reshape(B, N, C))


class QueryAttention(Attention):
    """Cross-attention from a few queries to many tokens, with the key and value projections
    *absorbed* into the queries (the tokens are never projected).

    ``forward(q (B, M, C), x (B, N, C)) → (B, M, C)`` is equivalent to
    ``nn.MultiheadAttention(C, heads, batch_first=True)(q, x, x, need_weights=False)[0]`` with the
    same ``in_proj_weight``/``in_proj_bias``/``out_proj``. Per head h, with W_q, W_k, W_v its rows:
    scores = ((q W_qᵀ + b_q) W_k / √d_h) xᵀ (the key bias is constant over tokens and cancels in the
    softmax), out = softmax(scores) x W_vᵀ + b_v (the weights sum to 1). That costs ~2·M·h·N·C
    multiply-adds instead of 2·N·C² for projecting N tokens: 64× less for one query at C = 768, h = 12.
    """

    def forward(self, q: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        B, M, C = q.shape
        h, dh = self.heads, C // self.heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, _, b_v = self.in_proj_bias.chunk(3)
        qh = F.linear(q, w_q, b_q).view(B, M, h, dh)  # (B, M, h, dh)
        q_abs = torch.einsum("bmhd,hdc->bhmc", qh, w_k.view(h, dh, C)) / math.sqrt(dh)
        scores = torch.einsum("bhmc,bnc->bhmn", q_abs, x)
        low = scores.dtype in (torch.float16, torch.bfloat16)
        attn = torch.softmax(scores.float() if low else scores, dim=-1).to(x.dtype)
        ctx = torch.einsum("bhmn,bnc->bhmc", attn, x)  # (B, h, M, C): P·x before projecting
        out = torch.einsum("bhmc,hdc->bmhd", ctx, w_v.view(h, dh, C)) + b_v.view(h, dh)
        return self.out_proj(out.reshape(B, M, C))


class MLP(nn.Module):
    """CLIP's feed-forward block: ``c_fc`` → activation → ``c_proj``."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU, dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.gelu = act()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.drop(self.gelu(self.c_fc(x))))


class LocalTemporalMHRA(nn.Module):
    """A local temporal relation aggregator in the spirit of UniFormerV2's LT_MHRA, as a residual
    branch — the ``tiny`` backbone's (``artlib.models.uniformerv2`` has the official one).

    ``LT_MHRA(Norm(X)) = U · A(V · Norm(X))`` where V projects C → C/ratio, A is a learnable
    per-channel affinity over a local temporal tube t×1×1 (a depthwise temporal convolution of
    ``kernel`` frames) and U projects back; U starts at zero, so the branch starts as the identity of
    the block it sits in (the image ViT). Input and output (B, T, N, C) (tokens of one spatial place
    across time are mixed, never across space).
    """

    def __init__(self, dim: int, ratio: float = 1.5, kernel: int = 3):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel: expected an odd temporal kernel, got {kernel}")
        hidden = max(1, int(dim / ratio))
        self.norm = LayerNorm(dim)
        self.down = nn.Linear(dim, hidden)  # V
        self.affinity = nn.Parameter(torch.zeros(kernel, hidden))  # A: (k, C') tap weights
        self.affinity_bias = nn.Parameter(torch.zeros(hidden))
        self.up = nn.Linear(hidden, dim)  # U, zero-initialised
        with torch.no_grad():
            nn.init.trunc_normal_(self.affinity, std=0.02)
            self.affinity[kernel // 2] += 1.0  # start close to "no temporal mixing" inside
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.down(self.norm(x))
        y = temporal_conv(y, self.affinity.to(y.dtype), self.affinity_bias.to(y.dtype))
        return self.up(y)


class ResidualAttentionBlock(nn.Module):
    """The ``tiny`` backbone's block: CLIP's pre-norm ViT block (``ln_1``, ``attn``, ``ln_2``,
    ``mlp``) with a local temporal MHRA before the spatial attention:

        X^T = LT_MHRA(Norm(X)) + X        (patch tokens only; class tokens pass)
        X^S = GS_MHSA(Norm(X^T)) + X^T    (CLIP's attention, within each frame)
        X^L = FFN(Norm(X^S)) + X^S

    ``forward(x (B·T, N, C), T)``. With ``local=False`` it is exactly CLIP's block.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        act: type[nn.Module] = nn.GELU,
        local: bool = True,
        local_ratio: float = 1.5,
        local_kernel: int = 3,
    ):
        super().__init__()
        self.ln_1 = LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln_2 = LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act)
        self.lmhra = LocalTemporalMHRA(dim, local_ratio, local_kernel) if local else None

    def forward(self, x: Tensor, T: int) -> Tensor:
        if self.lmhra is not None:
            BT, N, C = x.shape
            patches = x[:, 1:].reshape(BT // T, T, N - 1, C)
            delta = self.lmhra(patches).reshape(BT, N - 1, C)
            x = torch.cat([x[:, :1], x[:, 1:] + delta], dim=1)
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))
