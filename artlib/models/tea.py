"""TEA (Li et al., CVPR 2020): ResNet-50 with Temporal Excitation and Aggregation blocks — the
backbone of the ART paper's CNN results.

Legend: B videos, T frames, c channels inside a bottleneck, H×W a feature map, r = 16 the ME
reduction, L = H·W tokens of the last stage, C = 2048 (× width/64).

Every bottleneck (1×1 → 3×3 → 1×1) becomes 1×1 → ME → MTA → 1×1:

* Motion excitation (ME), short-range motion: X^r = BN(conv_red(X)) (c → c/r);
  M(t) = conv_trans(X^r(t+1)) − X^r(t) with conv_trans a 3×3 depthwise conv, M(T) = 0;
  A = 2σ(conv_exp(GAP(M))) − 1 (c/r → c); X^o = X + X ⊙ A. conv_exp starts at zero, so A = 0 and
  ME starts as the identity.
* Multiple temporal aggregation (MTA), long-range: the c channels split into 4 fragments;
  X_o^1 = X^1, X_o^2 = S(T(X^2)), X_o^i = S(T(X^i + X_o^{i−1})) for i = 3, 4 with T a depthwise
  temporal conv (kernel 3, starts as the identity) and S a 3×3 conv; the fragments are concatenated.
  In the stride-2 block of a stage the fragments cannot be summed across sizes, so (as in Res2Net's
  "stage" blocks) X_o^1 is 3×3 average-pooled with stride 2 and each X_o^i = S(T(X^i)).

Parameter names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``downsample``); ``load_imagenet`` maps a torchvision ResNet-50 checkpoint onto it (each MTA spatial
conv takes its diagonal block of the 3×3 conv's weight; BN after MTA is the old ``bn2``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from artlib.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from artlib.models._layers import VideoBackbone, init_args, temporal_conv
from artlib.weights_io import load_state_dict_file


class MotionExcitation(nn.Module):
    """TEA's ME module. ``forward(x (B·T, c, H, W), T) → same shape``."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        mid = max(1, channels // reduction)
        self.conv_red = nn.Conv2d(channels, mid, 1, bias=False)
        self.bn_red = nn.BatchNorm2d(mid)
        self.conv_trans = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.conv_exp = nn.Conv2d(mid, channels, 1)
        self.conv_exp._zero_init = True
        nn.init.zeros_(self.conv_exp.weight)
        nn.init.zeros_(self.conv_exp.bias)

    def forward(self, x: Tensor, T: int) -> Tensor:
        xr = self.bn_red(self.conv_red(x))  # X^r (B·T, c/r, H, W)
        xt = self.conv_trans(xr)
        xr = rearrange(xr, "(b t) c h w -> b t c h w", t=T)
        xt = rearrange(xt, "(b t) c h w -> b t c h w", t=T)
        m = xt[:, 1:] - xr[:, :-1]  # M(t) = conv_trans(X^r(t+1)) - X^r(t), t < T
        m = torch.cat([m, torch.zeros_like(m[:, :1])], dim=1)  # M(T) = 0
        ms = rearrange(m.mean((-2, -1), keepdim=True), "b t c h w -> (b t) c h w")  # GAP
        a = 2 * torch.sigmoid(self.conv_exp(ms)) - 1  # A in [-1, 1]
        return x + x * a


class MultipleTemporalAggregation(nn.Module):
    """TEA's MTA module in place of the bottleneck's 3×3 conv.

    ``forward(x (B·T, c, H, W), T) → (B·T, c, H/stride, W/stride)``.
    """

    def __init__(self, channels: int, stride: int = 1, scales: int = 4):
        super().__init__()
        if channels % scales:
            raise ValueError(f"channels: {channels} is not divisible by scales = {scales}")
        self.scales, self.stride = scales, stride
        q = channels // scales
        # temporal[i]: depthwise kernel-3 taps (3, q, 1, 1); starts as the identity (centre tap 1)
        self.temporal = nn.ParameterList(
            nn.Parameter(torch.zeros(3, q, 1, 1)) for _ in range(scales - 1)
        )
        with torch.no_grad():
            for w in self.temporal:
                w[1] = 1.0
        self.spatial = nn.ModuleList(
            nn.Conv2d(q, q, 3, stride=stride, padding=1, bias=False) for _ in range(scales - 1)
        )
        self.pool = nn.AvgPool2d(3, stride, 1) if stride > 1 else nn.Identity()

    def forward(self, x: Tensor, T: int) -> Tensor:
        parts = x.chunk(self.scales, dim=1)
        outs = [self.pool(parts[0])]  # X_o^1 = X^1
        prev = None
        for i in range(1, self.scales):
            xi = parts[i]
            if prev is not None and self.stride == 1:
                xi = xi + prev  # hierarchical residual: X^i + X_o^{i-1}
            xi = rearrange(xi, "(b t) c h w -> b t c h w", t=T)
            xi = temporal_conv(xi, self.temporal[i - 1].to(xi.dtype))  # Conv_temp
            xi = self.spatial[i - 1](rearrange(xi, "b t c h w -> (b t) c h w"))  # Conv_spa
            outs.append(xi)
            prev = xi
        return torch.cat(outs, dim=1)


class TEABottleneck(nn.Module):
    """ResNet bottleneck with ME + MTA in place of the 3×3 conv (``tea=False``: plain ResNet)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, tea: bool = True, mid: int | None = None
    ):
        super().__init__()
        out = planes * self.expansion
        mid = mid or planes  # inner width (ResNet: planes; Res2Net-50 26w×4s: 1.625·planes)
        self.conv1 = nn.Conv2d(inplanes, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.me = MotionExcitation(mid) if tea else None
        if tea:
            self.conv2 = MultipleTemporalAggregation(mid, stride)
        else:
            self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: Tensor, T: int) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        if self.me is not None:
            y = self.conv2(self.me(y, T), T)
        else:
            y = self.conv2(y)
        y = F.relu(self.bn2(y))
        y = self.bn3(self.conv3(y))
        return F.relu(y + identity)


class _Stage(nn.ModuleList):
    def forward(self, x: Tensor, T: int) -> Tensor:  # type: ignore[override]
        for blk in self:
            x = blk(x, T)
        return x


class TEAResNet50(VideoBackbone):
    """ResNet-50 with TEA blocks; tokens from the last stage.

    Args:
        base_width: channels of the first stage's bottleneck (64 for ResNet-50; small for tests).
        layers: blocks per stage (ResNet-50: 3, 4, 6, 3).
        tea_stages: which of the 4 stages use TEA blocks (default all).
        inner_scale: bottleneck inner width over ResNet's (1.0: torchvision ResNet-50, whose
            ImageNet weights load, 14.5 M parameters since MTA's 3 sub-convs hold 3/16 of a 3×3
            conv's weights; 1.625: the inner width of Res2Net-50 26w×4s that the TEA paper builds
            on, about 24 M parameters).

    ``forward(video (B,T,3,H,W)) → (tokens (B,T,L,C), cls (B,C))`` with L = (H/32)·(W/32),
    C = 32·base_width (2048), cls the average of the tokens over T and L (TSN-style consensus).
    Input is normalised with ImageNet mean/std (``self.mean``, ``self.std``).
    """

    def __init__(
        self,
        base_width: int = 64,
        layers: Sequence[int] = (3, 4, 6, 3),
        tea_stages: Sequence[int] = (0, 1, 2, 3),
        inner_scale: float = 1.0,
    ):
        super().__init__()
        self.init_kwargs = init_args(locals())
        self.img_size = 224  # its ImageNet weights' size (any H×W runs)
        if len(layers) != 4:
            raise ValueError(f"layers: expected 4 stage depths, got {tuple(layers)}")
        if base_width % 4:
            raise ValueError(
                f"base_width: expected a multiple of 4 (MTA splits in 4), got {base_width}"
            )
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = base_width
        for s, n in enumerate(layers):
            planes = base_width * 2**s
            mid = 4 * max(1, round(planes * inner_scale / 4))
            blocks = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(TEABottleneck(inplanes, planes, stride, s in tea_stages, mid))
                inplanes = planes * TEABottleneck.expansion
            setattr(self, f"layer{s + 1}", _Stage(blocks))
        self.out_dim = inplanes
        for m in self.modules():  # torchvision's init; ME's conv_exp stays at zero
            if isinstance(m, nn.Conv2d) and m.groups == 1 and not getattr(m, "_zero_init", False):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def num_tokens(self, H: int = 224, W: int | None = None) -> int:
        """Tokens per frame L of the last stage for an H×W input."""
        W = W or H

        def down(n: int) -> int:
            for _ in range(5):  # conv1, maxpool, layer2, layer3, layer4 halve the size
                n = (n + 1) // 2
            return n

        return down(H) * down(W)

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor]:
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video: expected (B, T, 3, H, W), got {tuple(video.shape)}")
        B, T = video.shape[:2]
        x = rearrange(video, "b t c h w -> (b t) c h w")
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x, T)
        tokens = rearrange(x, "(b t) c h w -> b t (h w) c", b=B)
        return tokens, tokens.mean((1, 2))

    @torch.no_grad()
    def load_imagenet(self, path_or_sd: str | os.PathLike | dict, strict: bool = True) -> dict:
        """Load torchvision ResNet-50 ImageNet weights (a local file or a state dict); ``fc`` is
        dropped. Each TEA block's MTA spatial convs take the diagonal blocks of the old 3×3 conv;
        ME and the temporal taps keep their identity start. Returns {"missing", "unexpected"}:
        keys of this model the checkpoint does not provide (beyond the TEA parts), and the reverse.
        """
        if isinstance(path_or_sd, dict):
            sd = dict(path_or_sd)
        else:
            sd, _ = load_state_dict_file(path_or_sd)
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        own = self.state_dict()
        for key in list(sd):
            if not key.endswith(".conv2.weight") or key in own and own[key].dim() == 4:
                continue
            prefix = key[: -len("weight")]
            if f"{prefix}spatial.0.weight" not in own:
                continue
            w = sd.pop(key)
            mta = self.get_submodule(prefix[:-1])
            q = w.shape[0] // mta.scales
            for i in range(1, mta.scales):
                sd[f"{prefix}spatial.{i - 1}.weight"] = w[i * q : (i + 1) * q, i * q : (i + 1) * q]
        unexpected = [k for k in sd if k not in own]
        bad = [k for k in sd if k in own and sd[k].shape != own[k].shape]
        missing = [
            k for k in own if k not in sd and ".me." not in k and ".conv2.temporal." not in k
        ]
        if strict and (missing or unexpected or bad):
            raise RuntimeError(
                f"ImageNet checkpoint does not fit TEAResNet50: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}, shape mismatch {bad[:5]}"
            )
        for k, v in sd.items():
            if k in own and k not in bad:
                own[k].copy_(v)
        return {"missing": missing, "unexpected": unexpected}
