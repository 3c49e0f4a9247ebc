"""Timeline of a long video (``predict --timeline``) against what a user would write instead.

    pytest benchmarks/bench_timeline.py --benchmark-only      # the 10-minute 480p video
    pytest benchmarks/bench_timeline.py --smoke               # every case once, a 6-s video
    python benchmarks/bench_timeline.py --minutes 10 --memory-minutes 10 60   # the docs' table

Input: a generated 854x480 H.264 video at 25 fps (x264 veryfast, CRF 23, a keyframe every 250
frames, B-frames): a random texture that slides and a bright square that moves across it, written
once into ``$TMPDIR/artlib-bench-timeline/`` (``ARTLIB_BENCH_TIMELINE_MINUTES``, default 10).
Model: the main job's (``examples/train_finegym.py``'s synthetic preset: ART on tiny_cnn, T = 8,
64x64 crops, 8 classes), weights as built (speed does not depend on them). Windows: 2 s every
0.5 s (on the frame grid of ``artlib.timeline``: 48 frames every 12 at 25 fps).

Cases (group ``timeline``):

- ``decode-pass``: one plain PyAV pass over the file, every frame decoded, nothing converted —
  the floor of any method that looks at the whole video;
- ``artlib-timeline``: ``artlib.predict_timeline`` (one pass, RGB and preprocessing only for the
  sampled frames, the backbone's per-frame part once per sampled frame and shared by the 4
  windows that sample it, windows batched by 16);
- ``per-window``: what a user writes with the clip API: for each window, ``decode_frames`` of its
  T frames (artlib's decoder, which seeks to the keyframe before them), the same preprocessing and
  ``predict_proba``. Timed on every 20th window (1 in smoke) and reported per window;
  ``extra_info["projected_s"]`` = that times the window count.

Peak memory (``--memory-minutes A B``, and ``test_peak_memory`` at two lengths): the timeline,
and ``extract --timeline``'s features of the same windows, run in a fresh subprocess per video
length, its peak resident set. Videos longer than the
generated one (10 minutes; ``--minutes``) that are whole multiples of it, such as 60 minutes, are
its packets copied that many times into one file (``repeat_video``: a remux, no re-encoding).
The script's ratio of the timeline to the decode pass is the median over ``--pairs`` (3) pairs,
each a decode pass and then the timeline (the load of a shared machine moves single runs by
10-20 %). Targets (issue 27): timeline <= 1.5x the decode pass; >= 5x faster than per-window; peak RSS of
60 minutes within 10 % of 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

av = pytest.importorskip("av") if __name__ != "__main__" else __import__("av")

SMOKE = os.environ.get("ARTLIB_BENCH_SMOKE", "0") not in ("", "0")
MINUTES = float(os.environ.get("ARTLIB_BENCH_TIMELINE_MINUTES", "10"))
H, W, FPS = (480, 854, 25) if not SMOKE else (96, 160, 25)
SECONDS = 6.0 if SMOKE else MINUTES * 60
WINDOW, STRIDE = 2.0, 0.5
DATA = os.path.join(tempfile.gettempdir(), "artlib-bench-timeline" + ("-smoke" if SMOKE else ""))


def make_video(path: str, seconds: float, h: int = H, w: int = W, fps: int = FPS) -> str:
    """The generated test video (module docstring); reused when it exists."""
    if os.path.exists(path):
        return path
    from artlib.data._write import write_video

    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, (h // 8 + 2, (w + 4 * fps * 60) // 8 + 2, 3), dtype=np.uint8)
    tex = tex.repeat(8, 0).repeat(8, 1)
    n = int(round(seconds * fps))

    def frames():
        for i in range(n):
            x = (2 * i) % (tex.shape[1] - w)
            img = tex[:h, x : x + w].copy()
            cx = int((w - 40) * (0.5 + 0.5 * np.sin(i / 40)))
            cy = int((h - 40) * (0.5 + 0.5 * np.cos(i / 53)))
            img[cy : cy + 40, cx : cx + 40] = 255
            yield img

    os.makedirs(os.path.dirname(path), exist_ok=True)
    return write_video(path, frames(), fps=fps, codec="h264", gop=250, crf=23, preset="veryfast")


def repeat_video(src: str, dst: str, times: int) -> str:
    """``src`` played ``times`` times in a row, in one file, by copying its packets (no
    re-encoding: seconds instead of the ~40 minutes of encoding a 60-minute 480p video here): the
    k-th copy's timestamps are offset by k times the source's length. Reused when it exists."""
    if os.path.exists(dst):
        return dst
    with av.open(src) as c:
        s = c.streams.video[0]
        span = 0  # the source's length in stream ticks: the end of its last-shown frame
        for pkt in c.demux(s):
            if pkt.pts is not None:
                span = max(span, pkt.pts + (pkt.duration or 0))
    tmp = dst + ".part"
    with av.open(src) as c, av.open(tmp, "w", format="mp4") as out:
        s = c.streams.video[0]
        o = out.add_stream_from_template(s)
        for k in range(times):
            c.seek(0, stream=s)
            for pkt in c.demux(s):
                if pkt.size == 0:
                    continue
                pkt.pts = None if pkt.pts is None else pkt.pts + k * span
                pkt.dts = None if pkt.dts is None else pkt.dts + k * span
                pkt.stream = o
                out.mux(pkt)
    os.replace(tmp, dst)
    return dst


def long_video(minutes: float, base_minutes: float = 10.0) -> str:
    """The benchmark video of ``minutes``: generated (``make_video``) up to ``base_minutes``,
    longer ones as ``repeat_video`` copies of the ``base_minutes`` one when a whole multiple."""
    times = minutes / base_minutes
    if minutes <= base_minutes or abs(times - round(times)) > 1e-9:
        return make_video(os.path.join(DATA, f"long_{minutes * 60:g}s_{H}p.mp4"), minutes * 60)
    base = make_video(os.path.join(DATA, f"long_{base_minutes * 60:g}s_{H}p.mp4"),
                      base_minutes * 60)  # fmt: skip
    return repeat_video(base, os.path.join(DATA, f"long_{minutes * 60:g}s_{H}p_x{round(times)}.mp4"),
                        round(times))  # fmt: skip


def main_job_checkpoint(path: str) -> str:
    """A checkpoint of the main job's model (synthetic preset), untrained head."""
    if os.path.exists(path):
        return path
    import torch

    from artlib._io import atomic_save_torch
    from artlib.data.synthetic import CLASS_NAMES
    from artlib.engine.checkpoint import training_state
    from artlib.engine.config import resolve
    from artlib.engine.trainer import build_model, build_optimizer

    cfg = resolve({"preset": "synthetic"})  # the main job: the preset as it is
    torch.manual_seed(0)
    names = CLASS_NAMES[:8]
    model = build_model(cfg, names)
    opt, sched = build_optimizer(cfg, model)
    state = training_state(cfg=cfg, class_names=names, model=model, ema=None, optimizer=opt,
                           scheduler=sched, epoch=1, best_top1=0.0)  # fmt: skip
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_save_torch(state, path)
    return path


def decode_pass(path: str) -> int:
    """Every frame decoded once, nothing converted -> frame count."""
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        return sum(1 for _ in c.decode(s))


def run_timeline(model, info, path: str, **kw) -> dict:
    from artlib.timeline import predict_timeline

    return predict_timeline(model, info, path, window=WINDOW, stride=STRIDE, **kw)


def stream_only(info, path: str) -> int:
    """The timeline's input side alone: its decoding pass, RGB and preprocessing of the sampled
    frames, the windows stacked; no model -> window count."""
    from artlib.timeline import stream_windows

    _, windows = stream_windows(path, info, WINDOW, STRIDE)
    return sum(1 for _ in windows)


def per_window(model, info, path: str, every: int) -> tuple[int, int]:
    """Every ``every``-th window the clip-API way -> (windows done, windows in the video)."""
    from artlib.api import eval_dataset, predict_proba
    from artlib.data import decode_frames, video_info
    from artlib.data.sampling import crop_params
    from artlib.timeline import plan_windows

    vi = video_info(path)
    plan = plan_windows(vi.num_frames, vi.fps, WINDOW, STRIDE, info["num_frames"])
    ds = eval_dataset([], info)
    crop = crop_params(vi.height, vi.width, train=False)
    done = 0
    for k in range(0, plan.count, every):
        idx = [plan.start(k) + o for o in plan.offsets]
        clip = ds.transform(decode_frames(path, idx), crop)
        predict_proba(model, clip[None])
        done += 1
    return done, plan.count


_CHILD = """
import json, os, resource, sys, threading, time
import artlib
from artlib.timeline import predict_timeline
page = os.sysconf("SC_PAGE_SIZE") / 2**20
def rss():  # the current resident set, MB
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page
model, info = artlib.load_model(sys.argv[1])
before, peak, done = rss(), [0.0], threading.Event()
def sample():  # the run's own peak: ru_maxrss may date from loading the checkpoint
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
window, stride = float(sys.argv[3]), float(sys.argv[4])
if sys.argv[5] == "extract":
    from artlib.extract import extract_features
    feats, _ = extract_features(model, info, sys.argv[2], timeline=True, window=window, stride=stride)
    windows = feats["logits"].shape[0]
else:
    windows = len(predict_timeline(model, info, sys.argv[2], window=window, stride=stride)["windows"])
seconds = time.perf_counter() - t
done.set()
print(json.dumps({"seconds": seconds, "windows": windows, "rss_before_mb": before,
                  "run_peak_rss_mb": max(peak[0], rss()),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss(ckpt: str, path: str, mode: str = "timeline") -> dict:
    """The timeline of ``path`` (``mode="extract"``: ``extract_features(..., timeline=True)``,
    the features of the same windows) in a fresh process -> {"seconds", "windows",
    "rss_before_mb" (the model loaded), "run_peak_rss_mb" (the highest resident set sampled
    every 20 ms during the run), "peak_rss_mb" (ru_maxrss: the whole process, loading included)}."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]))
    r = subprocess.run([sys.executable, "-c", _CHILD, ckpt, path, str(WINDOW), str(STRIDE), mode],
                       capture_output=True, text=True, env=env, timeout=7200, check=True)  # fmt: skip
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- pytest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """Where the generated files go. The full benchmark reuses DATA across runs (the 10-minute
    video takes minutes to encode); the smoke pass writes a fresh folder of its own run (seconds),
    so that it never loads a video or checkpoint that another run left there (one of another
    commit's code) or is writing at the same time (two CI jobs on one machine share $TMPDIR)."""
    return str(tmp_path_factory.mktemp("bench-timeline")) if SMOKE else DATA


@pytest.fixture(scope="module")
def setup(data_dir):
    import artlib

    path = make_video(os.path.join(data_dir, f"long_{SECONDS:g}s_{H}p.mp4"), SECONDS)
    ckpt = main_job_checkpoint(os.path.join(data_dir, "main_job.pt"))
    model, info = artlib.load_model(ckpt)
    return path, ckpt, model, info


def test_decode_pass(benchmark, setup):
    path = setup[0]
    benchmark.group = "timeline"
    n = benchmark.pedantic(decode_pass, args=(path,), rounds=1, iterations=1)
    assert n == int(round(SECONDS * FPS))


def test_artlib_timeline(benchmark, setup):
    path, _, model, info = setup
    benchmark.group = "timeline"
    res = benchmark.pedantic(run_timeline, args=(model, info, path), rounds=1, iterations=1)
    assert res["windows"] and res["duration"] == pytest.approx(SECONDS, abs=0.05)
    benchmark.extra_info["windows"] = len(res["windows"])


def test_per_window(benchmark, setup):
    path, _, model, info = setup
    benchmark.group = "timeline"
    every = 1 if SMOKE else 20
    done, total = benchmark.pedantic(per_window, args=(model, info, path, every), rounds=1,
                                     iterations=1)  # fmt: skip
    benchmark.extra_info.update(windows_timed=done, windows=total)
    if benchmark.stats is not None:  # timed run: the projection to every window
        benchmark.extra_info["projected_s"] = benchmark.stats.stats.mean / done * total


def test_repeat_video(setup, data_dir):
    """The remuxed copies: 3x the frames, frame k*n + i equal to frame i, one decodable file."""
    from artlib.data import decode_frames, video_info

    path = setup[0]
    n = int(round(SECONDS * FPS))
    rep = repeat_video(path, os.path.join(data_dir, f"long_{SECONDS:g}s_{H}p_x3.mp4"), 3)
    assert video_info(rep, exact=True).num_frames == 3 * n
    idx = [0, 7, n - 1]
    a = decode_frames(path, idx).numpy()
    b = decode_frames(rep, [2 * n + i for i in idx] + [n + 7]).numpy()
    np.testing.assert_array_equal(b[:3], a)
    np.testing.assert_array_equal(b[3], a[1])


def test_peak_memory(setup, data_dir):
    """Peak RSS of the timeline for SECONDS and for 6x as long (the same file's packets copied 6
    times: ``repeat_video``), each in a fresh process."""
    path, ckpt, _, _ = setup
    longer = repeat_video(path, os.path.join(data_dir, f"long_{SECONDS:g}s_{H}p_x6.mp4"), 6)
    for mode in ("timeline", "extract"):
        a, b = peak_rss(ckpt, path, mode), peak_rss(ckpt, longer, mode)
        print(f"\n{mode}: peak RSS during the run: {SECONDS:g} s video {a['run_peak_rss_mb']:.0f} MB, "
              f"{6 * SECONDS:g} s video {b['run_peak_rss_mb']:.0f} MB")  # fmt: skip
        assert b["windows"] > 5 * a["windows"] > 0


# ----------------------------------------------------------------------------------- table


def main(argv=None) -> int:
    import artlib

    p = argparse.ArgumentParser(description="the timeline figures of docs/benchmarks.md")
    p.add_argument("--minutes", type=float, default=10.0, help="speed: the video's length")
    p.add_argument("--memory-minutes", type=float, nargs=2, default=[10.0, 60.0])
    p.add_argument("--every", type=int, default=20, help="per-window: time every n-th window")
    p.add_argument(
        "--pairs",
        type=int,
        default=3,
        help="speed: decode pass + timeline pairs, one after the other (the median ratio)",
    )
    p.add_argument("--memory-only", action="store_true", help="only the peak-memory runs")
    p.add_argument("--speed-only", action="store_true", help="no peak-memory runs")
    args = p.parse_args(argv)
    os.makedirs(DATA, exist_ok=True)
    ckpt = main_job_checkpoint(os.path.join(DATA, "main_job.pt"))
    model, info = artlib.load_model(ckpt)
    out = {}
    for m in args.memory_minutes if args.memory_only else []:
        vp = long_video(m, args.minutes)
        print(f"{m:g} min: {peak_rss(ckpt, vp)}", flush=True)
        print(f"{m:g} min, extract: {peak_rss(ckpt, vp, 'extract')}", flush=True)
    if args.memory_only:
        return 0
    t = time.perf_counter()
    path = make_video(
        os.path.join(DATA, f"long_{args.minutes * 60:g}s_{H}p.mp4"), args.minutes * 60
    )
    print(f"video {path}: written in {time.perf_counter() - t:.0f} s", flush=True)
    print(f"load average before: {os.getloadavg()}", flush=True)

    def timed(name, fn, *a, **kw):  # wall and CPU time (all the process's threads)
        t, c = time.perf_counter(), time.process_time()
        r = fn(*a, **kw)
        out[name + "_s"] = time.perf_counter() - t
        out[name + "_cpu_s"] = time.process_time() - c
        print(
            f"{name}: {out[name + '_s']:.1f} s wall, {out[name + '_cpu_s']:.1f} s CPU", flush=True
        )
        return r

    ratios = []  # (wall, CPU) of each pair: the decode pass and the timeline one after the other
    for r in range(args.pairs):
        n = timed("decode", decode_pass, path)
        print(f"  {n} frames", flush=True)
        res = timed("timeline", run_timeline, model, info, path)
        print(f"  {len(res['windows'])} windows", flush=True)
        ratios.append((out["timeline_s"] / out["decode_s"],
                       out["timeline_cpu_s"] / out["decode_cpu_s"]))  # fmt: skip
        print(f"  pair {r + 1}: timeline / decode pass {ratios[-1][0]:.2f}x wall, "
              f"{ratios[-1][1]:.2f}x CPU", flush=True)  # fmt: skip
    out["pair_ratios"] = ratios
    timed("timeline_every_frame", run_timeline, model, info, path, skip_nonref=False)
    timed("timeline_input_only", stream_only, info, path)
    done, total = timed("per_window_sampled", per_window, model, info, path, args.every)
    per = out["per_window_sampled_s"] / done
    out["per_window_s"] = per * total
    print(f"per-window: {per * 1000:.0f} ms a window ({done} timed) -> {per * total:.0f} s for "
          f"{total}", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()}", flush=True)
    wall, cpu = (float(np.median([r[i] for r in ratios])) for i in (0, 1))
    print(f"timeline / decode pass, median of {len(ratios)} pairs: {wall:.2f}x wall, {cpu:.2f}x CPU; "
          f"per window / timeline: {out['per_window_s'] / out['timeline_s']:.1f}x", flush=True)  # fmt: skip
    for m in [] if args.speed_only else args.memory_minutes:
        vp = long_video(m, args.minutes)
        out[f"rss_{m:g}min"] = peak_rss(ckpt, vp)
        print(f"{m:g} min: {out[f'rss_{m:g}min']}", flush=True)
        out[f"extract_rss_{m:g}min"] = peak_rss(ckpt, vp, "extract")
        print(f"{m:g} min, extract: {out[f'extract_rss_{m:g}min']}", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
