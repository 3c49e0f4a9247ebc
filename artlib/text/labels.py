"""Class-name cleaning: turn data-set label codes into phrases close to CLIP's text lexicon.

Paper Sec. III-E: "we first convert category descriptions of action labels into action phrases that
approximate the pre-trained textual lexicon in VLMs". Diving48 labels are codes
(``["Back", "15som", "05Twis", "FREE"]`` → ``"back, 1.5 somersaults, 0.5 twist, free position"``);
FineGym labels carry an event code and list prefixes
(``"Clabel: 0; set: 1; Glabel: 1; (VT) round-off, ..."`` → ``"vault: round-off, ..."``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

# Diving48 ----------------------------------------------------------------------------------------

_DIVING_POSITIONS = {
    "TUCK": "tuck position",
    "PIKE": "pike position",
    "STR": "straight position",
    "FREE": "free position",
}
_DIVING_WORDS = {"Dive": "dive", "NoTwis": "no twist"}
_SOM = re.compile(r"^(\d+)som$", re.IGNORECASE)
_TWIS = re.compile(r"^(\d+)twis(t)?$", re.IGNORECASE)


def _half_count(digits: str) -> float:
    """Diving48 writes halves without the point: '05' → 0.5, '15' → 1.5, '2' → 2, '35' → 3.5."""
    if len(digits) >= 2 and digits.endswith("5"):
        return int(digits[:-1]) + 0.5
    return float(int(digits))


def _count_phrase(value: float, noun: str) -> str:
    text = f"{value:g}"
    return f"{text} {noun}" if value <= 1 else f"{text} {noun}s"


def clean_diving48_label(label: str | Sequence[str]) -> str:
    """Diving48 vocabulary entry → phrase.

    ``label`` is a vocab entry (a list of codes, as in Diving48_vocab.json) or the same codes joined
    by '+', '_' or spaces. Example: ``["Back", "15som", "05Twis", "FREE"]`` and
    ``"Back+15som+05Twis+FREE"`` both give ``"back, 1.5 somersaults, 0.5 twist, free position"``.
    """
    if isinstance(label, str):
        parts = [p for p in re.split(r"[+_\s]+", label.strip()) if p]
    else:
        parts = [str(p).strip() for p in label]
    if not parts:
        raise ValueError(f"label: expected a Diving48 vocab entry, got {label!r}")
    out = []
    for p in parts:
        if p.upper() in _DIVING_POSITIONS:
            out.append(_DIVING_POSITIONS[p.upper()])
        elif p in _DIVING_WORDS:
            out.append(_DIVING_WORDS[p])
        elif m := _SOM.match(p):
            out.append(_count_phrase(_half_count(m.group(1)), "somersault"))
        elif m := _TWIS.match(p):
            out.append(_count_phrase(_half_count(m.group(1)), "twist"))
        else:
            out.append(p.lower())
    return ", ".join(out)


# FineGym -----------------------------------------------------------------------------------------

FINEGYM_EVENTS = {
    "VT": "vault",
    "FX": "floor exercise",
    "BB": "balance beam",
    "UB": "uneven bars",
}
_FINEGYM_LINE = re.compile(r"^\s*Clabel:\s*(\d+)\s*;(?:[^;]*;)*?\s*(\([A-Z]{2}\).*|[^;]*)$")
_EVENT = re.compile(r"^\(([A-Z]{2})\)\s*")


def clean_finegym_label(label: str) -> str:
    """FineGym gym99/gym288 category name → phrase.

    Accepts a line of ``gym99_categories.txt`` / ``gym288_categories.txt``
    (``"Clabel: 0; set: 1; Glabel: 1; (VT) round-off, flic-flac with 0.5 turn on, ..."``) or just
    its description. The event code becomes a word (``(VT)`` → ``"vault: "``), '_' become spaces,
    runs of spaces collapse and a trailing '.' is dropped.
    """
    text = label.strip()
    m = _FINEGYM_LINE.match(text)
    if m:
        text = m.group(2).strip()
    e = _EVENT.match(text)
    prefix = ""
    if e:
        prefix = FINEGYM_EVENTS.get(e.group(1), e.group(1).lower()) + ": "
        text = text[e.end() :]
    text = re.sub(r"\s+", " ", text.replace("_", " ")).strip().rstrip(".")
    if not text:
        raise ValueError(f"label: no FineGym description found in {label!r}")
    return prefix + text


def parse_finegym_categories(source: str | os.PathLike | Iterable[str]) -> list[str]:
    """Read a FineGym categories file (or its lines) → cleaned names ordered by ``Clabel``.

    Raises ValueError if the Clabel values are not exactly 0..N-1.
    """
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            lines = f.read().splitlines()
    elif isinstance(source, (str, os.PathLike)):
        raise FileNotFoundError(f"source: FineGym categories file not found: {os.fspath(source)!r}")
    else:
        lines = list(source)
    by_id: dict[int, str] = {}
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        m = _FINEGYM_LINE.match(line.strip())
        if not m:
            raise ValueError(
                f"source line {n + 1}: expected 'Clabel: <id>; ...; <name>', got {line!r}"
            )
        by_id[int(m.group(1))] = clean_finegym_label(m.group(2))
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"source: Clabel ids are not 0..{len(by_id) - 1}: {sorted(by_id)[:10]}...")
    return [by_id[i] for i in range(len(by_id))]


# Generic -----------------------------------------------------------------------------------------


def clean_label(label: str | Sequence[str], dataset: str | None = None) -> str:
    """Clean one class name. ``dataset``: "diving48", "finegym" (gym99/gym288) or None (generic:
    '_' and '+' → spaces, CamelCase split, lower case)."""
    if dataset is not None:
        key = dataset.lower().replace("-", "").replace("_", "")
        if key in ("diving48", "diving48v2", "diving"):
            return clean_diving48_label(label)
        if key in ("finegym", "gym99", "gym288", "finegym99", "finegym288"):
            if not isinstance(label, str):
                raise TypeError(f"label: expected str for FineGym, got {type(label).__name__}")
            return clean_finegym_label(label)
        raise ValueError(
            f"dataset: expected 'diving48', 'finegym', 'gym99', 'gym288' or None, got {dataset!r}"
        )
    if not isinstance(label, str):
        return " ".join(str(p) for p in label).lower()
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", label)
    text = re.sub(r"[_+]+", " ", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def clean_labels(labels: Iterable[str | Sequence[str]], dataset: str | None = None) -> list[str]:
    """``clean_label`` over a list."""
    return [clean_label(x, dataset) for x in labels]
