"""Draw each tracklet's attention over the frames of one video (like the paper's Fig. 7/8).

    python examples/visualize_tracklets.py \
        --checkpoint runs/synthetic/checkpoints/best.pt \
        --video path/to/video.mp4 --out tracklets.png

One row per tracklet k: the T sampled frames with the last RSSA decoder layer's attention of
query k (averaged over heads) laid over them, and (with Eq. 9 aggregation) the weight of each frame
in the title. Needs matplotlib. The same picture comes from
``python -m artlib.predict VIDEO --checkpoint CKPT --tracklets OUT.png``.
The last line printed names the PNG and the predicted class.
"""

from __future__ import annotations

import os
import sys

from artlib._cli import OneLineParser  # errors: one line, exit 2


def main(argv=None) -> int:
    p = OneLineParser(prog="visualize_tracklets.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by the trainer")
    p.add_argument("--video", required=True, help="a video file")
    p.add_argument("--out", default="tracklets.png", help="output PNG")
    args = p.parse_args(argv)
    for flag, path in (("--checkpoint", args.checkpoint), ("--video", args.video)):
        if not os.path.isfile(path):
            p.error(f"{flag}: no file at {path}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        p.error(f"--out: no folder {os.path.dirname(os.path.abspath(args.out))}")
    from artlib.visualize import MATPLOTLIB_HINT, have_matplotlib

    if not have_matplotlib():
        p.error(f"the picture is drawn with matplotlib, which is not installed: {MATPLOTLIB_HINT}")

    from artlib import CheckpointError, load_model, load_video
    from artlib.data import VideoDecodeError
    from artlib.visualize import draw_tracklets

    try:
        model, info = load_model(args.checkpoint)
    except CheckpointError as e:  # refused or unfit: one line, nothing of the file ran
        print(f"error: {e}", file=sys.stderr)
        return 2
    if info["baseline"]:
        p.error(f"{args.checkpoint} is a --baseline model: it has no tracklets to draw")
    try:
        video = load_video(args.video, info, num_clips=1)
    except VideoDecodeError as e:
        p.error(f"--video: cannot decode {args.video}: {e.reason}")
    done = draw_tracklets(model, video, info, args.out)
    print(
        f"wrote {args.out}: {done['tracklets']} tracklets x {done['frames']} frames, "
        f"predicted '{done['name']}'"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
