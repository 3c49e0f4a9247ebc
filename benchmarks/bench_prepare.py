"""Clip-cutting throughput of ``artlib.data.prepare`` (clips/s) from 480p H.264 sources.

    pytest benchmarks/bench_prepare.py --benchmark-only
    pytest benchmarks/bench_prepare.py --benchmark-only --benchmark-json prepare.json

Sources: two 854x480, 25 fps, 30 s H.264 videos (a keyframe every 50 frames, as YouTube-style
downloads have roughly every 2 s) with moving texture. Jobs: 12 clips of 2 s (50 frames, FineGym's
subactions are 1-3 s) spread over the sources. Each round cuts all of them into a fresh folder, pool
start-up included. Cases, all with the same encoder settings (libx264 veryfast, crf 18, GOP 16, one
codec thread per process):

- ``artlib-1-worker`` / ``artlib-2-workers``: ``run_jobs`` (seek to the keyframe before the span).
- ``stock-decode-from-start``: the common trim script's way (``ffmpeg -i src -ss s -t d``, i.e. output
  seeking: decode from the file's start and drop frames until the span), re-implemented with PyAV
  because this machine has no ffmpeg binary; one process, as those scripts run.

``extra_info["clips_per_s"]`` holds the rate; the 2-worker/1-worker ratio is the scaling target
(>= 1.7x on a 2-core machine). ``cpu_s_per_clip`` (this process and its workers) does not depend on
other load; ``loadavg_1min`` records how busy the machine was. With Linux's autogroup scheduling a
busy machine gives this process group a fixed CPU share, so measure the scaling on an idle machine.
"""

from __future__ import annotations

import os
import resource
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from artlib.data._write import write_video  # noqa: E402
from artlib.data.prepare import ClipJob, index_raw_videos, run_jobs  # noqa: E402
from artlib.data.prepare.cut import _add_h264  # noqa: E402

SMOKE = os.environ.get("ARTLIB_BENCH_SMOKE", "0") not in ("", "0")  # tiny shapes (conftest.py)
FPS, SECONDS, W, H = 25, 30, 854, 480
N_CLIPS, CLIP_S = 12, 2
if SMOKE:
    SECONDS, W, H, N_CLIPS, CLIP_S = 4, 160, 96, 2, 1


def _frames(seed: int):
    """Moving low-frequency texture plus two moving blocks: realistic enough for x264's effort."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (H // 16 + 2, W // 16 + 2, 3), dtype=np.uint8)
    tex = np.kron(small, np.ones((16, 16, 1), np.uint8)).astype(np.int16)
    noise = rng.integers(-4, 5, (H, W, 3), dtype=np.int16)
    for i in range(FPS * SECONDS):
        img = np.roll(tex, (i // 2, i), axis=(0, 1))[:H, :W] + np.roll(noise, i * 7, axis=1)
        x = (i * 9) % (W - 120)
        img[100:220, x : x + 120] = (255, 64, 32)
        img[300:380, W - 100 - x // 2 : W - x // 2] = (32, 200, 90)
        yield np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw480")
    for k, vid in enumerate(("srcA_480p", "srcB_480p")):
        write_video(d / f"{vid}.mp4", _frames(k), fps=FPS, gop=2 * FPS, crf=23)
    step = Fraction(2 * SECONDS - CLIP_S, N_CLIPS)  # spread the clips over both sources
    jobs = []
    for i in range(N_CLIPS):
        start = (i * step) % (SECONDS - CLIP_S) + Fraction(37, 100)
        vid = "srcA_480p" if i % 2 == 0 else "srcB_480p"
        jobs.append(ClipJob(f"clip{i:02d}", vid, start, start + CLIP_S))
    return d, jobs


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the pool's workers, once joined)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _record(benchmark, n: int, cpu_s: float, rounds: int) -> None:
    if not benchmark.stats:  # None under --benchmark-disable
        return
    benchmark.extra_info["clips_per_s"] = n / benchmark.stats.stats.mean
    # contention-independent: CPU seconds spent per clip (the ideal 1-worker rate is its inverse)
    benchmark.extra_info["cpu_s_per_clip"] = cpu_s / (rounds * n)
    with open("/proc/loadavg") as fh:
        benchmark.extra_info["loadavg_1min"] = float(fh.read().split()[0])


def _run(raw, jobs, out: Path, workers: int):
    shutil.rmtree(out, ignore_errors=True)
    s = run_jobs(jobs, raw, out, workers=workers, progress=False)
    assert s.cut == len(jobs) and s.failed == 0
    return s


def _cut_from_start(src, dst, start, end):
    """The stock trim: decode from frame 0, drop frames before the span, encode the span."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        ist = inp.streams.video[0]
        ist.codec_context.thread_count = 1
        ost, first = None, None
        for f in inp.decode(ist):
            t = f.pts * ist.time_base
            if t < start:
                continue
            if t >= end:
                break
            if ost is None:
                ost = _add_h264(out, ist, f, gop=16, crf=18, preset="veryfast", threads=1)
                first = f.pts
            f.pts, f.pict_type = f.pts - first, 0
            out.mux(ost.encode(f))
        out.mux(ost.encode())


@pytest.mark.benchmark(group="prepare: cut 12 clips of 2 s from 480p H.264")
@pytest.mark.parametrize("workers", [1, 2])
def test_artlib_prepare(benchmark, sources, tmp_path, workers):
    raw, jobs = sources
    index = index_raw_videos(raw)
    benchmark.name = f"artlib-{workers}-worker{'s' if workers > 1 else ''}"
    c0 = _cpu_s()
    benchmark.pedantic(
        _run, args=(index, jobs, tmp_path / "out", workers), rounds=2, iterations=1, warmup_rounds=0
    )
    _record(benchmark, len(jobs), _cpu_s() - c0, 2)


@pytest.mark.benchmark(group="prepare: cut 12 clips of 2 s from 480p H.264")
def test_stock_decode_from_start(benchmark, sources, tmp_path):
    raw, jobs = sources
    index = index_raw_videos(raw)
    out = tmp_path / "stock"
    out.mkdir()

    def run():
        for j in jobs:
            _cut_from_start(index[j.source], out / f"{j.name}.mp4", j.start, j.end)

    benchmark.name = "stock-decode-from-start"
    c0 = _cpu_s()
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    _record(benchmark, len(jobs), _cpu_s() - c0, 1)
