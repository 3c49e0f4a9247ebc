"""Training-step time of ART against its baseline (the head's overhead), eager and compiled, on CPU.

    pytest benchmarks/bench_model.py --benchmark-only                    # table printed at the end
    pytest benchmarks/bench_model.py --benchmark-only --benchmark-json model.json
    ARTLIB_BENCH_COMPILE=0 pytest benchmarks/bench_model.py --benchmark-only   # eager only (fast)
    # on a shared machine: one thread, CPU time (what the table in docs/export.md was made with)
    ARTLIB_BENCH_THREADS=1 pytest benchmarks/bench_model.py --benchmark-only --benchmark-timer time.process_time

One step = forward + backward of the total loss + zero_grad on the same fixed batch, 99 classes:

- backbones: ``tiny`` = TinyVideoBackbone (width 64, 3 blocks, patch 8, B = 8, T = 8, 64x64
  pixels: L = 64 tokens/frame); ``uniformerv2-small`` = UniFormerV2 of width 64, 4 blocks, 4 heads,
  patch 16, 64x64 pixels, T = 8 frames in (4 out) - the real architecture at a CPU size.
- models: ``baseline`` = backbone + dropout + linear classifier on cls (the paper's Table IV
  baseline: what you train without ART); ``ART`` = backbone + the paper's head (d = 256, K = 2,
  8 heads, 4 SE + 4 RSSA layers, every loss).
- modes: ``eager``, and ``compiled`` = ``torch.compile(model)`` (inductor, default mode; compiled
  once outside the timing - the first compile of each case takes one to a few minutes on 2 cores).

``extra_info["art_over_baseline"]`` on each ART case is its best round over the baseline's best
round of the same backbone and mode, from the same run (the minimum: on a shared machine the least
disturbed round); the terminal summary prints them as one table. The
paper reports +10.3 % epoch time for ART over UniFormerV2 (Table VII); a tiny backbone makes the
head's share much larger. The GPU table for UniFormerV2-B/16 is benchmarks/gpu_model.py.
"""

from __future__ import annotations

import functools
import os
import time

import pytest
import torch
import torch.nn.functional as F

from artlib.models import ART, TinyVideoBackbone, UniFormerV2

SMOKE = os.environ.get("ARTLIB_BENCH_SMOKE", "0") not in ("", "0")  # tiny shapes (conftest.py)
COMPILE = os.environ.get("ARTLIB_BENCH_COMPILE", "1") not in ("", "0")
B, T, S, N_CLS = (2, 4, 32, 9) if SMOKE else (8, 8, 64, 99)
HEAD = dict(dim=32, heads=4, se_layers=1, act_layers=1, proto_dim=32) if SMOKE else {}
BACKBONES = ("tiny", "uniformerv2-small")
MODES = ("eager", "compiled") if COMPILE else ("eager",)
_BEST: dict[tuple[str, str, str], float] = {}


def _backbone(name: str):
    if name == "tiny":
        return TinyVideoBackbone(img_size=S)
    width = 32 if SMOKE else 64
    return UniFormerV2(width=width, layers=4, heads=4, patch_size=16, img_size=S,
                       temporal_downsample=True, num_classes=N_CLS)  # fmt: skip


@functools.cache
def _setup(backbone: str, model: str, mode: str):
    torch.manual_seed(0)
    bank = F.normalize(torch.randn(8, N_CLS, 512), dim=-1)
    if model == "baseline":
        net = ART(_backbone(backbone), N_CLS, baseline=True, num_frames=T)
    else:
        net = ART(_backbone(backbone), N_CLS, bank, num_frames=T, **HEAD)
    net.train()
    fn = torch.compile(net) if mode == "compiled" else net
    video = torch.randn(B, T, 3, S, S)
    labels = torch.randint(0, N_CLS, (B,))
    return net, fn, video, labels


def _step(net, fn, video, labels):
    loss = fn(video, labels)[1]["total"]
    loss.backward()
    net.zero_grad(set_to_none=True)


@pytest.fixture
def bench_threads():
    """ARTLIB_BENCH_THREADS (default 2) threads for one case; the count before comes back after
    it, so the files that run later in the same session keep theirs."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("ARTLIB_BENCH_THREADS", "2")))
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", ["baseline", "ART"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_train_step(benchmark, bench_threads, backbone, model, mode):
    net, fn, video, labels = _setup(backbone, model, mode)
    start = time.perf_counter()
    _step(net, fn, video, labels)  # warm-up outside the timing: the compiled case compiles here
    benchmark.extra_info["first_step_s"] = round(time.perf_counter() - start, 2)
    benchmark.group = f"train step {backbone}, B={B} T={T} {S}x{S}, {N_CLS} classes, CPU"
    benchmark.name = f"{model}-{mode}"
    benchmark.extra_info.update(backbone=backbone, model=model, mode=mode)
    benchmark.extra_info["params_M"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 3)
    benchmark.pedantic(_step, args=(net, fn, video, labels), rounds=6, iterations=1,
                       warmup_rounds=1)  # fmt: skip
    if not benchmark.stats:  # None under --benchmark-disable
        return
    best = benchmark.stats.stats.min  # on a shared machine the least disturbed round
    _BEST[(backbone, model, mode)] = best
    base = _BEST.get((backbone, "baseline", mode))
    if model == "ART" and base:
        benchmark.extra_info["art_over_baseline"] = round(best / base, 3)


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(pytest.main([__file__, "--benchmark-only", *sys.argv[1:]]))
