"""UniFormerV2 (Li et al., ICCV 2023), the official architecture: a CLIP image ViT armed with
UniFormer's local and global relation aggregators — the backbone of the ART paper's transformer
results, which start from UniFormerV2 pretrained on Kinetics.

Module for module and parameter for parameter this is OpenGVLab's ``VisionTransformer``
(UniFormerV2 repository, ``slowfast/models/uniformerv2_model.py``), so its released checkpoints load
as they are (``artlib.models.uniformerv2_weights.create_uniformerv2`` reads them, and mmaction2's
and CLIP's); it is
written channels-last, with einops and SDPA, and gives the same numbers in float32.

Legend: B videos, T frames in, T' token frames (T, or ⌈T/2⌉ with temporal downsampling), H×W input,
p patch size, h×w = (H/p)×(W/p) grid, L = h·w patch tokens, N = 1 + L with the class token, C width,
C' = int(C // dw_reduction) the local MHRA width, G global UniBlocks, N_cls classes.

    video (B,T,3,H,W)
      -> conv1: Conv3d 1×p×p (stride 1×p×p), or 3×p×p with temporal stride 2     -> (B,C,T',h,w)
      -> + class_embedding (one token per frame), + positional_embedding, ln_pre   -> X (B·T',N,C)
      -> transformer.resblocks.i, the Local UniBlock (paper Sec. 3.2):
             X = X + LMHRA₁(X)           patch tokens, mixed along time only     (lmhra1, optional)
             X = X + MHSA(ln_1(X))       CLIP's spatial attention within each frame
             X = X + LMHRA₂(X)           (lmhra2, "double_lmhra")
             X = X + FFN(ln_2(X))
         with LMHRA(X) = U·A(V·BN(X)): BatchNorm, 1×1×1 conv C→C', depthwise k×1×1 conv over time,
         1×1×1 conv C'→C (zero-initialised)
      -> after block return_list[j], the Global UniBlock j (transformer.dpe.j, transformer.dec.j):
             X^C = X + DPE_j(X)          patch tokens; DPE a depthwise 3×3×3 conv over T'×h×w
             q   = q + C_MHRA(ln_1(q), ln_3(X^C))   one query over all T'·N tokens of the clip
             q   = q + FFN(ln_2(q))
         q starts as transformer.temporal_cls_token and passes from one global block to the next
      -> fusion: w = σ(transformer.balance) (per channel), F^C = mean over T' of the class tokens,
             cls = (1 − w)·q + w·F^C                                          (q alone if frozen)
      -> classifier transformer.proj = LayerNorm → Dropout → Linear C→N_cls: ``classify(cls)``

``forward`` returns tokens (B,T',L,C) = the last block's patch tokens (there is no ``ln_post`` in
UniFormerV2) and cls (B,C) = the fused feature that the official model feeds to ``proj``.

Initial values (the official ones): the global blocks' attention output projection and FFN output
projection, the local MHRAs' last conv and ``temporal_cls_token`` start at zero, ``balance`` at 0
(w = 0.5). So at step 0, loaded from a CLIP image tower (patch conv inflated into the centre tap),
every token is CLIP's block output for its frame (for frame 2t' with temporal downsampling), and
cls = 0.5·F^C.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from artlib.data.dataset import CLIP_MEAN, CLIP_STD
from artlib.models._layers import (
    MLP,
    Attention,
    LayerNorm,
    QueryAttention,
    QuickGELU,
    VideoBackbone,
    drop_path,
    init_args,
    temporal_conv,
)

# what the official UniFormerV2 (SlowFast and mmaction2 configs) normalise video with
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)

# The presets: CLIP's image towers, with the global blocks on the last 4 layers as the official
# uniformerv2_b16 / uniformerv2_l14 builders do.
CONFIGS = {
    "b16": dict(clip_name="ViT-B-16", width=768, layers=12, heads=12, patch_size=16),
    "l14": dict(clip_name="ViT-L-14", width=1024, layers=24, heads=16, patch_size=14),
}


def is_clip_key(key: str) -> bool:
    """Parameters that come from the image ViT (what ``frozen`` freezes and a CLIP checkpoint
    loads); every other key is a UniFormerV2 video part."""
    if key.startswith(("conv1.", "class_embedding", "positional_embedding", "ln_pre.")):
        return True
    parts = key.split(".")
    return key.startswith("transformer.resblocks.") and not parts[3].startswith("lmhra")


class _TokenBatchNorm(nn.BatchNorm3d):
    """``nn.BatchNorm3d`` (same parameters, buffers and statistics) applied to channels-last tokens
    (M, C): BatchNorm3d over (B, C, T, h, w) normalises each channel over B·T·h·w values, which is
    this over M = B·T·L rows."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2:
            raise ValueError(f"expected (M, C) tokens, got {tuple(input.shape)}")


class LocalMHRA(nn.Module):
    """UniFormerV2's local temporal relation aggregator, laid out as the official ``Local_MHRA``:
    ``pos_embed`` = BatchNorm3d(C) → Conv3d 1×1×1 C→C' → depthwise Conv3d k×1×1 (over time) →
    Conv3d 1×1×1 C'→C, the last one zero-initialised.

    ``forward(x (B, T, L, C)) → (B, T, L, C)``, the branch only (the caller adds the residual).
    Equivalent to ``pos_embed(rearrange(x, "b t l c -> b c t l"))`` on a (B, C, T, h, w) view, run
    channels-last (the 1×1×1 convs as linears, the temporal conv as shifted sums).
    """

    def __init__(self, dim: int, dw_reduction: float = 1.5, kernel: int = 3):
        super().__init__()
        if kernel < 1 or kernel % 2 != 1:
            raise ValueError(f"kernel: expected an odd temporal kernel, got {kernel}")
        hidden = int(dim // dw_reduction)
        if hidden < 1:
            raise ValueError(f"dw_reduction: {dw_reduction} leaves no channels of width {dim}")
        self.pos_embed = nn.Sequential(
            _TokenBatchNorm(dim),
            nn.Conv3d(dim, hidden, 1),  # V
            nn.Conv3d(hidden, hidden, (kernel, 1, 1), padding=(kernel // 2, 0, 0), groups=hidden),
            nn.Conv3d(hidden, dim, 1),  # U
        )
        nn.init.zeros_(self.pos_embed[3].weight)
        nn.init.zeros_(self.pos_embed[3].bias)

    def forward(self, x: Tensor) -> Tensor:
        bn, down, tconv, up = self.pos_embed
        y = bn(x.reshape(-1, x.shape[-1])).view(x.shape)
        y = F.linear(y, down.weight.flatten(1), down.bias)
        y = temporal_conv(y, rearrange(tconv.weight, "c 1 k 1 1 -> k c"), tconv.bias)  # A
        return F.linear(y, up.weight.flatten(1), up.bias)


class LocalUniBlock(nn.Module):
    """CLIP's pre-norm ViT block (``ln_1``, ``attn``, ``ln_2``, ``mlp``) with the official
    UniFormerV2 local MHRA before the attention (``lmhra1``) and, with ``double_lmhra``, before
    the FFN (``lmhra2``); see the module docstring. ``local=0`` is exactly CLIP's block.

    ``forward(x (B·T, N, C), T) → (B·T, N, C)``; class tokens never enter the local MHRA.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        act: type[nn.Module] = QuickGELU,
        local: int = 0,
        dw_reduction: float = 1.5,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if local not in (0, 1, 2):
            raise ValueError(f"local: expected 0, 1 or 2 local MHRAs, got {local}")
        self.drop_path = drop_path
        if local >= 1:
            self.lmhra1 = LocalMHRA(dim, dw_reduction)
        if local == 2:
            self.lmhra2 = LocalMHRA(dim, dw_reduction)
        self.attn = Attention(dim, heads)
        self.ln_1 = LayerNorm(dim)
        self.mlp = MLP(dim, dim * 4, act)
        self.ln_2 = LayerNorm(dim)

    def _local(self, x: Tensor, lmhra: LocalMHRA, T: int) -> Tensor:
        patches = rearrange(x[:, 1:], "(b t) l c -> b t l c", t=T)
        delta = drop_path(lmhra(patches), self.drop_path, self.training)
        return torch.cat([x[:, :1], x[:, 1:] + rearrange(delta, "b t l c -> (b t) l c")], dim=1)

    def forward(self, x: Tensor, T: int) -> Tensor:
        p, train = self.drop_path, self.training
        if hasattr(self, "lmhra1"):
            x = self._local(x, self.lmhra1, T)  # X^T = X + LT_MHRA(X)
        x = x + drop_path(self.attn(self.ln_1(x)), p, train)  # X^S = X^T + GS_MHSA(Norm(X^T))
        if hasattr(self, "lmhra2"):
            x = self._local(x, self.lmhra2, T)
        return x + drop_path(self.mlp(self.ln_2(x)), p, train)  # X^L = X^S + FFN(Norm(X^S))


class GlobalUniBlock(nn.Module):
    """UniFormerV2's global UniBlock after the DPE (the official ``Extractor``): one query
    cross-attends to every token of the clip, then an FFN.

    ``forward(q (B, 1, C), x (B, M, C)) → q (B, 1, C)`` with M = T'·N. The cross-attention is
    ``QueryAttention`` (keys and values absorbed into the query: the M tokens are never projected),
    equivalent to the official ``q·kᵀ/√d_h`` → softmax → ``·v`` → ``out_proj`` on the same
    ``in_proj_weight``/``in_proj_bias``; ``attn.out_proj`` and ``mlp.c_proj`` start at zero.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_factor: float = 4.0,
        dropout: float = 0.5,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.drop_path = drop_path
        self.attn = QueryAttention(dim, heads)
        self.ln_1 = LayerNorm(dim)
        self.mlp = MLP(dim, round(mlp_factor * dim), QuickGELU, dropout)
        self.ln_2 = LayerNorm(dim)
        self.ln_3 = LayerNorm(dim)
        nn.init.xavier_uniform_(self.attn.in_proj_weight)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)
        nn.init.xavier_uniform_(self.mlp.c_fc.weight)
        nn.init.zeros_(self.mlp.c_proj.weight)
        nn.init.zeros_(self.mlp.c_proj.bias)

    def forward(self, q: Tensor, x: Tensor) -> Tensor:
        p, train = self.drop_path, self.training
        q = q + drop_path(self.attn(self.ln_1(q), self.ln_3(x)), p, train)  # C_MHRA
        return q + drop_path(self.mlp(self.ln_2(q)), p, train)


def _linspace(end: float, n: int) -> list[float]:
    """``torch.linspace(0, end, n).tolist()`` in Python (also works under a meta device)."""
    return [end * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


class UniTransformer(nn.Module):
    """The official ``Transformer``: the Local UniBlocks ``resblocks``, the global branch
    (``temporal_cls_token``, ``dpe``, ``dec``), the fusion weight ``balance`` and the classifier
    ``proj``. Built by :class:`UniFormerV2`, which runs it."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        act: type[nn.Module],
        local: int,
        dw_reduction: float,
        return_list: Sequence[int],
        n_head: int,
        mlp_factor: float,
        mlp_dropout: Sequence[float],
        cls_dropout: float,
        num_classes: int,
        frozen: bool,
        backbone_drop_path_rate: float,
        drop_path_rate: float,
    ):
        super().__init__()
        self.return_list = list(return_list)
        b_dpr = _linspace(backbone_drop_path_rate, layers)
        self.resblocks = nn.ModuleList(
            LocalUniBlock(width, heads, act, local, dw_reduction, b_dpr[i]) for i in range(layers)
        )
        G = len(self.return_list)
        self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.dpe = nn.ModuleList(
            nn.Conv3d(width, width, 3, padding=1, groups=width) for _ in range(G)
        )
        for conv in self.dpe:
            nn.init.zeros_(conv.bias)
        dpr = _linspace(drop_path_rate, G)
        self.dec = nn.ModuleList(
            GlobalUniBlock(width, n_head, mlp_factor, mlp_dropout[j], dpr[j]) for j in range(G)
        )
        self.proj = nn.Sequential(
            nn.LayerNorm(width), nn.Dropout(cls_dropout), nn.Linear(width, num_classes)
        )
        self.frozen = frozen
        if not frozen:
            self.balance = nn.Parameter(torch.zeros(width))


class UniFormerV2(VideoBackbone):
    """UniFormerV2 video backbone, the official architecture (see the module docstring).

    Args:
        width, layers, heads, patch_size, img_size: the CLIP ViT (B/16: 768, 12, 12, 16, 224;
            L/14: 1024, 24, 16, 14, 224). Small values build a test model.
        temporal_downsample: conv1 is k×p×p with temporal stride 2 (T' = ⌈T/2⌉, the official
            Something-Something models); else 1×p×p (T' = T, the Kinetics models).
        kernel_size: k of conv1 with temporal downsampling (official 3).
        no_lmhra: no local MHRA (the Kinetics models); else ``lmhra1`` in every block, and
            ``lmhra2`` too with ``double_lmhra`` (the Something-Something models).
        dw_reduction: C' = int(C // dw_reduction) in the local MHRA (official 1.5).
        return_list: the blocks whose outputs feed the global UniBlocks (default: the last
            ``n_layers`` blocks, official [8, 9, 10, 11] for B/16 and [20, 21, 22, 23] for L/14).
        n_layers: number of global UniBlocks when ``return_list`` is not given (official 4).
        n_head: heads of the global blocks (default ``heads``); mlp_factor: their FFN ratio.
        mlp_dropout: dropout inside the global blocks' FFN (a float or one per block; official 0.5).
        cls_dropout, num_classes: the official classifier ``transformer.proj`` (Kinetics-400: 400).
        frozen: the official "frozen" variant: no ``balance`` (cls = the query alone) and the CLIP
            parts (conv1, embeddings, ln_pre, resblocks) do not learn.
        backbone_drop_path_rate, drop_path_rate: stochastic depth, rising linearly over the blocks
            (resp. the global blocks) to this rate (per frame, resp. per video). Official 0.
        quick_gelu: QuickGELU in the CLIP blocks (OpenAI CLIP, every official checkpoint) or
            GELU (LAION/DataComp open_clip weights). The global blocks always use QuickGELU.
        grad_checkpointing: recompute blocks in the backward pass: True for all, an int n for the
            first n (the official ``checkpoint_num``).

    ``forward(video (B,T,3,H,W)) → (tokens (B,T',L,C), cls (B,C))``, T' = ``frames_out(T)``;
    ``classify(cls) → (B, N_cls)``. Other H×W than ``img_size`` resize the positional embedding.
    ``mean``/``std``: the input normalisation the weights expect (CLIP's for random or CLIP
    weights, (0.45, 0.225) for the official UniFormerV2 checkpoints).
    """

    def __init__(
        self,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        patch_size: int = 16,
        img_size: int = 224,
        temporal_downsample: bool = False,
        kernel_size: int = 3,
        no_lmhra: bool = True,
        double_lmhra: bool = False,
        dw_reduction: float = 1.5,
        return_list: Sequence[int] | None = None,
        n_layers: int = 4,
        n_head: int | None = None,
        mlp_factor: float = 4.0,
        mlp_dropout: float | Sequence[float] = 0.5,
        cls_dropout: float = 0.5,
        num_classes: int = 400,
        frozen: bool = False,
        backbone_drop_path_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        quick_gelu: bool = True,
        grad_checkpointing: bool | int = False,
    ):
        super().__init__()
        self.init_kwargs = init_args(locals())
        if return_list is None:
            if not 0 <= n_layers <= layers:
                raise ValueError(f"n_layers: expected 0..layers = {layers}, got {n_layers}")
            return_list = range(layers - n_layers, layers)
        return_list = [int(i) for i in return_list]
        if sorted(set(return_list)) != return_list or any(not 0 <= i < layers for i in return_list):
            raise ValueError(
                f"return_list: expected increasing block indices in 0..{layers - 1}, got "
                f"{return_list}"
            )
        if isinstance(mlp_dropout, (int, float)):
            mlp_dropout = [float(mlp_dropout)] * len(return_list)
        if len(mlp_dropout) != len(return_list):
            raise ValueError(
                f"mlp_dropout: expected one rate per global block ({len(return_list)}), got "
                f"{list(mlp_dropout)}"
            )
        if temporal_downsample and (kernel_size < 1 or kernel_size % 2 != 1):
            raise ValueError(f"kernel_size: expected an odd number >= 1, got {kernel_size}")
        if img_size % patch_size:
            raise ValueError(f"img_size: {img_size} is not a multiple of patch_size = {patch_size}")
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        self.out_dim = self.width = width
        self.patch_size, self.img_size = patch_size, img_size
        self.temporal_downsample = temporal_downsample
        self.grad_checkpointing = grad_checkpointing
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        self.pretrained_report: dict | None = None  # set by from_pretrained: what was loaded
        grid = img_size // patch_size

        k = kernel_size if temporal_downsample else 1
        self.conv1 = nn.Conv3d(
            3,
            width,
            (k, patch_size, patch_size),
            stride=(2 if temporal_downsample else 1, patch_size, patch_size),
            padding=(k // 2, 0, 0),
            bias=False,
        )
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = UniTransformer(
            width,
            layers,
            heads,
            QuickGELU if quick_gelu else nn.GELU,
            0 if no_lmhra else (2 if double_lmhra else 1),
            dw_reduction,
            return_list,
            n_head or heads,
            mlp_factor,
            mlp_dropout,
            cls_dropout,
            num_classes,
            frozen,
            backbone_drop_path_rate,
            drop_path_rate,
        )
        if frozen:
            for p in self.clip_parameters():
                p.requires_grad_(False)

    # The official configuration, as read back from the modules --------------------------------

    @property
    def config(self) -> dict:
        """The constructor arguments that shape the parameters (what a checkpoint must match)."""
        t = self.transformer
        blk = t.resblocks[0]
        local = 2 if hasattr(blk, "lmhra2") else int(hasattr(blk, "lmhra1"))
        cfg = dict(
            width=self.width,
            layers=len(t.resblocks),
            patch_size=self.patch_size,
            temporal_downsample=self.temporal_downsample,
            no_lmhra=local == 0,
            double_lmhra=local == 2,
            n_layers=len(t.dec),
            num_classes=t.proj[2].out_features,
            frozen=t.frozen,
        )
        if self.temporal_downsample:
            cfg["kernel_size"] = self.conv1.kernel_size[0]
        if local:
            cfg["lmhra_width"] = blk.lmhra1.pos_embed[1].out_channels
        if len(t.dec):
            cfg["mlp_factor"] = t.dec[0].mlp.c_fc.out_features / self.width
        return cfg

    def clip_parameters(self):
        """The parameters that come from the image ViT (what ``frozen`` freezes): those whose
        names pass :func:`is_clip_key`."""
        return (p for name, p in self.named_parameters() if is_clip_key(name))

    @property
    def classifier(self) -> nn.Module:
        """The official classifier ``transformer.proj`` (LayerNorm → Dropout → Linear)."""
        return self.transformer.proj

    def classify(self, cls: Tensor) -> Tensor:
        """(B, C) fused feature → (B, N_cls) logits of the official classifier (with a Kinetics
        checkpoint: Kinetics classes, as released)."""
        return self.transformer.proj(cls)

    def frames_out(self, T: int) -> int:
        """Token frames T' for T input frames (T, or ⌈T/2⌉ with temporal downsampling)."""
        k, s, pad = self.conv1.kernel_size[0], self.conv1.stride[0], self.conv1.padding[0]
        return (T + 2 * pad - k) // s + 1

    def num_tokens(self, H: int | None = None, W: int | None = None) -> int:
        """Tokens per frame L for an H×W input (default ``img_size``)."""
        H = H or self.img_size
        W = W or H
        return (H // self.patch_size) * (W // self.patch_size)

    # Forward -------------------------------------------------------------------------------------

    def _pos_embed(self, h: int, w: int) -> Tensor:
        pos = self.positional_embedding
        g = int(math.isqrt(pos.shape[0] - 1))
        if (h, w) == (g, g):
            return pos
        return resize_positional_embedding(pos, (h, w))

    def _check(self, video: Tensor) -> None:
        if not isinstance(video, Tensor) or video.dim() != 5 or video.shape[2] != 3:
            got = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"video: expected (B, T, 3, H, W), got {got}")
        H, W = video.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(
                f"video: H×W = {H}×{W} must be multiples of patch_size = {self.patch_size}"
            )
        if self.frames_out(video.shape[1]) < 1:
            raise ValueError(f"video: T = {video.shape[1]} frames is too few for conv1")

    def _block(self, i: int, x: Tensor, T: int) -> Tensor:
        blk = self.transformer.resblocks[i]
        n = self.grad_checkpointing
        n = len(self.transformer.resblocks) if n is True else int(n)
        if i < n and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, T, use_reentrant=False)
        return blk(x, T)

    def _global(self, j: int, q: Tensor, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """Global UniBlock j on block output x (B, T', N, C): DPE on the patch tokens, then dec."""
        t = self.transformer
        h, w = grid
        patches = rearrange(x[:, :, 1:], "b t (h w) c -> b c t h w", h=h, w=w)
        pe = rearrange(t.dpe[j](patches), "b c t h w -> b t (h w) c")
        kv = torch.cat([x[:, :, :1], x[:, :, 1:] + pe], dim=2)  # X^C = X^L + DPE(X^L)
        return t.dec[j](q, rearrange(kv, "b t n c -> b (t n) c"))

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor]:
        self._check(video)
        B = video.shape[0]
        x = self.conv1(rearrange(video, "b t c h w -> b c t h w"))  # (B, C, T', h, w)
        T, h, w = x.shape[2:]
        x = rearrange(x, "b c t h w -> (b t) (h w) c")
        cls_tok = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_tok, x], dim=1) + self._pos_embed(h, w).to(x.dtype)
        x = self.ln_pre(x)  # (B·T', N, C)

        t = self.transformer
        q = t.temporal_cls_token.to(x.dtype).expand(B, 1, -1)
        j = 0
        for i in range(len(t.resblocks)):
            x = self._block(i, x, T)
            if j < len(t.return_list) and i == t.return_list[j]:
                q = self._global(j, q, rearrange(x, "(b t) n c -> b t n c", b=B), (h, w))
                j += 1

        x = rearrange(x, "(b t) n c -> b t n c", b=B)
        tokens = x[:, :, 1:]
        if t.frozen:
            return tokens, q[:, 0]
        weight = torch.sigmoid(t.balance).to(x.dtype)
        residual = x[:, :, 0].mean(1)  # F^C: the frames' class tokens, averaged over T'
        return tokens, (1 - weight) * q[:, 0] + weight * residual


def fit_positional_embedding(sd: dict, img_size: int, patch_size: int) -> None:
    """Resize ``sd["positional_embedding"]`` (if any) in place to an img_size/patch_size grid."""
    grid = img_size // patch_size
    pos = sd.get("positional_embedding")
    if pos is not None and pos.shape[0] != grid * grid + 1:
        sd["positional_embedding"] = resize_positional_embedding(pos, (grid, grid))


def resize_positional_embedding(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """(1 + g², C) positional embedding (class token first) → (1 + h·w, C), bicubic on the grid."""
    g = int(math.isqrt(pos.shape[0] - 1))
    if g * g + 1 != pos.shape[0]:
        raise ValueError(f"positional_embedding: {pos.shape[0]} rows is not 1 + a square grid")
    img = rearrange(pos[1:], "(h w) c -> 1 c h w", h=g, w=g).float()
    img = F.interpolate(img, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], rearrange(img.to(pos.dtype), "1 c h w -> (h w) c")], dim=0)
