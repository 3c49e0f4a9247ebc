"""Check a data set before training: every listed video exists, opens, decodes and has >= T frames.

Commands::

    python -m artlib.data.check --list gym99_train_element_v1.1.txt --root OUT --num-frames 16 \\
        --format finegym
    python -m artlib.data.check --list train.txt --root videos --num-frames 16        # generic list
    python -m artlib.data.check --list Diving48_V2_train.json --root rgb --format diving48 --workers 2

For each distinct video the checker reads the container's metadata (``artlib.data.decode.video_info``:
frame count, size, codec) and then decodes the last frame the metadata promises
(``decode_frames(path, [n - 1])``, which seeks to the last keyframe), because metadata lies: a
truncated mp4 keeps its header's frame count. ``--metadata-only`` skips that decode; ``--full``
decodes every frame. Problems are reported as

- ``missing``: the file does not exist;
- ``empty``: the file has 0 bytes;
- ``unreadable``: it does not open, has no video stream, or fails to decode (the reason is given);
- ``short``: it has fewer than ``--num-frames`` frames (the frames it really has are given).

The exit status is 0 when no problem is found and 1 otherwise, with the list printed (one
``kind<TAB>path<TAB>frames<TAB>detail`` line each) and optionally written as CSV (``--report``).
``--write-good LIST`` writes the usable items as a generic ``<path> <label>`` list, e.g. FineGym's
element list minus the clips whose YouTube video could not be downloaded.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

__all__ = ["Problem", "check_items", "check_video", "format_problems", "main"]

KINDS = ("missing", "empty", "unreadable", "short")
FORMATS = ("generic", "finegym", "diving48", "kinetics")


class Problem(NamedTuple):
    """One bad video: ``kind`` in KINDS, ``frames`` it really has (-1 unknown), ``detail`` why."""

    path: str
    kind: str
    frames: int
    detail: str


def check_video(
    path: str | os.PathLike, num_frames: int = 16, mode: str = "last"
) -> Problem | None:
    """Check one video; returns None when it is usable for ``num_frames``-frame sampling.

    mode: ``"metadata"`` (trust the container's frame count), ``"last"`` (also decode the last
    frame it promises; the default) or ``"full"`` (decode every frame and count them).
    """
    from artlib.data.decode import VideoDecodeError, decode_frames, video_info

    if mode not in ("metadata", "last", "full"):
        raise ValueError(f"mode: expected 'metadata', 'last' or 'full', got {mode!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        return Problem(path, "missing", -1, "file not found")
    if os.path.isdir(path):
        return Problem(path, "unreadable", -1, "is a folder, not a video file")
    if os.path.getsize(path) == 0:
        return Problem(path, "empty", 0, "file is empty (0 bytes)")
    try:
        n = video_info(path).num_frames  # the container's promise
        if mode != "metadata":
            if mode == "full":
                got = video_info(path, exact=True).num_frames
            else:
                try:
                    decode_frames(path, [n - 1], threads=1)
                    got = n
                except VideoDecodeError as err:
                    if err.num_decoded is None:
                        raise
                    got = err.num_decoded
            if got < n:  # metadata lies: a truncated file keeps its header
                if got < num_frames:
                    return Problem(path, "short", got, f"{got} < {num_frames} frames decode")
                return Problem(
                    path, "unreadable", got, f"truncated: metadata says {n} frames, {got} decode"
                )
            n = got
    except VideoDecodeError as err:
        got = err.num_decoded
        return Problem(path, "unreadable", -1 if got is None else got, err.reason)
    except Exception as err:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        return Problem(path, "unreadable", -1, f"{type(err).__name__}: {err}")
    if n < num_frames:
        return Problem(path, "short", n, f"{n} < {num_frames} frames")
    return None


def _check_one(args: tuple[str, int, str]) -> Problem | None:
    return check_video(*args)


def check_items(
    items: Iterable,
    *,
    num_frames: int = 16,
    workers: int = 1,
    mode: str = "last",
    progress: bool = True,
) -> list[Problem]:
    """Check the videos of ``items`` (VideoItems, or paths) with ``workers`` processes; returns the
    problems in the order the videos first appear (each distinct path is checked once)."""
    if num_frames < 1:
        raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    paths = list(dict.fromkeys(os.fspath(getattr(it, "path", it)) for it in items))
    jobs = [(p, num_frames, mode) for p in paths]
    bar = _bar(len(jobs), progress)
    out: list[Problem] = []
    try:
        if workers == 1 or len(jobs) < 2:
            results = map(_check_one, jobs)
            for r in results:
                bar.update(1)
                if r is not None:
                    out.append(r)
        else:
            with ProcessPoolExecutor(max_workers=workers) as ex:
                chunk = max(1, min(64, len(jobs) // (8 * workers)))
                for r in ex.map(_check_one, jobs, chunksize=chunk):
                    bar.update(1)
                    if r is not None:
                        out.append(r)
    finally:
        bar.close()
    return out


def _bar(total: int, enabled: bool):
    from artlib.data.prepare import _bar as bar

    return bar(total, enabled)


def format_problems(problems: Sequence[Problem], num_frames: int) -> str:
    """The report printed by the command: one tab-separated line per problem, then a count line."""
    lines = [f"{p.kind}\t{p.path}\t{p.frames}\t{p.detail}" for p in problems]
    counts = {k: sum(p.kind == k for p in problems) for k in KINDS}
    if problems:
        lines.append(
            f"FOUND {len(problems)} bad videos (T={num_frames}): "
            + ", ".join(f"{v} {k}" for k, v in counts.items())
        )
    else:
        lines.append(f"OK: no missing, empty, unreadable or shorter-than-{num_frames} videos")
    return "\n".join(lines)


def write_problems(problems: Sequence[Problem], path: str | os.PathLike) -> None:
    """Write the problems as CSV with columns kind, path, frames, detail."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["kind", "path", "frames", "detail"])
        for p in problems:
            w.writerow([p.kind, p.path, p.frames, p.detail])


def read_list(fmt: str, list_file: str | os.PathLike, root: str | os.PathLike | None):
    """Items of an annotation file by format, through artlib.data.annotations."""
    from artlib.data import annotations as ann

    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {fmt!r}")
    if fmt != "generic" and root is None:
        raise ValueError(f"root: the {fmt} format needs --root")
    reader = {
        "generic": ann.read_generic_list,
        "finegym": ann.read_finegym,
        "diving48": ann.read_diving48,
        "kinetics": ann.read_kinetics,
    }[fmt]
    result = reader(list_file, root)
    return result[0] if isinstance(result, tuple) else result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m artlib.data.check",
        description="Report missing, empty, unreadable and too-short videos of an annotation list.",
    )
    p.add_argument("--list", required=True, help="annotation file (list, element list, json, csv)")
    p.add_argument("--root", default=None, help="folder the list's videos are under")
    p.add_argument("--num-frames", type=int, default=16, help="T: frames each video must have")
    p.add_argument("--format", default="generic", choices=FORMATS)
    p.add_argument("--workers", type=int, default=max(1, min(os.cpu_count() or 1, 8)))
    p.add_argument("--report", default=None, help="also write the problems to this CSV")
    p.add_argument(
        "--write-good",
        default=None,
        metavar="LIST",
        help="write the usable items as a generic '<path> <label>' list (paths relative to --root)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--metadata-only", action="store_true", help="do not decode the last frame")
    g.add_argument("--full", action="store_true", help="decode every frame (slow, thorough)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    mode = "metadata" if args.metadata_only else "full" if args.full else "last"
    try:
        items = read_list(args.format, args.list, args.root)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = check_items(
        items,
        num_frames=args.num_frames,
        workers=args.workers,
        mode=mode,
        progress=not args.no_progress,
    )
    if args.report:
        write_problems(problems, args.report)
    if args.write_good:
        from artlib.data.annotations import write_generic_list

        bad = {p.path for p in problems}
        good = [it for it in items if os.fspath(it.path) not in bad]
        write_generic_list(args.write_good, good, root=args.root)
    n = len({os.fspath(getattr(it, "path", it)) for it in items})
    print(f"checked {n} videos from {args.list}")
    print(format_problems(problems, args.num_frames))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
