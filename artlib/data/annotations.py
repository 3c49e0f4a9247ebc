"""Annotation readers: every format becomes a list of ``VideoItem(path, label)`` plus class names.

Formats (the files the data sets ship, see docs/data.md):

- FineGym gym99 / gym288 element lists: lines ``<ytid>_E_<start>_<end>_A_<a>_<b> <label>``; the clip
  of an element is ``<root>/<id>.mp4``. Class names from the optional categories file
  (``gym99_categories.txt``: ``Clabel: 0; set: 1; Glabel: 1; (VT) round-off, ...``).
- Diving48 V2: ``Diving48_V2_{train,test}.json``, a list of ``{"vid_name", "label", ...}``; the clip
  is ``<root>/<vid_name>.mp4``; ``Diving48_vocab.json`` lists the four attributes of each class.
- Kinetics-400/600/700 csv: header ``label,youtube_id,time_start,time_end,split[,is_cc]``; a clip is
  ``<youtube_id>_<start:06d>_<end:06d>.mp4`` under ``<root>/<label>/`` or ``<root>/``.
- Something-Something V2: ``{train,validation}.json`` items ``{"id", "template", ...}``, labels json
  ``{"Approaching something with your camera": "0", ...}``; the clip is ``<root>/<id>.webm``.
- NTU RGB+D 60/120: the label is ``A<nnn>`` in names such as ``S001C002P003R002A013_rgb.avi``.
- A generic list: lines ``<path> <label>`` (paths may hold spaces; ``#`` starts a comment).

A malformed line or item raises ``ValueError`` naming the file and the line (or item) number.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "VideoItem",
    "read_annotations",
    "read_diving48",
    "read_finegym",
    "read_generic_list",
    "read_kinetics",
    "read_ntu",
    "read_ssv2",
    "write_generic_list",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")


class VideoItem(NamedTuple):
    """One labelled video: ``path`` to the file and ``label`` in ``[0, num_classes)`` (-1: unknown)."""

    path: str
    label: int


def _bad(file: str | os.PathLike, where: int, what: str, text: str = "") -> ValueError:
    shown = f": {text.strip()[:120]!r}" if text else ""
    return ValueError(f"{os.fspath(file)}:{where}: {what}{shown}")


def _parse_label(file, lineno, token, line) -> int:
    if isinstance(token, bool) or (isinstance(token, float) and not token.is_integer()):
        # int(True) is 1 and int(1.5) is 1: a JSON label must be an integer (or its text)
        raise _bad(file, lineno, f"label must be an integer, got {token!r}", line)
    try:
        label = int(token)
    except (ValueError, TypeError, OverflowError):
        raise _bad(file, lineno, f"label must be an integer, got {token!r}", line) from None
    if label < 0:
        raise _bad(file, lineno, f"label must be >= 0, got {label}", line)
    return label


def _lines(file) -> Iterable[tuple[int, str]]:
    """(1-based line number, stripped line) for non-blank, non-comment lines."""
    with open(file, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                yield lineno, line


def _load_json(file):
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(file)}:{e.lineno}: not valid JSON ({e.msg})") from None


# ------------------------------------------------------------------------------------ generic list
def read_generic_list(
    list_file: str | os.PathLike, root: str | os.PathLike | None = None
) -> tuple[list[VideoItem], list[str] | None]:
    """Read ``<path> <label>`` lines. Relative paths are joined to ``root`` (default: the list file's
    folder). The label is the last whitespace-separated token, so paths may contain spaces.
    Returns (items, None): a plain list carries no class names."""
    base = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(list_file))
    items = []
    for lineno, line in _lines(list_file):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise _bad(list_file, lineno, "expected '<path> <label>'", line)
        path, label = parts
        items.append(
            VideoItem(os.path.join(base, path), _parse_label(list_file, lineno, label, line))
        )
    return items, None


def write_generic_list(
    list_file: str | os.PathLike, items: Sequence[VideoItem], root: str | os.PathLike | None = None
) -> None:
    """Write items as ``<path> <label>`` lines (paths relative to ``root`` when given), atomically."""
    from artlib._io import atomic_write

    with atomic_write(list_file, "w") as fh:
        for it in items:
            path = os.path.relpath(it.path, root) if root is not None else it.path
            fh.write(f"{path} {int(it.label)}\n")


# ----------------------------------------------------------------------------------------- FineGym
_FINEGYM_ID = re.compile(r"^[\w-]{11}_E_\d+_\d+_A_\d+_\d+$")
_FINEGYM_CAT = re.compile(r"^Clabel:\s*(\d+);\s*set:\s*\d+;\s*Glabel:\s*\d+;\s*(.+)$")


def read_finegym(
    list_file: str | os.PathLike,
    root: str | os.PathLike,
    categories_file: str | os.PathLike | None = None,
    ext: str = ".mp4",
) -> tuple[list[VideoItem], list[str] | None]:
    """Read a FineGym element list (gym99 or gym288, train or val): lines
    ``<ytid>_E_<start>_<end>_A_<a>_<b> <label>``; each clip is ``<root>/<id><ext>``.
    Class names come from ``categories_file`` (``Clabel: <c>; set: <s>; Glabel: <g>; <name>``) if given.
    """
    items = []
    for lineno, line in _lines(list_file):
        parts = line.split()
        if len(parts) != 2:
            raise _bad(list_file, lineno, "expected '<element id> <label>'", line)
        vid, label = parts
        if not _FINEGYM_ID.match(vid):
            raise _bad(
                list_file, lineno, "element id must look like <ytid>_E_<s>_<e>_A_<a>_<b>", line
            )
        path = os.path.join(os.fspath(root), vid + ext)
        items.append(VideoItem(path, _parse_label(list_file, lineno, label, line)))
    names = None
    if categories_file is not None:
        by_label = {}
        for lineno, line in _lines(categories_file):
            m = _FINEGYM_CAT.match(line)
            if not m:
                raise _bad(
                    categories_file, lineno, "expected 'Clabel: <c>; set: ..; Glabel: ..; name'"
                )
            by_label[int(m.group(1))] = m.group(2).strip()
        names = _dense_names(by_label, categories_file)
    return items, names


def _dense_names(by_label: dict[int, str], file) -> list[str]:
    n = len(by_label)
    if sorted(by_label) != list(range(n)):
        missing = sorted(set(range(max(by_label) + 1)) - set(by_label))[:5]
        raise ValueError(f"{os.fspath(file)}: class labels are not 0..{n - 1}; missing {missing}")
    return [by_label[i] for i in range(n)]


# ---------------------------------------------------------------------------------------- Diving48
def read_diving48(
    json_file: str | os.PathLike,
    root: str | os.PathLike,
    vocab_file: str | os.PathLike | None = None,
    ext: str = ".mp4",
) -> tuple[list[VideoItem], list[str] | None]:
    """Read ``Diving48_V2_{train,test}.json`` (a list of ``{"vid_name": str, "label": int, ...}``);
    each clip is ``<root>/<vid_name><ext>``. With ``vocab_file`` (``Diving48_vocab.json``, a list of
    the four attributes of each class) class names are the attributes joined by spaces, e.g.
    ``"Back 15som 05Twis FREE"``. Errors name the item number (1-based) as the line."""
    data = _load_json(json_file)
    if not isinstance(data, list):
        raise ValueError(f"{os.fspath(json_file)}: expected a JSON list of items, got {type(data)}")
    items = []
    for n, entry in enumerate(data, 1):
        if not isinstance(entry, dict) or "vid_name" not in entry or "label" not in entry:
            raise _bad(json_file, n, "item needs 'vid_name' and 'label'", json.dumps(entry)[:120])
        if not isinstance(entry["vid_name"], str) or not entry["vid_name"].strip():
            raise _bad(json_file, n, "'vid_name' must be a non-empty string", json.dumps(entry))
        label = _parse_label(json_file, n, entry["label"], json.dumps(entry))
        items.append(VideoItem(os.path.join(os.fspath(root), str(entry["vid_name"]) + ext), label))
    names = None
    if vocab_file is not None:
        vocab = _load_json(vocab_file)
        if not isinstance(vocab, list):
            raise ValueError(f"{os.fspath(vocab_file)}: expected a JSON list of class attributes")
        names = []
        for n, v in enumerate(vocab, 1):
            if isinstance(v, str):
                names.append(v)
            elif isinstance(v, list) and all(isinstance(s, str) for s in v):
                names.append(" ".join(v))
            else:
                raise _bad(vocab_file, n, "class entry must be a string or a list of strings")
    return items, names


# ---------------------------------------------------------------------------------------- Kinetics
def read_kinetics(
    csv_file: str | os.PathLike,
    root: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    ext: str = ".mp4",
) -> tuple[list[VideoItem], list[str]]:
    """Read a Kinetics csv (``label,youtube_id,time_start,time_end,split[,is_cc]``). A clip is
    ``<youtube_id>_<start:06d>_<end:06d><ext>``, found under ``<root>/<label>/`` (spaces or
    underscores) or else ``<root>/`` (the flat path is used when neither exists).
    ``classes``: the class order (a list or a file with one name a line); default: sorted labels
    of this csv — pass the train csv's classes when reading val/test. Rows without a label (the test
    split) get label -1."""
    if isinstance(classes, (str, os.PathLike)):
        classes = [line for _, line in _lines(classes)]
    root = os.fspath(root)
    rows = []
    with open(csv_file, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"youtube_id", "time_start", "time_end"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise _bad(csv_file, 1, f"header must name {sorted(need)}, got {reader.fieldnames}")
        for row in reader:
            lineno = reader.line_num
            try:  # "inf" overflows int(), "nan" is a ValueError there
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
                yid = row["youtube_id"].strip()
            except (TypeError, ValueError, AttributeError, OverflowError):
                raise _bad(
                    csv_file, lineno, "bad youtube_id/time_start/time_end", str(row)
                ) from None
            if not yid:
                raise _bad(csv_file, lineno, "empty youtube_id", str(row))
            rows.append((lineno, (row.get("label") or "").strip(), f"{yid}_{start:06d}_{end:06d}"))
    names = list(classes) if classes is not None else sorted({r[1] for r in rows if r[1]})
    index = {name: i for i, name in enumerate(names)}
    items = []
    for lineno, label, stem in rows:
        if label and label not in index:
            raise _bad(csv_file, lineno, f"label {label!r} is not among the {len(names)} classes")
        path = os.path.join(root, stem + ext)
        if label:
            for folder in (label, label.replace(" ", "_")):
                cand = os.path.join(root, folder, stem + ext)
                if os.path.exists(cand):
                    path = cand
                    break
        items.append(VideoItem(path, index[label] if label else -1))
    return items, names


# ------------------------------------------------------------------------- Something-Something V2
def read_ssv2(
    json_file: str | os.PathLike,
    root: str | os.PathLike,
    labels_json: str | os.PathLike,
    ext: str = ".webm",
) -> tuple[list[VideoItem], list[str]]:
    """Read a Something-Something V2 split json (items ``{"id", "template", ...}``) with the labels
    json (``{"Approaching something with your camera": "0", ...}``). The class is the template with
    its brackets removed (``"Holding [something] next to [something]"`` -> ``"Holding something next
    to something"``). Items without a template (the test split) get label -1."""
    mapping = _load_json(labels_json)
    if not isinstance(mapping, dict):
        raise ValueError(f"{os.fspath(labels_json)}: expected a JSON object name -> index")
    by_label = {}
    for n, (name, idx) in enumerate(mapping.items(), 1):
        by_label[_parse_label(labels_json, n, idx, name)] = name
    names = _dense_names(by_label, labels_json)
    index = {name: i for i, name in enumerate(names)}
    data = _load_json(json_file)
    if not isinstance(data, list):
        raise ValueError(f"{os.fspath(json_file)}: expected a JSON list of items")
    items = []
    for n, entry in enumerate(data, 1):
        if not isinstance(entry, dict) or "id" not in entry:
            raise _bad(json_file, n, "item needs 'id'", json.dumps(entry)[:120])
        label = -1
        if "template" in entry:
            name = str(entry["template"]).replace("[", "").replace("]", "")
            if name not in index:
                raise _bad(json_file, n, f"template {name!r} is not in {os.fspath(labels_json)}")
            label = index[name]
        items.append(VideoItem(os.path.join(os.fspath(root), str(entry["id"]) + ext), label))
    return items, names


# --------------------------------------------------------------------------------------------- NTU
_NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")


def read_ntu(
    root_or_files: str | os.PathLike | Sequence[str | os.PathLike],
    keep: Callable[[dict[str, int]], bool] | None = None,
) -> tuple[list[VideoItem], None]:
    """Read NTU RGB+D 60/120 videos: the label is ``A<nnn>`` - 1 of names such as
    ``S001C002P003R002A013_rgb.avi``. ``root_or_files``: a folder (searched recursively for video
    files, sorted) or a list of files. ``keep`` receives ``{"setup", "camera", "subject",
    "replication", "action"}`` and keeps the video when it returns True (e.g. the cross-subject or
    cross-view split). Class names are not in the files: returns (items, None)."""
    if isinstance(root_or_files, (str, os.PathLike)):
        root = os.fspath(root_or_files)
        if not os.path.isdir(root):
            raise ValueError(f"root_or_files: {root!r} is not a folder (or pass a list of files)")
        files = []
        for dirpath, _, names in os.walk(root):
            files += [
                os.path.join(dirpath, n) for n in names if n.lower().endswith(VIDEO_EXTENSIONS)
            ]
        files.sort()
        source = root
    else:
        files = [os.fspath(f) for f in root_or_files]
        source = "root_or_files"
    items = []
    for n, path in enumerate(files, 1):
        m = _NTU_NAME.search(os.path.basename(path))
        if not m:
            raise ValueError(
                f"{source}:{n}: file name must hold S<nnn>C<nnn>P<nnn>R<nnn>A<nnn>, got {path!r}"
            )
        keys = ("setup", "camera", "subject", "replication", "action")
        fields = dict(zip(keys, map(int, m.groups())))
        if fields["action"] < 1:
            raise ValueError(f"{source}:{n}: action number must be >= 1 in {path!r}")
        if keep is None or keep(fields):
            items.append(VideoItem(path, fields["action"] - 1))
    return items, None


# -------------------------------------------------------------------------------------- dispatcher
READERS: dict[str, Callable] = {
    "finegym": read_finegym,
    "gym99": read_finegym,
    "gym288": read_finegym,
    "diving48": read_diving48,
    "kinetics": read_kinetics,
    "ssv2": read_ssv2,
    "sthsthv2": read_ssv2,
    "ntu": read_ntu,
    "generic": read_generic_list,
    "list": read_generic_list,
}


def read_annotations(fmt: str, *args, **kwargs) -> tuple[list[VideoItem], list[str] | None]:
    """Dispatch by format name: ``read_annotations("diving48", json_file, root, vocab_file)`` is
    ``read_diving48(json_file, root, vocab_file)``. Names: {names}."""
    key = fmt.lower().replace("-", "").replace("_", "")
    key = {"somethingsomethingv2": "ssv2", "ntu60": "ntu", "ntu120": "ntu"}.get(key, key)
    if key not in READERS:
        raise ValueError(f"fmt: expected one of {sorted(READERS)}, got {fmt!r}")
    return READERS[key](*args, **kwargs)


read_annotations.__doc__ = read_annotations.__doc__.format(names=", ".join(sorted(READERS)))
