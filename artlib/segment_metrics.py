"""Temporal action detection metrics: a timeline's segments against ground-truth segments.

    python -m artlib.segment_metrics --gt gt.csv --pred timelines.jsonl --out metrics.json
    python -m artlib.segment_metrics --gt finegym_annotation_info_v1.0.json \\
        --element-labels gym99_val_element.txt --pred timelines.jsonl

mAP at temporal IoU thresholds (default 0.3, 0.5, 0.7), the ActivityNet convention
(``Eval_detection.compute_average_precision_detection`` of the ActivityNet toolkit):

- tIoU of two segments = |intersection| / (|a| + |b| - |intersection|);
- per class, predictions in decreasing score order; a prediction is a true positive when its
  video has a ground-truth segment of its class with tIoU >= the threshold not matched yet (the
  one of highest tIoU first); otherwise a false positive (also a second hit on a matched one);
- AP: the area under the precision/recall curve with precision made monotone (each point gets
  the highest precision at any higher recall), summed over the recall steps;
- mAP: the mean of the per-class APs over the classes that have ground truth (a class with
  predictions only does not count; a class with ground truth and no prediction counts as 0).

Ground truth: a CSV ``video,start,end,label`` (label an integer, or a class name when the
predictions carry names), or FineGym's annotation JSON (``{youtube_id: {event_id: {"event": E,
"timestamps": [[s, e]], "segments": {element_id: {"timestamps": [[s, e], ...]}}}}}``, element
times relative to the event's start): with ``--element-labels`` (a gym99/gym288 element list,
``<ytid>_E_..._A_..._... <label>`` lines) the elements of those lists are the segments, in
seconds of the whole video (event start + element time; a vault's stages joined); without it,
the events are, labelled by their ``event`` number. Predictions: ``predict --timeline --json``
lines, or its ``--csv``. Videos are matched by path, else by file name without extension.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "average_precision",
    "evaluate_segments",
    "read_finegym_segments",
    "read_predictions",
    "read_segments_csv",
    "segment_iou",
]

DEFAULT_TIOU = (0.3, 0.5, 0.7)


def segment_iou(seg: Sequence[float], others: np.ndarray) -> np.ndarray:
    """tIoU of one segment (start, end) with each of ``others`` (M, 2) -> (M,)."""
    others = np.asarray(others, dtype=np.float64).reshape(-1, 2)
    inter = np.clip(np.minimum(seg[1], others[:, 1]) - np.maximum(seg[0], others[:, 0]), 0, None)
    union = (seg[1] - seg[0]) + (others[:, 1] - others[:, 0]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """ActivityNet's ``interpolated_prec_rec``: precision made monotone, summed over recall steps."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def average_precision(
    gt: dict[str, list[tuple[float, float]]],
    pred: list[tuple[str, float, float, float]],
    thresholds: Sequence[float] = DEFAULT_TIOU,
) -> list[float]:
    """AP of one class at each tIoU threshold. gt: video -> [(start, end)]; pred: [(video, start,
    end, score)]. -> [AP per threshold] (0 when there is ground truth and no prediction)."""
    npos = sum(len(v) for v in gt.values())
    if npos == 0:
        raise ValueError("gt: this class has no ground-truth segment")
    if not pred:
        return [0.0 for _ in thresholds]
    order = sorted(range(len(pred)), key=lambda i: -pred[i][3])  # stable: ties keep file order
    gt_arr = {v: np.asarray(s, dtype=np.float64).reshape(-1, 2) for v, s in gt.items()}
    tp = np.zeros((len(thresholds), len(pred)))
    fp = np.zeros((len(thresholds), len(pred)))
    used = {v: np.zeros((len(thresholds), len(s)), dtype=bool) for v, s in gt_arr.items()}
    for rank, i in enumerate(order):
        video, start, end, _ = pred[i]
        segs = gt_arr.get(video)
        if segs is None or not len(segs):
            fp[:, rank] = 1
            continue
        iou = segment_iou((start, end), segs)
        by_iou = np.argsort(-iou, kind="stable")
        for t, thr in enumerate(thresholds):
            for j in by_iou:
                if iou[j] < thr:
                    fp[t, rank] = 1
                    break
                if used[video][t, j]:
                    continue
                tp[t, rank] = 1
                used[video][t, j] = True
                break
            if tp[t, rank] == 0 and fp[t, rank] == 0:  # every candidate already matched
                fp[t, rank] = 1
    out = []
    for t in range(len(thresholds)):
        tp_c, fp_c = np.cumsum(tp[t]), np.cumsum(fp[t])
        out.append(interpolated_ap(tp_c / (tp_c + fp_c), tp_c / npos))
    return out


def evaluate_segments(
    gt: Iterable[tuple[str, float, float, int]],
    pred: Iterable[tuple[str, float, float, int, float]],
    thresholds: Sequence[float] = DEFAULT_TIOU,
    class_names: Sequence[str] | None = None,
) -> dict:
    """mAP of predictions against ground truth. gt: (video, start, end, label); pred: (video,
    start, end, label, score). -> {"tiou": [...], "mAP": {thr: value}, "average_mAP", "per_class":
    {label: {"name", "ap": {thr: value}, "gt", "pred"}}, "videos", "classes"}."""
    thresholds = [float(t) for t in thresholds]
    if not thresholds or not all(0 < t <= 1 for t in thresholds):
        raise ValueError(f"thresholds: expected tIoU values in (0, 1], got {thresholds}")
    gt_by: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    videos = set()
    for video, start, end, label in gt:
        if not end > start:
            raise ValueError(f"gt: segment of {video} with end {end} <= start {start}")
        gt_by[int(label)][video].append((float(start), float(end)))
        videos.add(video)
    if not gt_by:
        raise ValueError("gt: no ground-truth segment")
    pred_by: dict[int, list] = defaultdict(list)
    for video, start, end, label, score in pred:
        pred_by[int(label)].append((video, float(start), float(end), float(score)))
    per_class = {}
    for label in sorted(gt_by):
        aps = average_precision(gt_by[label], pred_by.get(label, []), thresholds)
        name = class_names[label] if class_names and 0 <= label < len(class_names) else str(label)
        per_class[label] = {
            "name": name,
            "ap": {f"{t:g}": round(a, 6) for t, a in zip(thresholds, aps)},
            "gt": sum(len(v) for v in gt_by[label].values()),
            "pred": len(pred_by.get(label, [])),
        }
    m = {
        f"{t:g}": round(float(np.mean([c["ap"][f"{t:g}"] for c in per_class.values()])), 6)
        for t in thresholds
    }
    return {
        "tiou": thresholds,
        "mAP": m,
        "average_mAP": round(float(np.mean(list(m.values()))), 6),
        "per_class": per_class,
        "videos": len(videos),
        "classes": len(per_class),
    }


# ------------------------------------------------------------------------------------ readers


def read_segments_csv(path, names: Sequence[str] | None = None) -> list[tuple]:
    """``video,start,end,label`` rows (a header line, label an integer or a name in ``names``)
    -> [(video, start, end, label)]."""
    index = {n: i for i, n in enumerate(names or [])}
    out = []
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        header = [h.strip() for h in next(rows, [])]
        need = ["video", "start", "end", "label"]
        if any(h not in header for h in need):
            raise ValueError(f"{path}: expected a header with columns {need}, got {header}")
        col = {h: header.index(h) for h in need}
        for lineno, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            try:
                video, label = row[col["video"]], row[col["label"]].strip()
                start, end = float(row[col["start"]]), float(row[col["end"]])
            except (IndexError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: bad row {row}: {e}") from None
            if label.lstrip("-").isdigit():
                lab = int(label)
            elif label in index:
                lab = index[label]
            else:
                raise ValueError(
                    f"{path}:{lineno}: label {label!r} is neither an integer nor a known class name"
                )
            out.append((video, start, end, lab))
    return out


def read_finegym_segments(path, element_labels=None) -> list[tuple]:
    """FineGym's annotation JSON -> [(youtube_id, start, end, label)] in seconds of the whole
    video: the elements listed in ``element_labels`` (a gym99/gym288 element list file) with its
    labels, or, without it, the events labelled by their ``event`` number (module docstring)."""
    with open(path) as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected FineGym's annotation object {{youtube_id: {{...}}}}")
    labels = None
    if element_labels is not None:
        labels = {}
        with open(element_labels) as fh:
            for lineno, line in enumerate(fh, start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise ValueError(
                        f"{element_labels}:{lineno}: expected '<id> <label>': {line!r}"
                    )
                labels[parts[0]] = int(parts[1])
    out = []
    for vid, events in data.items():
        for ev_id, ev in events.items():
            try:
                ev_start, ev_end = (float(x) for x in ev["timestamps"][0])
            except (KeyError, TypeError, ValueError, IndexError):
                raise ValueError(f"{path}: {vid}/{ev_id}: no event timestamps") from None
            if labels is None:
                out.append((vid, ev_start, ev_end, int(ev["event"])))
                continue
            for el_id, el in (ev.get("segments") or {}).items():
                key = f"{vid}_{ev_id}_{el_id}"
                if key not in labels:
                    continue
                stamps = el.get("timestamps") or []
                if not stamps:
                    continue
                s = min(float(a) for a, _ in stamps)
                e = max(float(b) for _, b in stamps)
                out.append((vid, ev_start + s, ev_start + e, labels[key]))
    if labels is not None and not out:
        raise ValueError(f"{path}: none of the elements of {element_labels} is in it")
    return out


def read_predictions(path) -> tuple[list[tuple], list[str]]:
    """``predict --timeline --json`` lines or its ``--csv`` -> ([(video, start, end, label,
    score)], class names seen by label)."""
    out, names = [], {}
    with open(path) as fh:
        first = fh.readline()
        fh.seek(0)
        if first.lstrip().startswith("{"):
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not JSON: {e}") from None
                for s in obj.get("segments", []):
                    out.append((obj["video"], s["start"], s["end"], int(s["label"]), s["score"]))
                    names[int(s["label"])] = s.get("name", str(s["label"]))
        else:
            for row in csv.DictReader(fh):
                lab = int(row["label"])
                out.append((row["video"], float(row["start"]), float(row["end"]), lab,
                            float(row["score"])))  # fmt: skip
                names[lab] = row.get("name") or str(lab)
    listed = [names.get(i, str(i)) for i in range(max(names) + 1)] if names else []
    return out, listed


def _key(video: str) -> str:
    return os.path.splitext(os.path.basename(video))[0]


def _match_videos(gt: list[tuple], pred: list[tuple]) -> tuple[list, list]:
    """Compare by path when the predictions' paths are the ground truth's, else by stem."""
    if {g[0] for g in gt} & {p[0] for p in pred}:
        return gt, pred
    return [(_key(g[0]), *g[1:]) for g in gt], [(_key(p[0]), *p[1:]) for p in pred]


def main(argv=None) -> int:
    from artlib._cli import DefaultsOnce, OneLineParser

    p = OneLineParser(prog="python -m artlib.segment_metrics", formatter_class=DefaultsOnce,
                description="mAP at temporal IoU thresholds of timelines against ground truth.")  # fmt: skip
    p.add_argument("--gt", required=True, help="video,start,end,label CSV or FineGym JSON")
    p.add_argument("--pred", required=True, help="predict --timeline --json output, or its --csv")
    p.add_argument("--element-labels", help="FineGym: the gym99/gym288 element list to score")
    p.add_argument("--tiou", type=float, nargs="+", default=list(DEFAULT_TIOU))
    p.add_argument("--out", help="write the metrics as JSON here")
    args = p.parse_args(argv)
    for flag in ("gt", "pred", "element_labels"):
        value = getattr(args, flag)
        if value and not os.path.isfile(value):
            p.error(f"--{flag.replace('_', '-')}: no file at {value}")
    if not all(0 < t <= 1 for t in args.tiou):
        p.error(f"--tiou: expected values in (0, 1], got {args.tiou}")
    try:
        pred, names = read_predictions(args.pred)
        if args.gt.endswith(".json"):
            gt = read_finegym_segments(args.gt, args.element_labels)
        else:
            gt = read_segments_csv(args.gt, names)
        gt, pred = _match_videos(gt, pred)
        res = evaluate_segments(gt, pred, args.tiou, names)
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)
    width = max([len(c["name"]) for c in res["per_class"].values()] + [5])
    print(f"{'class':<{width}} " + " ".join(f"AP@{t:g}".rjust(7) for t in res["tiou"]))
    for c in res["per_class"].values():
        print(f"{c['name']:<{width}} " + " ".join(f"{v:7.3f}" for v in c["ap"].values()))
    line = "  ".join(f"mAP@{t} {v:.4f}" for t, v in res["mAP"].items())
    print(f"{line}  average {res['average_mAP']:.4f} ({res['classes']} classes, "
          f"{res['videos']} videos)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
