"""UniFormerV2 (Li et al., ICCV 2023): a CLIP image ViT armed with UniFormer's video relation
aggregators — the backbone of the ART paper's transformer results.

Legend: B videos, T frames, H×W input size, p patch size, h×w = (H/p)×(W/p) grid, L = h·w patch
tokens per frame, N = 1 + L tokens with the class token, C width, q the learnable video query.

    video (B,T,3,H,W)
      -> stem: Conv3d (k_t × p × p), temporal taps zero except the centre = CLIP's patch conv
      -> + class token, + positional embedding, ln_pre
      -> CLIP blocks, each a Local UniBlock (LT_MHRA → spatial MHSA → FFN)          [local]
      -> the last ``global_layers`` blocks each feed a Global UniBlock:                [global]
             X^C = DPE(X^L) + X^L                  (depthwise 3×3×3 conv over T×h×w)
             q   = q + C_MHRA(Norm(q), Norm(X^C))  (one query over all T·N tokens)
             q   = q + FFN(Norm(q))
         the query passes from one Global UniBlock to the next (multi-stage, sequential fusion)
      -> ln_post; tokens (B,T,L,C); frame class tokens averaged over T -> F^C; F^G = ln_post(q)
      -> cls = (1 - α)·F^C + α·F^G                                                     [fusion]

Step 0 is the image model: the stem's extra taps, LT_MHRA's output projection and α start at zero,
and the global branch only writes into ``cls`` through α, so tokens (B,T,L,C) equal CLIP's
per-frame ``ln_post`` tokens and ``cls`` the frame average of CLIP's pooled (pre-projection) feature.
(The paper squashes α with a sigmoid, which cannot start at 0; a raw α from 0 gives the exact
start.)

Parameter names follow open_clip's ``VisionTransformer`` (``conv1``, ``class_embedding``,
``positional_embedding``, ``ln_pre``, ``transformer.resblocks.{i}.{ln_1,attn,ln_2,mlp}``,
``ln_post``), so CLIP checkpoints load directly; the module needs only torch (no open_clip).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from artlib.models._layers import MLP, LayerNorm, QueryAttention, QuickGELU, ResidualAttentionBlock
from artlib.models.checkpoint import load_state_dict_file, resolve_clip_pretrained, strip_prefix

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# open_clip model name and ViT shape of each preset (CLIP's image towers).
CONFIGS = {
    "b16": dict(clip_name="ViT-B-16", width=768, layers=12, heads=12, patch_size=16),
    "l14": dict(clip_name="ViT-L-14", width=1024, layers=24, heads=16, patch_size=14),
}


class GlobalUniBlock(nn.Module):
    """UniFormerV2's global UniBlock: DPE, then a learnable query cross-attends to all T·N tokens.

    ``forward(q (B, 1, C), x (B, T, N, C), grid (h, w)) → q (B, 1, C)``; x is only read.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.dpe = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)  # dynamic position encoding
        nn.init.zeros_(self.dpe.bias)
        self.ln_q = LayerNorm(dim)
        self.ln_kv = LayerNorm(dim)
        self.attn = QueryAttention(dim, heads)
        self.ln_2 = LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), nn.GELU, dropout)

    def forward(self, q: Tensor, x: Tensor, grid: tuple[int, int]) -> Tensor:
        B, T, N, C = x.shape
        h, w = grid
        patches = rearrange(x[:, :, 1:], "b t (h w) c -> b c t h w", h=h, w=w)
        patches = patches + self.dpe(patches)  # X^C = DPE(X^L) + X^L
        kv = torch.cat([x[:, :, :1], rearrange(patches, "b c t h w -> b t (h w) c")], dim=2)
        kv = self.ln_kv(kv.reshape(B, T * N, C))
        q = q + self.attn(self.ln_q(q), kv)  # C_MHRA: one query, all tokens of the clip
        return q + self.mlp(self.ln_2(q))


class UniFormerV2(nn.Module):
    """UniFormerV2 video backbone on a CLIP ViT.

    Args:
        width, layers, heads, patch_size, img_size, mlp_ratio: the image ViT (CLIP ViT-B/16:
            768, 12, 12, 16, 224; ViT-L/14: 1024, 24, 16, 14, 224). Small values build a test model.
        quick_gelu: QuickGELU activation (OpenAI CLIP weights) instead of GELU (LAION/DataComp).
        temporal_kernel: k_t of the 3D stem (1 = CLIP's 2D patch conv).
        temporal_stride: stride of the stem in time (1 keeps T frames; 2 halves them, as
            UniFormerV2's Kinetics models do; ``frames_out(T)`` says what comes out).
        local_layers: which blocks get LT_MHRA (default all), ``local_ratio``/``local_kernel`` its
            bottleneck ratio and temporal tube length.
        global_layers: number of Global UniBlocks, fed by the last ones of the blocks (default
            min(4, layers), as UniFormerV2 does for B/16 and L/14).
        global_dropout: dropout in the Global UniBlocks' FFN.
        grad_checkpointing: recompute each block in backward (saves memory for L/14).

    ``forward(video (B,T,3,H,W)) → (tokens (B,T',L,C), cls (B,C))``, T' = ``frames_out(T)``.
    Input is normalised with CLIP's mean/std (``self.mean``, ``self.std``).
    """

    def __init__(
        self,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        patch_size: int = 16,
        img_size: int = 224,
        mlp_ratio: float = 4.0,
        quick_gelu: bool = False,
        temporal_kernel: int = 3,
        temporal_stride: int = 1,
        local_layers: Sequence[int] | None = None,
        local_ratio: float = 1.5,
        local_kernel: int = 3,
        global_layers: int | None = None,
        global_dropout: float = 0.0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if global_layers is None:
            global_layers = min(4, layers)
        if not 0 <= global_layers <= layers:
            raise ValueError(f"global_layers: expected 0..layers = {layers}, got {global_layers}")
        if temporal_kernel < 1 or temporal_kernel % 2 != 1:
            raise ValueError(f"temporal_kernel: expected an odd number >= 1, got {temporal_kernel}")
        if img_size % patch_size:
            raise ValueError(f"img_size: {img_size} is not a multiple of patch_size = {patch_size}")
        self.out_dim = self.width = width
        self.patch_size, self.img_size = patch_size, img_size
        self.temporal_stride = temporal_stride
        self.grad_checkpointing = grad_checkpointing
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        grid = img_size // patch_size
        local_set = set(range(layers) if local_layers is None else local_layers)
        act = QuickGELU if quick_gelu else nn.GELU

        self.conv1 = nn.Conv3d(
            3,
            width,
            (temporal_kernel, patch_size, patch_size),
            stride=(temporal_stride, patch_size, patch_size),
            padding=(temporal_kernel // 2, 0, 0),
            bias=False,
        )
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualAttentionBlock(
                width, heads, mlp_ratio, act, i in local_set, local_ratio, local_kernel
            )
            for i in range(layers)
        )
        self.ln_post = LayerNorm(width)
        self.global_start = layers - global_layers
        self.global_blocks = nn.ModuleList(
            GlobalUniBlock(width, max(1, width // 64), mlp_ratio, global_dropout)
            for _ in range(global_layers)
        )
        self.video_query = nn.Parameter(torch.zeros(1, 1, width))
        self.fusion_alpha = nn.Parameter(torch.zeros(()))
        self._init_stem()

    @torch.no_grad()
    def _init_stem(self) -> None:
        """Temporal taps other than the centre at zero: the stem starts as the 2D patch conv."""
        w = self.conv1.weight
        k = w.shape[2]
        centre = torch.empty_like(w[:, :, 0])
        nn.init.kaiming_uniform_(centre, a=math.sqrt(5))
        w.zero_()
        w[:, :, k // 2] = centre

    def frames_out(self, T: int) -> int:
        """Frames T' in the output for T input frames."""
        k, s = self.conv1.kernel_size[0], self.temporal_stride
        return (T + 2 * (k // 2) - k) // s + 1

    def num_tokens(self, H: int | None = None, W: int | None = None) -> int:
        """Tokens per frame L for an H×W input (default ``img_size``)."""
        H = H or self.img_size
        W = W or H
        return (H // self.patch_size) * (W // self.patch_size)

    def _pos_embed(self, h: int, w: int) -> Tensor:
        pos = self.positional_embedding
        g = int(math.isqrt(pos.shape[0] - 1))
        if (h, w) == (g, g):
            return pos
        grid = rearrange(pos[1:], "(h w) c -> 1 c h w", h=g, w=g)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], rearrange(grid.to(pos.dtype), "1 c h w -> (h w) c")], dim=0)

    def _check(self, video: Tensor) -> None:
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video: expected (B, T, 3, H, W), got {tuple(video.shape)}")
        H, W = video.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(
                f"video: H×W = {H}×{W} must be multiples of patch_size = {self.patch_size}"
            )

    def _run(self, fn, *args):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor]:
        self._check(video)
        B = video.shape[0]
        x = self.conv1(rearrange(video, "b t c h w -> b c t h w"))  # (B, C, T', h, w)
        T, h, w = x.shape[2:]
        x = rearrange(x, "b c t h w -> (b t) (h w) c")
        cls_tok = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_tok, x], dim=1) + self._pos_embed(h, w).to(x.dtype)
        x = self.ln_pre(x)

        q = self.video_query.to(x.dtype).expand(B, -1, -1)
        for i, blk in enumerate(self.transformer.resblocks):
            x = self._run(blk, x, T)
            j = i - self.global_start
            if j >= 0:  # Global UniBlock j reads block i's output
                q = self._run(self.global_blocks[j], q, x.view(B, T, h * w + 1, -1), (h, w))

        x = self.ln_post(x).view(B, T, h * w + 1, -1)
        tokens = x[:, :, 1:]
        f_c = x[:, :, 0].mean(1)  # image model's clip feature: frame average of pooled features
        if len(self.global_blocks) == 0:
            return tokens, f_c
        f_g = self.ln_post(q[:, 0])
        alpha = self.fusion_alpha.to(f_c.dtype)
        return tokens, f_c + alpha * (f_g - f_c)  # (1 - α)·F^C + α·F^G

    # Checkpoints ---------------------------------------------------------------------------------

    @torch.no_grad()
    def load_clip_state_dict(self, sd: dict[str, Tensor], strict: bool = True) -> dict[str, list]:
        """Load a CLIP image tower's weights (open_clip/OpenAI layout, with or without "visual.").

        The 2D patch conv is inflated into the 3D stem's centre tap (other taps zero); the
        positional embedding is resized if the grid differs; ``proj`` (to CLIP's joint space) is
        not used. With ``strict``, every ViT weight must be present and fit. Returns
        {"missing": [...], "unexpected": [...]} of ViT keys.
        """
        if any(k.startswith("visual.") for k in sd):
            sd = strip_prefix(sd, "visual.")
        sd = dict(sd)
        sd.pop("proj", None)
        if "conv1.weight" in sd and sd["conv1.weight"].dim() == 4:
            w2 = sd["conv1.weight"]
            w3 = torch.zeros_like(self.conv1.weight)
            if w2.shape != w3[:, :, 0].shape:
                raise RuntimeError(
                    f"conv1.weight: checkpoint {tuple(w2.shape)} does not fit this model's patch "
                    f"conv {tuple(w3[:, :, 0].shape)}"
                )
            w3[:, :, w3.shape[2] // 2] = w2
            sd["conv1.weight"] = w3
        if "positional_embedding" in sd:
            pos = sd["positional_embedding"]
            if pos.shape != self.positional_embedding.shape and pos.shape[-1] == self.width:
                g_old = int(math.isqrt(pos.shape[0] - 1))
                g_new = int(math.isqrt(self.positional_embedding.shape[0] - 1))
                grid = rearrange(pos[1:], "(h w) c -> 1 c h w", h=g_old, w=g_old).float()
                grid = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", align_corners=False)
                sd["positional_embedding"] = torch.cat(
                    [pos[:1], rearrange(grid.to(pos.dtype), "1 c h w -> (h w) c")]
                )
        own = self.state_dict()
        vit_keys = [k for k in own if not _is_video_key(k)]
        missing = [k for k in vit_keys if k not in sd]
        unexpected = [k for k in sd if k not in own]
        bad = [k for k in vit_keys if k in sd and sd[k].shape != own[k].shape]
        if strict and (missing or bad):
            raise RuntimeError(
                f"checkpoint does not fit UniFormerV2(width={self.width}, "
                f"layers={len(self.transformer.resblocks)}): missing {missing[:5]}, "
                f"shape mismatch {[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in bad[:3]]}"
            )
        for k in vit_keys:
            if k in sd and k not in bad:
                own[k].copy_(sd[k])
        return {"missing": missing, "unexpected": unexpected}

    @classmethod
    def from_pretrained(
        cls,
        variant: str = "b16",
        pretrained: str | os.PathLike | None = None,
        cache_dir: str | None = None,
        **kwargs,
    ) -> UniFormerV2:
        """A preset ("b16" = CLIP ViT-B/16, "l14" = CLIP ViT-L/14) with CLIP image weights.

        pretrained: None (random ViT weights), an open_clip tag (needs open_clip and the file in
        its local cache, e.g. "openai") or a local checkpoint path (open_clip ``.bin``/
        ``.safetensors``, OpenAI's TorchScript ``.pt``). ``quick_gelu`` defaults to what the tag says,
        True for an OpenAI TorchScript file, else False. Other kwargs go to the constructor.
        """
        if variant not in CONFIGS:
            raise ValueError(f"variant: expected one of {sorted(CONFIGS)}, got {variant!r}")
        cfg = dict(CONFIGS[variant])
        clip_name = cfg.pop("clip_name")
        sd, quick = None, None
        if pretrained is not None:
            resolved = resolve_clip_pretrained(clip_name, pretrained, cache_dir=cache_dir)
            sd, jit = load_state_dict_file(resolved.path)
            quick = bool(resolved.quick_gelu) or jit
        kwargs.setdefault("quick_gelu", bool(quick))
        model = cls(**{**cfg, **kwargs})
        if sd is not None:
            model.load_clip_state_dict(sd, strict=True)
        return model


def _is_video_key(key: str) -> bool:
    """Parameters UniFormerV2 adds to the image ViT (not in a CLIP checkpoint)."""
    return key.startswith(("global_blocks.", "video_query", "fusion_alpha")) or ".lmhra." in key
