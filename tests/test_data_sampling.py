"""TSN sampling and crop parameters: segment rules, determinism, short videos, multi-clip."""

import numpy as np
import pytest

from artlib.data import crop_params, item_rng, sample_indices


@pytest.mark.parametrize("n, T", [(300, 16), (17, 16), (16, 16), (1000, 8)])
def test_train_one_frame_per_segment(n, T):
    for seed in range(20):
        idx = sample_indices(n, T, train=True, rng=seed)
        assert idx.shape == (1, T) and idx.dtype == np.int64
        # segment t is [t n/T, (t+1) n/T): the frames it touches are floor(start) .. ceil(end) - 1
        edges = np.arange(T + 1) * n / T
        lo, hi = np.floor(edges[:-1]), np.ceil(edges[1:])
        assert ((idx[0] >= lo) & (idx[0] < hi)).all(), idx
    assert np.array_equal(sample_indices(n, T, True, 7), sample_indices(n, T, True, 7))
    draws = {tuple(sample_indices(n, T, True, s)[0]) for s in range(10)}
    assert len(draws) > 1 or n == T


def test_train_is_uniform_within_a_segment():
    """Each frame of a 4-frame segment is drawn about equally often."""
    rng = np.random.default_rng(0)
    counts = np.bincount(sample_indices(64, 16, True, rng, num_clips=4000)[:, 3], minlength=64)
    seg = counts[12:16]
    assert counts.sum() == seg.sum() and seg.min() > 0.2 * 4000 and seg.max() < 0.3 * 4000


def test_eval_centres_and_multi_clip():
    assert sample_indices(160, 16, train=False).tolist() == [list(range(5, 160, 10))]
    three = sample_indices(160, 16, train=False, num_clips=3)
    assert three.shape == (3, 16)
    assert three[:, 0].tolist() == [1, 5, 8]  # offsets 1/6, 3/6, 5/6 of a 10-frame segment
    assert (np.diff(three, axis=0) > 0).all()  # clips are distinct and ordered


def test_short_videos_repeat_frames_in_order():
    idx = sample_indices(5, 16, train=False)[0]
    assert idx.tolist() == sorted(idx.tolist()) and set(idx.tolist()) == set(range(5))
    assert np.bincount(idx).max() <= 4  # each frame about T / n = 3.2 times
    assert sample_indices(1, 8, train=True, rng=0).tolist() == [[0] * 8]
    with pytest.raises(ValueError, match="num_frames: expected >= 1, got 0"):
        sample_indices(0, 8, train=True)


def test_crop_params():
    for seed in range(50):
        top, left, h, w, flip = crop_params(240, 320, True, seed, scale=(0.4, 1.0))
        assert 0 <= top and top + h <= 240 and 0 <= left and left + w <= 320
        assert 0.4 * 0.9 <= h * w / (240 * 320) <= 1.0 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    flips = [crop_params(240, 320, True, s)[4] for s in range(200)]
    assert 60 < sum(flips) < 140
    assert not any(crop_params(240, 320, True, s, flip=False)[4] for s in range(50))
    assert crop_params(240, 320, False) == (0, 40, 240, 240, False)
    assert crop_params(240, 320, True, 3) == crop_params(240, 320, True, 3)
    r1, r2 = item_rng(0, 1, 5), item_rng(0, 1, 5)
    assert r1.random() == r2.random() and item_rng(0, 2, 5).random() != item_rng(0, 1, 5).random()
