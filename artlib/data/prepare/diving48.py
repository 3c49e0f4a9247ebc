"""``prepare diving48``: Diving48 ships trimmed clips, so they are only verified (the checker)."""

from __future__ import annotations

import os

from artlib.data.annotations import read_diving48
from artlib.data.check import check_items

__all__ = ["verify_diving48"]


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
    ``root`` (the ``rgb/`` folder of ``<vid_name>.mp4`` files): returns the checker's findings
    (``artlib.data.check.check_items``: every probe that is not "ok", problems and notes)."""
    items, _ = _items_and_classes(read_diving48(annotations, root, vocab_file=vocab))
    return check_items(items, num_frames=num_frames, workers=workers, progress=progress)


def _items_and_classes(result):
    """Readers return ``items`` or ``(items, class_names)``; accept both."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], list):
        return result
    return result, None
