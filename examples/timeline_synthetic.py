"""A synthetic long-video set and the timeline's segment mAP on it.

    python examples/timeline_synthetic.py --checkpoint runs/synthetic/checkpoints/best.pt \\
        --videos 8 --clips 10 --out runs/timeline_synthetic

Each long video is ``--clips`` clips of the synthetic set's generator (32 frames at 16 fps,
64x64, 2 s each; the action at a random time inside the clip, as in the training set), of random
classes (never the same class twice in a row), concatenated into one H.264 file. The ground
truth is one segment per clip (its 2 s). The checkpoint's timeline of every video (2-s windows
every 0.5 s) is scored with ``artlib.segment_metrics`` (mAP at tIoU 0.3/0.5/0.7): the table is
printed and written to ``OUT/metrics.json`` with the ground truth (``gt.csv``) and the timelines
(``timelines.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--clips", type=int, default=10)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default="runs/timeline_synthetic")
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--stride", type=float, default=0.5)
    args = p.parse_args(argv)

    import artlib
    from artlib.data._write import write_video
    from artlib.data.synthetic import render_clip
    from artlib.segment_metrics import evaluate_segments

    model, info = artlib.load_model(args.checkpoint)
    n_cls = info["num_classes"]
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    gt, pred, lines = [], [], []
    for v in range(args.videos):
        labels = [int(rng.integers(n_cls))]
        while len(labels) < args.clips:
            c = int(rng.integers(n_cls - 1))
            labels.append(c if c < labels[-1] else c + 1)  # never the previous class
        frames = np.concatenate(
            [render_clip(c, np.random.default_rng([args.seed, v, i]), 32, (64, 64))[0]
             for i, c in enumerate(labels)]
        )  # fmt: skip
        path = os.path.join(args.out, f"long{v:02d}.mp4")
        write_video(path, frames, fps=16)
        gt += [(path, 2.0 * i, 2.0 * i + 2, c) for i, c in enumerate(labels)]
        res = artlib.predict_timeline(model, info, path, window=args.window, stride=args.stride)
        pred += [(path, s["start"], s["end"], s["label"], s["score"]) for s in res["segments"]]
        lines.append(json.dumps(res))
        print(f"{path}: {len(labels)} clips, {len(res['segments'])} segments", file=sys.stderr)
    with open(os.path.join(args.out, "gt.csv"), "w") as fh:
        fh.write("video,start,end,label\n")
        fh.writelines(f"{v},{a},{b},{c}\n" for v, a, b, c in gt)
    with open(os.path.join(args.out, "timelines.jsonl"), "w") as fh:
        fh.writelines(line + "\n" for line in lines)
    res = evaluate_segments(gt, pred, class_names=info["class_names"])
    with open(os.path.join(args.out, "metrics.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    print("| class | GT | predicted | AP@0.3 | AP@0.5 | AP@0.7 |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in res["per_class"].values():
        aps = " | ".join(f"{x:.3f}" for x in c["ap"].values())
        print(f"| {c['name']} | {c['gt']} | {c['pred']} | {aps} |")
    m = " | ".join(f"**{x:.3f}**" for x in res["mAP"].values())
    print(f"| **mAP** ({res['videos']} videos) | {len(gt)} | {len(pred)} | {m} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
