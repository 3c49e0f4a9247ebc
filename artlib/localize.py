"""Where do a checkpoint's region queries look? Localization against the synthetic set's ground-truth
boxes (``<video>.boxes.json``, written by ``artlib.data.make_finegrained_set``) and tracklet health
(no ground truth needed), for every RSSA decoder layer. ``python -m artlib.evaluate --localization``
calls :func:`localization_report` and prints :func:`format_report`; the figures are defined in
:mod:`artlib.nn.localization` and read in docs/tracklet_health.md.

Legend: B videos, T frames, K queries, L tokens of a frame, N distractors, S crop size.
"""

from __future__ import annotations

import math
import os

import torch

__all__ = ["format_report", "localization_report", "video_boxes"]


def video_boxes(dataset, index: int, token_frames: int, side: int):
    """The ground truth of ``dataset``'s video ``index`` on the model's token grid, read from its box
    sidecar and mapped through the frames and the crop that evaluation samples: (limb (T',L),
    distractors (T',N,L), body (T',L)) coverage of each token's cell (``box_coverage``) at each of the
    ``token_frames`` T' frames (T' < T when the backbone pools time: frame j*T//T'), on a
    ``side`` x ``side`` grid. None when the video has no sidecar."""
    from artlib.data.synthetic import read_boxes
    from artlib.nn.localization import box_coverage, crop_boxes

    boxes = read_boxes(dataset.items[index].path)
    if boxes is None:
        return None
    h, w = boxes["size"]
    idx, crop = dataset.plan(index, boxes["limb"].shape[0], h, w)
    t = idx.shape[1]
    frames = [int(idx[0][j * t // token_frames]) for j in range(token_frames)]
    s = dataset.crop_size
    limb = torch.from_numpy(boxes["limb"][frames])  # (T', 4) in the file's pixels
    dis = torch.from_numpy(boxes["distractors"][:, frames]).transpose(0, 1)  # (T', N, 4)
    body = torch.from_numpy(boxes["body"][frames])
    limb, dis, body = (
        box_coverage(crop_boxes(b, crop, (s, s)), (side, side), (s, s)) for b in (limb, dis, body)
    )
    return limb, dis, body


def _gather(model, dataset, index: int, device, with_boxes: bool):
    """One video's (att per layer [(1,T',K,L)], R (1,T',K,d), logits (N_cls,), boxes: None or
    (limb (1,T',L), distractors (1,T',N,L), body (1,T',L))); None when it cannot be read."""
    from artlib.nn.localization import head_mean, record_rssa

    sample = dataset[index]
    if not isinstance(sample, dict):
        return None
    video = sample["video"].unsqueeze(0).to(device)  # (1, T, 3, S, S)
    head = model.head
    with torch.no_grad():
        tokens, cls = model.backbone(video)
        with record_rssa(head.rssa) as rec:
            logits = head(tokens, cls)
    att = [head_mean(m) for m in rec["maps"]]  # each (1, T', K, L)
    if not with_boxes:
        return att, rec["responses"], logits[0], None
    t_tok, l = att[0].shape[1], att[0].shape[-1]
    boxes = video_boxes(dataset, index, t_tok, int(round(math.sqrt(l))))
    return att, rec["responses"], logits[0], tuple(b[None].to(device) for b in boxes)


def localization_report(model, info: dict, items, device="cpu", seed: int = 0) -> dict:
    """Run the checkpoint's model over ``items`` (one centre clip each, as evaluation samples them)
    and measure its region queries at every RSSA layer.

    Returns ``{"videos", "with_boxes", "skipped", "top1", "layers": [...], "tracklet_cosine"}``;
    each layer's entry holds the tracklet health (``entropy`` per query, ``map_cosine``,
    ``map_intersection``, ``peak_jump`` per query and its chance) and, when every video has a box
    sidecar, the localization figures (``pointing`` per query, ``pointing_best``, ``pointing_any``,
    ``mass``, ``distractor_hits``, each with its chance level; ``body_pointing``: the pointing
    game against the body's box instead). Plain floats and lists.
    """
    from artlib.api import eval_dataset
    from artlib.data.synthetic import box_sidecar_path
    from artlib.nn.localization import localization_metrics, tracklet_cosine, tracklet_health

    if getattr(model, "head", None) is None:
        raise ValueError("--localization: a --baseline model has no region queries to measure")

    with_boxes = bool(items) and all(os.path.isfile(box_sidecar_path(it.path)) for it in items)
    dataset = eval_dataset(items, info, num_clips=1, num_crops=1, seed=seed)
    model.eval()
    per_layer, resp, boxes, correct = None, [], [], []
    skipped = 0
    for i in range(len(dataset)):
        got = _gather(model, dataset, i, device, with_boxes)
        if got is None:
            skipped += 1
            continue
        att, r, logits, b = got
        if per_layer is None:
            per_layer = [[] for _ in att]
        for store, a in zip(per_layer, att):
            store.append(a)
        resp.append(r)
        correct.append(logits.argmax() == dataset.items[i].label)
        if with_boxes:
            boxes.append(b)
    if per_layer is None:
        raise ValueError("--localization: no video could be read")
    layers = []
    responses = torch.cat(resp)
    for i, store in enumerate(per_layer):
        att = torch.cat(store)  # (B, T', K, L)
        entry = {"layer": i + 1}
        health = tracklet_health(att)
        entry.update({k: v.tolist() for k, v in health.items()})
        if with_boxes:
            limb, dis, body = (torch.cat(parts) for parts in zip(*boxes))
            m = localization_metrics(att, limb, dis)
            entry.update({k: v.tolist() for k, v in m.items()})
            on_body = localization_metrics(att, body)  # where else a query may settle
            entry["body_pointing"] = on_body["pointing"].tolist()
            entry["body_pointing_chance"] = on_body["pointing_chance"].tolist()
        layers.append(entry)
    return {
        "videos": len(resp),
        "with_boxes": with_boxes,
        "skipped": skipped,
        "top1": float(torch.stack(correct).float().mean()),
        "tracklet_cosine": float(tracklet_cosine(responses)),
        "layers": layers,
    }


def _q(values) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def format_report(rep: dict) -> list[str]:
    """The report as printed lines (one per layer and kind; the last layer's summary last)."""
    lines = []
    for e in rep["layers"]:
        lines.append(
            f"health layer {e['layer']}: entropy/query {_q(e['entropy'])}  map cosine "
            f"{e['map_cosine']:.3f}  intersection {e['map_intersection']:.3f}  peak jump/query "
            f"{_q(e['peak_jump'])} (chance {e['peak_jump_chance']:.2f} cells)"
        )
        if rep["with_boxes"]:
            lines.append(
                f"localization layer {e['layer']}: pointing/query {_q(e['pointing'])} best "
                f"{e['pointing_best']:.3f} any {e['pointing_any']:.3f} (chance "
                f"{e['pointing_chance']:.3f}, any {e['pointing_any_chance']:.3f})  mass/query "
                f"{_q(e['mass'])} (chance {e['mass_chance']:.3f})  distractor hits/query "
                f"{_q(e['distractor_hits'])} (chance {e['distractor_chance']:.3f})  on the body/query "
                f"{_q(e['body_pointing'])} (chance {e['body_pointing_chance']:.3f})"
            )
    last = rep["layers"][-1]
    summary = (
        f"LOCALIZATION videos={rep['videos']} top1={rep['top1']:.4f} "
        f"entropy={sum(last['entropy']) / len(last['entropy']):.3f} "
        f"map_cosine={last['map_cosine']:.3f} tracklet_cosine={rep['tracklet_cosine']:.3f}"
    )
    if rep["with_boxes"]:
        summary += (
            f" pointing_best={last['pointing_best']:.3f} chance={last['pointing_chance']:.3f}"
            f" mass={max(last['mass']):.3f} mass_chance={last['mass_chance']:.3f}"
        )
    else:
        summary += " (no box sidecars: health only)"
    lines.append(summary)
    return lines
