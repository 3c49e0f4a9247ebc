"""The training and validation items of a data set, from its annotation files.

A data set is located by the trainer's configuration (``artlib.engine.config.dataset_files``:
which files of a FineGym or Diving48 root, or which '<path> <label>' lists); this module reads
them: the same reader for both splits, and the class names where the layout has them.
"""

from __future__ import annotations

import os

from .annotations import VideoItem, read_diving48, read_finegym, read_generic_list

__all__ = ["read_train_val"]


def read_train_val(
    kind: str,
    train: str | os.PathLike,
    val: str | os.PathLike,
    root: str | os.PathLike | None = None,
    extra: str | os.PathLike | None = None,
) -> tuple[list[VideoItem], list[VideoItem], list[str] | None]:
    """-> (train items, val items, class names or None).

    kind: "list" ('<path> <label>' lines; relative paths against ``root``, else the list's
    folder), "finegym" or "diving48" (``extra``: the categories / vocabulary file, or None).
    """
    if kind == "list":
        tr, names = read_generic_list(train, root)
        va, _ = read_generic_list(val, root)
    elif kind == "finegym":
        tr, names = read_finegym(train, root, extra)
        va, _ = read_finegym(val, root, extra)
    elif kind == "diving48":
        tr, names = read_diving48(train, root, extra)
        va, _ = read_diving48(val, root, extra)
    else:
        raise ValueError(f"kind: expected 'list', 'finegym' or 'diving48', got {kind!r}")
    return tr, va, names
