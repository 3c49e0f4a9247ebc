"""GPU check and timing of artlib.models (UniFormerV2 + ART) on one CUDA device.

    python benchmarks/gpu_model.py                       # on a GPU machine (about a minute on an H100)
    ARTLIB_GPU_DRYRUN=1 python benchmarks/gpu_model.py   # the same logic on CPU with tiny shapes

Needs only torch, einops, numpy (and triton through artlib.ops if the ART head uses it); no
open_clip: the ViT is artlib's own, with CLIP's parameter layout, at random weights.

1. Checks (PASS/FAIL lines), fp32 / fp16 / bf16, forward and gradients, each against a float64 CPU
   reference with the rule "error at most 2x (gradients: 3x) that of plain PyTorch at the same
   precision":
   - ``QueryAttention`` (absorbed K/V) against ``nn.MultiheadAttention``;
   - ``temporal_conv`` against a depthwise ``Conv3d``;
   - UniFormerV2 at step 0 against the same blocks without the temporal parts (the image ViT), under
     bf16 autocast;
   - a full ART training step (bf16 autocast): finite losses and gradients.
2. Timing: one training step (forward + backward + zero_grad, bf16 autocast) of UniFormerV2-B/16
   (CLIP ViT-B/16 shape, 4 global UniBlocks) at B = 8, T = 16, 224², alone (with the Table IV
   linear classifier) and with the ART head (paper settings: d = 256, K = 2, 8 heads, 4 + 4 layers,
   99 classes, N_prom = 8, C_t = 512), eager and ``torch.compile``d (``ARTLIB_GPU_COMPILE=0``
   skips the compiled rows). Prints a markdown table with the head's overhead in % (targets: <= 8%
   eager, <= 5% compiled; the paper reports +7.3% FLOPs and +10.3% epoch time over UniFormerV2).
"""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from artlib.models import ART, UniFormerV2  # noqa: E402
from artlib.models._layers import QueryAttention, temporal_conv  # noqa: E402

DRY = os.environ.get("ARTLIB_GPU_DRYRUN") == "1"
DEV = torch.device("cpu" if DRY or not torch.cuda.is_available() else "cuda")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FAILED: list[str] = []


def report(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}")
    if not ok:
        FAILED.append(name)


def rel_check(name, got, ref64, lowp_ref, factor=2.0, floor=1e-5):
    """max|got - ref| <= factor * max|lowp_ref - ref| + floor·max|ref| (flash-attention's rule)."""
    got, lowp_ref = got.detach().double().cpu(), lowp_ref.detach().double().cpu()
    ref64 = ref64.detach().double().cpu()
    err = (got - ref64).abs().max().item()
    base = (lowp_ref - ref64).abs().max().item()
    allowed = factor * base + floor * ref64.abs().max().item() + 1e-6
    finite = bool(torch.isfinite(got).all())
    report(name, finite and err <= allowed, f"err {err:.3g} allowed {allowed:.3g}")


def check_query_attention() -> None:
    C, heads, M, N = 256, 8, 2, 197
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(C, heads, batch_first=True).double()
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_(0, 0.05)
    q64 = torch.randn(4, M, C, dtype=torch.float64, requires_grad=True)
    x64 = torch.randn(4, N, C, dtype=torch.float64, requires_grad=True)
    ref = mha(q64, x64, x64, need_weights=False)[0]
    g64 = torch.randn_like(ref)
    rq, rx = torch.autograd.grad(ref, (q64, x64), g64)
    for dt in DTYPES:
        qa = QueryAttention(C, heads).to(DEV, dt)
        qa.load_state_dict(mha.state_dict())
        stock = nn.MultiheadAttention(C, heads, batch_first=True).to(DEV, dt)
        stock.load_state_dict(mha.state_dict())
        q = q64.detach().to(DEV, dt).requires_grad_()
        x = x64.detach().to(DEV, dt).requires_grad_()
        out = qa(q, x)
        out_s = stock(q, x, x, need_weights=False)[0]
        g = g64.to(DEV, dt)
        dq, dx = torch.autograd.grad(out, (q, x), g)
        sq, sx = torch.autograd.grad(out_s, (q, x), g)
        tag = str(dt).split(".")[-1]
        rel_check(f"QueryAttention fwd {tag}", out, ref, out_s)
        # gradients: the absorbed form re-associates the products, so its rounding differs from
        # MHA's; allow 3x MHA's own error (2x for the forward)
        rel_check(f"QueryAttention d_q {tag}", dq, rq, sq, factor=3.0)
        rel_check(f"QueryAttention d_x {tag}", dx, rx, sx, factor=3.0)


def check_temporal_conv() -> None:
    B, T, N, C = 2, 16, 197, 96
    torch.manual_seed(1)
    x64 = torch.randn(B, T, N, C, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(3, C, dtype=torch.float64, requires_grad=True)

    def conv3d(x, w):
        y = F.conv3d(x.permute(0, 3, 1, 2).unsqueeze(-1), w.t().reshape(C, 1, 3, 1, 1),
                     padding=(1, 0, 0), groups=C)  # fmt: skip
        return y.squeeze(-1).permute(0, 2, 3, 1)

    ref = conv3d(x64, w64)
    g64 = torch.randn_like(ref)
    rx, rw = torch.autograd.grad(ref, (x64, w64), g64)
    for dt in DTYPES:
        x = x64.detach().to(DEV, dt).requires_grad_()
        w = w64.detach().to(DEV, dt).requires_grad_()
        out = temporal_conv(x, w)
        dx, dw = torch.autograd.grad(out, (x, w), g64.to(DEV, dt))
        out_s = conv3d(x, w)
        sx, sw = torch.autograd.grad(out_s, (x, w), g64.to(DEV, dt))
        tag = str(dt).split(".")[-1]
        rel_check(f"temporal_conv fwd {tag}", out, ref, out_s)
        rel_check(f"temporal_conv d_x {tag}", dx, rx, sx)
        rel_check(f"temporal_conv d_w {tag}", dw, rw, sw, factor=4.0)


def check_uniformerv2_step0() -> None:
    """Step 0 with temporal parts = the image ViT (same weights, no local MHRA, no global blocks)."""
    kw = dict(width=192, layers=4, heads=3, patch_size=16, img_size=224 if not DRY else 64)
    torch.manual_seed(2)
    video_m = UniFormerV2(**kw, n_layers=2, no_lmhra=False, double_lmhra=True).to(DEV).eval()
    image_m = UniFormerV2(**kw, n_layers=0).to(DEV).eval()
    sd = {k: v for k, v in video_m.state_dict().items() if k in image_m.state_dict()}
    image_m.load_state_dict(sd)
    video = torch.randn(2, 4, 3, kw["img_size"], kw["img_size"], device=DEV)
    with torch.no_grad():
        t64, c64 = image_m.double()(video.double())
        image_m.float()
        for dt in DTYPES[1:] if DEV.type == "cuda" else DTYPES[2:]:
            with torch.autocast(DEV.type, dtype=dt):
                t, c = video_m(video)
                ti, ci = image_m(video)
            tag = str(dt).split(".")[-1]
            rel_check(f"UniFormerV2 step-0 tokens = image ViT ({tag} autocast)", t, t64, ti, 3.0)
            rel_check(f"UniFormerV2 step-0 cls = image ViT ({tag} autocast)", c, c64, ci, 3.0)


def build(case: str, B: int, T: int, size: int, small: bool):
    vit = dict(width=768, layers=12, heads=12, patch_size=16, img_size=size)
    if small:
        vit = dict(width=96, layers=2, heads=2, patch_size=16, img_size=size)
    torch.manual_seed(0)
    backbone = UniFormerV2(**vit)
    bank = F.normalize(torch.randn(8, 99, 512), dim=-1)
    if case == "backbone":
        model = ART(backbone, 99, baseline=True, num_frames=T)
    else:
        model = ART(backbone, 99, bank, num_frames=T)
    return model.to(DEV).train()


def step_fn(model, autocast: bool = True, compiled: bool = False):
    fn = torch.compile(model) if compiled else model

    def step(video, labels):
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=autocast):
            _, losses = fn(video, labels)
        losses["total"].backward()
        model.zero_grad(set_to_none=True)
        return losses

    return step


def check_art_step() -> None:
    B, T, size = (2, 4, 64) if DRY else (2, 8, 224)
    model = build("art", B, T, size, small=True)
    video = torch.randn(B, T, 3, size, size, device=DEV)
    labels = torch.randint(0, 99, (B,), device=DEV)
    with torch.autocast(DEV.type, dtype=torch.bfloat16):
        _, losses = model(video, labels)
    losses["total"].backward()
    finite = all(bool(torch.isfinite(v).all()) for v in losses.values() if torch.is_tensor(v))
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    gfinite = all(g is None or bool(torch.isfinite(g).all()) for g in grads)
    nonzero = sum(int(g is not None and g.abs().sum() > 0) for g in grads)
    report("ART bf16-autocast step: finite losses and grads", finite and gfinite,
           f"{nonzero}/{len(grads)} params with non-zero grad")  # fmt: skip


def time_steps(step, video, labels, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step(video, labels)
    if DEV.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step(video, labels)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        step(video, labels)
    return (time.perf_counter() - t0) * 1e3 / iters


def bench(autocast: bool = True) -> None:
    """The training step of the baseline and of ART, eager and (unless ARTLIB_GPU_COMPILE=0)
    ``torch.compile``d (default mode; compiled in the warm-up, outside the timing)."""
    B, T, size, iters = (2, 4, 64, 2) if DRY else (8, 16, 224, 10)
    modes = ["eager"] + (["compiled"] if os.environ.get("ARTLIB_GPU_COMPILE", "1") != "0" else [])
    rows = []
    for mode in modes:
        for case in ("backbone", "art"):
            model = build(case, B, T, size, small=DRY)
            video = torch.randn(B, T, 3, size, size, device=DEV)
            labels = torch.randint(0, 99, (B,), device=DEV)
            if DEV.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            step = step_fn(model, autocast, compiled=mode == "compiled")
            try:
                ms = time_steps(step, video, labels, iters)
            except Exception as e:  # a compile failure must not hide the eager table
                report(f"train step {case} {mode}", False, f"raised {type(e).__name__}: {e}")
                continue
            warm_s = time.perf_counter() - t0 - ms * iters / 1e3
            mem = torch.cuda.max_memory_allocated() / 2**30 if DEV.type == "cuda" else float("nan")
            params = sum(p.numel() for p in model.parameters()) / 1e6
            rows.append((mode, case, ms, mem, params, warm_s))
            del model, step
            if DEV.type == "cuda":
                torch.cuda.empty_cache()
    name = "UniFormerV2-B/16" if not DRY else "UniFormerV2 (dry-run size)"
    dev = torch.cuda.get_device_name() if DEV.type == "cuda" else "CPU (dry run)"
    prec = "bf16 autocast" if autocast else "fp32 (TF32 matmuls)"
    print(f"\n### {name}, B={B}, T={T}, {size}x{size}, {prec}, train step — {dev}\n")
    print("| mode | model | ms / step | ART overhead | peak GiB | params (M) | warm-up s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for mode, case, ms, mem, params, warm_s in rows:
        base = next((r[2] for r in rows if r[0] == mode and r[1] == "backbone"), None)
        label = "backbone + linear (Table IV baseline)" if case == "backbone" else "ART (artlib)"
        over = f"{100 * (ms / base - 1):+.1f}%" if base else ""
        print(f"| {mode} | {label} | {ms:.1f} | {over} | {mem:.1f} | {params:.1f} | {warm_s:.0f} |")
    for mode, target in (("eager", 8), ("compiled", 5)):
        base = next((r[2] for r in rows if r[0] == mode and r[1] == "backbone"), None)
        art = next((r[2] for r in rows if r[0] == mode and r[1] == "art"), None)
        if base and art:
            print(
                f"ART head overhead, {mode}: {100 * (art / base - 1):+.1f}% (target <= {target}%)"
            )


def main() -> int:
    print(f"device: {DEV}{' (dry run)' if DRY else ''}, torch {torch.__version__}")
    if DEV.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for fn in (check_query_attention, check_temporal_conv, check_uniformerv2_step0, check_art_step):
        try:
            fn()
        except Exception as e:  # report and go on: one broken check must not hide the others
            report(fn.__name__, False, f"raised {type(e).__name__}: {e}")
    try:
        bench(autocast=True)
    except Exception as e:
        report("bench (bf16 autocast)", False, f"raised {type(e).__name__}: {e}")
        if DEV.type == "cuda":
            torch.cuda.empty_cache()
        try:  # still measure the head's overhead, in fp32 with TF32 matmuls
            bench(autocast=False)
        except Exception as e2:
            report("bench (fp32)", False, f"raised {type(e2).__name__}: {e2}")
    print(f"\n{len(FAILED)} check(s) failed: {FAILED}" if FAILED else "\nall checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
