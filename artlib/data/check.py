"""Check a data set before training: every listed video is usable by the trainer, and why not.

Commands::

    python -m artlib.data.check --list gym99_train_element_v1.1.txt --root OUT --num-frames 16 \\
        --format finegym
    python -m artlib.data.check --list train.txt --root videos --num-frames 16        # generic list
    python -m artlib.data.check --list Diving48_V2_train.json --root rgb --format diving48 --workers 2

Each distinct video goes through :func:`artlib.data.probe_video`, the usability rule the data set
applies too (see ``artlib.data.probe``): it reads the container's metadata and then decodes the last
frame the metadata declares, because metadata lies (``--metadata-only`` skips that decode, ``--full``
decodes every frame). The report lists one line per file that is not plainly "ok"::

    kind<TAB>path<TAB>declared<TAB>decoded<TAB>reason

Problems (the file is not usable; exit status 1): ``missing``, ``empty``, ``no_video`` (audio only),
``truncated``, ``corrupt``. Notes (the file is usable; exit status stays 0): ``overstated`` (the
header declares more frames than decode), ``short`` (fewer than ``--num-frames`` frames: the
sampling repeats frames). ``--report CSV`` writes the same rows as CSV.

``--write-good LIST`` writes the usable items as a generic ``<path> <label>`` list with **absolute
paths**, which the trainer accepts as they are, with or without ``--data-root``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

from artlib._io import OneLineParser

from .probe import PROBLEM_KINDS, USABLE_KINDS, VideoProbe, probe_video

__all__ = [
    "KINDS",
    "Problem",
    "check_items",
    "check_video",
    "format_problems",
    "main",
    "write_problems",
]

KINDS = PROBLEM_KINDS + tuple(k for k in USABLE_KINDS if k != "ok")
FORMATS = ("generic", "finegym", "diving48", "kinetics")
Problem = VideoProbe  # what the checker reports: a probe whose kind is not "ok"


def check_video(
    path: str | os.PathLike, num_frames: int = 16, mode: str = "last"
) -> VideoProbe | None:
    """Probe one video (``probe_video``); None when it is plainly "ok", else the probe (a problem
    when ``not probe.usable``, a note otherwise)."""
    p = probe_video(path, num_frames, mode)
    return None if p.kind == "ok" else p


def _check_one(args: tuple[str, int, str]) -> VideoProbe | None:
    return check_video(*args)


def check_items(
    items: Iterable,
    *,
    num_frames: int = 16,
    workers: int = 1,
    mode: str = "last",
    progress: bool = True,
) -> list[VideoProbe]:
    """Check the videos of ``items`` (VideoItems, or paths) with ``workers`` processes; returns the
    probes that are not "ok", in the order the videos first appear (each path is checked once)."""
    if num_frames < 1:
        raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    paths = list(dict.fromkeys(os.fspath(getattr(it, "path", it)) for it in items))
    jobs = [(p, num_frames, mode) for p in paths]
    out: list[VideoProbe] = []
    with tqdm(total=len(jobs), unit="video", disable=not progress, dynamic_ncols=True) as bar:
        if workers == 1 or len(jobs) < 2:
            results: Iterable = map(_check_one, jobs)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            chunk = max(1, min(64, len(jobs) // (8 * workers)))
            results = pool.map(_check_one, jobs, chunksize=chunk)
        try:
            for r in results:
                bar.update(1)
                if r is not None:
                    out.append(r)
        finally:
            if pool is not None:
                pool.shutdown()
    return out


def format_problems(problems: Sequence[VideoProbe], num_frames: int) -> str:
    """The report printed by the command: one tab-separated line per file, then a count line."""
    lines = [f"{p.kind}\t{p.path}\t{p.declared}\t{p.decoded}\t{p.reason}" for p in problems]
    bad = [p for p in problems if not p.usable]
    notes = [p for p in problems if p.usable]

    def counts(ps, kinds):
        return ", ".join(f"{n} {k}" for k in kinds if (n := sum(p.kind == k for p in ps)))

    if bad:
        lines.append(f"FOUND {len(bad)} unusable videos: {counts(bad, PROBLEM_KINDS)}")
    else:
        lines.append("OK: every video is usable")
    if notes:
        lines.append(f"notes (usable, T={num_frames}): {counts(notes, USABLE_KINDS)}")
    return "\n".join(lines)


def write_problems(problems: Sequence[VideoProbe], path: str | os.PathLike) -> None:
    """Write the probes as CSV with columns kind, path, declared, decoded, reason, atomically."""
    from artlib._io import atomic_write

    with atomic_write(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["kind", "path", "declared", "decoded", "reason"])
        for p in problems:
            w.writerow([p.kind, p.path, p.declared, p.decoded, p.reason])


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


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m artlib.data.check",
        description="Report the videos of an annotation list that the trainer cannot use, and why.",
    )
    p.add_argument("--list", required=True, help="annotation file (list, element list, json, csv)")
    p.add_argument("--root", default=None, help="folder the list's videos are under")
    p.add_argument("--num-frames", type=int, default=16, help="T: frames one clip samples")
    p.add_argument("--format", default="generic", choices=FORMATS)
    p.add_argument("--workers", type=int, default=max(1, min(os.cpu_count() or 1, 8)))
    p.add_argument("--report", default=None, help="also write the findings to this CSV")
    p.add_argument(
        "--write-good",
        default=None,
        metavar="LIST",
        help="write the usable items as a '<path> <label>' list with absolute paths",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--metadata-only", action="store_true", help="do not decode the last frame")
    g.add_argument("--full", action="store_true", help="decode every frame (slow, thorough)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _validate(p: argparse.ArgumentParser, args) -> None:
    """Every argument checked before any video is opened: one line and exit 2 on a mistake."""
    if not os.path.isfile(args.list):
        p.error(f"--list: no such file: {args.list}")
    if args.root is not None and not os.path.isdir(args.root):
        p.error(f"--root: no such folder: {args.root}")
    if args.num_frames < 1:
        p.error(f"--num-frames: expected >= 1, got {args.num_frames}")
    if args.workers < 1:
        p.error(f"--workers: expected >= 1, got {args.workers}")
    for flag, value in (("--report", args.report), ("--write-good", args.write_good)):
        if value is None:
            continue
        parent = os.path.dirname(os.path.abspath(value))
        if os.path.isdir(value):
            p.error(f"{flag}: {value} is a folder; expected a file name")
        if not os.path.isdir(parent):
            p.error(f"{flag}: the folder {parent} does not exist")


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    _validate(p, args)
    mode = "metadata" if args.metadata_only else "full" if args.full else "last"
    try:
        items = read_list(args.format, args.list, args.root)
    except (OSError, ValueError) as err:
        p.error(f"--list: {err}")
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
        from artlib.data.annotations import VideoItem, write_generic_list

        bad = {p.path for p in problems if not p.usable}
        good = [
            VideoItem(os.path.abspath(it.path), it.label)
            for it in items
            if os.fspath(it.path) not in bad
        ]
        write_generic_list(args.write_good, good)
    n = len({os.fspath(getattr(it, "path", it)) for it in items})
    print(f"checked {n} videos from {args.list}")
    print(format_problems(problems, args.num_frames))
    return 1 if any(not p.usable for p in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
