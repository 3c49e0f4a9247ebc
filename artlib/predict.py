"""Predict the action in videos with a trained checkpoint.

    python -m artlib.predict video1.mp4 video2.mp4 --checkpoint runs/synthetic/checkpoints/best.pt
    python -m artlib.predict clips/*.mp4 --checkpoint best.pt --topk 3 --num-clips 4 --json
    python -m artlib.predict video.mp4 --checkpoint best.pt --tracklets tracklets.png

For each video: the top-k classes with their probabilities (the softmax of the final prediction,
averaged over the clips). ``--json``: one object per line, ``{"video": PATH, "topk": [{"label":
INT, "name": STR, "prob": FLOAT}, ...]}``. A video that cannot be read gets ``{"video": PATH,
"error": STR}``; the others are still predicted and the exit status is 1 at the end.
``--tracklets OUT.png`` draws the tracklets of the first video (ART checkpoints; needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from artlib.engine.cli import _Parser as OneLineParser  # errors: one line, exit 2
from artlib.timeline_cli import add_timeline_options, check_timeline_options, run_timeline

__all__ = ["main", "predict_file"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m artlib.predict",
        description="Predict the action in videos with a trained checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint written by the trainer, or a model folder (artlib.save_model)",
    )
    p.add_argument("--topk", type=int, default=5, help="classes shown per video")
    p.add_argument("--num-clips", type=int, help="clips per video (default: the checkpoint's)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--tracklets", metavar="OUT.png", help="draw the first video's tracklets")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    add_timeline_options(p)
    return p


def predict_file(model, info: dict, path: str, topk: int, num_clips: int | None = None) -> dict:
    """{"video": path, "topk": [{"label", "name", "prob"}, ...]} or {"video": path, "error": str}."""
    from artlib.api import load_video, predict_proba
    from artlib.data import VideoDecodeError

    try:
        clips = load_video(path, info, num_clips=num_clips)
    except VideoDecodeError as e:
        return {"video": path, "error": e.reason}
    probs = predict_proba(model, clips)
    p, idx = probs.topk(min(topk, probs.numel()))
    top = [
        {"label": int(i), "name": info["class_names"][int(i)], "prob": round(float(q), 6)}
        for q, i in zip(p, idx)
    ]
    return {"video": path, "topk": top}


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not Path(args.checkpoint).exists():
        p.error(f"--checkpoint: no file or model folder at {args.checkpoint}")
    if args.topk < 1:
        p.error(f"--topk must be >= 1, got {args.topk}")
    if args.num_clips is not None and args.num_clips < 1:
        p.error(f"--num-clips must be >= 1, got {args.num_clips}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        p.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if args.tracklets:
        from artlib.visualize import MATPLOTLIB_HINT, have_matplotlib

        if not have_matplotlib():
            p.error(f"--tracklets draws with matplotlib, which is not installed: {MATPLOTLIB_HINT}")
        folder = os.path.dirname(os.path.abspath(args.tracklets))
        if not os.path.isdir(folder):
            p.error(f"--tracklets: no folder {folder}")

    if args.timeline or args.window is not None or args.stride is not None or args.csv or args.plot:
        check_timeline_options(p, args)
    from artlib.api import load_model, load_video
    from artlib.weights_io import CheckpointError

    try:
        model, info = load_model(args.checkpoint, map_location=args.device)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.timeline:
        return run_timeline(model, info, args)
    failed = 0
    for path in args.videos:
        res = predict_file(model, info, path, args.topk, args.num_clips)
        failed += "error" in res
        if args.json:
            print(json.dumps(res), flush=True)
        elif "error" in res:
            print(f"{path}: error: {res['error']}", flush=True)
        else:
            shown = ", ".join(f"{t['name']} {t['prob']:.3f}" for t in res["topk"])
            print(f"{path}: {shown}", flush=True)
    if args.tracklets:
        if info["baseline"]:
            print("--tracklets: a --baseline model has no tracklets; none drawn", file=sys.stderr)
        else:
            from artlib.data import VideoDecodeError
            from artlib.visualize import draw_tracklets

            try:
                video = load_video(args.videos[0], info, num_clips=1)
            except VideoDecodeError as e:
                print(f"--tracklets: {args.videos[0]}: {e.reason}; none drawn", file=sys.stderr)
            else:
                done = draw_tracklets(model, video.to(args.device), info, args.tracklets)
                print(
                    f"wrote {args.tracklets}: {done['tracklets']} tracklets x {done['frames']} "
                    f"frames of {args.videos[0]}",
                    file=sys.stderr,
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
