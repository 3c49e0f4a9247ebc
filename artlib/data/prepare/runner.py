"""Running many clip jobs: finished clips skipped, partial ones redone, a process pool that dies
with its parent, one run per output folder (a lock), Ctrl-C and SIGTERM stop cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from tqdm import tqdm

from artlib._io import LockHeld, file_lock

from .cut import PART_SUFFIX, PastEndError, cut_clip
from .jobs import ClipJob, index_raw_videos
from .report import report_row

__all__ = ["LOCK_NAME", "ClipResult", "PrepareSummary", "remove_partials", "run_jobs"]

LOCK_NAME = ".prepare.lock"


@dataclass
class ClipResult:
    """What happened to one clip: status is "cut", "done" (finished by an earlier run), or "failed";
    ``kind`` the report's kind of a failure ("failed", or "past_end": the span starts after the raw
    video's end); ``note`` is set when the clip is cut short by the end of its raw video."""

    name: str
    status: str
    frames: int = -1
    error: str = ""
    note: str = ""
    seconds: float = 0.0
    kind: str = "failed"


@dataclass
class PrepareSummary:
    """Counts of one run and the report rows (dicts with REPORT_FIELDS keys)."""

    total: int = 0
    cut: int = 0
    done: int = 0
    failed: int = 0
    missing_clips: int = 0
    missing_videos: int = 0
    short: int = 0
    past_end: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list)

    def line(self, num_frames: int) -> str:
        return (
            f"{self.total} clips: {self.cut} cut, {self.done} already done, {self.failed} failed, "
            f"{self.missing_clips} without raw video ({self.missing_videos} videos missing), "
            f"{self.short} shorter than {num_frames} frames, "
            f"{self.past_end} past the raw video's end"
            + (" — INTERRUPTED, rerun to finish" if self.interrupted else "")
            + f" [{self.seconds:.1f} s]"
        )


def _probe_frames(path: Path) -> tuple[int, Fraction | None, Fraction | None]:
    """Frame count, average rate and duration (s) of a finished clip from its metadata (the mp4s
    written here carry exact ones). Plain PyAV rather than artlib.data.decode.video_info, which
    would import torch into every worker."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        rate = Fraction(s.average_rate) if s.average_rate else None
        seconds = s.duration * s.time_base if s.duration and s.time_base else None
        return int(s.frames), rate, seconds


def _short_of_span(frames: int, rate: Fraction | None, seconds: Fraction | None, job) -> str:
    """The note of a finished clip (an earlier run's) whose frames cover its span less two frames
    at its average rate: its raw video ended inside the span. (The cut itself knows exactly; for a
    finished clip its duration is what is left: two frames' slack keeps a variable frame rate's
    long frames from counting as missing.)"""
    if rate is None:
        return ""
    seconds = seconds if seconds is not None else frames / rate
    if seconds + 2 / rate >= job.end - job.start:
        return ""
    return (
        f"the clip holds {frames} frames ({float(seconds):.3f} s) of a "
        f"{float(job.end - job.start):.3f} s span: its source ends inside the span"
    )


def _process(job: ClipJob, src: str, out_dir: str, opts: dict) -> ClipResult:
    """Worker body: skip a finished clip (probing its length), or cut it. Never raises."""
    t0 = time.perf_counter()
    dst = Path(out_dir, job.name + ".mp4")
    try:
        if dst.exists():
            try:
                n, rate, seconds = _probe_frames(dst)
                note = _short_of_span(n, rate, seconds, job)
                return ClipResult(job.name, "done", n, note=note, seconds=time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - damaged after the fact (not by us): cut it again
                dst.unlink()
        n, note = cut_clip(src, dst, job.start, job.end, **opts)
        return ClipResult(job.name, "cut", n, note=note, seconds=time.perf_counter() - t0)
    except PastEndError as err:
        msg = f"no clip: {err}".replace("\n", " ")
        return ClipResult(
            job.name, "failed", error=msg, seconds=time.perf_counter() - t0, kind="past_end"
        )
    except Exception as err:  # noqa: BLE001 - reported per clip, the run goes on
        msg = f"{type(err).__name__}: {err}".replace("\n", " ")
        return ClipResult(job.name, "failed", error=msg, seconds=time.perf_counter() - t0)


def _worker_init() -> None:
    # Die with the parent (Linux): a killed run leaves no orphan still writing into OUT.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cancels


@contextlib.contextmanager
def _run_lock(out: Path):
    """One run per output folder: ``OUT/.prepare.lock`` (freed by the OS if the run dies)."""
    try:
        with file_lock(out / LOCK_NAME, blocking=False):
            yield
    except LockHeld as err:
        raise RuntimeError(
            f"out: another prepare run holds {out / LOCK_NAME}; wait for it or stop it first"
        ) from err


def remove_partials(out_dir: str | os.PathLike) -> int:
    """Delete partial clips left by an interrupted run; returns how many."""
    n = 0
    for p in Path(out_dir).glob(f".*{PART_SUFFIX}"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def run_jobs(
    jobs: Sequence[ClipJob],
    raw: str | os.PathLike | dict[str, Path],
    out_dir: str | os.PathLike,
    *,
    workers: int = 1,
    num_frames: int = 16,
    gop: int = 16,
    crf: int = 18,
    preset: str = "veryfast",
    threads: int = 1,
    progress: bool = True,
) -> PrepareSummary:
    """Cut ``jobs`` from the raw videos (a folder or a prebuilt :func:`index_raw_videos` map) into
    ``out_dir``: finished clips skipped, partial ones redone, ``workers`` processes (1: in this
    process). Returns a summary whose ``rows`` are the report: missing raw videos, failed clips with
    their error, clips shorter than ``num_frames`` frames. Ctrl-C stops cleanly (``interrupted``)."""
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    by_name: dict[str, ClipJob] = {}
    # identical rows (Kinetics csvs have a few) collapse; clashing spans are an error
    for j in jobs:
        if by_name.setdefault(j.name, j) != j:
            raise ValueError(
                f"jobs: clip {j.name!r} appears with two spans: {by_name[j.name]} and {j}"
            )
    jobs = list(by_name.values())
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = raw if isinstance(raw, dict) else index_raw_videos(raw)
    opts = dict(gop=gop, crf=crf, preset=preset, threads=threads)
    summary = PrepareSummary(total=len(jobs))

    missing: dict[str, int] = {}
    todo: list[tuple[ClipJob, str]] = []
    for job in sorted(jobs, key=lambda j: (j.source, j.start, j.name)):
        src = index.get(job.source)
        if src is None:
            missing[job.source] = missing.get(job.source, 0) + 1
        else:
            todo.append((job, str(src)))
    for vid, count in sorted(missing.items()):
        summary.rows.append(
            report_row("missing_raw", vid, vid, detail=f"raw video not found; {count} clips")
        )
    summary.missing_videos, summary.missing_clips = len(missing), sum(missing.values())

    def record(res: ClipResult) -> None:
        job = by_name[res.name]
        if res.status == "failed":
            summary.failed += 1
            summary.past_end += res.kind == "past_end"
            summary.rows.append(report_row(res.kind, job.name, job.source, job, detail=res.error))
            return
        if res.status == "cut":
            summary.cut += 1
        else:
            summary.done += 1
        if res.note:  # never a silent short clip: the span runs past the raw video's end
            summary.past_end += 1
            summary.rows.append(
                report_row("past_end", job.name, job.source, job, res.frames, res.note)
            )
        if res.frames < num_frames:
            summary.short += 1
            summary.rows.append(
                report_row(
                    "short",
                    job.name,
                    job.source,
                    job,
                    res.frames,
                    f"< {num_frames} frames; {res.note}",
                )
            )

    with (
        _run_lock(out),
        tqdm(
            total=len(todo), unit="clip", dynamic_ncols=True, smoothing=0.05, disable=not progress
        ) as bar,
    ):
        remove_partials(out)
        try:
            if workers == 1:
                for job, src in todo:
                    record(_process(job, src, str(out), opts))
                    bar.update(1)
            else:
                _run_pool(todo, str(out), opts, workers, record, bar)
        except KeyboardInterrupt:
            summary.interrupted = True
            remove_partials(out)  # the killed workers' unfinished clips
    summary.seconds = time.perf_counter() - t_start
    return summary


def _run_pool(todo, out: str, opts: dict, workers: int, record, bar) -> None:
    ex = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init)
    try:
        pending = set()
        it = iter(todo)
        # keep a bounded number in flight: memory stays flat for 100k clips and Ctrl-C is quick
        for job, src in it:
            pending.add(ex.submit(_process, job, src, out, opts))
            if len(pending) >= 4 * workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                record(fut.result())
                bar.update(1)
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(ex.submit(_process, nxt[0], nxt[1], out, opts))
    except BaseException:
        procs = list((getattr(ex, "_processes", None) or {}).values())
        for proc in procs:  # stop now: a clip in flight is lost (its .part is removed), none other
            proc.kill()
        for proc in procs:
            proc.join()
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
