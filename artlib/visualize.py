"""Tracklet pictures: each region query's attention over the frames of one video (the paper's
Fig. 7/8), drawn from a loaded model (``artlib.load_model``). Needs matplotlib.

Legend: T frames, K tracklets (region queries), L tokens per frame (a square grid), S crop size.
(Imports no torch at import time: the command-line tools ask ``have_matplotlib`` first.)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["MATPLOTLIB_HINT", "draw_tracklets", "have_matplotlib", "tracklet_attention"]

MATPLOTLIB_HINT = "pip install matplotlib (or: pip install 'artlib[train]')"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def tracklet_attention(model: nn.Module, video: Tensor):
    """video (1, T, 3, S, S) -> (logits (N_cls,), attention (K, T, S, S) upsampled to the frames,
    frame weights (T, K) of Eq. 9 when the model aggregates by saliency, else None).

    The attention of query k at frame t is the last RSSA decoder layer's, averaged over heads.
    """
    import torch
    import torch.nn.functional as F
    from einops import rearrange

    head = getattr(model, "head", None)
    if head is None:
        raise ValueError("model: a --baseline model has no tracklets to draw")
    with torch.no_grad():
        tokens, cls = model.backbone(video)
        logits, maps = head(tokens, cls, return_maps=True)  # maps (1, T, heads, K, L)
        weights = None
        if head.aggregate.mode == "saliency":
            from artlib.ops.tracklet_aggregate import tracklet_weights_ref

            _, s_topk = head.select_semantics(cls)
            r = head.rssa(head.token_proj(tokens), s_topk)
            weights = tracklet_weights_ref(r.float(), s_topk.float())[0]  # (T, K)
    att = maps[0].mean(1)  # (T, K, L)
    t, _, l = att.shape
    side = int(round(l**0.5))
    if side * side != l:
        raise ValueError(f"cannot lay the {l} tokens of a frame on a square grid")
    att = rearrange(att, "t k (h w) -> (t k) 1 h w", h=side)
    att = F.interpolate(att.float(), size=video.shape[-2:], mode="bilinear", align_corners=False)
    att = rearrange(att, "(t k) 1 h w -> k t h w", t=t)
    return logits[0], att, weights


def draw_tracklets(model: nn.Module, video: Tensor, info: dict, out: str | os.PathLike) -> dict:
    """Write the tracklet picture of ``video`` (1, T, 3, S, S), normalized with ``info``'s mean
    and std, to the PNG ``out``: one row per tracklet k, the T frames with query k's attention laid
    over them (and Eq. 9's frame weight in each title). Returns {"tracklets": K, "frames": T,
    "label": predicted class, "name": its name}."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logits, att, weights = tracklet_attention(model, video)
    k, t = att.shape[:2]
    mean = torch.tensor(info["mean"]).view(3, 1, 1)
    std = torch.tensor(info["std"]).view(3, 1, 1)
    frames = (video[0].cpu() * std + mean).clamp(0, 1)  # (T, 3, S, S)
    att = att.cpu()
    fig, axes = plt.subplots(k, t, figsize=(1.6 * t, 1.8 * k), squeeze=False)
    for kk in range(k):
        for tt in range(t):
            ax = axes[kk][tt]
            fi = tt * frames.shape[0] // t  # the backbone may downsample time (T' < T)
            ax.imshow(frames[fi].permute(1, 2, 0).numpy())
            a = att[kk, tt]
            ax.imshow((a / a.max().clamp_min(1e-8)).numpy(), cmap="jet", alpha=0.45)
            w_text = "" if weights is None else f" w={weights[tt, kk]:.2f}"
            ax.set_title(f"k{kk + 1} t{tt + 1}{w_text}", fontsize=6)
            ax.axis("off")
    pred = int(logits.argmax(-1))
    name = info["class_names"][pred]
    fig.suptitle(f"predicted: {name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return {"tracklets": k, "frames": t, "label": pred, "name": name}
