"""VideoDataset / make_loader: the exact frames and augmentation, the skip-count-log rule for broken
videos (also through worker processes), the failure limit, short videos, sharding."""

import logging

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("av")

from helpers import assert_close  # noqa: E402

from artlib.data import (  # noqa: E402
    SampleFailure,
    ShardedSampler,
    TooManyFailures,
    VideoDataset,
    decode_frames,
    make_loader,
    sample_indices,
)
from artlib.data._write import (  # noqa: E402
    read_frame_index,
    write_broken_videos,
    write_index_video,
)

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))  # output = pixel values


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader")
    good = [
        write_index_video(d / f"v{i}.mp4", 24 + 8 * i, size=(64, 80), codec="h264", gop=12)
        for i in range(6)
    ]
    short = write_index_video(d / "short.mp4", 5, size=(64, 80), codec="h264")
    broken = write_broken_videos(d / "broken")
    return good, short, broken


def _indices_of(video):
    """Frame indices shown by a clip returned with RAW normalization (T, 3, S, S)."""
    return [
        read_frame_index(f.permute(1, 2, 0).round().clamp(0, 255).byte().numpy()) for f in video
    ]


def test_eval_clip_is_the_centre_frames(videos):
    good, _, _ = videos
    ds = VideoDataset([(good[0], 3)], num_frames=8, train=False, crop_size=64, **RAW)
    s = ds[0]
    assert set(s) == {"video", "label", "index", "short"}
    assert s["video"].shape == (8, 3, 64, 64) and s["video"].dtype == torch.float32
    assert s["label"] == 3 and s["index"] == 0 and not s["short"]
    assert _indices_of(s["video"]) == [1, 4, 7, 10, 13, 16, 19, 22]  # centres of 3-frame segments
    multi = VideoDataset(
        [(good[0], 3)], num_frames=8, train=False, crop_size=64, num_clips=2, **RAW
    )
    v = multi[0]["video"]
    assert v.shape == (2, 8, 3, 64, 64)
    assert _indices_of(v[0]) == [0, 3, 6, 9, 12, 15, 18, 21]


def test_multi_clip_multi_crop_eval(videos):
    good, _, _ = videos
    ds = VideoDataset([(good[0], 0)], 4, train=False, crop_size=64, num_clips=2, num_crops=3, **RAW)
    v = ds[0]["video"]
    assert v.shape == (6, 4, 3, 64, 64)  # views: clip 0 (left, centre, right crop), clip 1 (...)
    idx = sample_indices(24, 4, train=False, num_clips=2)
    frames = decode_frames(good[0], idx.reshape(-1)).view(2, 4, 64, 80, 3).permute(0, 1, 4, 2, 3)
    for view in range(6):
        clip, left = divmod(view, 3)
        ref = frames[clip][..., [0, 8, 16][left] :][..., :64].float()
        assert_close(v[view], ref, atol=1e-3, rtol=0, name=f"view {view}")
    with pytest.raises(ValueError, match="num_crops: expected 1, or 3 in eval mode, got 3"):
        VideoDataset([(good[0], 0)], 4, train=True, num_crops=3)


def test_train_transform_matches_a_plain_reference(videos):
    """crop -> bilinear antialiased resize -> flip -> normalize, with the planned parameters."""
    good, _, _ = videos
    ds = VideoDataset([(p, 0) for p in good], num_frames=4, train=True, crop_size=32, seed=5)
    for index in range(len(good)):
        ds.set_epoch(1)
        out = ds[index]["video"]
        n = 24 + 8 * index
        idx, (top, left, h, w, flip) = ds.plan(index, n, 64, 80)
        frames = decode_frames(good[index], idx.reshape(-1)).permute(0, 3, 1, 2).float()
        ref = frames[:, :, top : top + h, left : left + w]
        ref = F.interpolate(ref, size=(32, 32), mode="bilinear", antialias=True)
        ref = ref.flip(-1) if flip else ref
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        ref = (ref / 255 - mean) / std
        # the dataset resizes in uint8 (fixed-point weights, rounding): at most one grey level
        assert_close(out, ref, atol=1 / 255 / 0.2613, rtol=0, name=f"clip {index}")
    ds.set_epoch(1)
    a = ds[2]["video"]
    ds.set_epoch(2)
    assert not torch.equal(a, ds[2]["video"])  # a new epoch draws again
    ds.set_epoch(1)
    assert torch.equal(a, ds[2]["video"])  # and the same epoch gives the same clip


def test_short_video_repeats_frames(videos):
    _, short, _ = videos
    ds = VideoDataset([(short, 1)], num_frames=8, train=False, crop_size=64, **RAW)
    s = ds[0]
    assert s["short"] and _indices_of(s["video"]) == [0, 0, 1, 2, 2, 3, 4, 4]
    loader = make_loader(ds, batch_size=2, train=False)
    assert [b["video"].shape for b in loader] == [(1, 8, 3, 64, 64)]
    assert loader.stats["short"] == 1 and loader.stats["failed"] == 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_broken_videos_are_skipped_counted_logged(videos, num_workers, caplog):
    good, _, broken = videos
    items = [(p, i) for i, p in enumerate(good)] + [(p, 9) for p in broken.values()]
    ds = VideoDataset(items, num_frames=4, train=True, crop_size=32)
    assert isinstance(ds[len(good)], SampleFailure)
    loader = make_loader(
        ds, batch_size=4, train=True, num_workers=num_workers, max_failure_fraction=0.6
    )
    assert len(loader) == len(items) // 4
    seen = []
    with caplog.at_level(logging.WARNING, logger="artlib.data"):
        for epoch in range(2):
            loader.set_epoch(epoch)
            for batch in loader:
                assert batch["video"].shape[1:] == (4, 3, 32, 32)
                assert len(batch["video"]) == len(batch["label"]) == len(batch["index"]) <= 4
                seen += batch["index"].tolist()
    n_used = len(loader) * 4  # drop_last: 12 of the 12 items are used per epoch
    assert loader.stats["samples"] + loader.stats["failed"] == 2 * n_used
    assert set(seen) <= set(range(len(good)))
    assert set(loader.failures) == set(broken.values())  # every broken file, with its reason
    assert "file not found" in loader.failures[broken["missing"]]
    assert "no video stream" in loader.failures[broken["audio_only"]]
    assert "truncated" in loader.failures[broken["truncated_webm"]]
    for path in broken.values():  # logged once each, by path
        assert sum(path in r.getMessage() for r in caplog.records) == 1


def test_too_many_failures_stop_the_run_listing_files(videos):
    good, _, broken = videos
    items = [(good[0], 0)] + [(p, 0) for p in broken.values()]
    loader = make_loader(
        VideoDataset(items, 4, train=False, crop_size=32), batch_size=2, train=False,
        max_failure_fraction=0.25,
    )  # fmt: skip
    with pytest.raises(TooManyFailures, match="max_failure_fraction=0.25") as e:
        list(loader)
    assert len(e.value.failures) >= 2
    for path in e.value.failures:
        assert path in str(e.value)


def test_sharded_sampler_splits_the_epoch():
    shards = [list(ShardedSampler(10, True, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # padded to 12 by repetition
    assert set(sum(shards, [])) == set(range(10))
    again = [list(ShardedSampler(10, True, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert shards == again
    s = ShardedSampler(10, True, seed=1, rank=0, world_size=3)
    s.set_epoch(1)
    assert list(s) != shards[0]
    assert list(ShardedSampler(10, False, rank=1, world_size=3, drop_last=True)) == [1, 4, 7]
    with pytest.raises(ValueError, match="rank: expected 0 <= rank < world_size=2, got 2"):
        ShardedSampler(10, True, rank=2, world_size=2)
