"""Training-step time of ART against its backbone alone (the head's overhead), on CPU.

    pytest benchmarks/bench_model.py --benchmark-only
    pytest benchmarks/bench_model.py --benchmark-only --benchmark-json model.json

One step = forward + backward (+ zero_grad) on the same fixed batch: B = 8 videos, T = 8 frames,
64×64 pixels, TinyVideoBackbone (defaults: width 64, 3 blocks, patch 8 → L = 64 tokens/frame),
99 classes.

- ``backbone``: the backbone alone (loss = mean of its outputs: the lower bound).
- ``baseline-linear``: backbone + dropout + linear classifier on cls (the paper's Table IV baseline,
  the strongest stock alternative: what you train without ART).
- ``artlib-ART-paper-head``: ART with the paper's head (d = 256, K = 2, 8 heads, 4 SE + 4 RSSA layers).
- ``artlib-ART-small-head``: ART with d = 64, 1 + 1 layers, the setting for CPU runs.

``extra_info["overhead_vs_baseline_pct"]`` is each case's median over the baseline's median from the
same run (the paper reports +7.3% FLOPs over UniFormerV2-L; a tiny backbone makes the head's share
much larger, which is what this file shows — see benchmarks/gpu_model.py for UniFormerV2-B/16).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from artlib.models import ART, TinyVideoBackbone

SMOKE = os.environ.get("ARTLIB_BENCH_SMOKE", "0") not in ("", "0")  # tiny shapes (conftest.py)
B, T, S, N_CLS = (2, 4, 32, 9) if SMOKE else (8, 8, 64, 99)
_MEDIANS: dict[str, float] = {}


def _setup(case: str):
    torch.manual_seed(0)
    backbone = TinyVideoBackbone(img_size=S)
    bank = F.normalize(torch.randn(8, N_CLS, 512), dim=-1)
    if case == "backbone":
        model = backbone
    elif case == "baseline-linear":
        model = ART(backbone, N_CLS, baseline=True, num_frames=T)
    elif case == "artlib-ART-paper-head":
        model = ART(backbone, N_CLS, bank, num_frames=T)
    else:
        model = ART(backbone, N_CLS, bank, num_frames=T, dim=64, heads=4, se_layers=1,
                    act_layers=1, proto_dim=64)  # fmt: skip
    video = torch.randn(B, T, 3, S, S)
    labels = torch.randint(0, N_CLS, (B,))
    return model.train(), video, labels


def _step(model, video, labels, case):
    if case == "backbone":
        tokens, cls = model(video)
        loss = tokens.mean() + cls.mean()
    else:
        loss = model(video, labels)[1]["total"]
    loss.backward()
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "case", ["backbone", "baseline-linear", "artlib-ART-small-head", "artlib-ART-paper-head"]
)
def test_step_time(benchmark, case):
    torch.set_num_threads(2)
    model, video, labels = _setup(case)
    benchmark.group = f"train step, TinyVideoBackbone, B={B} T={T} {S}x{S}, CPU"
    benchmark.pedantic(_step, args=(model, video, labels, case), rounds=6, iterations=1,
                       warmup_rounds=1)  # fmt: skip
    if not benchmark.stats:  # None under --benchmark-disable
        return
    med = benchmark.stats.stats.median
    _MEDIANS[case] = med
    base = _MEDIANS.get("baseline-linear")
    if base:
        benchmark.extra_info["overhead_vs_baseline_pct"] = round(100 * (med / base - 1), 1)
    benchmark.extra_info["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
