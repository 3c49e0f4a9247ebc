"""A small video transformer for CPU runs and tests.

Legend: B videos, T frames, p patch size, L = (H/p)·(W/p) tokens per frame, C width.

    video (B,T,3,H,W) -> patch conv -> + class token, + positional embedding
      -> ``depth`` blocks: temporal mixing (depthwise kernel-3 conv over T, per token place)
                           -> attention within each frame -> MLP
      -> LayerNorm -> tokens (B,T,L,C); cls = class tokens averaged over T
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from artlib.data.dataset import CLIP_MEAN, CLIP_STD
from artlib.models._layers import LayerNorm, ResidualAttentionBlock, VideoBackbone, init_args


def _check_video(video: Tensor, in_chans: int, multiple: int) -> None:
    if video.dim() != 5 or video.shape[2] != in_chans:
        raise ValueError(f"video: expected (B, T, {in_chans}, H, W), got {tuple(video.shape)}")
    H, W = video.shape[-2:]
    if H % multiple or W % multiple:
        raise ValueError(f"video: H×W = {H}×{W} must be multiples of {multiple} (the patch size)")


def _resize_grid(pos: Tensor, h: int, w: int) -> Tensor:
    """A square (g·g, C) positional grid bilinearly resized to (h·w, C); as it is if already h×w."""
    g = int(math.isqrt(pos.shape[0]))
    if (h, w) == (g, g):
        return pos
    grid = rearrange(pos, "(h w) c -> 1 c h w", h=g, w=g)
    grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    return rearrange(grid, "1 c h w -> (h w) c")


class _FrameTokens(VideoBackbone):
    """What both tiny backbones share: L = (H/p)·(W/p) tokens per frame, T' = T."""

    patch_size: int
    img_size: int

    def num_tokens(self, H: int | None = None, W: int | None = None) -> int:
        H = H or self.img_size
        W = W or H
        return (H // self.patch_size) * (W // self.patch_size)


class TinyVideoBackbone(_FrameTokens):
    """Frame-wise ViT blocks with a cheap temporal mixing branch (UniFormerV2's local temporal
    MHRA); the same interface as the big backbones.

    Args:
        in_chans: input channels. width: C. depth: blocks. patch_size: p. img_size: the size the
        positional embedding is made for (other sizes interpolate it). heads, mlp_ratio: attention
        heads and MLP width ratio. temporal_kernel: frames mixed by the temporal branch.

    ``forward(video (B,T,in_chans,H,W)) → (tokens (B,T,L,C), cls (B,C))``. Default size (C = 64,
    3 blocks, p = 8, 0.2 M parameters): forward + backward of B = 8, T = 8 at 64×64 is 3.0 GFLOP.
    """

    def __init__(
        self,
        in_chans: int = 3,
        width: int = 64,
        depth: int = 3,
        patch_size: int = 8,
        img_size: int = 64,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        temporal_kernel: int = 3,
    ):
        super().__init__()
        self.init_kwargs = init_args(locals())
        if img_size % patch_size:
            raise ValueError(f"img_size: {img_size} is not a multiple of patch_size = {patch_size}")
        self.in_chans, self.patch_size, self.img_size = in_chans, patch_size, img_size
        self.out_dim = width
        self.mean, self.std = CLIP_MEAN, CLIP_STD  # what the packaged weights were trained with
        grid = img_size // patch_size
        self.conv1 = nn.Conv2d(in_chans, width, patch_size, stride=patch_size)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) * 0.02)
        self.ln_pre = LayerNorm(width)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(
                width,
                heads,
                mlp_ratio,
                nn.GELU,
                local=True,
                local_ratio=2.0,
                local_kernel=temporal_kernel,
            )
            for _ in range(depth)
        )
        self.ln_post = LayerNorm(width)

    def _pos_embed(self, h: int, w: int) -> Tensor:
        pos = self.positional_embedding  # the class token's row, then the grid
        return torch.cat([pos[:1], _resize_grid(pos[1:], h, w)], dim=0)

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor]:
        _check_video(video, self.in_chans, self.patch_size)
        B, T = video.shape[:2]
        x = self.frame_features(rearrange(video, "b t c h w -> (b t) c h w"))
        return self.from_frame_features(rearrange(x, "(b t) l c -> b t l c", b=B, t=T))

    def frame_features(self, frames: Tensor) -> Tensor:
        """The part of ``forward`` that sees one frame at a time: frames (N,in_chans,H,W) ->
        (N,1+L,C) (patch embedding, class token, positional embedding, LayerNorm).
        ``forward(video)`` = ``from_frame_features(frame_features(frames of video) as (B,T,1+L,C))``."""
        _check_video(frames[:, None], self.in_chans, self.patch_size)
        x = self.conv1(frames)
        h, w = x.shape[-2:]
        x = rearrange(x, "n c h w -> n (h w) c")
        cls_tok = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return self.ln_pre(torch.cat([cls_tok, x], dim=1) + self._pos_embed(h, w).to(x.dtype))

    def from_frame_features(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """The rest of ``forward``: (B,T,1+L,C) -> (tokens (B,T,L,C), cls (B,C))."""
        B, T = feats.shape[:2]
        x = rearrange(feats, "b t l c -> (b t) l c")
        for blk in self.blocks:
            x = blk(x, T)
        x = rearrange(self.ln_post(x), "(b t) l c -> b t l c", b=B, t=T)
        return x[:, :, 1:], x[:, :, 0].mean(1)


class TinyConvVideoBackbone(_FrameTokens):
    """A small 2D+3D CNN with the backbone interface, for CPU runs on small sets.

    Legend as above; p = 8 (three stride-2 stages), L = (H/8)·(W/8).

        video (B,T,3,H,W) -> per frame: 3×3 convs (BatchNorm, ReLU), strides 2, 2, 1, 2 -> (B·T,C,H/8,W/8)
          -> ``temporal_layers`` residual 3×3×3 convs over (T, H/8, W/8)
          -> cls = features averaged over T and L (global average pooling)
          -> tokens (B,T,L,C) = features + a learned positional embedding (L,C)

    Args:
        in_chans: input channels. width: C. img_size: the size the positional embedding is made for
        (other multiples of 8 resize it). temporal_layers: the 3×3×3 residual blocks.

    Default size (C = 64): 0.37 M parameters. Unlike the ViT (``TinyVideoBackbone``), it learns the
    built-in synthetic set from scratch (0.94 val Top-1 after 60 epochs with a linear head; see
    docs/models.md).
    """

    patch_size = 8

    def __init__(
        self, in_chans: int = 3, width: int = 64, img_size: int = 64, temporal_layers: int = 3
    ):
        super().__init__()
        self.init_kwargs = init_args(locals())
        self.in_chans, self.img_size, self.out_dim = in_chans, img_size, width
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        c1, c2 = max(width // 4, 8), max(width // 2, 8)

        def block(ci, co, stride):
            return [nn.Conv2d(ci, co, 3, stride, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU()]

        self.frame = nn.Sequential(
            *block(in_chans, c1, 2), *block(c1, c2, 2), *block(c2, c2, 1), *block(c2, width, 2)
        )
        self.temporal = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(width, width, 3, padding=1, bias=False), nn.BatchNorm3d(width), nn.ReLU()
            )
            for _ in range(temporal_layers)
        )
        grid = img_size // 8
        # where each token is: attention over tokens (ART's region queries) is otherwise blind to it
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid, width) * 0.02)

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor]:
        _check_video(video, self.in_chans, self.patch_size)
        B, T = video.shape[:2]
        x = self.frame_features(rearrange(video, "b t c h w -> (b t) c h w"))
        return self.from_frame_features(rearrange(x, "(b t) c h w -> b t c h w", b=B, t=T))

    def frame_features(self, frames: Tensor) -> Tensor:
        """The part of ``forward`` that sees one frame at a time (in eval mode: BatchNorm then
        uses its running statistics): frames (N,in_chans,H,W) -> (N,C,H/8,W/8).
        ``forward(video)`` = ``from_frame_features(frame_features(frames of video) as (B,T,C,h,w))``."""
        _check_video(frames[:, None], self.in_chans, self.patch_size)
        return self.frame(frames)

    def from_frame_features(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """The rest of ``forward``: (B,T,C,h,w) -> (tokens (B,T,L,C), cls (B,C))."""
        x = rearrange(feats, "b t c h w -> b c t h w")
        for blk in self.temporal:
            x = x + blk(x)
        cls = x.mean(dim=(2, 3, 4))
        h, w = x.shape[-2:]
        pos = _resize_grid(self.positional_embedding, h, w).to(x.dtype)
        return rearrange(x, "b c t h w -> b t (h w) c") + pos, cls

    def windows_from_frame_features(self, feats: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """``from_frame_features`` of many overlapping windows at once, in eval mode, each value
        that windows share computed once.

        feats (F,C,h,w): the frame features of F distinct frames; index (B,T) int: window b's t-th
        frame is ``feats[index[b, t]]``. Returns (tokens (B,T,L,C), cls (B,C)) equal to
        ``from_frame_features(feats[index])`` up to float rounding.

        A temporal layer's output at window position t depends on the window's frames t - l..t + l
        (l: the layer's depth) and on the zero padding beyond the window's ends when that range
        reaches past them, so windows that share those frames at the same distance from their ends
        share the value. Each 3×3×3 convolution is applied as three 3×3 ones (one per temporal tap,
        BatchNorm folded in), once per distinct input value, and summed per output value: for
        8-frame windows every 2 sampled frames, 12 instead of 24 convolution units per window.
        """
        if self.training:
            raise RuntimeError("windows_from_frame_features: the backbone must be in eval mode")
        if feats.dim() != 4 or feats.shape[1] != self.out_dim or index.dim() != 2:
            raise ValueError(
                f"feats, index: expected (F, {self.out_dim}, h, w) and (B, T), got "
                f"{tuple(feats.shape)} and {tuple(index.shape)}"
            )
        B, T = index.shape
        _, C, h, w = feats.shape
        idx = index.tolist()
        x = feats.permute(0, 2, 3, 1).contiguous()  # (n, h, w, C): one row per distinct value
        rows = idx  # (b, t) -> its row of x
        for depth, blk in enumerate(self.temporal, start=1):
            conv, bn = blk[0], blk[1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = (bn.bias - bn.running_mean * scale).to(x.dtype)
            weight = (conv.weight * scale[:, None, None, None, None]).to(x.dtype)
            # (3C, C, 3, 3): tap j multiplies the input at t + j - 1
            weight = weight.permute(2, 0, 1, 3, 4).reshape(3 * C, C, 3, 3)
            taps = F.conv2d(x.permute(0, 3, 1, 2), weight, padding=1)  # channels-last in and out
            taps = taps.permute(0, 2, 3, 1).unflatten(-1, (3, C))  # (n, h, w, 3, C)
            keys: dict = {}  # (frames t-depth..t+depth within the window, t's place) -> new row
            gather: list[list[int]] = [[], [], [], []]  # per new row: taps 0, 1, 2, residual
            new_rows = []
            for b, window in enumerate(idx):
                out = []
                for t in range(T):
                    lo = max(0, t - depth)
                    key = (tuple(window[lo : t + depth + 1]), t - lo)
                    r = keys.get(key)
                    if r is None:
                        r = keys[key] = len(keys)
                        for j in range(3):
                            s = t + j - 1
                            gather[j].append(rows[b][s] if 0 <= s < T else -1)
                        gather[3].append(rows[b][t])
                    out.append(r)
                new_rows.append(out)
            g = [torch.tensor(v, dtype=torch.long, device=x.device) for v in gather]
            y = taps[..., 1, :].index_select(0, g[1])
            for j in (0, 2):  # the taps that reach past the window's ends are left out
                has = (g[j] >= 0).nonzero()[:, 0]
                y.index_add_(0, has, taps[..., j, :].index_select(0, g[j][has]))
            x = y.add_(bias).relu_() + x.index_select(0, g[3])
            rows = new_rows
        flat = torch.tensor(rows, dtype=torch.long, device=x.device).flatten()
        out = x.index_select(0, flat).view(B, T, h * w, C)
        pos = _resize_grid(self.positional_embedding, h, w).to(x.dtype)
        return out + pos, out.mean(dim=(1, 2))
