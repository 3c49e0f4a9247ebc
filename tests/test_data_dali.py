"""The DALI path (CPU decoder, VP9/MJPEG) returns the same frames as the PyAV path for the same
indices — VFR file included — and the same batches for the same seed; H.264 is refused clearly."""

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("av")
pytest.importorskip(
    "nvidia.dali", reason="NVIDIA DALI is optional (pip install 'artlib[dali]'): DALI tests skipped"
)

from helpers import assert_close  # noqa: E402

from artlib.data import (  # noqa: E402
    VideoDataset,
    VideoItem,
    dali_decode_frames,
    decode_frames,
    make_dali_loader,
    make_loader,
)
from artlib.data._write import (  # noqa: E402
    read_frame_index,
    write_broken_videos,
    write_index_video,
)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("dali")
    return {
        "vp9": write_index_video(d / "cfr.webm", 90, size=(64, 96), codec="vp9", gop=15),
        "vp9_vfr": write_index_video(d / "vfr.webm", 70, size=(64, 96), codec="vp9", vfr=True),
        "mjpeg": write_index_video(d / "m.mkv", 50, size=(64, 96), codec="mjpeg"),
        "h264": write_index_video(d / "h.mp4", 30, size=(64, 96), codec="h264"),
        "broken": write_broken_videos(d / "broken"),
    }


@pytest.mark.parametrize("kind", ["vp9", "vp9_vfr", "mjpeg"])
def test_same_frames_as_pyav(videos, kind):
    path = videos[kind]
    idx = [40, 0, 7, 7, 49, 13, 31, 2]
    dali = dali_decode_frames(path, idx)
    pyav = decode_frames(path, idx, accurate_rgb=True)
    assert dali.shape == pyav.shape == (len(idx), 64, 96, 3) and dali.dtype == torch.uint8
    assert [read_frame_index(f) for f in dali.numpy()] == idx
    assert torch.equal(dali, pyav)  # bit-identical
    fast = decode_frames(path, idx)  # swscale's fast YUV -> RGB: the same frames, rounded apart
    assert [read_frame_index(f) for f in fast.numpy()] == idx
    assert (fast.float() - dali.float()).abs().mean() < 1.0


def test_loader_same_batches_as_pyav(videos):
    items = [(videos["vp9"], 0), (videos["vp9_vfr"], 1), (videos["mjpeg"], 2)] * 2
    ds = VideoDataset(items, num_frames=6, train=True, crop_size=40, seed=3, accurate_rgb=True)
    dali = make_dali_loader(ds, batch_size=2, train=True, device="cpu")
    pyav = make_loader(ds, batch_size=2, train=True)
    assert len(dali) == len(pyav) == 3
    for epoch in (0, 1):
        dali.set_epoch(epoch)
        pyav.set_epoch(epoch)
        got, ref = list(dali), list(pyav)
        assert len(got) == len(ref) == 3
        for a, b in zip(got, ref):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["label"], b["label"])
            assert a["video"].shape == b["video"].shape == (2, 6, 3, 40, 40)
            # same frames, crop and flip: one grey level (+ rounding) apart inside the crop; the
            # outer 2 pixels differ by the resize's edge rule (module docstring of artlib.data.dali)
            inner = (..., slice(2, -2), slice(2, -2))
            level = 1 / 255 / 0.2613
            assert_close(a["video"][inner], b["video"][inner], atol=1.01 * level, rtol=0)
            assert (a["video"] - b["video"]).abs().mean() < level


def test_eval_loader_and_broken_files(videos):
    broken = list(videos["broken"].values())
    items = [(videos["vp9"], 0), (videos["vp9_vfr"], 1)] + [(p, 0) for p in broken]
    ds = VideoDataset(
        items, num_frames=4, train=False, crop_size=64, num_clips=2, accurate_rgb=True
    )
    loader = make_dali_loader(ds, batch_size=3, train=False, device="cpu", max_failure_fraction=0.9)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0, 1]]
    assert batches[0]["video"].shape == (2, 2, 4, 3, 64, 64)
    assert set(loader.failures) == set(broken) and loader.stats["failed"] == len(broken)
    ref_ds = VideoDataset(items[:2], 4, False, crop_size=64, num_clips=2, accurate_rgb=True)
    ref = next(iter(make_loader(ref_ds, 2, False)))
    # the centre 64x64 square needs no resize: the same numbers up to float rounding
    assert_close(batches[0]["video"], ref["video"], atol=1e-5, rtol=0, name="eval")


def test_items_form_and_explicit_shards(videos):
    """make_dali_loader(items, ..., shard_id, num_shards, **dataset kwargs), as the trainer calls it."""
    items = [(videos["vp9"], 0), (videos["vp9_vfr"], 1), (videos["mjpeg"], 2)]
    seen = []
    for shard in (0, 1):
        loader = make_dali_loader(
            items, batch_size=2, train=False, device="cpu", shard_id=shard, num_shards=2,
            num_frames=4, crop_size=32, flip=False,
        )  # fmt: skip
        batches = list(loader)
        assert all(b["video"].shape[1:] == (4, 3, 32, 32) for b in batches)
        seen += sum((b["index"].tolist() for b in batches), [])
    assert sorted(seen) == [0, 0, 1, 2]  # 3 items padded to 4 over 2 shards


def test_h264_is_refused_on_cpu(videos):
    with pytest.raises(ValueError, match="codec 'h264' cannot be decoded by DALI's CPU decoder"):
        dali_decode_frames(videos["h264"], [0])
    ds = VideoDataset([(videos["vp9"], 0), (videos["h264"], 1)], num_frames=4, train=False)
    with pytest.raises(ValueError, match="reads only vp8, vp9, mjpeg"):
        list(make_dali_loader(ds, batch_size=2, train=False, device="cpu"))
    assert np.all(decode_frames(videos["h264"], [0]).numpy() >= 0)  # PyAV reads it


def test_missing_dali_fails_at_construction(monkeypatch, tmp_path):
    """Without DALI the loader refuses when built (so a caller can fall back to PyAV), not at the
    first batch."""
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali -> ImportError
    with pytest.raises(ImportError, match="needs NVIDIA DALI"):
        make_dali_loader([VideoItem(str(tmp_path / "x.webm"), 0)], 2, True, num_frames=4)
