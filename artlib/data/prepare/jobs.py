"""What to cut: clip jobs from FineGym's JSON or a Kinetics-style csv, and the raw videos' index."""

from __future__ import annotations

import csv
import json
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
                event_start = exact_seconds(event["timestamps"][0][0], f"{ctx} timestamps")
            except (KeyError, IndexError, TypeError) as err:
                raise ValueError(f"{ctx}: expected 'timestamps': [[start, end]]") from err
            event_name = event_key if event_key.startswith(f"{ytid}_") else f"{ytid}_{event_key}"
            for seg_key, seg in segments.items():
                sctx = f"{ctx}/{seg_key}"
                try:
                    stamps = seg["timestamps"]
                    s, e = exact_seconds(stamps[0][0], sctx), exact_seconds(stamps[-1][1], sctx)
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
            start, end = exact_seconds(row["time_start"], ctx), exact_seconds(row["time_end"], ctx)
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
