"""What to cut: clip jobs from FineGym's JSON or a Kinetics-style csv, and the raw videos' index."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

__all__ = [
    "VIDEO_EXTENSIONS",
    "ClipJob",
    "exact_seconds",
    "finegym_jobs",
    "index_raw_videos",
    "kinetics_clip_name",
    "kinetics_jobs",
]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts")


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


def exact_seconds(value: float | int | str, what: str) -> Fraction:
    """The decimal a JSON/CSV number was written as, exactly (``repr`` of a float is its shortest
    decimal, so 1781.76 stays 178176/100 rather than the nearest binary double)."""
    try:
        text = value if isinstance(value, str) else repr(value)
        out = Fraction(text.strip())
    except (ValueError, ZeroDivisionError, TypeError, AttributeError):
        # Fraction("nan"/"inf") is a ValueError too: a time must be a finite number
        raise ValueError(f"{what}: expected a finite number of seconds, got {value!r}") from None
    return out


def _no_duplicate_keys(pairs: list) -> dict:
    """json object_pairs_hook: a key given twice in one object is an error (json.load would keep
    the last one silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _load_annotations(path: str | os.PathLike):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _seconds(value, ctx: str) -> Fraction:
    """A JSON number of seconds, finite (a string, a bool, NaN or Infinity is an error)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{ctx}: expected a number of seconds, got {_shown(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{ctx}: expected a finite number of seconds, got {value}")
    return exact_seconds(value, ctx)


def _spans(value, ctx: str, what: str, one: bool = False) -> list[tuple[Fraction, Fraction]]:
    """``[[start, end], ...]`` (exactly one pair when ``one``) as exact (start, end) pairs, each
    with start < end, in order (each pair starts where the previous one started or later)."""
    form = "[[start, end]]" if one else "[[start, end], ...]"
    if not isinstance(value, list) or not value or (one and len(value) != 1):
        raise ValueError(f"{ctx}: {what}: expected {form}, got {_shown(value)}")
    out: list[tuple[Fraction, Fraction]] = []
    for i, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"{ctx}: {what}[{i}]: expected [start, end], got {_shown(pair)}")
        s, e = (
            _seconds(pair[0], f"{ctx}: {what}[{i}][0]"),
            _seconds(pair[1], f"{ctx}: {what}[{i}][1]"),
        )
        if not e > s:
            raise ValueError(f"{ctx}: {what}[{i}]: end {pair[1]} is not after start {pair[0]}")
        if out and s < out[-1][0]:
            raise ValueError(
                f"{ctx}: {what}[{i}]: starts at {pair[0]}, before the previous one "
                f"({float(out[-1][0])}): stages must be in order"
            )
        out.append((s, e))
    return out


def finegym_jobs(annotations: str | os.PathLike | dict) -> list[ClipJob]:
    """Every subaction of FineGym's ``finegym_annotation_info_v1.1.json`` as a ClipJob.

    The file maps ``ytid -> {"E_<es>_<ee>": {"event": int, "timestamps": [[start, end]],
    "segments": null | {"A_<as>_<ae>": {"stages": n, "timestamps": [[s, e], ...]}}}}`` with event
    times in seconds of the raw video and stage times in seconds from the event's start. A subaction
    spans its first stage's start to its last stage's end; its clip is named
    ``<ytid>_E_<es>_<ee>_A_<as>_<ae>`` as in the gym99/gym288 element lists (keys that already carry
    the id as a prefix are accepted too). Events without segments give no clip.

    The whole file is validated before any job is returned: every event an object, its
    ``timestamps`` one pair of finite JSON numbers with start < end, ``segments`` null or an object
    of objects whose ``timestamps`` are such pairs in order, no key twice in one object and no clip
    name twice. A violation raises ValueError naming the entry (``file: ytid/event/segment: ...``).
    """
    if isinstance(annotations, dict):
        data, where = annotations, "annotations"
    else:
        where = str(annotations)
        data = _load_annotations(annotations)
    if not isinstance(data, dict):
        raise ValueError(
            f"{where}: expected a JSON object keyed by YouTube id, got {type(data).__name__}"
        )
    jobs: list[ClipJob] = []
    seen: dict[str, str] = {}  # clip name -> the entry that made it
    for ytid, events in data.items():
        if not ytid.strip():
            raise ValueError(f"{where}: an empty YouTube id")
        if not isinstance(events, dict):
            raise ValueError(
                f"{where}: {ytid}: expected an object of events, got {type(events).__name__}"
            )
        for event_key, event in events.items():
            ctx = f"{where}: {ytid}/{event_key}"
            if not isinstance(event, dict):
                raise ValueError(
                    f"{ctx}: expected an event object with 'timestamps' and 'segments', "
                    f"got a {type(event).__name__}: {_shown(event)}"
                )
            if "timestamps" not in event:
                raise ValueError(f"{ctx}: expected 'timestamps': [[start, end]]")
            ((event_start, _),) = _spans(event["timestamps"], ctx, "timestamps", one=True)
            if event_start < 0:
                raise ValueError(f"{ctx}: timestamps: the start {float(event_start)} is negative")
            segments = event.get("segments")
            if segments is None:
                continue
            if not isinstance(segments, dict):
                raise ValueError(
                    f"{ctx}: segments: expected null or an object of subactions, got a "
                    f"{type(segments).__name__}: {_shown(segments)}"
                )
            event_name = event_key if event_key.startswith(f"{ytid}_") else f"{ytid}_{event_key}"
            for seg_key, seg in segments.items():
                sctx = f"{ctx}/{seg_key}"
                if not isinstance(seg, dict) or "timestamps" not in seg:
                    raise ValueError(
                        f"{sctx}: expected an object with 'timestamps': [[s, e], ...], "
                        f"got {_shown(seg)}"
                    )
                stages = seg.get("stages")
                if stages is not None and (
                    isinstance(stages, bool) or not isinstance(stages, int) or stages < 1
                ):
                    raise ValueError(
                        f"{sctx}: stages: expected an integer >= 1, got {_shown(stages)}"
                    )
                spans = _spans(seg["timestamps"], sctx, "timestamps")
                s, e = spans[0][0], spans[-1][1]
                if s < 0:
                    raise ValueError(f"{sctx}: timestamps: the first stage starts before its event")
                name = (
                    seg_key if seg_key.startswith(f"{event_name}_") else f"{event_name}_{seg_key}"
                )
                if name in seen:
                    raise ValueError(f"{sctx}: the clip name {name} is also made by {seen[name]}")
                seen[name] = f"{ytid}/{event_key}/{seg_key}"
                jobs.append(ClipJob(name, ytid, event_start + s, event_start + e))
    return jobs


def kinetics_clip_name(youtube_id: str, start: Fraction, end: Fraction) -> str:
    """The usual name of a trimmed Kinetics clip: ``<youtube_id>_<start:06d>_<end:06d>``."""
    return f"{youtube_id}_{int(start):06d}_{int(end):06d}"


def kinetics_jobs(csv_file: str | os.PathLike) -> list[ClipJob]:
    """One ClipJob per row of a Kinetics-style csv with columns ``youtube_id, time_start, time_end``
    (``label`` and ``split`` may be present and are ignored here; the header row is required).
    Clips are named by :func:`kinetics_clip_name`, flat in the output folder. Every row is
    validated first (finite times, 0 <= start < end); a repeated row collapses into one clip, two
    rows whose different spans give the same clip name are an error naming both lines."""
    jobs = []
    seen: dict[str, tuple[int, ClipJob]] = {}
    with open(csv_file, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"youtube_id", "time_start", "time_end"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(
                f"{csv_file}: expected a header with columns {sorted(need)}, got {reader.fieldnames}"
            )
        for lineno, row in enumerate(reader, start=2):
            ctx = f"{csv_file}:{lineno}"
            if None in row.values():
                raise ValueError(f"{ctx}: expected {len(reader.fieldnames)} columns, got fewer")
            yid = (row["youtube_id"] or "").strip()
            if not yid:
                raise ValueError(f"{ctx}: empty youtube_id")
            start = exact_seconds(row["time_start"], f"{ctx}: time_start")
            end = exact_seconds(row["time_end"], f"{ctx}: time_end")
            if start < 0 or not end > start:
                raise ValueError(
                    f"{ctx}: expected 0 <= time_start < time_end, got {row['time_start'].strip()} "
                    f"and {row['time_end'].strip()}"
                )
            job = ClipJob(kinetics_clip_name(yid, start, end), yid, start, end)
            if job.name in seen:
                first, other = seen[job.name]
                if other != job:
                    raise ValueError(
                        f"{ctx}: clip {job.name} is also made by line {first} with another span "
                        f"([{float(other.start)}, {float(other.end)}) s vs "
                        f"[{float(start)}, {float(end)}) s)"
                    )
                continue  # the same row again: one clip
            seen[job.name] = (lineno, job)
            jobs.append(job)
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
