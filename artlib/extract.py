"""Features of videos on disk: one safetensors file per video, resumable, sharded over ranks.

    python -m artlib.extract clips/*.mp4 --checkpoint best.pt --out feats/
    python -m artlib.extract --list videos.txt --checkpoint best.pt --out feats/ --timeline
    torchrun --nproc-per-node 4 -m artlib.extract --list videos.txt --checkpoint best.pt --out feats/

Legend: V views (the checkpoint's clips of the whole video, or the timeline's windows), C the
backbone width, K tracklets, d the head width, N_cls classes.

Each video gives ``DIR/<name>-<hash>.safetensors`` (the name of the file, the hash of its path)
with the tensors

- ``global`` (V, C): the backbone's global token (``x_cls``) of each view;
- ``tracklets`` (V, K, d): the aggregated tracklet embeddings of the ART head (Eq. 9; absent for
  a ``--baseline`` checkpoint);
- ``logits`` (V, N_cls): the model's output;
- ``times`` (V, 2): each view's start and end in seconds (the whole video for clip views);

and the metadata ``video``, ``mode`` (``clips`` | ``timeline``), ``checkpoint``, ``duration``,
``class_names`` (JSON). ``DIR/index.csv`` lists ``video,file,views,duration,mode`` for every
finished video (rebuilt from the files at the end of every run, so the last rank to finish
writes the complete one).

Resumable: a file is written under a temporary name and renamed when complete, so a second run
skips the videos whose file exists and redoes only the unfinished ones. Sharding: under
``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) rank r takes the videos r, r + W, ...
of the list; no process group is needed. A video that cannot be read goes to
``DIR/errors.csv`` (``errors.rank<r>.csv`` under several ranks) and the others go on; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
from pathlib import Path

from artlib._cli import DefaultsOnce, OneLineParser, say

__all__ = ["extract_features", "feature_file", "main"]


def feature_file(out: str | os.PathLike, video: str) -> Path:
    """Where the features of ``video`` go in ``out``."""
    digest = hashlib.sha1(os.path.abspath(video).encode()).hexdigest()[:10]
    return Path(out) / f"{Path(video).stem}-{digest}.safetensors"


class _Capture:
    """Forward hooks that keep the backbone's global token and the head's tracklet embeddings."""

    def __init__(self, model):
        self.values: dict = {}
        self.handles = [model.backbone.register_forward_hook(self._backbone)]
        head = getattr(model, "head", None)
        if head is not None:
            self.handles.append(head.aggregate.register_forward_hook(self._aggregate))

    def _backbone(self, module, args, output):
        self.values["global"] = output[1].detach().float()

    def _aggregate(self, module, args, output):
        self.values["tracklets"] = output.detach().float()

    def close(self):
        for h in self.handles:
            h.remove()


def extract_features(
    model, info: dict, video: str, *, timeline: bool = False, window=None, stride=None,
    num_clips: int | None = None, batch_size: int = 16,
) -> tuple[dict, dict]:  # fmt: skip
    """The features of one video -> (tensors {"global", ["tracklets"], "logits", "times"},
    metadata). Raises artlib.data.VideoDecodeError for a video that cannot be read (also one that
    breaks part-way in timeline mode: its features would be incomplete)."""
    import torch

    from artlib.api import load_video

    device = next(model.parameters()).device
    cap = _Capture(model)
    # each output in one tensor of a row per view, allocated once: per-batch tensors kept until
    # the end, allocated between the batches' large temporaries, kept the heap from reusing its
    # free space (the resident set grew by ~200 KB a window: 773 MB for 10 minutes, 1.9 GB for 60)
    out: dict[str, torch.Tensor] = {}
    times: list[tuple[float, float]] = []

    def run(batch, rows: list[int], capacity: int):
        with torch.no_grad():
            logits = model(batch.to(device)).float()
        values = {"global": cap.values.pop("global"), "logits": logits}
        if "tracklets" in cap.values:
            values["tracklets"] = cap.values.pop("tracklets")
        for name, v in values.items():
            if name not in out:
                out[name] = torch.zeros((capacity, *v.shape[1:]), dtype=torch.float32)
            out[name][rows] = v.cpu()

    try:
        if timeline:
            from artlib._malloc import retain_freed
            from artlib.timeline import _ahead, stream_windows

            plan, windows = stream_windows(video, info, window, stride)
            batch, order = [], []
            # decoding in a background thread beside the model, freed memory kept: as the timeline
            with retain_freed():
                for k, clip in _ahead(windows, 2 * batch_size):  # a broken stream raises here
                    batch.append(clip)
                    order.append(k)
                    if len(batch) == batch_size:
                        run(torch.stack(batch), order[-len(batch) :], plan.count)
                        batch = []
                if batch:
                    run(torch.stack(batch), order[-len(batch) :], plan.count)
            if order != list(range(len(order))):  # the windows decoded, in order (no copy
                out = {name: v[order] for name, v in out.items()}  # when they came in order)
            out = {name: v[: len(order)] for name, v in out.items()}
            times = [plan.times(k) for k in order]
            duration = plan.decoded / plan.fps
        else:
            from artlib.data.decode import video_info

            clips = load_video(video, info, num_clips=num_clips)  # (V, T, 3, S, S)
            for i in range(0, len(clips), batch_size):
                run(clips[i : i + batch_size], list(range(i, min(i + batch_size, len(clips)))),
                    len(clips))  # fmt: skip
            vi = video_info(video)
            duration = vi.duration or (vi.num_frames / vi.fps if vi.fps else 0.0)
            times = [(0.0, duration)] * len(clips)
    finally:
        cap.close()
    tensors = {k: v.contiguous() for k, v in out.items()}
    tensors["times"] = torch.tensor(times, dtype=torch.float64)
    meta = {
        "video": video,
        "mode": "timeline" if timeline else "clips",
        "checkpoint": str(info.get("path", "")),
        "duration": f"{duration:.3f}",
        "class_names": json.dumps(list(info["class_names"])),
    }
    return tensors, meta


def _read_list(path: str) -> list[str]:
    """A list file: one video per line (``<path>`` or ``<path> <label>``), relative paths
    relative to the list's folder; blank lines and ``#`` comments skipped."""
    base = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = line.rsplit(maxsplit=1)[0] if line.rsplit(maxsplit=1)[-1].isdigit() else line
            out.append(p if os.path.isabs(p) else os.path.join(base, p))
    return out


def _rank_world() -> tuple[int, int]:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    return rank, world


def write_index(out: str | os.PathLike) -> int:
    """Rebuild ``out/index.csv`` from the feature files there -> rows written."""
    from safetensors import safe_open

    rows = []
    for f in sorted(Path(out).glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt") as fh:
                meta = fh.metadata() or {}
                views = fh.get_slice("logits").get_shape()[0]
        except Exception:  # noqa: BLE001 - a file being replaced by another rank: next run
            continue
        rows.append([meta.get("video", ""), f.name, views, meta.get("duration", ""),
                     meta.get("mode", "")])  # fmt: skip
    tmp = Path(out) / f".index.csv.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video", "file", "views", "duration", "mode"])
        w.writerows(rows)
    os.replace(tmp, Path(out) / "index.csv")
    return len(rows)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m artlib.extract",
        description="Write the features of videos (global token, tracklets, logits) to disk.",
        formatter_class=DefaultsOnce,  # each default shown once
    )
    p.add_argument("videos", nargs="*", metavar="VIDEO", help="video files (or --list)")
    p.add_argument("--list", help="a file with one video path per line")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by the trainer")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the feature files")
    p.add_argument("--timeline", action="store_true", help="timeline windows instead of clips")
    p.add_argument("--window", type=float, metavar="SEC", help="--timeline window (seconds)")
    p.add_argument("--stride", type=float, metavar="SEC", help="--timeline stride (seconds)")
    p.add_argument("--num-clips", type=int, help="clip views (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=16, help="views per model call")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if bool(args.videos) == bool(args.list):
        p.error("give either VIDEO files or --list LIST")
    if args.list and not os.path.isfile(args.list):
        p.error(f"--list: no file at {args.list}")
    if not Path(args.checkpoint).is_file():
        p.error(f"--checkpoint: no file at {args.checkpoint}")
    if (args.window is not None or args.stride is not None) and not args.timeline:
        p.error("--window/--stride need --timeline")
    for flag in ("window", "stride"):
        v = getattr(args, flag)
        if v is not None and not v > 0:
            p.error(f"--{flag} must be > 0 seconds, got {v}")
    if args.num_clips is not None and args.num_clips < 1:
        p.error(f"--num-clips must be >= 1, got {args.num_clips}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        import safetensors  # noqa: F401
    except ImportError:
        p.error("writing the features needs safetensors: pip install safetensors")
    try:
        rank, world = _rank_world()
    except ValueError as e:
        p.error(str(e))
    videos = _read_list(args.list) if args.list else list(args.videos)
    mine = videos[rank::world]
    os.makedirs(args.out, exist_ok=True)

    from safetensors.torch import save_file

    from artlib.api import load_model
    from artlib.data import VideoDecodeError
    from artlib.engine.checkpoint import CheckpointError

    try:
        model, info = load_model(args.checkpoint, map_location=args.device)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    errors = []
    done = skipped = 0
    for video in mine:
        target = feature_file(args.out, video)
        if target.exists():
            skipped += 1
            continue
        try:
            tensors, meta = extract_features(
                model, info, video, timeline=args.timeline, window=args.window,
                stride=args.stride, num_clips=args.num_clips, batch_size=args.batch_size,
            )  # fmt: skip
        except VideoDecodeError as e:
            errors.append((video, e.reason))
            say(f"{video}: error: {e.reason}")  # ranks share stderr: one write
            continue
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, target)  # complete or absent: what resuming relies on
        done += 1
        print(f"{video}: {tensors['logits'].shape[0]} views -> {target}", flush=True)
    if errors:
        name = "errors.csv" if world == 1 else f"errors.rank{rank}.csv"
        with open(Path(args.out) / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["video", "reason"])
            w.writerows(errors)
    rows = write_index(args.out)
    print(
        f"rank {rank}/{world}: {done} written, {skipped} already done, {len(errors)} failed; "
        f"index.csv lists {rows} videos",
        file=sys.stderr,
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
