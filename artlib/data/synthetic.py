"""A small fine-grained video set written as real files, so every command runs on a fresh machine.

Every video shows the same kind of scene: a random smooth texture (the background), a "body" (a soft
disc of a random colour) that glides along a short random path, and a "limb" (a white square with a
black rim) attached to the body's right side at a random angle (±23°). All classes share this global
motion. They differ ONLY in a brief local motion of the limb during a window of ``num_frames // 2``
frames that starts at a random time (in sampled frames: 4 of T = 8, 8 of T = 16):

====  ============================  ==========================================================
  0   limb up once                  out (up) and held for the window, then back
  1   limb down once                the same, downwards
  2   limb left once                the same, to the left
  3   limb right once               the same, to the right
  4   limb up twice                 up, back, up, back (each quarter of the window)
  5   limb right twice              the same, to the right
  6   limb twist clockwise          one turn on a small circle above its rest place, clockwise
  7   limb twist counter-clockwise  the same turn, counter-clockwise
====  ============================  ==========================================================

(``num_classes`` < 8 takes the first classes; up to 12 adds "limb down twice", "limb left twice",
"limb up-left once", "limb down-right once".) Backgrounds, body colours, positions (within ±10% of the
frame around the middle), paths, the limb's rest angle and the window's start are drawn per video, so
no single frame, colour or global statistic gives the class away: "up once" and "up twice" differ
only in whether the limb comes back in the middle, and the two twists only in the order of the same
positions. Horizontal flips swap left/right and the twists: train with ``flip=False``.

Learnability, measured (default set, T = 8, random crop 0.8-1, no flip): ``tiny_cnn`` (a 2D+3D CNN,
artlib.models.TinyConvVideoBackbone) with a linear head on its global average reaches 0.94 val Top-1
after 60 epochs; the ``tiny`` ViT stays at chance from scratch. Earlier versions (random limb
colours, positions anywhere in the frame) stayed at chance for every small model tried, so the
limb's fixed look and the limited position range are there on purpose. ``distractors=N`` adds N
look-alike squares doing class-like motions away from the body (the harder variant). Figures: the
README's evidence section and docs/data.md.

``make_finegrained_set`` writes ``train/`` and ``val/`` videos plus ``train.txt``/``val.txt`` in the
generic ``<path> <label>`` format and ``classes.txt``, under ``<root>/finegrained-<config hash>/``. A
second call with the same configuration reuses the files. Beside each video, ``<name>.boxes.json``
holds the per-frame boxes of the limb, the body and each distractor (``read_boxes``): the ground
truth for localization metrics (``python -m artlib.evaluate --localization``). The set is written
into a temporary folder and renamed when complete (``config.json``, written last, marks a complete
set), so an interrupted generation is redone, not half used. Generation holds a file lock per set
(``<root>/.finegrained-<hash>.lock``) and checks for the complete set again under it: concurrent
runs write a set once, and a complete set is never deleted while another run reads it. Under
``torchrun`` only local rank 0 of each node generates; the node's other ranks (``LOCAL_RANK`` > 0)
wait for the complete set (at most ``$ARTLIB_SYNTHETIC_WAIT`` seconds, default 3600).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np

from artlib._io import file_lock

from ._write import CODECS, write_video

__all__ = [
    "CLASS_NAMES",
    "SyntheticSet",
    "box_sidecar_path",
    "make_finegrained_set",
    "read_boxes",
    "render_clip",
]

# name, kind, direction (dx, dy in image coordinates: y grows downwards)
_CLASSES = [
    ("limb up once", "once", (0, -1)),
    ("limb down once", "once", (0, 1)),
    ("limb left once", "once", (-1, 0)),
    ("limb right once", "once", (1, 0)),
    ("limb up twice", "twice", (0, -1)),
    ("limb right twice", "twice", (1, 0)),
    ("limb twist clockwise", "twist", (-1, 0)),
    ("limb twist counter-clockwise", "twist", (1, 0)),
    ("limb down twice", "twice", (0, 1)),
    ("limb left twice", "twice", (-1, 0)),
    ("limb up-left once", "once", (-math.sqrt(0.5), -math.sqrt(0.5))),
    ("limb down-right once", "once", (math.sqrt(0.5), math.sqrt(0.5))),
]
CLASS_NAMES = [c[0] for c in _CLASSES]
JITTER = 0.1  # the body's start point and path length, as a fraction of the frame
_VERSION = 6  # bump when the rendering or the files change: the cache key includes it (6: boxes)


@dataclass(frozen=True)
class SyntheticSet:
    """A generated set: ``root`` (its folder), ``train_list``/``val_list`` (``<path> <label>`` files
    for ``read_generic_list``), ``class_names``, and the configuration it was made with.
    ``flip_safe`` is False: a horizontal flip turns "left" into "right" and "clockwise" into
    "counter-clockwise", so train on it with ``VideoDataset(..., flip=False)``."""

    root: str
    train_list: str
    val_list: str
    class_names: list[str]
    num_frames: int
    size: tuple[int, int]
    codec: str
    flip_safe: bool = False


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _limb_offset(kind: str, direction, u: float, amp: float) -> tuple[float, float]:
    """The limb's displacement from its rest place at window phase u (0..1 inside the window)."""
    if not 0.0 <= u <= 1.0:
        return 0.0, 0.0
    dx, dy = direction
    if kind == "once":  # out over the first 1/8, held, back over the last 1/8
        a = _smoothstep(u * 8) * _smoothstep((1 - u) * 8)
        return amp * dx * a, amp * dy * a
    if kind == "twice":  # out during the 1st and 3rd quarters, at rest during the 2nd and 4th
        q = (u * 4) % 2  # 0..2 per cycle; out for q in [0, 1)
        a = _smoothstep(q * 6) * _smoothstep((1 - q) * 6) if q < 1 else 0.0
        return amp * dx * a, amp * dy * a
    # twist: one turn on a circle of radius amp/2 whose lowest point is the rest place;
    # direction (-1, 0): starts to the left = clockwise on screen, (1, 0): counter-clockwise
    r = amp / 2
    phi = 2 * math.pi * u
    return dx * r * math.sin(phi), -r * (1 - math.cos(phi))


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour texture (H, W, 3) float in [0, 255]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    base = rng.uniform(40, 200, 3)
    for _ in range(4):
        fx, fy = rng.uniform(0.5, 3.0, 2) * 2 * math.pi / np.array([w, h])
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(fx * xx + fy * yy * rng.choice([-1, 1]) + phase)
        img += wave[..., None] * rng.uniform(-12, 12, 3)
    return np.clip(img + base, 0, 255)


def _disc(h, w, cx, cy, r):
    """Soft (anti-aliased) disc mask (H, W) in [0, 1]: sub-pixel motion stays visible."""
    yy, xx = np.ogrid[0:h, 0:w]
    d = np.sqrt((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2)
    return np.clip(r - d + 0.5, 0.0, 1.0)


def _square(h, w, cx, cy, half):
    yy, xx = np.ogrid[0:h, 0:w]
    mx = np.clip(half - np.abs(xx + 0.5 - cx) + 0.5, 0.0, 1.0)
    my = np.clip(half - np.abs(yy + 0.5 - cy) + 0.5, 0.0, 1.0)
    return mx * my


def _limb_path(kind, direction, start: int, window: int, amp: float, num_frames: int) -> np.ndarray:
    """(num_frames, 2) offsets of a limb doing ``kind`` in ``direction`` in the window from ``start``."""
    return np.array(
        [_limb_offset(kind, direction, (t - start) / (window - 1), amp) for t in range(num_frames)]
    )


def _paint_limb(img, h: int, w: int, centres: np.ndarray, half: float, rim: float):
    """A white square with a black rim at each frame's centre (F, 2) over img (F, H, W, 3)."""
    x, y = centres[:, 0, None, None], centres[:, 1, None, None]
    img = img * (1 - _square(h, w, x, y, half)[..., None])  # the black rim
    return img + 255.0 * _square(h, w, x, y, half - rim)[..., None]


def render_clip(
    label: int,
    rng: np.random.Generator,
    num_frames: int,
    size: tuple[int, int],
    distractors: int = 0,
    distractor_amplitude: float = 0.5,
    return_boxes: bool = False,
):
    """The frames of one video of class ``label``: uint8 (num_frames, H, W, 3), and its window start;
    with ``return_boxes`` also its boxes (the ground truth of where things are, see ``read_boxes``):
    ``{"limb": (F, 4), "body": (F, 4), "distractors": (N, F, 4)}`` float pixel boxes
    (x0, y0, x1, y1) of each frame, the square's outer edge (rim included), clipped to the frame.

    ``distractors``: free squares of the limb's look, anywhere off the body and behind it, each doing
    the motion of a random class (at ``distractor_amplitude`` times the limb's amplitude) in its own
    window; only the limb attached to the body counts.
    They are drawn after everything else, so the rest of the video is the same as without them."""
    h, w = size
    s = min(h, w)
    _, kind, direction = _CLASSES[label]
    bg = _texture(rng, h, w)
    body_r = 0.14 * s
    limb_half = 0.08 * s
    amp = 0.2 * s
    # the body's path: a short straight line from a random point, kept so the limb stays inside
    reach_x = body_r + 2 * limb_half + amp  # body centre to the limb's far edge, rightwards
    reach_y = (body_r + limb_half) * math.sin(0.4) + amp + limb_half
    lo, hi = np.array([body_r + 1, reach_y]), np.array([w - reach_x, h - reach_y])
    hi = np.maximum(hi, lo)
    # random but not anywhere: within ±JITTER·s of the middle of the allowed area, so that a small
    # model learns the limb's relation to the body, not translation invariance, from few videos
    mid = (lo + hi) / 2
    p0 = np.clip(mid + rng.uniform(-JITTER * s, JITTER * s, 2), lo, hi)
    p1 = np.clip(p0 + rng.uniform(-JITTER * s, JITTER * s, 2), lo, hi)
    rest_angle = rng.uniform(-0.4, 0.4)  # the limb sits to the right of the body (±23°)
    rest = (body_r + limb_half) * np.array([math.cos(rest_angle), math.sin(rest_angle)])
    # colours: the body a random colour of the luminance opposite to the background's; the limb
    # always looks the same (white, black rim) so that a small model can find it from few videos
    dark = bg.mean() > 128
    body_col = rng.uniform(0, 90, 3) if dark else rng.uniform(165, 255, 3)
    rim = max(1.0, limb_half / 3)
    window = max(4, num_frames // 2)
    start = int(rng.integers(1, max(2, num_frames - window)))
    a = np.linspace(0.0, 1.0, num_frames)[:, None]
    body = p0 * (1 - a) + p1 * a  # (F, 2) centres
    limb = body + rest + _limb_path(kind, direction, start, window, amp, num_frames)
    img = bg
    d_paths = []
    d_amp = amp * distractor_amplitude  # the default 0.5 leaves room for them in a small frame
    margin = limb_half + d_amp + 1
    for _ in range(distractors):  # behind the body and the limb: they never hide the real one
        d_label = int(rng.integers(len(_CLASSES)))
        d_kind, d_dir = _CLASSES[d_label][1:]
        for _try in range(20):  # not on the body
            centre = rng.uniform(
                [margin, margin], [max(margin, w - margin), max(margin, h - margin)]
            )
            if np.hypot(*(centre - p0)) > body_r + 2 * limb_half:
                break
        d_start = int(rng.integers(0, max(1, num_frames - window)))
        path = centre + _limb_path(d_kind, d_dir, d_start, window, d_amp, num_frames)
        d_paths.append(path)
        img = _paint_limb(img, h, w, path, limb_half, rim)
    m_body = _disc(h, w, body[:, 0, None, None], body[:, 1, None, None], body_r)[..., None]
    img = img * (1 - m_body) + body_col * m_body  # (F, H, W, 3)
    img = _paint_limb(img, h, w, limb, limb_half, rim)
    frames = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if not return_boxes:
        return frames, start

    def box(centres, half):  # (F, 2) -> (F, 4) x0 y0 x1 y1, clipped to the frame
        b = np.concatenate([centres - half, centres + half], axis=1)
        return np.clip(b, 0, [w, h, w, h])

    boxes = {
        "limb": box(limb, limb_half),
        "body": box(body, body_r),
        "distractors": np.array([box(p, limb_half) for p in d_paths]).reshape(-1, num_frames, 4),
    }
    return frames, start, boxes


def box_sidecar_path(video_path: str | os.PathLike) -> str:
    """Where the boxes of a synthetic video are written: ``<video without extension>.boxes.json``."""
    return os.path.splitext(os.fspath(video_path))[0] + ".boxes.json"


def read_boxes(video_path: str | os.PathLike) -> dict | None:
    """The ground-truth boxes written beside a synthetic video, or None when it has none:
    ``{"size": (H, W), "limb": (F, 4), "body": (F, 4), "distractors": (N, F, 4)}``, float32 numpy
    pixel boxes (x0, y0, x1, y1) of every frame of the file (F = its frame count), in the
    frame's own coordinates (x right, y down; a pixel column c spans [c, c + 1))."""
    path = box_sidecar_path(video_path)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        raw = json.load(fh)
    f = len(raw["limb"])
    return {
        "size": tuple(raw["size"]),
        "limb": np.asarray(raw["limb"], np.float32).reshape(f, 4),
        "body": np.asarray(raw["body"], np.float32).reshape(f, 4),
        "distractors": np.asarray(raw["distractors"], np.float32).reshape(-1, f, 4),
    }


def _write_boxes(video_path: str, boxes: dict, size: tuple[int, int]) -> None:
    def r(a):  # 2 decimals: a hundredth of a pixel, a small file
        return np.round(np.asarray(a, np.float64), 2).tolist()

    record = {"size": list(size), **{k: r(v) for k, v in boxes.items()}}
    with open(box_sidecar_path(video_path), "w") as fh:
        json.dump(record, fh, separators=(",", ":"))


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _config_key(cfg: dict) -> str:
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]


def make_finegrained_set(
    root: str | os.PathLike,
    num_classes: int = 8,
    train_per_class: int = 48,
    val_per_class: int = 16,
    num_frames: int = 32,
    size: tuple[int, int] = (64, 64),
    codec: str = "h264",
    seed: int = 0,
    fps: int = 16,
    distractors: int = 0,
    distractor_amplitude: float = 0.5,
) -> SyntheticSet:
    """Write (or reuse) the synthetic fine-grained set under ``<root>/finegrained-<hash>/``.

    num_classes: 2..12 (the first of the table in the module docstring). size: (H, W), even.
    codec: "h264" (.mp4, the PyAV path) or "vp9" (.webm, DALI's CPU decoder), or "mjpeg".
    distractors: free squares that look like the limb and do class-like motions anywhere in the
    frame (see ``render_clip``): the harder variant, where the model must find the limb attached to
    the body among look-alikes. distractor_amplitude: their motion's amplitude as a fraction of the
    limb's (default 0.5; at 1.0 only the attachment to the body tells the limb apart).
    Returns a SyntheticSet; read its lists with ``read_generic_list``.
    Takes ~15 s for the default 512 videos of 64x64x32 on a 2-core CPU.
    """
    if not 2 <= num_classes <= len(_CLASSES):
        raise ValueError(f"num_classes: expected 2..{len(_CLASSES)}, got {num_classes}")
    if codec not in CODECS:
        raise ValueError(f"codec: expected one of {sorted(CODECS)}, got {codec!r}")
    h, w = size
    if h < 32 or w < 32 or h % 2 or w % 2:
        raise ValueError(f"size: expected even H, W >= 32, got {size}")
    if num_frames < 8:
        raise ValueError(f"num_frames: expected >= 8, got {num_frames}")
    if distractors < 0:
        raise ValueError(f"distractors: expected >= 0, got {distractors}")
    if not 0.0 <= distractor_amplitude <= 1.0:
        raise ValueError(f"distractor_amplitude: expected 0..1, got {distractor_amplitude}")
    if train_per_class < 1 or val_per_class < 0:
        raise ValueError(
            f"train_per_class, val_per_class: expected >= 1 and >= 0, "
            f"got {train_per_class}, {val_per_class}"
        )
    cfg = dict(
        version=_VERSION, num_classes=num_classes, train_per_class=train_per_class,
        val_per_class=val_per_class, num_frames=num_frames, size=[h, w], codec=codec, seed=seed,
        fps=fps,
    )  # fmt: skip
    if distractors:  # the key of a set without distractors stays as it was
        cfg["distractors"] = distractors
        if distractor_amplitude != 0.5:
            cfg["distractor_amplitude"] = distractor_amplitude
    root = os.path.expanduser(os.fspath(root))
    key = _config_key(cfg)
    final = os.path.join(root, f"finegrained-{key}")
    names = CLASS_NAMES[:num_classes]
    result = SyntheticSet(
        root=final,
        train_list=os.path.join(final, "train.txt"),
        val_list=os.path.join(final, "val.txt"),
        class_names=names,
        num_frames=num_frames,
        size=(h, w),
        codec=codec,
    )
    marker = os.path.join(final, "config.json")  # written last: the set is complete
    if os.path.exists(marker):
        return result  # complete: the folder only appears by an atomic rename of a finished one
    os.makedirs(root, exist_ok=True)
    if not _generates_here():  # another rank of this node writes it: wait for the marker
        _wait_for(marker, final)
        return result
    # one generator per set on this file system; a complete set is never deleted (checked again
    # under the lock), so a run already reading it is safe from a second generator
    with file_lock(os.path.join(root, f".finegrained-{key}.lock")):
        if os.path.exists(marker):
            return result  # another process finished it while we waited
        _generate(
            root, final, key, cfg, names, num_classes, train_per_class, val_per_class,
            num_frames, (h, w), codec, seed, fps, distractors, distractor_amplitude,
        )  # fmt: skip
    return result


def _generates_here() -> bool:
    """Local rank 0 (or a process outside torchrun) writes the set; the node's other ranks wait."""
    return os.environ.get("LOCAL_RANK", "0").strip() in ("", "0")


def _wait_for(marker: str, final: str) -> None:
    """Wait until ``marker`` exists (local rank 0 is writing the set), at most
    ``$ARTLIB_SYNTHETIC_WAIT`` seconds (default 3600); RuntimeError after that."""
    limit = float(os.environ.get("ARTLIB_SYNTHETIC_WAIT", "3600"))
    deadline = time.monotonic() + limit
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"synthetic set: waited {limit:g} s for local rank 0 to write {final}; "
                "did it fail? (its log says why; ARTLIB_SYNTHETIC_WAIT sets the wait)"
            )
        time.sleep(0.2)


def _generate(
    root, final, key, cfg, names, num_classes, train_per_class, val_per_class, num_frames, size,
    codec, seed, fps, distractors, distractor_amplitude,
) -> None:  # fmt: skip
    """Write the set into a temporary folder and rename it to ``final`` (holding the set's lock)."""
    h, w = size
    prefix = f".tmp-finegrained-{key}-"
    for entry in os.listdir(root):  # leftovers of interrupted generations
        if entry.startswith(prefix) and not _alive(entry[len(prefix) :]):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
    tmp = os.path.join(root, f"{prefix}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    ext = CODECS[codec][1]
    for split, per_class, split_seed in (("train", train_per_class, 0), ("val", val_per_class, 1)):
        lines = []
        for label in range(num_classes):
            folder = os.path.join(tmp, split, f"{label:02d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([seed, split_seed, label, i])
                frames, _, boxes = render_clip(
                    label, rng, num_frames, (h, w), distractors, distractor_amplitude, True
                )
                rel = os.path.join(split, f"{label:02d}", f"{i:04d}{ext}")
                write_video(os.path.join(tmp, rel), frames, fps=fps, codec=codec)
                _write_boxes(os.path.join(tmp, rel), boxes, (h, w))
                lines.append(f"{rel} {label}\n")
        with open(os.path.join(tmp, f"{split}.txt"), "w") as fh:
            fh.writelines(lines)
    with open(os.path.join(tmp, "classes.txt"), "w") as fh:
        fh.writelines(f"{n}\n" for n in names)
    with open(os.path.join(tmp, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    if os.path.isdir(final):  # an incomplete copy (no config.json, checked under the lock):
        trash = f"{tmp}-old"  # moved aside first, so that `final` only ever appears complete
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(tmp, final)
