"""The CSV report of a prepare run: one row per missing raw video, failed clip or short clip."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from artlib._io import atomic_write

from .jobs import ClipJob

__all__ = ["REPORT_FIELDS", "report_row", "write_report"]

REPORT_FIELDS = ("kind", "name", "source", "start", "end", "frames", "detail")


def report_row(
    kind: str, name: str, source: str, job: ClipJob | None = None, frames="", detail: str = ""
) -> dict:
    """One row of the report (a dict with REPORT_FIELDS keys)."""
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
    with atomic_write(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=REPORT_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path
