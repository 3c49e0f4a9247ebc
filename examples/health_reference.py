"""Reference pictures for docs/tracklet_health.md: what healthy and collapsed region queries look like,
with their tracklet health and localization figures, drawn on a synthetic validation video from maps
built by hand from its ground-truth boxes (no model).

    python examples/health_reference.py --out docs/img

healthy: query 1 a sharp peak on the limb (sigma 0.6 token cells), query 2 on the body;
collapsed: both queries the same near-uniform map (1/L plus 2% noise).
"""

from __future__ import annotations

import argparse
import os

import torch


def _peak(centres: torch.Tensor, side: int, cell: float, sigma: float) -> torch.Tensor:
    """(T, 2) pixel centres -> (T, L) softmax maps peaked at each centre's token."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    grid = torch.stack([xx, yy], -1).reshape(-1, 2).float() + 0.5  # token centres, in cells
    d2 = ((grid[None] - centres[:, None] / cell) ** 2).sum(-1)
    return (-d2 / (2 * sigma**2)).softmax(-1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/img", help="folder for the two PNGs")
    p.add_argument("--root", default="/tmp/artlib_health_reference", help="where the set is made")
    args = p.parse_args(argv)
    from artlib.data import VideoDataset, make_finegrained_set, read_generic_list
    from artlib.data.synthetic import read_boxes
    from artlib.localize import video_boxes
    from artlib.nn.localization import localization_metrics, tracklet_health
    from artlib.visualize import draw_attention_maps, health_line

    syn = make_finegrained_set(args.root, train_per_class=1, val_per_class=1, distractors=2)
    items, _ = read_generic_list(syn.val_list)
    ds = VideoDataset(items, num_frames=8, train=False, crop_size=64, mean=(0,) * 3, std=(1,) * 3)
    i, side = 0, 8
    video = ds[i]["video"]  # (T, 3, 64, 64) in 0..1
    boxes = read_boxes(items[i].path)
    idx, _ = ds.plan(i, boxes["limb"].shape[0], 64, 64)
    limb = torch.from_numpy(boxes["limb"][idx[0]])
    body = torch.from_numpy(boxes["body"][idx[0]])
    centre = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
    healthy = torch.stack([_peak(centre(limb), side, 8, 0.6), _peak(centre(body), side, 8, 0.6)], 1)
    g = torch.Generator().manual_seed(0)
    flat = (1 + 0.02 * torch.randn(8, 1, side * side, generator=g)).clamp_min(0)
    collapsed = (flat / flat.sum(-1, keepdim=True)).expand(8, 2, side * side)
    limb_cov, dis_cov, _ = video_boxes(ds, i, 8, side)
    frames = video.permute(0, 2, 3, 1)
    os.makedirs(args.out, exist_ok=True)
    for name, att in (("healthy", healthy), ("collapsed", collapsed)):
        att = att[None]  # (1, T, K, L)
        h = {k: v.tolist() for k, v in tracklet_health(att).items()}
        m = localization_metrics(att, limb_cov[None], dis_cov[None])
        loc = (
            f"pointing per query {', '.join(f'{v:.2f}' for v in m['pointing'].tolist())} (chance "
            f"{float(m['pointing_chance']):.2f}) | mass in limb box "
            f"{', '.join(f'{v:.2f}' for v in m['mass'].tolist())} (chance "
            f"{float(m['mass_chance']):.2f})"
        )
        maps = att[0].permute(1, 0, 2).reshape(2, 8, side, side)  # (K, T, h, w)
        out = os.path.join(args.out, f"health_{name}.png")
        draw_attention_maps(
            frames, maps, out, f"{name} (hand-built maps)\n{health_line(h)}\n{loc}", side * side,
            dpi=64,
        )  # fmt: skip
        print(f"{out}: {health_line(h)} | {loc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
