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

The list itself is checked too (exit status 1; the reason names the item, 1-based): ``bad_label``
(a label outside ``--num-classes`` or past the names of ``--class-names``, when given),
``duplicate`` (a video listed again with the same label: it would train twice) and
``conflicting_label`` (a video listed again with another label). Classes that no video has are
noted. A list with no item is refused (exit status 2, one line).

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

from artlib._cli import DefaultsOnce, OneLineParser, prog_name

from .probe import PROBLEM_KINDS, USABLE_KINDS, VideoProbe, probe_video

__all__ = [
    "KINDS",
    "LIST_KINDS",
    "Problem",
    "check_items",
    "check_list",
    "check_video",
    "format_problems",
    "main",
    "write_problems",
]

LIST_KINDS = ("bad_label", "duplicate", "conflicting_label")
KINDS = PROBLEM_KINDS + LIST_KINDS + tuple(k for k in USABLE_KINDS if k != "ok")
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


def check_list(
    items: Sequence, num_classes: int | None = None
) -> tuple[list[VideoProbe], list[int]]:
    """Check the list itself: labels against ``num_classes`` (when given; -1, "no label", is
    allowed) and videos listed more than once. Returns (problems, classes without any video):
    problems are VideoProbe rows of kind ``bad_label``, ``duplicate`` or ``conflicting_label``
    whose reason names the item (1-based, in list order); the empty classes are those below
    ``num_classes`` (or below the largest label + 1 when it is not given) that no item has."""
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    out: list[VideoProbe] = []
    first: dict[str, tuple[int, int]] = {}  # path -> (item number, label)
    for n, it in enumerate(items, 1):
        path, label = os.fspath(it.path), int(it.label)
        if num_classes is not None and not -1 <= label < num_classes:
            out.append(
                VideoProbe(
                    path,
                    "bad_label",
                    -1,
                    -1,
                    f"item {n}: label {label} is outside 0..{num_classes - 1} "
                    f"({num_classes} classes)",
                )
            )
        if path in first:
            m, seen = first[path]
            kind = "duplicate" if seen == label else "conflicting_label"
            what = "again" if seen == label else f"with label {label}, item {m} with label {seen}"
            out.append(
                VideoProbe(path, kind, -1, -1, f"item {n} lists the video of item {m} {what}")
            )
        else:
            first[path] = (n, label)
    labels = {int(it.label) for it in items if int(it.label) >= 0}
    top = num_classes if num_classes is not None else (max(labels) + 1 if labels else 0)
    empty = sorted(set(range(top)) - labels)
    return out, empty


def format_problems(problems: Sequence[VideoProbe], num_frames: int) -> str:
    """The report printed by the command: one tab-separated line per file, then a count line."""
    lines = [f"{p.kind}\t{p.path}\t{p.declared}\t{p.decoded}\t{p.reason}" for p in problems]
    bad = [p for p in problems if not p.usable and p.kind not in LIST_KINDS]
    listed = [p for p in problems if p.kind in LIST_KINDS]
    notes = [p for p in problems if p.usable]

    def counts(ps, kinds):
        return ", ".join(f"{n} {k}" for k in kinds if (n := sum(p.kind == k for p in ps)))

    if listed:
        lines.append(f"FOUND {len(listed)} list problems: {counts(listed, LIST_KINDS)}")
    if bad:
        lines.append(f"FOUND {len(bad)} unusable videos: {counts(bad, PROBLEM_KINDS)}")
    elif not listed:
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
        prog=prog_name("artlib.data.check", "artlib-check"),
        description="Report the videos of an annotation list that the trainer cannot use, and why.",
        formatter_class=DefaultsOnce,
    )
    p.add_argument("--list", required=True, help="annotation file (list, element list, json, csv)")
    p.add_argument("--root", default=None, help="folder the list's videos are under")
    p.add_argument("--num-frames", type=int, default=16, help="T: frames one clip samples")
    p.add_argument("--format", default="generic", choices=FORMATS, help="the list's format")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="labels must be in 0..N-1 (default: unchecked)",
    )
    p.add_argument(
        "--class-names",
        default=None,
        help="file of class names, one a line in label order: labels must have a name",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=max(1, min(os.cpu_count() or 1, 8)),
        help="processes probing videos (default: the CPUs, at most 8)",
    )
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    if args.num_classes is not None and args.num_classes < 1:
        p.error(f"--num-classes: expected >= 1, got {args.num_classes}")
    if args.class_names is not None:
        try:
            args.names = read_class_names(args.class_names)
        except (OSError, ValueError) as err:
            p.error(f"--class-names: {err}")
        if args.num_classes is not None and args.num_classes != len(args.names):
            p.error(
                f"--num-classes: {args.num_classes} disagrees with the {len(args.names)} names "
                f"of --class-names {args.class_names}"
            )
        args.num_classes = len(args.names)
    for flag, value in (("--report", args.report), ("--write-good", args.write_good)):
        if value is None:
            continue
        parent = os.path.dirname(os.path.abspath(value))
        if os.path.isdir(value):
            p.error(f"{flag}: {value} is a folder; expected a file name")
        if not os.path.isdir(parent):
            p.error(f"{flag}: the folder {parent} does not exist")


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names, one a line in label order (blank lines and surrounding spaces ignored);
    ValueError for a file with none or with a name twice."""
    with open(path, encoding="utf-8") as fh:
        names = [line.strip() for line in fh if line.strip()]
    if not names:
        raise ValueError(f"{os.fspath(path)} names no class")
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise ValueError(
                f"{os.fspath(path)}: class {n!r} is named twice (labels {seen[n]}, {i})"
            )
        seen[n] = i
    return names


def _write_outputs(args, items, problems, listed) -> None:
    """--report and --write-good."""
    if args.report:
        write_problems(problems, args.report)
    if args.write_good:
        from artlib.data.annotations import VideoItem, write_generic_list

        # each usable video once, with its first line's label, and only labels in range
        bad = {p.path for p in problems if not p.usable and p.kind not in LIST_KINDS}
        bad |= {p.path for p in listed if p.kind == "bad_label"}
        good, seen = [], set()
        for it in items:
            path = os.fspath(it.path)
            if path not in bad and path not in seen:
                seen.add(path)
                good.append(VideoItem(os.path.abspath(path), it.label))
        write_generic_list(args.write_good, good)


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    _validate(p, args)
    mode = "metadata" if args.metadata_only else "full" if args.full else "last"
    try:
        items = read_list(args.format, args.list, args.root)
    except (OSError, ValueError) as err:
        p.error(f"--list: {err}".replace("\n", " "))
    if not items:
        p.error(f"--list: {args.list} lists no videos")
    listed, empty = check_list(items, args.num_classes)
    try:
        problems = listed + check_items(
            items,
            num_frames=args.num_frames,
            workers=args.workers,
            mode=mode,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback
        print("interrupted", file=sys.stderr)
        return 130
    try:
        _write_outputs(args, items, problems, listed)
    except OSError as err:  # a full disk, a folder without write permission
        print(f"{p.prog}: error: {err}".replace("\n", " "), file=sys.stderr)
        return 1
    n = len({os.fspath(getattr(it, "path", it)) for it in items})
    print(f"checked {n} videos from {args.list}")
    print(format_problems(problems, args.num_frames))
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        print(f"notes: {len(empty)} classes have no video: labels {shown}")
    return 1 if any(not p.usable for p in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
