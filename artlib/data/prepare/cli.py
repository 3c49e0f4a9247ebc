"""``python -m artlib.data.prepare {finegym,kinetics,diving48}``: the command line.

Every argument is checked before anything heavy happens (no folder is created, no video opened):
a mistake answers with one line ``python -m artlib.data.prepare: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from artlib._cli import DefaultsOnce, OneLineParser, prog_name

__all__ = ["X264_PRESETS", "main"]

X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
    "placebo",
)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog_name("artlib.data.prepare", "artlib-prepare"),
        description="Cut training clips from raw videos (frame-exact, resumable), or verify a set.",
        formatter_class=DefaultsOnce,
    )
    sub = p.add_subparsers(dest="dataset", required=True, parser_class=OneLineParser)

    def common(sp, cutting: bool):
        sp.add_argument(
            "--workers",
            type=int,
            default=max(1, min(os.cpu_count() or 1, 8)),
            help="parallel processes (default: the CPUs, at most 8)",
        )
        sp.add_argument(
            "--num-frames", type=int, default=16, help="T: report clips shorter than this"
        )
        sp.add_argument(
            "--report", default=None, help="CSV report path (default: OUT/prepare_report.csv)"
        )
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        if cutting:
            sp.add_argument(
                "--raw", required=True, help="folder of downloaded raw videos (<id>.<ext>)"
            )
            sp.add_argument("--out", required=True, help="output folder of clips")
            sp.add_argument("--gop", type=int, default=16, help="keyframe interval of the clips")
            sp.add_argument(
                "--crf", type=int, default=18, help="libx264 quality 0-51, lower is better"
            )
            sp.add_argument(
                "--preset", default="veryfast", choices=X264_PRESETS, help="libx264 speed preset"
            )
            sp.add_argument("--threads", type=int, default=1, help="codec threads per worker")
            sp.add_argument(
                "--strict", action="store_true", help="exit 1 if raw videos are missing"
            )

    fg = sub.add_parser("finegym", help="cut FineGym subactions", formatter_class=DefaultsOnce)
    fg.add_argument("--annotations", required=True, help="finegym_annotation_info_v1.1.json")
    common(fg, True)
    kn = sub.add_parser(
        "kinetics", help="cut clips of a Kinetics-style csv", formatter_class=DefaultsOnce
    )
    kn.add_argument("--csv", required=True, help="csv with youtube_id,time_start,time_end columns")
    common(kn, True)
    dv = sub.add_parser(
        "diving48", help="verify Diving48 clips (no cutting)", formatter_class=DefaultsOnce
    )
    dv.add_argument("--annotations", required=True, help="Diving48_V2_{train,test}.json")
    dv.add_argument("--root", required=True, help="folder of <vid_name>.mp4 (Diving48's rgb/)")
    dv.add_argument("--vocab", default=None, help="Diving48_vocab.json (optional)")
    common(dv, False)
    return p


def _validate(p: argparse.ArgumentParser, args) -> None:
    """Check every argument; p.error (one line, exit 2) on the first mistake. Creates nothing."""

    def need_file(flag, value):
        if value is not None and not os.path.isfile(value):
            p.error(f"{flag}: no such file: {value}")

    def need_dir(flag, value):
        if not os.path.isdir(value):
            p.error(f"{flag}: no such folder: {value}")

    if args.workers < 1:
        p.error(f"--workers: expected >= 1, got {args.workers}")
    if args.num_frames < 1:
        p.error(f"--num-frames: expected >= 1, got {args.num_frames}")
    if args.dataset == "diving48":
        need_file("--annotations", args.annotations)
        need_dir("--root", args.root)
        need_file("--vocab", args.vocab)
    else:
        if args.dataset == "finegym":
            need_file("--annotations", args.annotations)
        else:
            need_file("--csv", args.csv)
        need_dir("--raw", args.raw)
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            p.error(f"--out: {args.out} exists and is not a folder")
        parent = Path(os.path.abspath(args.out)).parent
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK):
            p.error(f"--out: cannot create folders under {parent} (no write permission)")
        if args.gop < 1:
            p.error(f"--gop: expected >= 1, got {args.gop}")
        if not 0 <= args.crf <= 51:
            p.error(f"--crf: expected 0 to 51, got {args.crf}")
        if args.threads < 0:
            p.error(f"--threads: expected >= 0 (0: FFmpeg decides), got {args.threads}")
    if args.report is not None and os.path.isdir(args.report):
        p.error(f"--report: {args.report} is a folder; expected a file name")


def _sigterm(signum, frame):
    # SIGTERM behaves like Ctrl-C: stop, keep finished clips, write the report
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    _validate(p, args)
    # the whole annotation file is read and validated before any folder is made or video opened
    try:
        if args.dataset == "diving48":
            from artlib.data.annotations import read_diving48

            read_diving48(args.annotations, args.root, vocab_file=args.vocab)
        else:
            from .jobs import finegym_jobs, kinetics_jobs

            if args.dataset == "finegym":
                args.jobs = finegym_jobs(args.annotations)
            else:
                args.jobs = kinetics_jobs(args.csv)
    except (OSError, ValueError) as err:
        p.error(str(err).replace("\n", " "))
    try:
        old = signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:  # not the main thread: leave SIGTERM alone
        return _main(args)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, old)


def _main(args) -> int:
    from .report import report_row, write_report

    progress = not args.no_progress

    if args.dataset == "diving48":
        from artlib.data.check import format_problems

        from .diving48 import verify_diving48

        try:
            problems = verify_diving48(
                args.annotations,
                args.root,
                num_frames=args.num_frames,
                workers=args.workers,
                vocab=args.vocab,
                progress=progress,
            )
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        if args.report:
            rows = [
                report_row(p.kind, p.path, p.path, frames=p.decoded, detail=p.reason)
                for p in problems
            ]
            write_report(rows, args.report)
        bad = any(not p.usable for p in problems)
        print(format_problems(problems, args.num_frames), file=sys.stderr if bad else sys.stdout)
        return 1 if bad else 0

    from .runner import run_jobs

    try:
        summary = run_jobs(
            args.jobs,
            args.raw,
            args.out,
            workers=args.workers,
            num_frames=args.num_frames,
            gop=args.gop,
            crf=args.crf,
            preset=args.preset,
            threads=args.threads,
            progress=progress,
        )
    except (RuntimeError, OSError) as err:  # another run holds OUT's lock; a disk error
        print(f"python -m artlib.data.prepare: error: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    try:
        report = write_report(summary.rows, args.report or Path(args.out, "prepare_report.csv"))
    except OSError as err:  # the clips are safe; only the report is lost
        print(summary.line(args.num_frames))
        print(f"python -m artlib.data.prepare: error: report: {err}", file=sys.stderr)
        return 1
    print(summary.line(args.num_frames))
    print(f"report: {report} ({len(summary.rows)} rows)")
    if summary.interrupted:
        return 130
    if summary.failed or (args.strict and summary.missing_videos):
        return 1
    return 0
