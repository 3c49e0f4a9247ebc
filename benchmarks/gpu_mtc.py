"""The MTC loss and tracklet aggregation on a GPU in one run: CUDA checks of the fused Triton kernels
against the reference, then timings against the stock alternatives. Prints a short table last.

    python benchmarks/gpu_mtc.py                        # on a GPU machine (well under 2 min on an H100)
    ARTLIB_GPU_DRYRUN=1 python benchmarks/gpu_mtc.py    # the same logic on CPU, TRITON_INTERPRET=1, tiny shapes

Needs only torch, triton, einops, numpy.

1. Checks (PASS/FAIL lines): ``mtc_loss`` (all four terms and dR, for a random gradient of all four
   and for the total alone) and saliency ``tracklet_aggregate`` (out, dR, dS) on the Triton backend,
   fp32 / fp16 / bf16, against the reference in float64, with tests/helpers.py's rule (error at most
   2x that of the reference run at the same precision, plus the dtype's floor). Shapes: the paper's
   (B 24, T 16, d 256, K 2/8/32), K 64, K 1, T 1, d 37 and 100, non-contiguous R (fp16/bf16: a
   subset, to keep the Triton compiles few).
2. Timings: forward + ``torch.autograd.grad`` at B 24, T 16, d 256, K in {2, 8, 32}, fp32, median
   of ``triton.testing.do_bench`` (L2 flushed between runs):
   - ``artlib``: the public op in eager mode (Triton kernels behind an autograd.Function);
   - ``artlib-compiled``: the public op inside ``torch.compile`` (the custom op in a graph);
   - ``eager-ref``: ``mtc_loss_ref`` / ``tracklet_aggregate_ref`` under autograd;
   - ``compiled-ref``: ``torch.compile(reference)`` (inductor, default dynamic policy).
   Targets: artlib >= 5x faster than eager-ref and >= 1.5x faster than compiled-ref at
   K = 2 (the paper's shape).
"""

from __future__ import annotations

import os
import sys
import time
import traceback

DRY = os.environ.get("ARTLIB_GPU_DRYRUN") == "1"
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
os.environ["ARTLIB_BACKEND_MTC_LOSS"] = "triton"
os.environ["ARTLIB_BACKEND_TRACKLET_AGGREGATE"] = "triton"

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from artlib.ops import mtc_loss, mtc_loss_ref, tracklet_aggregate, tracklet_aggregate_ref  # noqa: E402
from tests.helpers import assert_close  # noqa: E402

DEV = torch.device("cpu" if DRY else "cuda")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FAILED: list[str] = []


def report(name: str, fn) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - a failed check is reported, the run goes on
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"FAIL  {name}  {msg}")
        if not isinstance(exc, AssertionError):
            traceback.print_exc(limit=3)
        FAILED.append(name)
    else:
        print(f"PASS  {name}")


# ---- checks ---------------------------------------------------------------------------------------


def _responses(shape, dtype, noncontiguous=False, zero=False, scale=1.0):
    b, t, k, d = shape
    g = torch.Generator().manual_seed(hash(shape) % 2**31)
    if noncontiguous:  # stored as (B, K, T, d + 1)
        r = (torch.randn(b, k, t, d + 1, generator=g) * scale).to(DEV, dtype).transpose(1, 2)
        r = r[..., :d]
    else:
        r = (torch.randn(b, t, k, d, generator=g) * scale).to(DEV, dtype)
    if zero:
        r[0, 0, 0] = 0
    return r


def _mtc_grads(fn, r, grad, **kw):
    r = r.detach().requires_grad_()
    out = torch.stack(fn(r, **kw))
    if not out.requires_grad:
        return out.detach(), torch.zeros_like(r)
    (dr,) = torch.autograd.grad(out, r, grad.to(out.device, out.dtype))
    return out.detach(), dr


def check_mtc(shape, dtype, noncontiguous=False, zero=False, **kw):
    r = _responses(shape, dtype, noncontiguous, zero)
    grad = torch.tensor([1.0, 0.5, -0.7, 2.0])
    out, dr = _mtc_grads(mtc_loss, r, grad, **kw)
    exp_out, exp_dr = _mtc_grads(mtc_loss_ref, r.double(), grad, **kw)
    low_out, low_dr = _mtc_grads(mtc_loss_ref, r, grad, **kw)
    assert dr.dtype == dtype, f"dR dtype {dr.dtype}"
    assert_close(out, exp_out, dtype=torch.float32, lowp_ref=low_out, name="out")
    assert_close(dr, exp_dr.to(dtype), lowp_ref=low_dr, name="dR")
    # the total alone (the training loss): the other terms get no gradient
    rr = r.detach().requires_grad_()
    (dr_total,) = torch.autograd.grad(mtc_loss(rr, **kw)[0], rr)
    _, exp_total = _mtc_grads(mtc_loss_ref, r.double(), torch.tensor([1.0, 0, 0, 0]), **kw)
    _, low_total = _mtc_grads(mtc_loss_ref, r, torch.tensor([1.0, 0, 0, 0]), **kw)
    assert_close(dr_total, exp_total.to(dtype), lowp_ref=low_total, name="dR (total)")


def _ta_grads(fn, r, s, grad, tau):
    r = r.detach().requires_grad_()
    s = s.detach().requires_grad_()
    out = fn(r, s, "saliency", tau)
    dr, ds = torch.autograd.grad(out, (r, s), grad.to(out.device, out.dtype))
    return out.detach(), dr, ds


def check_ta(shape, dtype, noncontiguous=False, tau=1.0, scale=0.3):
    b, t, k, d = shape
    r = _responses(shape, dtype, noncontiguous, scale=scale)
    s = (torch.randn(b, k, d) * scale).to(DEV, dtype)
    grad = torch.randn(b, k, d)
    got = _ta_grads(tracklet_aggregate, r, s, grad, tau)
    exp = _ta_grads(tracklet_aggregate_ref, r.double(), s.double(), grad, tau)
    low = _ta_grads(tracklet_aggregate_ref, r, s, grad, tau)
    for name, a, e, lo in zip(("out", "dR", "dS"), got, exp, low):
        assert a.dtype == dtype, f"{name} dtype {a.dtype}"
        assert_close(a, e.to(dtype), lowp_ref=lo, name=name)


def run_checks() -> None:
    if DRY:
        shapes = [(2, 3, 3, 37), (2, 1, 2, 20), (2, 3, 1, 20)]
    else:
        shapes = [
            (24, 16, 2, 256),
            (24, 16, 8, 256),
            (24, 16, 32, 256),
            (4, 16, 64, 256),
            (3, 1, 3, 100),  # T = 1
            (3, 5, 1, 100),  # K = 1
            (2, 7, 5, 37),
        ]
    for dtype in DTYPES:
        dn = str(dtype).replace("torch.", "")
        # fewer shapes at low precision: each new tile configuration is a Triton compile
        some = shapes if dtype == torch.float32 or DRY else [shapes[0], shapes[2], shapes[-1]]
        for shape in some:
            report(
                f"mtc_loss {dn} {shape} hinge",
                lambda shape=shape, dtype=dtype: check_mtc(shape, dtype),
            )
            report(
                f"tracklet_aggregate {dn} {shape}",
                lambda shape=shape, dtype=dtype: check_ta(shape, dtype),
            )
        shape = shapes[-1]
        report(
            f"mtc_loss {dn} {shape} linear lam=0.3 w=(0.5,2,1.5) non-contiguous",
            lambda shape=shape, dtype=dtype: check_mtc(
                shape, dtype, True, lam=0.3, temporal="linear", weights=(0.5, 2.0, 1.5)
            ),
        )
        report(
            f"tracklet_aggregate {dn} {shape} tau=0.5 non-contiguous",
            lambda shape=shape, dtype=dtype: check_ta(shape, dtype, True, tau=0.5),
        )
    report(
        "mtc_loss float32 zero-vector response",
        lambda: check_mtc(shapes[0], torch.float32, zero=True),
    )
    report(
        "tracklet_aggregate float32 unit-scale inputs (peaky softmax)",
        lambda: check_ta(shapes[0], torch.float32, scale=1.0),
    )


# ---- timings --------------------------------------------------------------------------------------


def bench_ms(fn) -> float:
    if DRY:
        fn()
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        return (time.perf_counter() - t0) / 3 * 1e3
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=50, return_mode="median")


def run_timings() -> list[tuple]:
    b, t, d = (2, 3, 20) if DRY else (24, 16, 256)
    # fp32: R is a LayerNorm output, which autocast keeps in fp32
    cases = [(k, torch.float32) for k in ((2, 3) if DRY else (2, 8, 32))]
    if DRY:  # the custom-op path through dynamo + AOT autograd, without inductor's CPU compile time
        compiled = {
            "mtc-artlib": torch.compile(mtc_loss, fullgraph=True, backend="aot_eager"),
            "ta-artlib": torch.compile(tracklet_aggregate, fullgraph=True, backend="aot_eager"),
        }
    else:
        compiled = {
            "mtc-ref": torch.compile(mtc_loss_ref),
            "ta-ref": torch.compile(tracklet_aggregate_ref),
            "mtc-artlib": torch.compile(mtc_loss, fullgraph=True),
            "ta-artlib": torch.compile(tracklet_aggregate, fullgraph=True),
        }
    rows = []
    for k, dtype in cases:
        g = torch.Generator().manual_seed(k)
        r = torch.randn(b, t, k, d, generator=g).to(DEV, dtype).requires_grad_()
        s = (torch.randn(b, k, d, generator=g) * 0.3).to(DEV, dtype).requires_grad_()
        gout = torch.randn(b, k, d, generator=g).to(DEV, dtype)

        def mtc_step(fn, r=r):
            return lambda: torch.autograd.grad(fn(r)[0], r)

        def ta_step(fn, r=r, s=s, gout=gout):
            return lambda: torch.autograd.grad(fn(r, s, "saliency", 1.0), (r, s), gout)

        for op, step, ours, ref, key in (
            ("mtc_loss", mtc_step, mtc_loss, mtc_loss_ref, "mtc"),
            ("tracklet_aggregate", ta_step, tracklet_aggregate, tracklet_aggregate_ref, "ta"),
        ):
            fns = {"artlib": ours, "eager-ref": ref}
            for name, ckey in (("artlib-compiled", "artlib"), ("compiled-ref", "ref")):
                if f"{key}-{ckey}" in compiled:
                    fns[name] = compiled[f"{key}-{ckey}"]
            times = {}
            for name, fn in fns.items():
                try:
                    start = time.perf_counter()
                    grads = step(fn)()  # warm-up (compiles)
                    warm = time.perf_counter() - start
                    if name == "artlib-compiled":  # the custom-op path, checked once per shape
                        expected = step(ours)()
                        report(
                            f"{op} K={k} under torch.compile == eager",
                            lambda g=grads, e=expected: [
                                assert_close(a, b, name="grad") for a, b in zip(g, e)
                            ],
                        )
                    times[name] = bench_ms(step(fn))
                    if warm > 5:
                        print(f"  ({op} K={k} {name}: first call {warm:.1f} s)")
                except Exception:  # noqa: BLE001
                    traceback.print_exc(limit=3)
                    times[name] = float("nan")
            rows.append((op, k, str(dtype).replace("torch.", ""), times))
    return rows


def print_table(rows) -> None:
    dev = "CPU dry run (TRITON_INTERPRET=1)" if DRY else torch.cuda.get_device_name()
    print(f"\nfwd+bwd, B 24, T 16, d 256 (ms, median of do_bench; {dev})\n")
    names = ["artlib", "artlib-compiled", "eager-ref", "compiled-ref"]
    print(
        "| op | K | dtype | "
        + " | ".join(names)
        + " | eager-ref / artlib | compiled-ref / artlib |"
    )
    print("| --- | ---: | --- | " + " | ".join("---:" for _ in names) + " | ---: | ---: |")
    for op, k, dn, times in rows:
        a = times.get("artlib", float("nan"))
        cells = [f"{times[n]:.3f}" if n in times else "-" for n in names]
        ratio_e = times.get("eager-ref", float("nan")) / a
        ratio_c = times.get("compiled-ref", float("nan")) / a
        print(
            f"| {op} | {k} | {dn} | " + " | ".join(cells) + f" | {ratio_e:.2f}x | {ratio_c:.2f}x |"
        )
    for op, k, dn, times in rows:
        if k == 2 and dn == "float32" and "compiled-ref" in times:
            a = times["artlib"]
            ok = times["eager-ref"] / a >= 5 and times["compiled-ref"] / a >= 1.5
            print(
                f"TARGET {'PASS' if ok else 'MISS'}  {op} K=2: {times['eager-ref'] / a:.2f}x eager "
                f"(>= 5), {times['compiled-ref'] / a:.2f}x compiled (>= 1.5)"
            )


def main() -> int:
    start = time.perf_counter()
    if not DRY and not torch.cuda.is_available():
        print("FAIL  no CUDA device (set ARTLIB_GPU_DRYRUN=1 for the CPU dry run)")
        return 1
    torch.manual_seed(0)
    run_checks()
    rows = run_timings()
    print_table(rows)
    print(f"\n{len(FAILED)} check(s) failed; {time.perf_counter() - start:.0f} s")
    return 1 if FAILED else 0


if __name__ == "__main__":
    raise SystemExit(main())
