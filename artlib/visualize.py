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

__all__ = [
    "MATPLOTLIB_HINT",
    "draw_attention_maps",
    "draw_tracklets",
    "have_matplotlib",
    "health_line",
    "tracklet_attention",
    "tracklet_figures",
]

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


def tracklet_figures(model: nn.Module, video: Tensor) -> dict:
    """The tracklet health of one video (1, T, 3, S, S) as floats: ``entropy`` (K,) of each query's
    last-layer attention (1 = uniform), ``map_cosine`` between the queries' maps, ``peak_jump`` (K,)
    in token cells and its ``peak_jump_chance``, ``tracklet_cosine``
    (:func:`artlib.nn.localization.tracklet_health`; docs/tracklet_health.md reads them) and
    ``tokens`` L, the tokens of a frame."""
    import torch

    from artlib.nn.localization import record_rssa, tracklet_health

    head = getattr(model, "head", None)
    if head is None:
        raise ValueError("model: a --baseline model has no tracklets")
    with torch.no_grad():
        tokens, cls = model.backbone(video)
        with record_rssa(head.rssa) as rec:
            head(tokens, cls)
        health = tracklet_health(rec["maps"][-1], rec["responses"])
    return {"tokens": rec["maps"][-1].shape[-1], **{k: v.tolist() for k, v in health.items()}}


def _native_frames(path, info: dict):
    """The T sampled frames of ``path`` at its own resolution, as evaluation samples them, their
    times in seconds and the crop window (top, left, h, w) the model saw; None if unreadable."""
    from artlib.api import eval_dataset
    from artlib.data import VideoItem, video_info
    from artlib.data.decode import decode_clip

    try:
        vi = video_info(path)
        ds = eval_dataset([VideoItem(os.fspath(path), 0)], info, num_clips=1)
        idx, crop = ds.plan(0, vi.num_frames, vi.height, vi.width)
        frames = decode_clip(path, lambda _info: idx.reshape(-1))[0]  # (T, H, W, 3) uint8
    except Exception:  # a picture without the native frames is still a picture
        return None
    times = [float(i) / vi.fps if vi.fps else float("nan") for i in idx[0]]
    return frames, times, crop[:4]


def health_line(health: dict) -> str:
    """``tracklet_figures``' numbers as one line of text."""
    ent = ", ".join(f"{e:.2f}" for e in health["entropy"])
    jump = ", ".join(f"{j:.1f}" for j in health["peak_jump"])
    line = (
        f"attention entropy per query {ent} (1 = uniform) | map cosine "
        f"{health['map_cosine']:.2f} | peak jump {jump} cells (chance "
        f"{health['peak_jump_chance']:.1f})"
    )
    if "tracklet_cosine" in health:
        line += f" | tracklet cosine {health['tracklet_cosine']:.2f}"
    return line


def draw_attention_maps(
    frames: Tensor,
    att: Tensor,
    out: str | os.PathLike,
    heading: str,
    tokens: int,
    extent: tuple | None = None,
    crop: tuple | None = None,
    times: list | None = None,
    weights: Tensor | None = None,
    dpi: int = 110,
) -> None:
    """Draw K queries' maps over T frames to the PNG ``out``: frames (T, H, W, 3) in 0..1 at any
    resolution, att (K, T', h, w) (T' <= T: frame j*T//T' under map j) laid over the ``extent``
    (left, right, bottom, top) in the frame's pixels (default: the whole frame) on one colour
    scale with a colour bar (``tokens`` L names the uniform level 1/L); ``crop`` (top, left, h, w)
    outlines the window the model saw; ``times`` (seconds per frame) and ``weights`` (T', K)
    label the frames; ``heading`` goes on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    k, t = att.shape[:2]
    h_img, w_img = frames.shape[1:3]
    extent = extent or (0, w_img, h_img, 0)
    top, left, ch, cw = crop or (0, 0, h_img, w_img)
    att = att.cpu()
    vmax = float(att.max())
    cell = 1.7 * max(1.0, w_img / h_img)
    fig, axes = plt.subplots(k, t, figsize=(cell * t + 1.2, 1.9 * k + 0.9), squeeze=False)
    im = None
    for kk in range(k):
        for tt in range(t):
            ax = axes[kk][tt]
            fi = tt * frames.shape[0] // t  # the backbone may downsample time (T' < T)
            ax.imshow(frames[fi].numpy(), extent=(0, w_img, h_img, 0))
            im = ax.imshow(
                att[kk, tt].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=vmax, extent=extent
            )
            if (ch, cw) != (h_img, w_img):
                ax.add_patch(Rectangle((left, top), cw, ch, fill=False, ec="w", lw=0.6, ls="--"))
            ax.set_xlim(0, w_img)
            ax.set_ylim(h_img, 0)
            when = f" {times[fi]:.2f}s" if times else f" t{tt + 1}"
            w_text = "" if weights is None else f" w={weights[tt, kk]:.2f}"
            ax.set_title(f"k{kk + 1}{when}{w_text}", fontsize=6)
            ax.axis("off")
    fig.suptitle(heading, fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    cax = fig.add_axes((0.945, 0.1, 0.012, 0.75))
    bar = fig.colorbar(im, cax=cax)
    bar.set_label(f"attention weight (uniform: 1/{tokens})", fontsize=6)
    bar.ax.tick_params(labelsize=5)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def draw_tracklets(
    model: nn.Module,
    video: Tensor,
    info: dict,
    out: str | os.PathLike,
    path: str | os.PathLike | None = None,
    dpi: int = 110,
) -> dict:
    """Write the tracklet picture of ``video`` (1, T, 3, S, S), normalized with ``info``'s mean
    and std, to the PNG ``out``: one row per tracklet k, the T frames with query k's attention laid
    over them on one colour scale for the whole picture (a colour bar; a uniform map is
    1/L everywhere, so a flat picture means the query looks nowhere in particular), each frame's
    time and Eq. 9's frame weight in its title, the predicted class and its probability and the
    video's tracklet health (``tracklet_figures``) in the heading. With ``path`` (the file the
    video was read from) the frames are drawn at the file's own resolution, the map over the
    crop window the model saw. Returns {"tracklets": K, "frames": T, "label": predicted class,
    "name": its name, "prob": its probability, "health": the figures}."""
    import torch

    logits, att, weights = tracklet_attention(model, video)
    health = tracklet_figures(model, video)
    k, t = att.shape[:2]
    s = video.shape[-1]
    native = _native_frames(path, info) if path is not None else None
    if native is not None:
        frames, times, (top, left, ch, cw) = native
        frames = frames.float() / 255  # (T, H, W, 3)
        extent = (left, left + cw, top + ch, top)
    else:
        mean = torch.tensor(info["mean"]).view(3, 1, 1)
        std = torch.tensor(info["std"]).view(3, 1, 1)
        frames = (video[0].cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1)  # (T, S, S, 3)
        times, extent, (top, left, ch, cw) = None, (0, s, s, 0), (0, 0, s, s)
    probs = logits.float().softmax(-1)
    pred = int(probs.argmax())
    name = info["class_names"][pred]
    heading = f"predicted: {name} (p = {float(probs[pred]):.2f})\n" + health_line(health)
    draw_attention_maps(
        frames, att, out, heading, health["tokens"], extent, (top, left, ch, cw), times, weights,
        dpi,
    )  # fmt: skip
    return {
        "tracklets": k,
        "frames": t,
        "label": pred,
        "name": name,
        "prob": float(probs[pred]),
        "health": health,
    }
