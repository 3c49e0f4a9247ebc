"""Draw each tracklet's attention over the frames of one video (like the paper's Fig. 7/8).

    python examples/visualize_tracklets.py \
        --checkpoint runs/synthetic/checkpoints/checkpoint_epoch0012.pt \
        --video path/to/video.mp4 --out tracklets.png

One row per tracklet k: the T sampled frames with the last RSSA decoder layer's attention of
query k (averaged over heads) laid over them, and (with Eq. 9 aggregation) the weight of each frame
in the title.
The last line printed names the PNG and the predicted class.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from einops import rearrange


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by the trainer")
    p.add_argument("--video", required=True, help="a video file")
    p.add_argument("--out", default="tracklets.png", help="output PNG")
    p.add_argument("--bank", help="bank file, if the run used --bank (else the checkpoint's bank)")
    args = p.parse_args(argv)

    from artlib.data import VideoDataset, VideoItem
    from artlib.engine.config import config_from_dict
    from artlib.engine.trainer import build_model
    from artlib.nn import SemanticBank

    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    cfg = config_from_dict(state["config"])
    names = state["class_names"]
    if cfg.model.baseline:
        p.error("the checkpoint is a --baseline model: it has no tracklets to draw")
    # the bank's S and S^a come from the checkpoint; a placeholder of the right shape avoids
    # running the text encoder again
    weights = state["model"]
    if state.get("model_ema") is not None:  # --model-ema: the average is what was evaluated
        weights = state["model_ema"]["module"]
    bank_key = next((k for k in weights if k.endswith("bank.S")), None)
    if bank_key is None:
        p.error(f"{args.checkpoint}: no semantics bank in the model state (not an ART checkpoint?)")
    s_shape = weights[bank_key].shape
    cfg.model.pretrained = "none"
    model = build_model(cfg, names, bank=SemanticBank(torch.zeros(s_shape)))
    model.load_state_dict(weights)
    model.eval()

    ds = VideoDataset(
        [VideoItem(args.video, 0)],
        num_frames=cfg.data.num_frames,
        train=False,
        crop_size=cfg.data.crop_size,
        flip=False,
    )
    sample = ds[0]
    if not isinstance(sample, dict):  # a SampleFailure(index, path, reason)
        p.error(f"could not decode {args.video}: {getattr(sample, 'reason', sample)}")
    video = sample["video"] if isinstance(sample, dict) else sample[0]
    video = video.unsqueeze(0)
    with torch.no_grad():
        tokens, cls = model.backbone(video)
        logits, maps = model.head(tokens, cls, return_maps=True)  # maps (1, T, heads, K, L)
        weights = None  # Eq. 9's frame weights, when the model uses them
        if model.head.aggregate.mode == "saliency":
            from artlib.ops.tracklet_aggregate import tracklet_weights_ref

            _, s_topk = model.head.select_semantics(cls)
            r = model.head.rssa(model.head.token_proj(tokens), s_topk)
            weights = tracklet_weights_ref(r.float(), s_topk.float())[0]  # (T, K)
    att = maps[0].mean(1)  # (T, K, L)
    t, k, l = att.shape
    side = int(round(l**0.5))
    if side * side != l:
        p.error(f"cannot lay {l} tokens on a square grid")
    att = rearrange(att, "t k (h w) -> (t k) 1 h w", h=side)
    h, w = video.shape[-2:]
    att = F.interpolate(att, size=(h, w), mode="bilinear", align_corners=False)
    att = rearrange(att, "(t k) 1 h w -> k t h w", t=t)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    frames = (video[0] * std + mean).clamp(0, 1)  # (T, 3, H, W)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(k, t, figsize=(1.6 * t, 1.8 * k), squeeze=False)
    for kk in range(k):
        for tt in range(t):
            ax = axes[kk][tt]
            ax.imshow(frames[tt].permute(1, 2, 0).numpy())
            a = att[kk, tt]
            ax.imshow((a / a.max().clamp_min(1e-8)).numpy(), cmap="jet", alpha=0.45)
            w_text = "" if weights is None else f" w={weights[tt, kk]:.2f}"
            ax.set_title(f"k{kk + 1} t{tt + 1}{w_text}", fontsize=6)
            ax.axis("off")
    pred = int(logits.argmax(-1))
    fig.suptitle(f"predicted: {names[pred]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}: {k} tracklets x {t} frames, predicted '{names[pred]}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
