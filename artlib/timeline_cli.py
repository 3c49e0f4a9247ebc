"""``python -m artlib.predict VIDEO... --checkpoint CKPT --timeline``: the options and the run.

Kept apart from artlib.timeline so that the parser answers a misuse before torch loads.

Output per video: without ``--json`` a line ``PATH: D s, K windows, M segments`` then one line per
segment ``  start-end s  name  score``; with ``--json`` one object per line (``predict_timeline``'s
dict). ``--csv FILE``: one row ``video,start,end,label,name,score`` per segment of every video.
``--plot FILE.png``: a picture per video (``FILE.png`` for one video, ``FILE_<i>.png`` for the
i-th of several). A file that cannot be read: an error line (or, for one that breaks part-way, the
segments before the damage and the damage noted); the others go on, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

__all__ = ["add_timeline_options", "check_timeline_options", "run_timeline"]


def add_timeline_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("timeline (long videos, docs/long_videos.md)")
    g.add_argument(
        "--timeline",
        action="store_true",
        help="sliding windows over each video, merged into action segments",
    )
    g.add_argument(
        "--window",
        type=float,
        metavar="SEC",
        help="window length in seconds (default: the checkpoint's clip length, else 2)",
    )
    g.add_argument(
        "--stride",
        type=float,
        metavar="SEC",
        help="seconds between window starts (default: a quarter window)",
    )
    g.add_argument(
        "--min-score",
        type=float,
        default=0.0,
        help="a window whose top probability is below this is 'no action'",
    )
    g.add_argument(
        "--smooth",
        type=int,
        default=3,
        help="windows in the moving average of the probabilities (1: none)",
    )
    g.add_argument(
        "--min-run",
        type=int,
        default=2,
        help="shorter runs of windows are absorbed by a neighbouring segment",
    )
    g.add_argument("--batch-size", type=int, default=16, help="windows per model call")
    g.add_argument("--csv", metavar="FILE", help="one row per segment: video,start,end,label,...")
    g.add_argument("--plot", metavar="FILE.png", help="a timeline picture per video")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")  # fmt: skip


def check_timeline_options(p: argparse.ArgumentParser, args) -> None:
    """One-line errors (exit 2) before anything heavy."""
    if not args.timeline:
        used = [f for f in ("window", "stride", "csv", "plot") if getattr(args, f) is not None]
        p.error(f"--{used[0]} needs --timeline")
    if args.window is not None and not args.window > 0:
        p.error(f"--window must be > 0 seconds, got {args.window}")
    if args.stride is not None and not args.stride > 0:
        p.error(f"--stride must be > 0 seconds, got {args.stride}")
    if not 0.0 <= args.min_score <= 1.0:
        p.error(f"--min-score must be a probability in [0, 1], got {args.min_score}")
    if args.smooth < 1:
        p.error(f"--smooth must be >= 1 windows, got {args.smooth}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.min_run < 1:
        p.error(f"--min-run must be >= 1 windows, got {args.min_run}")
    for flag in ("csv", "plot"):
        value = getattr(args, flag)
        if value:
            folder = os.path.dirname(os.path.abspath(value))
            if not os.path.isdir(folder):
                p.error(f"--{flag}: no folder {folder}")
    if args.plot:
        from artlib.visualize import MATPLOTLIB_HINT, have_matplotlib

        if not have_matplotlib():
            p.error(f"--plot draws with matplotlib, which is not installed: {MATPLOTLIB_HINT}")


def _plot_path(plot: str, i: int, n: int) -> str:
    if n == 1:
        return plot
    stem, ext = os.path.splitext(plot)
    return f"{stem}_{i}{ext or '.png'}"


def run_timeline(model, info, args) -> int:
    """Every video of ``args.videos`` through ``predict_timeline``; -> the exit status."""
    from artlib.data import VideoDecodeError
    from artlib.timeline import plot_timeline, predict_timeline, segments_csv_rows

    failed = 0
    rows = []
    for i, path in enumerate(args.videos):
        try:
            res = predict_timeline(
                model, info, path, window=args.window, stride=args.stride,
                min_score=args.min_score, smooth=args.smooth, batch_size=args.batch_size,
                min_run=args.min_run, progress=not args.no_progress and not args.json,
            )  # fmt: skip
        except VideoDecodeError as e:
            failed += 1
            if args.json:
                print(json.dumps({"video": path, "error": e.reason}), flush=True)
            else:
                print(f"{path}: error: {e.reason}", flush=True)
            continue
        failed += "damage" in res
        rows += segments_csv_rows(res)
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print(f"{path}: {res['duration']:.2f} s, {len(res['windows'])} windows of "
                  f"{res['window']:.2f} s every {res['stride']:.2f} s, "
                  f"{len(res['segments'])} segments", flush=True)  # fmt: skip
            for s in res["segments"]:
                print(f"  {s['start']:8.2f} - {s['end']:8.2f} s  {s['name']}  {s['score']:.3f}")
            if "damage" in res:
                d = res["damage"]
                print(f"{path}: error: broken at {d['time']:.2f} s: {d['reason']} "
                      "(segments up to there)", flush=True)  # fmt: skip
        if args.plot:
            try:
                out = _plot_path(args.plot, i, len(args.videos))
                plot_timeline(res, out)
                print(f"wrote {out}", file=sys.stderr)
            except ImportError as e:  # a missing optional package never crashes a finished run
                print(f"--plot: {e}; none drawn", file=sys.stderr)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["video", "start", "end", "label", "name", "score"])
            w.writerows(rows)
        print(f"wrote {args.csv}: {len(rows)} segments", file=sys.stderr)
    return 1 if failed else 0
