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
the frames whose time t satisfies ``start <= t < end``, where t is the frame's time by the one
definition of ``artlib.data.decode.monotonic_times`` (the decoded frames' timestamps, made monotonic:
see docs/data.md), counted from the container's start time (the origin ``ffmpeg -ss`` uses). The
comparison is done in exact rational arithmetic (timestamp x time_base against the decimal text), so
a frame that falls exactly on ``start`` is in and one exactly on ``end`` is out; for a constant frame
rate f this is frames ``ceil(start*f) .. ceil(end*f) - 1``. FineGym segment times are relative to their
event, so a subaction's span is ``[event_start + first_stage_start, event_start + last_stage_end)``.

Output: H.264 (libx264, yuv420p, ``--crf`` 18, ``--preset`` veryfast), a keyframe every ``--gop`` 16
frames so that sparse sampling seeks cheaply, no audio, timestamps kept from the source (shifted to
start at 0), so a variable frame rate survives.

Safety. Each clip is encoded to a hidden temporary ``.<name>.<random>.part`` in the output folder and
renamed to ``<name>.mp4`` only when complete (after an fsync), so a finished name is always a whole
file. A rerun skips finished clips, deletes stale partial files and redoes those clips; killing the run
at any point (Ctrl-C, SIGTERM, SIGKILL) loses nothing that was finished. A lock file refuses a second
concurrent run on the same output folder. Missing raw videos and failing clips never stop the run:
they go into the CSV report (default ``OUT/prepare_report.csv``) with the clips shorter than
``--num-frames`` frames and the spans that run past their raw video's end (kind ``past_end``: the
clip is cut short, or not made when the whole span is past the end; never silently).

Bad annotations stop the run before anything is cut: the whole file is validated first (every event
an object; ``timestamps`` pairs of finite JSON numbers with start < end, stages in order;
``segments`` null or an object; no key twice in one object; no clip name twice; for a csv, finite
times with 0 <= start < end and no clip name made by two spans) and the first violation is one
line naming the entry, exit status 2. Exit status: 0 when every clip whose raw video exists was cut (missing raw
videos are normal for FineGym and are only reported), 1 when any clip failed (``--strict``: also
when raw videos are missing), 130 when interrupted.

Throughput on a 2-core CPU (480p H.264 sources, 3 s clips): see docs/prepare.md and
benchmarks/bench_prepare.py.
"""

from .cli import main
from .cut import PART_SUFFIX, PastEndError, cut_clip, frame_in_span
from .diving48 import verify_diving48
from .jobs import (
    VIDEO_EXTENSIONS,
    ClipJob,
    exact_seconds,
    finegym_jobs,
    index_raw_videos,
    kinetics_clip_name,
    kinetics_jobs,
)
from .report import REPORT_FIELDS, report_row, write_report
from .runner import LOCK_NAME, ClipResult, PrepareSummary, remove_partials, run_jobs

__all__ = [
    "LOCK_NAME",
    "PART_SUFFIX",
    "PastEndError",
    "REPORT_FIELDS",
    "VIDEO_EXTENSIONS",
    "ClipJob",
    "ClipResult",
    "PrepareSummary",
    "cut_clip",
    "exact_seconds",
    "finegym_jobs",
    "frame_in_span",
    "index_raw_videos",
    "kinetics_clip_name",
    "kinetics_jobs",
    "main",
    "remove_partials",
    "report_row",
    "run_jobs",
    "verify_diving48",
    "write_report",
]
