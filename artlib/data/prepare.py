"""Turn downloaded raw videos into training clips: frame-exact, resumable, parallel.

Commands (run from anywhere; ``--help`` on each lists every option)::

    # FineGym: cut every subaction of finegym_annotation_info_v1.1.json from the raw YouTube videos
    python -m artlib.data.prepare finegym --raw RAW --annotations finegym_annotation_info_v1.1.json \\
        --out OUT [--workers 2]
    # Kinetics-style csv (label,youtube_id,time_start,time_end[,split]); raw files named by youtube_id
    python -m artlib.data.prepare kinetics --raw RAW --csv kinetics_train.csv --out OUT
    # Diving48 ships trimmed clips: verify them only (missing, unreadable, shorter than T)
    python -m artlib.data.prepare diving48 --root Diving48/rgb --annotations Diving48_V2_train.json

What a clip holds (the rule the tests check, to the frame). A span [start, end) in seconds holds exactly
the frames whose presentation time t satisfies ``start <= t < end``, where t is counted on the raw
file's timeline from the container's start time (the origin ``ffmpeg -ss`` uses). The comparison is
done in exact rational arithmetic (pts x time_base against the decimal timestamp), so a frame that
falls exactly on ``start`` is in and one exactly on ``end`` is out; for a constant frame rate f this is
frames ``ceil(start*f) .. ceil(end*f) - 1``. FineGym segment times are relative to their event, so a
subaction's span is ``[event_start + first_stage_start, event_start + last_stage_end)``.

Output: H.264 (libx264, yuv420p, ``--crf`` 18, ``--preset`` veryfast), a keyframe every ``--gop`` 16
frames so that sparse sampling seeks cheaply, no audio, timestamps kept from the source (shifted to
start at 0), so a variable frame rate survives.

Safety. Each clip is encoded to a hidden temporary ``.<name>.<pid>.part`` in the output folder and
renamed to ``<name>.mp4`` only when complete (after an fsync), so a finished name is always a whole
file. A rerun skips finished clips, deletes stale partial files and redoes those clips; killing the run
at any point (Ctrl-C, SIGTERM, SIGKILL) loses nothing that was finished. A lock file refuses a second
concurrent run on the same output folder. Missing raw videos and failing clips never stop the run:
they go into the CSV report (default ``OUT/prepare_report.csv``) with the clips shorter than
``--num-frames`` frames. Exit status: 0 when every clip whose raw video exists was cut (missing raw
videos are normal for FineGym and are only reported), 1 when any clip failed (``--strict``: also
when raw videos are missing), 130 when interrupted.

Throughput on a 2-core CPU (480p H.264 sources, 3 s clips): see docs/prepare.md and
benchmarks/bench_prepare.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

__all__ = [
    "ClipJob",
    "ClipResult",
    "PrepareSummary",
    "cut_clip",
    "finegym_jobs",
    "frame_in_span",
    "index_raw_videos",
    "kinetics_clip_name",
    "kinetics_jobs",
    "main",
    "run_jobs",
    "verify_diving48",
]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts")
PART_SUFFIX = ".part"
LOCK_NAME = ".prepare.lock"
REPORT_FIELDS = ("kind", "name", "source", "start", "end", "frames", "detail")


# ----------------------------------------------------------------------------------------------
# Jobs: what to cut
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipJob:
    """One clip to cut: ``out/<name>.mp4`` = frames of raw video ``source`` with start <= t < end.

    ``source`` is the raw video's key (a YouTube id), looked up in the raw folder's index; ``start``
    and ``end`` are seconds on the raw file's timeline, kept as exact fractions of the decimal text.
    """

    name: str
    source: str
    start: Fraction
    end: Fraction


def _exact(value: float | int | str, what: str) -> Fraction:
    """The decimal a JSON/CSV number was written as, exactly (``repr`` of a float is its shortest
    decimal, so 1781.76 stays 178176/100 rather than the nearest binary double)."""
    try:
        text = value if isinstance(value, str) else repr(value)
        out = Fraction(text.strip())
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"{what}: expected a number of seconds, got {value!r}") from err
    return out


def finegym_jobs(annotations: str | os.PathLike | dict) -> list[ClipJob]:
    """Every subaction of FineGym's ``finegym_annotation_info_v1.1.json`` as a ClipJob.

    The file maps ``ytid -> {"E_<es>_<ee>": {"event": int, "timestamps": [[start, end]],
    "segments": null | {"A_<as>_<ae>": {"stages": n, "timestamps": [[s, e], ...]}}}}`` with event
    times in seconds of the raw video and stage times in seconds from the event's start. A subaction
    spans its first stage's start to its last stage's end; its clip is named
    ``<ytid>_E_<es>_<ee>_A_<as>_<ae>`` as in the gym99/gym288 element lists (keys that already carry
    the id as a prefix are accepted too). Events without segments give no clip.
    """
    if isinstance(annotations, dict):
        data, where = annotations, "annotations"
    else:
        where = str(annotations)
        with open(annotations, encoding="utf-8") as fh:
            data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(
            f"{where}: expected a JSON object keyed by YouTube id, got {type(data).__name__}"
        )
    jobs: list[ClipJob] = []
    for ytid, events in data.items():
        if not isinstance(events, dict):
            raise ValueError(f"{where}: video {ytid!r}: expected an object of events")
        for event_key, event in events.items():
            ctx = f"{where}: {ytid}/{event_key}"
            segments = event.get("segments") if isinstance(event, dict) else None
            if not segments:
                continue
            try:
                event_start = _exact(event["timestamps"][0][0], f"{ctx} timestamps")
            except (KeyError, IndexError, TypeError) as err:
                raise ValueError(f"{ctx}: expected 'timestamps': [[start, end]]") from err
            event_name = event_key if event_key.startswith(f"{ytid}_") else f"{ytid}_{event_key}"
            for seg_key, seg in segments.items():
                sctx = f"{ctx}/{seg_key}"
                try:
                    stamps = seg["timestamps"]
                    s, e = _exact(stamps[0][0], sctx), _exact(stamps[-1][1], sctx)
                except (KeyError, IndexError, TypeError) as err:
                    raise ValueError(f"{sctx}: expected 'timestamps': [[s, e], ...]") from err
                name = (
                    seg_key if seg_key.startswith(f"{event_name}_") else f"{event_name}_{seg_key}"
                )
                jobs.append(ClipJob(name, ytid, event_start + s, event_start + e))
    return jobs


def kinetics_clip_name(youtube_id: str, start: Fraction, end: Fraction) -> str:
    """The usual name of a trimmed Kinetics clip: ``<youtube_id>_<start:06d>_<end:06d>``."""
    return f"{youtube_id}_{int(start):06d}_{int(end):06d}"


def kinetics_jobs(csv_file: str | os.PathLike) -> list[ClipJob]:
    """One ClipJob per row of a Kinetics-style csv with columns ``youtube_id, time_start, time_end``
    (``label`` and ``split`` may be present and are ignored here; the header row is required).
    Clips are named by :func:`kinetics_clip_name`, flat in the output folder."""
    jobs = []
    with open(csv_file, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"youtube_id", "time_start", "time_end"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(
                f"{csv_file}: expected a header with columns {sorted(need)}, got {reader.fieldnames}"
            )
        for lineno, row in enumerate(reader, start=2):
            ctx = f"{csv_file}:{lineno}"
            yid = (row["youtube_id"] or "").strip()
            if not yid:
                raise ValueError(f"{ctx}: empty youtube_id")
            start, end = _exact(row["time_start"], ctx), _exact(row["time_end"], ctx)
            jobs.append(ClipJob(kinetics_clip_name(yid, start, end), yid, start, end))
    return jobs


def index_raw_videos(raw: str | os.PathLike) -> dict[str, Path]:
    """Map each raw video's stem to its path, searching ``raw`` recursively (so both ``RAW/<id>.mp4``
    and ``RAW/<id>/<id>.mp4`` work). Partial downloads (``.part``, ``.ytdl``) are ignored; where one
    id has several files, the first by extension preference (mp4, mkv, webm, ...) wins."""
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f"raw: expected a folder of downloaded videos, {raw} is not one")
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
    found: dict[str, Path] = {}
    for dirpath, _, files in os.walk(raw):
        for fname in files:
            p = Path(dirpath, fname)
            ext = p.suffix.lower()
            if ext not in rank:
                continue
            old = found.get(p.stem)
            if old is None or rank[ext] < rank[old.suffix.lower()]:
                found[p.stem] = p
    return found


# ----------------------------------------------------------------------------------------------
# Cutting one clip
# ----------------------------------------------------------------------------------------------


def frame_in_span(t: Fraction, start: Fraction, end: Fraction) -> bool:
    """The inclusion rule: a frame at time ``t`` belongs to the clip of ``[start, end)``."""
    return start <= t < end


def part_path(dst: Path) -> Path:
    """The temporary name a clip is written under: hidden, per process, never matching ``*.mp4``."""
    return dst.with_name(f".{dst.name}.{os.getpid()}{PART_SUFFIX}")


def cut_clip(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    start: Fraction | float | str,
    end: Fraction | float | str,
    *,
    gop: int = 16,
    crf: int = 18,
    preset: str = "veryfast",
    threads: int = 1,
) -> tuple[int, str]:
    """Re-encode the frames of ``src`` with ``start <= t < end`` into ``dst`` (H.264, mp4).

    Seeks to the keyframe at or before ``start`` (and decodes from the file's start if the demuxer
    overshoots), decodes on, and encodes exactly the frames of the span. Writes a temporary file and
    renames it to ``dst`` when complete. Returns ``(frames written, note)``; the note is empty unless
    the source ended before ``end``. Raises ValueError for an empty span or one with no frames.
    """
    import av

    start = start if isinstance(start, Fraction) else _exact(start, "start")
    end = end if isinstance(end, Fraction) else _exact(end, "end")
    if not end > start:
        raise ValueError(f"span: expected end > start, got [{float(start)}, {float(end)})")
    dst = Path(dst)
    tmp = part_path(dst)
    n = 0
    last_t: Fraction | None = None
    step = Fraction(0)  # one frame's duration at the average rate
    reached_end = False
    try:
        with av.open(str(src)) as inp:
            if not inp.streams.video:
                raise ValueError(f"{src}: no video stream")
            ist = inp.streams.video[0]
            ist.codec_context.thread_count = threads
            tb = ist.time_base
            if ist.average_rate:
                step = 1 / Fraction(ist.average_rate)
            if inp.start_time is not None:  # microseconds, the origin ffmpeg -ss counts from
                origin = Fraction(inp.start_time, 1_000_000)
            else:
                origin = (ist.start_time or 0) * tb
            frames = _frames_from(inp, ist, origin, start)
            with av.open(str(tmp), "w", format="mp4") as out:
                ost = None
                first_pts = None
                for frame, pts, t in frames:
                    last_t = t
                    if t < start:
                        continue
                    if not frame_in_span(t, start, end):
                        reached_end = True
                        break
                    if ost is None:
                        ost = _add_h264(
                            out, ist, frame, gop=gop, crf=crf, preset=preset, threads=threads
                        )
                        first_pts = pts
                    pts = pts - first_pts
                    w, h = ost.codec_context.width, ost.codec_context.height
                    if frame.format.name != "yuv420p" or frame.width != w or frame.height != h:
                        frame = frame.reformat(width=w, height=h, format="yuv420p")
                    frame.pts, frame.time_base = pts, tb
                    frame.pict_type = 0  # NONE: the source's keyframes must not force ours
                    out.mux(ost.encode(frame))
                    n += 1
                if ost is None:
                    ends = (
                        ""
                        if last_t is None
                        else f"; the video's last frame is at {float(last_t):.3f} s"
                    )
                    raise ValueError(
                        f"span [{float(start):.3f}, {float(end):.3f}) s holds no frame of {src}{ends}"
                    )
                out.mux(ost.encode())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    note = ""
    # the video ran out inside the span, more than a frame before its end: the clip is cut short
    if not reached_end and last_t is not None and last_t + step < end:
        note = f"source ends at {float(last_t):.3f} s, before the span's end {float(end):.3f} s"
    return n, note


def _frames_from(inp, ist, origin: Fraction, start: Fraction):
    """Yield (frame, pts, t) in display order from the keyframe at or before ``start`` on. If the seek
    lands after ``start`` (a bad index), decode from the beginning instead: exactness first."""
    tb = ist.time_base

    def times(frames):
        for f in frames:
            pts = f.pts if f.pts is not None else f.dts
            if pts is None:
                raise ValueError("a decoded frame has no timestamp; cannot place it in time")
            yield f, pts, pts * tb - origin

    if start > 0:
        target = math.floor((start + origin) / tb)
        inp.seek(target, stream=ist, backward=True, any_frame=False)
        it = times(inp.decode(ist))
        first = next(it, None)
        if first is not None and first[2] <= start:
            yield first
            yield from it
            return
        inp.seek(ist.start_time if ist.start_time is not None else 0, stream=ist, backward=True)
        ist.codec_context.flush_buffers()
    yield from times(inp.decode(ist))


def _add_h264(out, ist, frame, *, gop: int, crf: int, preset: str, threads: int):
    rate = ist.average_rate or ist.guessed_rate or Fraction(25)
    ost = out.add_stream("libx264", rate=rate)
    # yuv420p needs even sides: drop a trailing odd row/column by rescaling (rare in practice)
    ost.width, ost.height = frame.width - frame.width % 2, frame.height - frame.height % 2
    ost.pix_fmt = "yuv420p"
    if ist.codec_context.sample_aspect_ratio:  # keep anamorphic sources' display shape
        ost.codec_context.sample_aspect_ratio = ist.codec_context.sample_aspect_ratio
    ost.time_base = ist.time_base
    ost.codec_context.time_base = ist.time_base
    ost.codec_context.thread_count = threads
    ost.options = {
        "crf": str(crf),
        "preset": preset,
        "threads": str(threads),
        # a keyframe exactly every `gop` frames (scene-cut keyframes off): seek cost is bounded and
        # predictable, and a sampled frame is at most gop - 1 decodes away from a keyframe
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
    }
    return ost


# ----------------------------------------------------------------------------------------------
# Running many jobs
# ----------------------------------------------------------------------------------------------


@dataclass
class ClipResult:
    """What happened to one clip: status is "cut", "done" (finished by an earlier run), or "failed"."""

    name: str
    status: str
    frames: int = -1
    error: str = ""
    note: str = ""
    seconds: float = 0.0


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
    interrupted: bool = False
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list)

    def line(self, num_frames: int) -> str:
        return (
            f"{self.total} clips: {self.cut} cut, {self.done} already done, {self.failed} failed, "
            f"{self.missing_clips} without raw video ({self.missing_videos} videos missing), "
            f"{self.short} shorter than {num_frames} frames"
            + (" — INTERRUPTED, rerun to finish" if self.interrupted else "")
            + f" [{self.seconds:.1f} s]"
        )


def _probe_frames(path: Path) -> int:
    """Frame count of a finished clip from its metadata (the mp4s written here carry an exact one).
    Plain PyAV rather than artlib.data.decode.video_info, which would import torch into every worker."""
    import av

    with av.open(str(path)) as c:
        return int(c.streams.video[0].frames)


def _process(job: ClipJob, src: str, out_dir: str, opts: dict) -> ClipResult:
    """Worker body: skip a finished clip (probing its length), or cut it. Never raises."""
    t0 = time.perf_counter()
    dst = Path(out_dir, job.name + ".mp4")
    try:
        if dst.exists():
            try:
                n = _probe_frames(dst)
                return ClipResult(job.name, "done", n, seconds=time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - damaged after the fact (not by us): cut it again
                dst.unlink()
        n, note = cut_clip(src, dst, job.start, job.end, **opts)
        return ClipResult(job.name, "cut", n, note=note, seconds=time.perf_counter() - t0)
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


class _Lock:
    """An exclusive lock on ``OUT/.prepare.lock`` for one run (flock: freed by the OS if we die)."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK_NAME
        self.fh = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self.fh.close()
            raise RuntimeError(
                f"out: another prepare run holds {self.path}; wait for it or stop it first"
            ) from err
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            self.fh.close()


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
    for (
        j
    ) in jobs:  # identical rows (Kinetics csvs have a few) collapse; clashing spans are an error
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
            _row("missing_raw", vid, vid, detail=f"raw video not found; {count} clips")
        )
    summary.missing_videos, summary.missing_clips = len(missing), sum(missing.values())

    def record(res: ClipResult) -> None:
        job = by_name[res.name]
        if res.status == "failed":
            summary.failed += 1
            summary.rows.append(_row("failed", job.name, job.source, job, detail=res.error))
            return
        if res.status == "cut":
            summary.cut += 1
        else:
            summary.done += 1
        if res.frames < num_frames:
            summary.short += 1
            summary.rows.append(
                _row(
                    "short",
                    job.name,
                    job.source,
                    job,
                    res.frames,
                    f"< {num_frames} frames; {res.note}",
                )
            )

    with _Lock(out):
        remove_partials(out)
        bar = _bar(len(todo), progress)
        try:
            if workers == 1:
                for job, src in todo:
                    res = _process(job, src, str(out), opts)
                    record(res)
                    bar.update(1)
            else:
                _run_pool(todo, str(out), opts, workers, record, bar)
        except KeyboardInterrupt:
            summary.interrupted = True
            remove_partials(out)  # the killed workers' unfinished clips
        finally:
            bar.close()
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


def _bar(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; stay usable without it
        enabled = False
    if not enabled:

        class _Null:
            def update(self, n):
                pass

            def close(self):
                pass

        return _Null()
    return tqdm(total=total, unit="clip", dynamic_ncols=True, smoothing=0.05)


def _row(kind, name, source, job: ClipJob | None = None, frames: int | str = "", detail: str = ""):
    return {
        "kind": kind,
        "name": name,
        "source": source,
        "start": "" if job is None else f"{float(job.start):.3f}",
        "end": "" if job is None else f"{float(job.end):.3f}",
        "frames": frames,
        "detail": detail,
    }


def write_report(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write report rows as CSV (columns REPORT_FIELDS), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PART_SUFFIX}")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=REPORT_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------
# Diving48: verify only
# ----------------------------------------------------------------------------------------------


def verify_diving48(
    annotations: str | os.PathLike,
    root: str | os.PathLike,
    *,
    num_frames: int = 16,
    workers: int = 1,
    vocab: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Check every Diving48 item of ``annotations`` (``Diving48_V2_{train,test}.json``) under
    ``root`` (the ``rgb/`` folder of ``<vid_name>.mp4`` files): returns the checker's problem list
    (missing, empty, unreadable, shorter than ``num_frames``)."""
    from artlib.data.annotations import read_diving48
    from artlib.data.check import check_items

    items, _ = _items_and_classes(read_diving48(annotations, root, vocab_file=vocab))
    return check_items(items, num_frames=num_frames, workers=workers, progress=progress)


def _items_and_classes(result):
    """Readers return ``items`` or ``(items, class_names)``; accept both."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], list):
        return result
    return result, None


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m artlib.data.prepare",
        description="Cut training clips from raw videos (frame-exact, resumable), or verify a set.",
    )
    sub = p.add_subparsers(dest="dataset", required=True)

    def common(sp, cutting: bool):
        sp.add_argument("--workers", type=int, default=max(1, min(os.cpu_count() or 1, 8)))
        sp.add_argument(
            "--num-frames", type=int, default=16, help="T: report clips shorter than this"
        )
        sp.add_argument(
            "--report", default=None, help="CSV report path (default OUT/prepare_report.csv)"
        )
        sp.add_argument("--no-progress", action="store_true")
        if cutting:
            sp.add_argument(
                "--raw", required=True, help="folder of downloaded raw videos (<id>.<ext>)"
            )
            sp.add_argument("--out", required=True, help="output folder of clips")
            sp.add_argument("--gop", type=int, default=16, help="keyframe interval of the clips")
            sp.add_argument("--crf", type=int, default=18, help="libx264 quality (lower = better)")
            sp.add_argument("--preset", default="veryfast", help="libx264 preset")
            sp.add_argument("--threads", type=int, default=1, help="codec threads per worker")
            sp.add_argument(
                "--strict", action="store_true", help="exit 1 if raw videos are missing"
            )

    fg = sub.add_parser("finegym", help="cut FineGym subactions")
    fg.add_argument("--annotations", required=True, help="finegym_annotation_info_v1.1.json")
    common(fg, True)
    kn = sub.add_parser("kinetics", help="cut clips of a Kinetics-style csv")
    kn.add_argument("--csv", required=True, help="csv with youtube_id,time_start,time_end columns")
    common(kn, True)
    dv = sub.add_parser("diving48", help="verify Diving48 clips (no cutting)")
    dv.add_argument("--annotations", required=True, help="Diving48_V2_{train,test}.json")
    dv.add_argument("--root", required=True, help="folder of <vid_name>.mp4 (Diving48's rgb/)")
    dv.add_argument("--vocab", default=None, help="Diving48_vocab.json (optional)")
    common(dv, False)
    return p


def _sigterm(signum, frame):
    # SIGTERM behaves like Ctrl-C: stop, keep finished clips, write the report
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        old = signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:  # not the main thread: leave SIGTERM alone
        return _main(args)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, old)


def _main(args) -> int:
    progress = not args.no_progress

    if args.dataset == "diving48":
        from artlib.data.check import format_problems

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
            write_report(
                [_row(p.kind, p.path, p.path, frames=p.frames, detail=p.detail) for p in problems],
                args.report,
            )
        print(
            format_problems(problems, args.num_frames), file=sys.stderr if problems else sys.stdout
        )
        return 1 if problems else 0

    jobs = finegym_jobs(args.annotations) if args.dataset == "finegym" else kinetics_jobs(args.csv)
    summary = run_jobs(
        jobs,
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
    report = write_report(summary.rows, args.report or Path(args.out, "prepare_report.csv"))
    print(summary.line(args.num_frames))
    print(f"report: {report} ({len(summary.rows)} rows)")
    if summary.interrupted:
        return 130
    if summary.failed or (args.strict and summary.missing_videos):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
