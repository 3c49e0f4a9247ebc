"""Region attention on a GPU in one run: CUDA checks of the fused Triton kernels, then timings against
the stock alternatives on the same inputs. Prints a short table last.

    python benchmarks/gpu_region_attention.py                 # checks + timings, < 200 s
    python benchmarks/gpu_region_attention.py --sweep --json $OUT/ra.json   # + kernel configs, K 32, fp32

Checks: ``region_attention(form="absorbed")`` on the Triton backend against nn.MultiheadAttention in
float64 (output and the gradients of query, x and every weight) at fp32/fp16/bf16, over odd shapes
(L 196/49/50, K 1..64, heads 1/8/16, d up to 1024); at fp16/bf16 the largest error may be at most 2x
MHA's largest error at the same precision (plus the dtype's atol), as in the tests.

Timings: N = 24*16 frames, L = 196, d = 256, 8 heads, bf16, K in {2, 16, 64}; forward and
forward+backward (``torch.autograd.grad`` of out w.r.t. query, x and the weights), median of
``triton.testing.do_bench`` (L2 flushed between runs) in eager mode and as CUDA-graph replays (launch
overhead removed); peak memory above the inputs. Cases:

- ``artlib``: ``region_attention`` as dispatched (form picked per shape: fused Triton core or standard);
- ``artlib-fused``: the absorbed form with the fused Triton core, forced;
- ``mha``, ``sdpa``, ``absorbed-sdpa``, ``flex``: the stock alternatives of
  benchmarks/bench_region_attention.py (nn.MultiheadAttention; projections + SDPA; the absorbed form
  with SDPA as its core; projections + compiled FlexAttention, where it compiles).

The floor: one read of x (N L d bf16 bytes) at the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("ARTLIB_NO_NATIVE", "1")  # only CUDA tensors here

from artlib.ops.region_attention import region_attention, region_attention_form  # noqa: E402

N, L, D, HEADS = 24 * 16, 196, 256, 8
ENV = "ARTLIB_BACKEND_REGION_ATTENTION"
T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


# ---- checks ---------------------------------------------------------------------------------------


def _mha(d, heads, dtype, device="cuda"):
    m = nn.MultiheadAttention(d, heads, batch_first=True, device=device)
    with torch.no_grad():
        m.in_proj_bias.normal_(0, 0.5)
        m.out_proj.bias.normal_(0, 0.5)
    return m.to(dtype)


def _params(m):
    return [m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias]


def check(shapes, dtypes) -> list[str]:
    from helpers import TOLERANCES, assert_close

    os.environ[ENV] = "triton"
    failures = []
    for n, k, l, d, heads in shapes:
        base = _mha(d, heads, torch.float64)
        q64 = torch.randn(n, k, d, device="cuda", dtype=torch.float64, requires_grad=True)
        x64 = torch.randn(n, l, d, device="cuda", dtype=torch.float64, requires_grad=True)
        ref = base(q64, x64, x64, need_weights=False)[0]
        cot = torch.randn_like(ref)
        g_ref = torch.autograd.grad(ref, [q64, x64, *_params(base)], cot)
        for dtype in dtypes:
            m = _mha(d, heads, dtype)
            m.load_state_dict(base.state_dict())
            q = q64.detach().to(dtype).requires_grad_()
            x = x64.detach().to(dtype).requires_grad_()
            leaves = [q, x, *_params(m)]
            out = region_attention(q, x, *_params(m), heads, form="absorbed")
            g = torch.autograd.grad(out, leaves, cot.to(dtype))
            low = g_low = None
            if dtype != torch.float32:
                low = m(q, x, x, need_weights=False)[0]
                g_low = torch.autograd.grad(low, leaves, cot.to(dtype))
            names = ["out", "dq", "dx", "dW_in", "db_in", "dW_out", "db_out"]
            tag = f"N{n} K{k} L{l} d{d} h{heads} {str(dtype)[6:]}"
            worst = []
            for i, (name, a, e) in enumerate(zip(names, [out, *g], [ref, *g_ref])):
                lo = None if low is None else [low, *g_low][i]
                rel = ((a.double() - e).norm() / e.norm().clamp_min(1e-30)).item()
                worst.append(rel)
                kw = {}
                if lo is not None:  # at most 2x MHA's largest error at this precision, + atol
                    mha_err = (lo.double() - e).abs().max().item()
                    kw = {"atol": 2 * mha_err + TOLERANCES[dtype][0], "rtol": 0.0}
                try:
                    assert_close(a, e, dtype=dtype, name=f"{tag} {name}", **kw)
                except AssertionError as exc:
                    failures.append(str(exc))
                    log("FAIL", str(exc)[:300])
            log(f"check {tag}: max rel-norm err {max(worst):.2e}")
    # the maps
    m = _mha(256, 8, torch.float32)
    q = torch.randn(4, 3, 256, device="cuda")
    x = torch.randn(4, 50, 256, device="cuda")
    out, w = region_attention(q, x, *_params(m), 8, need_weights=True, form="absorbed")
    ref, w_ref = m(q, x, x, average_attn_weights=False)
    err = max(
        (out - ref).abs().max().item(),
        (w - w_ref).abs().max().item(),
        (w.sum(-1) - 1).abs().max().item(),
    )
    log(f"check need_weights: max abs err {err:.2e}")
    if err > 1e-4:
        failures.append(f"need_weights err {err}")
    os.environ.pop(ENV)
    return failures


# ---- timings --------------------------------------------------------------------------------------


def make_cases(mha):
    from bench_region_attention import make_cases as stock_cases

    cases = stock_cases(mha)
    fused = {"artlib-fused": lambda q, x, p: region_attention(q, x, *p, HEADS, form="absorbed")}
    return {"artlib": cases.pop("artlib"), **fused, **cases}


def bench(fn, graph=True):
    from triton.testing import do_bench, do_bench_cudagraph

    fn()
    torch.cuda.synchronize()
    eager = do_bench(fn, warmup=10, rep=60, return_mode="median")
    g = None
    if graph:
        try:
            g = do_bench_cudagraph(fn, rep=60, return_mode="median")
        except Exception as exc:  # noqa: BLE001 - report and go on
            log("  cuda graph failed:", type(exc).__name__, str(exc)[:120])
    return eager, g


def peak_mib(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth() -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    from triton.testing import do_bench

    a = torch.empty(2**30 // 2, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=10, rep=50, return_mode="median")
    return 2 * a.numel() * a.element_size() / (ms * 1e-3)


def timings(ks, dtype, case_names, flex_ks, budget_s):
    results = []
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(D, HEADS, batch_first=True, device="cuda").to(dtype)
    with torch.no_grad():
        mha.in_proj_bias.normal_(0, 0.1)
        mha.out_proj.bias.normal_(0, 0.1)
    p = [t.detach().requires_grad_() for t in _params(mha)]
    x = torch.randn(N, L, D, device="cuda", dtype=dtype, requires_grad=True)
    cases = make_cases(mha)
    for k in ks:
        q = torch.randn(N, k, D, device="cuda", dtype=dtype, requires_grad=True)
        leaves = [q, x, *_params(mha)]
        cot = torch.randn(N, k, D, device="cuda", dtype=dtype)
        for name in case_names:
            if name == "flex" and k not in flex_ks:
                continue
            if time.time() - T0 > budget_s - (60 if name == "flex" else 0):  # flex compiles ~1 min
                log(f"time budget reached: skipping {name} K{k}")
                continue
            f = cases[name]
            args = (q, x, p) if name != "mha" else (q, x, None)
            lv = leaves if name == "mha" else [q, x, *p]

            def fwd(f=f, args=args):
                with torch.no_grad():
                    return f(*args)

            def fwd_bwd(f=f, args=args, lv=lv, cot=cot):
                return torch.autograd.grad(f(*args), lv, cot)

            row = {"case": name, "K": k, "dtype": str(dtype)[6:]}
            try:
                row["fwd_ms"], row["fwd_graph_ms"] = bench(fwd)
                row["fwd_bwd_ms"], row["fwd_bwd_graph_ms"] = bench(fwd_bwd)
                row["fwd_peak_mib"] = peak_mib(fwd)
                row["fwd_bwd_peak_mib"] = peak_mib(fwd_bwd)
                if name == "artlib":
                    row["form"] = region_attention_form(k, D, HEADS, "cuda")
            except Exception as exc:  # noqa: BLE001 - e.g. FlexAttention not compiling here
                row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                log(f"  {name} K{k}: {row['error']}")
            results.append(row)
            log(" ", {a: (round(b, 4) if isinstance(b, float) else b) for a, b in row.items()})
    return results


def sweep(ks, dtype):
    """Time the kernels alone over (BLOCK_L, num_warps, num_stages), as CUDA-graph replays (plain
    do_bench of a ~20 us kernel measures the Python launch as much as the kernel)."""
    from triton.testing import do_bench, do_bench_cudagraph

    from artlib.ops.triton.region_attention import core_backward, core_forward

    configs = [(16, 4, 2), (32, 4, 2), (32, 4, 3), (64, 4, 3), (32, 8, 2), (64, 8, 3)]
    rows = []
    x = torch.randn(N, L, D, device="cuda", dtype=dtype)
    for k in ks:
        q = torch.randn(HEADS, N, k, D, device="cuda", dtype=dtype) * D**-0.5
        a, lse = core_forward(q, x)
        da = torch.randn_like(a)
        for cfg in configs:
            row = {"K": k, "config": cfg}
            runs = [
                ("fwd", lambda q=q, cfg=cfg: core_forward(q, x, config=cfg)),
                (
                    "bwd",
                    lambda q=q, cfg=cfg, da=da, a=a, lse=lse: core_backward(
                        da, q, x, a, lse, config=cfg
                    ),
                ),
            ]
            for kind, fn in runs:
                try:
                    fn()
                    try:
                        row[kind + "_ms"] = do_bench_cudagraph(fn, rep=30, return_mode="median")
                    except Exception:  # noqa: BLE001 - no graph: time it plainly
                        row[kind + "_ms"] = do_bench(fn, warmup=5, rep=30, return_mode="median")
                except Exception as exc:  # noqa: BLE001
                    row[kind + "_ms"] = None
                    row[kind + "_error"] = f"{type(exc).__name__}: {str(exc)[:100]}"
            rows.append(row)
            log("  sweep", row)
    return rows


def table(results, floor_ms):
    print(
        "\n## region attention, N=384 L=196 d=256 heads=8, "
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    )
    print(f"floor: one read of x (bf16) = {floor_ms * 1e3:.1f} us at the measured copy bandwidth\n")
    print(
        "| K | dtype | case | fwd us (graph) | fwd+bwd us (graph) | fwd+bwd peak MiB | "
        "fwd+bwd speedup of artlib |"
    )
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for k, dt in dict.fromkeys((r["K"], r["dtype"]) for r in results):
        rows = [r for r in results if r["K"] == k and r["dtype"] == dt and "error" not in r]
        ours = next((r for r in rows if r["case"] == "artlib"), None)

        def t(r, key):
            return r.get(key + "_graph_ms") or r[key + "_ms"]

        for r in rows:
            sp = f"{t(r, 'fwd_bwd') / t(ours, 'fwd_bwd'):.2f}x" if ours else ""
            print(
                f"| {k} | {dt} | {r['case']}{' (' + r['form'] + ')' if 'form' in r else ''} | "
                f"{r['fwd_ms'] * 1e3:.0f} ({(r['fwd_graph_ms'] or 0) * 1e3:.0f}) | "
                f"{r['fwd_bwd_ms'] * 1e3:.0f} ({(r['fwd_bwd_graph_ms'] or 0) * 1e3:.0f}) | "
                f"{r['fwd_bwd_peak_mib']:.0f} | {sp} |"
            )
        for r in results:
            if r["K"] == k and r["dtype"] == dt and "error" in r:
                print(f"| {k} | {dt} | {r['case']} | failed: {r['error'][:60]} | | | |")
    eager_table(results)


def eager_table(results):
    """Eager mode only (what a training step without CUDA graphs pays): artlib's fwd+bwd against
    the better of eager nn.MultiheadAttention and eager projections + SDPA (target >= 1.5x at K=2)."""
    print("\n### eager fwd+bwd (no CUDA graph), us\n")
    print("| K | dtype | artlib | mha | sdpa | absorbed-sdpa | best stock / artlib |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for k, dt in dict.fromkeys((r["K"], r["dtype"]) for r in results):
        by = {
            r["case"]: r["fwd_bwd_ms"] * 1e3
            for r in results
            if r["K"] == k and r["dtype"] == dt and "error" not in r
        }
        if "artlib" not in by:
            continue
        stock = [by[c] for c in ("mha", "sdpa") if c in by]
        ratio = f"{min(stock) / by['artlib']:.2f}x" if stock else ""
        cells = " | ".join(
            f"{by[c]:.0f}" if c in by else "" for c in ("mha", "sdpa", "absorbed-sdpa")
        )
        print(f"| {k} | {dt} | {by['artlib']:.0f} | {cells} | {ratio} |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true", help="also kernel configs, K=32 and fp32")
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--budget", type=float, default=185.0, help="seconds before timings stop")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to do")
        return 0
    os.environ.pop("TRITON_INTERPRET", None)
    log(f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    failures = []
    try:
        shapes = [
            (6, 2, 196, 256, 8),
            (5, 1, 49, 64, 1),
            (4, 3, 50, 256, 8),
            (3, 64, 50, 256, 8),
            (2, 3, 196, 1024, 16),
            (2, 8, 49, 1024, 16),
            (4, 2, 49, 96, 8),
        ]
        failures = check(shapes, [torch.float32, torch.float16, torch.bfloat16])
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        failures.append("check crashed")
    out["check_failures"] = failures
    bw = copy_bandwidth()
    floor_ms = N * L * D * 2 / bw * 1e3
    out["copy_bandwidth_GBps"], out["x_read_floor_ms"] = bw / 1e9, floor_ms
    log(f"copy bandwidth {bw / 1e9:.0f} GB/s; one read of x = {floor_ms * 1e3:.1f} us")
    if args.sweep:
        out["sweep"] = sweep([2, 16, 64], torch.bfloat16)
    names = ["artlib", "artlib-fused", "mha", "sdpa", "absorbed-sdpa", "flex"]
    ks = [2, 8, 16, 32, 64] if args.sweep else [2, 16, 64]
    results = timings(ks, torch.bfloat16, names, flex_ks=[2], budget_s=args.budget)
    if args.sweep:
        results += timings([2], torch.float32, names[:5], flex_ks=[], budget_s=args.budget + 60)
    out["timings"] = results
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    table(results, floor_ms)
    print(f"\nchecks: {'all passed' if not failures else f'{len(failures)} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
