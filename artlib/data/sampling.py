"""TSN sparse sampling (Wang et al., ECCV 2016) and the spatial augmentation parameters.

A video of n frames is cut into T equal segments [t·n/T, (t+1)·n/T). Training draws one random frame
in each segment; evaluation takes each segment's centre; multi-clip evaluation takes ``num_clips``
evenly spaced offsets in each segment ((k + 0.5) / num_clips of the way in, k = 0..num_clips-1).

Shorter-than-T videos (n < T): the same formula, floor((t + u)·n/T), picks each frame about T/n
times in order (frames repeat, nothing is padded with black) — a temporal stretch. n = 0 is an error.

Both decoders' datasets (PyAV and DALI) draw their randomness here, from the same seeded generator,
so one seed gives the same frames, crop and flip on both paths.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["crop_params", "item_rng", "sample_indices", "three_crops"]


def _rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng: expected a numpy Generator, an int seed or None, got {type(rng)}")


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample: the same (seed, epoch, index) gives the same draws in any
    process, so worker count and DDP sharding do not change what a sample sees."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def sample_indices(
    num_frames: int,
    T: int,
    train: bool,
    rng: np.random.Generator | int | None = None,
    num_clips: int = 1,
) -> np.ndarray:
    """TSN indices -> int64 array (num_clips, T), each row non-decreasing, values in [0, num_frames).

    train=True: a uniform random frame in each of the T segments (each clip drawn independently).
    train=False: segment centres; with num_clips > 1, clip k takes offset (k + 0.5) / num_clips in
    every segment. ``rng``: a numpy Generator or an int seed (deterministic), None: fresh entropy.
    Short videos (num_frames < T) repeat frames in order (see the module docstring).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
    if T < 1:
        raise ValueError(f"T: expected >= 1, got {T}")
    if num_clips < 1:
        raise ValueError(f"num_clips: expected >= 1, got {num_clips}")
    seg = num_frames / T
    starts = np.arange(T, dtype=np.float64)[None, :]  # (1, T)
    if train:
        u = _rng(rng).random((num_clips, T))
    else:
        u = np.broadcast_to((np.arange(num_clips)[:, None] + 0.5) / num_clips, (num_clips, T))
    idx = np.floor((starts + u) * seg).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1)


def crop_params(
    height: int,
    width: int,
    train: bool,
    rng: np.random.Generator | int | None = None,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> tuple[int, int, int, int, bool]:
    """The crop window (top, left, h, w) and the flip of one clip (the same for all its frames).

    train=True: random resized crop — area fraction uniform in ``scale``, aspect ratio log-uniform in
    ``ratio`` (the torchvision RandomResizedCrop rule: 10 tries, then the centre crop of the largest
    window that fits the ratio range); horizontal flip with probability 1/2 if ``flip``.
    train=False: the centre square of side min(height, width), no flip.
    The window is then resized to the crop size (224² by default) by the caller.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height, width: expected >= 1, got {height}x{width}")
    if not train:
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side, False
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale: expected 0 < min <= max <= 1, got {scale}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio: expected 0 < min <= max, got {ratio}")
    g = _rng(rng)
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    window = None
    for _ in range(10):
        target = area * g.uniform(scale[0], scale[1])
        aspect = math.exp(g.uniform(*log_r))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(g.integers(0, height - h + 1))
            left = int(g.integers(0, width - w + 1))
            window = (top, left, h, w)
            break
    if window is None:  # fallback: centre crop at the nearest allowed ratio
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            h, w = height, int(round(height * ratio[1]))
        else:
            h, w = height, width
        window = ((height - h) // 2, (width - w) // 2, h, w)
    flipped = bool(flip and g.random() < 0.5)
    return (*window, flipped)


def three_crops(height: int, width: int) -> list[tuple[int, int, int, int, bool]]:
    """Multi-crop evaluation: the squares of side min(height, width) at the start, centre and end
    of the long side, as (top, left, h, w, flip=False) windows."""
    side = min(height, width)
    if width >= height:
        return [(0, x, side, side, False) for x in (0, (width - side) // 2, width - side)]
    return [(y, 0, side, side, False) for y in (0, (height - side) // 2, height - side)]
