"""Fused Triton kernels for saliency tracklet aggregation (Eq. 9), forward and backward.

Shapes: B videos, T frames, K tracklets (= semantics), d width; R (B, T, K, d), S (B, K, d), any
strides. Per tracklet k of video b (one program each), with Tr_k = R[b, :, k] (T, d):

    A = S_b Tr_kᵀ / tau (K x T),   P = softmax over t (rows),   w = mean over rows of P (T,)
    out_k = wᵀ Tr_k / T

Forward: pass 1 over d builds A (``tl.dot`` of the (K, d) and (T, d) tiles), pass 2 writes out_k;
when Tr_k is one tile (T <= 16, K <= 32 at d = 256) it stays in registers between the passes, otherwise
pass 2 reads its chunks again, from cache.

Backward, given g_k = dL/d out_k:  dw_t = <g_k, r_tk> / T,  dA_it = P_it (dw_t - sum_t' P_it' dw_t') / K,
    dTr_k = w g_kᵀ / T + dAᵀ S_b / tau,   dS_b = sum_k dA^(k) Tr_k / tau.
Kernel 1 (one program per (b, k)) writes dTr_k and dA^(k)/tau to a small fp32 scratch
(B, K, BLOCK_K, BLOCK_T); kernel 2 (one program per (b, d-chunk)) sums dS_b over k, so the sum over
tracklets is deterministic (no atomics).

fp32 accumulation for fp16/bf16/fp32 inputs (loaded, then cast); ``tl.dot`` with
``input_precision="ieee"`` (TF32 would perturb the softmax logits by ~1e-3 relative).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["tracklet_aggregate_fwd_triton", "tracklet_aggregate_bwd_triton"]


@triton.jit
def _saliency(a, mask_i, mask_t, inv_k):
    """Softmax over t of each row of A (masked), and its row mean w (T,)."""
    a = tl.where(mask_t[None, :], a, float("-inf"))
    a = a - tl.max(a, axis=1)[:, None]
    e = tl.exp(a)
    p = e / tl.sum(e, axis=1)[:, None]
    p = tl.where(mask_i[:, None], p, 0.0)
    w = tl.sum(p, axis=0) * inv_k
    return p, w


@triton.jit(do_not_specialize=["T", "K"])  # shapes with the same blocks share a compile
def _ta_fwd_kernel(
    r_ptr,
    s_ptr,
    out_ptr,
    stride_rb,
    stride_rt,
    stride_rk,
    stride_rd,
    stride_sb,
    stride_sk,
    stride_sd,
    stride_ob,
    stride_ok,
    stride_od,
    T,
    K,
    D,
    inv_tau,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
):
    b = tl.program_id(0)
    k = tl.program_id(1)
    offs_t = tl.arange(0, BLOCK_T)
    offs_i = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    mask_t = offs_t < T
    mask_i = offs_i < K
    tr_row = r_ptr + b.to(tl.int64) * stride_rb + k * stride_rk + offs_t[:, None] * stride_rt
    s_row = s_ptr + b.to(tl.int64) * stride_sb + offs_i[:, None] * stride_sk

    # Pass 1: A = <s_i, r_tk> / tau (Eq. 9's saliency logits).
    if SINGLE_D:  # Tr_k is one tile: loaded once, kept for pass 2
        tr1 = tl.load(
            tr_row + offs_d[None, :] * stride_rd,
            mask=mask_t[:, None] & (offs_d < D)[None, :],
            other=0.0,
        ).to(tl.float32)
        sm1 = tl.load(
            s_row + offs_d[None, :] * stride_sd,
            mask=mask_i[:, None] & (offs_d < D)[None, :],
            other=0.0,
        ).to(tl.float32)
        a = tl.dot(sm1, tl.trans(tr1), input_precision="ieee")
    else:
        a = tl.zeros([BLOCK_K, BLOCK_T], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + offs_d
            mask_d = cols < D
            tr = tl.load(
                tr_row + cols[None, :] * stride_rd,
                mask=mask_t[:, None] & mask_d[None, :],
                other=0.0,
            ).to(tl.float32)
            sm = tl.load(
                s_row + cols[None, :] * stride_sd,
                mask=mask_i[:, None] & mask_d[None, :],
                other=0.0,
            ).to(tl.float32)
            a += tl.dot(sm, tl.trans(tr), input_precision="ieee")
    _, w = _saliency(a * inv_tau, mask_i, mask_t, 1.0 / K)
    w = w / T

    # Pass 2: Tr_k^agg = 1/T sum_t w_t r_tk (a single-tile Tr_k is still in registers).
    out_row = out_ptr + b.to(tl.int64) * stride_ob + k * stride_ok
    if SINGLE_D:
        o = tl.sum(w[:, None] * tr1, axis=0)
        tl.store(out_row + offs_d * stride_od, o.to(out_ptr.dtype.element_ty), mask=offs_d < D)
    else:
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + offs_d
            mask_d = cols < D
            tr = tl.load(
                tr_row + cols[None, :] * stride_rd,
                mask=mask_t[:, None] & mask_d[None, :],
                other=0.0,
            )
            o = tl.sum(w[:, None] * tr.to(tl.float32), axis=0)
            tl.store(out_row + cols * stride_od, o.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit(do_not_specialize=["T", "K"])  # shapes with the same blocks share a compile
def _ta_bwd_kernel(
    r_ptr,
    s_ptr,
    g_ptr,
    dr_ptr,
    da_ptr,
    stride_rb,
    stride_rt,
    stride_rk,
    stride_rd,
    stride_sb,
    stride_sk,
    stride_sd,
    stride_gb,
    stride_gk,
    stride_gd,
    stride_xb,
    stride_xt,
    stride_xk,
    stride_xd,
    T,
    K,
    D,
    inv_tau,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
):
    b = tl.program_id(0)
    k = tl.program_id(1)
    offs_t = tl.arange(0, BLOCK_T)
    offs_i = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    mask_t = offs_t < T
    mask_i = offs_i < K
    tr_row = r_ptr + b.to(tl.int64) * stride_rb + k * stride_rk + offs_t[:, None] * stride_rt
    s_row = s_ptr + b.to(tl.int64) * stride_sb + offs_i[:, None] * stride_sk
    g_row = g_ptr + b.to(tl.int64) * stride_gb + k * stride_gk

    # Pass 1: A and dw_t = <g_k, r_tk> / T.
    if SINGLE_D:  # one tile each: S_b and g_k are kept for pass 2
        mask_d1 = offs_d < D
        tr1 = tl.load(
            tr_row + offs_d[None, :] * stride_rd, mask=mask_t[:, None] & mask_d1[None, :], other=0.0
        ).to(tl.float32)
        sm1 = tl.load(
            s_row + offs_d[None, :] * stride_sd, mask=mask_i[:, None] & mask_d1[None, :], other=0.0
        ).to(tl.float32)
        gk1 = tl.load(g_row + offs_d * stride_gd, mask=mask_d1, other=0.0).to(tl.float32)
        a = tl.dot(sm1, tl.trans(tr1), input_precision="ieee")
        dw = tl.sum(tr1 * gk1[None, :], axis=1)
    else:
        a = tl.zeros([BLOCK_K, BLOCK_T], tl.float32)
        dw = tl.zeros([BLOCK_T], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + offs_d
            mask_d = cols < D
            tr = tl.load(
                tr_row + cols[None, :] * stride_rd,
                mask=mask_t[:, None] & mask_d[None, :],
                other=0.0,
            ).to(tl.float32)
            sm = tl.load(
                s_row + cols[None, :] * stride_sd,
                mask=mask_i[:, None] & mask_d[None, :],
                other=0.0,
            ).to(tl.float32)
            gk = tl.load(g_row + cols * stride_gd, mask=mask_d, other=0.0).to(tl.float32)
            a += tl.dot(sm, tl.trans(tr), input_precision="ieee")
            dw += tl.sum(tr * gk[None, :], axis=1)
    p, w = _saliency(a * inv_tau, mask_i, mask_t, 1.0 / K)
    w = w / T
    dw = dw / T
    # softmax backward of each row, the 1/K of the mean, and the 1/tau of the logits
    da = p * (dw[None, :] - tl.sum(p * dw[None, :], axis=1)[:, None]) * (inv_tau / K)
    da_ptrs = (
        da_ptr
        + (b * K + k).to(tl.int64) * (BLOCK_K * BLOCK_T)
        + offs_i[:, None] * BLOCK_T
        + offs_t[None, :]
    )
    tl.store(da_ptrs, da)
    da_t = tl.trans(da)  # (T, K)

    # Pass 2: dTr_k = w g_kᵀ / T + dAᵀ S_b / tau.
    x_row = dr_ptr + b.to(tl.int64) * stride_xb + k * stride_xk + offs_t[:, None] * stride_xt
    if SINGLE_D:
        dtr = w[:, None] * gk1[None, :] + tl.dot(da_t, sm1, input_precision="ieee")
        tl.store(
            x_row + offs_d[None, :] * stride_xd,
            dtr.to(dr_ptr.dtype.element_ty),
            mask=mask_t[:, None] & mask_d1[None, :],
        )
    else:
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + offs_d
            mask_d = cols < D
            sm = tl.load(
                s_row + cols[None, :] * stride_sd,
                mask=mask_i[:, None] & mask_d[None, :],
                other=0.0,
            ).to(tl.float32)
            gk = tl.load(g_row + cols * stride_gd, mask=mask_d, other=0.0).to(tl.float32)
            dtr = w[:, None] * gk[None, :] + tl.dot(da_t, sm, input_precision="ieee")
            tl.store(
                x_row + cols[None, :] * stride_xd,
                dtr.to(dr_ptr.dtype.element_ty),
                mask=mask_t[:, None] & mask_d[None, :],
            )


@triton.jit(do_not_specialize=["T", "K"])  # shapes with the same blocks share a compile
def _ta_bwd_semantics_kernel(
    r_ptr,
    da_ptr,
    ds_ptr,
    stride_rb,
    stride_rt,
    stride_rk,
    stride_rd,
    stride_xb,
    stride_xk,
    stride_xd,
    T,
    K,
    D,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_t = tl.arange(0, BLOCK_T)
    offs_i = tl.arange(0, BLOCK_K)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_t = offs_t < T
    mask_d = cols < D
    acc = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
    # dS_b = sum_k dA^(k) Tr_k / tau (the 1/tau is already in the scratch)
    for k in range(0, K):
        da_ptrs = (
            da_ptr
            + (b * K + k).to(tl.int64) * (BLOCK_K * BLOCK_T)
            + offs_i[:, None] * BLOCK_T
            + offs_t[None, :]
        )
        da = tl.load(da_ptrs)
        tr_ptrs = (
            r_ptr
            + b.to(tl.int64) * stride_rb
            + k * stride_rk
            + offs_t[:, None] * stride_rt
            + cols[None, :] * stride_rd
        )
        tr = tl.load(tr_ptrs, mask=mask_t[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        acc += tl.dot(da, tr, input_precision="ieee")
    x_ptrs = (
        ds_ptr
        + b.to(tl.int64) * stride_xb
        + offs_i[:, None] * stride_xk
        + cols[None, :] * stride_xd
    )
    tl.store(x_ptrs, acc.to(ds_ptr.dtype.element_ty), mask=(offs_i < K)[:, None] & mask_d[None, :])


def _blocks(t: int, k: int, d: int) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_K, BLOCK_D, num_warps): T and K padded to powers of two >= 16 (``tl.dot``'s
    minimum on GPUs); a d-chunk with (BLOCK_T + BLOCK_K) * BLOCK_D <= 12288 (6144 from BLOCK_K = 64),
    the largest that compiles the backward without (or with a few bytes of) register spills for
    sm_90, fp32/fp16/bf16, 8 warps (ptxas -v: 175 registers at T = 16, K = 32, d-chunk 256). Up to
    T = 16, K = 32 at d = 256, Tr_k and S_b are one tile each (SINGLE_D: read once a program)."""
    block_t = max(16, triton.next_power_of_2(t))
    block_k = max(16, triton.next_power_of_2(k))
    cap = 12288 if block_k <= 32 else 6144
    block_d = max(16, min(triton.next_power_of_2(d), cap // (block_t + block_k)))
    block_d = triton.next_power_of_2(block_d + 1) // 2  # round down to a power of two
    num_warps = 8 if (block_t + block_k) * block_d >= 4096 else 4
    return block_t, block_k, block_d, num_warps


def tracklet_aggregate_fwd_triton(r: Tensor, s: Tensor, temperature: float) -> Tensor:
    """R (B, T, K, d), S (B, K, d) -> (B, K, d) in R's dtype (Eq. 9, saliency)."""
    b, t, k, d = r.shape
    block_t, block_k, block_d, num_warps = _blocks(t, k, d)
    out = torch.empty((b, k, d), device=r.device, dtype=r.dtype)
    _ta_fwd_kernel[(b, k)](
        r,
        s,
        out,
        *r.stride(),
        *s.stride(),
        *out.stride(),
        t,
        k,
        d,
        1.0 / float(temperature),
        BLOCK_T=block_t,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
        SINGLE_D=block_d >= d,
        num_warps=num_warps,
    )
    return out


def tracklet_aggregate_bwd_triton(
    grad: Tensor, r: Tensor, s: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """grad (B, K, d) -> (dR like R, dS like S), both contiguous."""
    b, t, k, d = r.shape
    block_t, block_k, block_d, num_warps = _blocks(t, k, d)
    dr = torch.empty((b, t, k, d), device=r.device, dtype=r.dtype)
    ds = torch.empty((b, k, d), device=s.device, dtype=s.dtype)
    da = torch.empty((b, k, block_k, block_t), device=r.device, dtype=torch.float32)
    _ta_bwd_kernel[(b, k)](
        r,
        s,
        grad,
        dr,
        da,
        *r.stride(),
        *s.stride(),
        *grad.stride(),
        *dr.stride(),
        t,
        k,
        d,
        1.0 / float(temperature),
        BLOCK_T=block_t,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
        SINGLE_D=block_d >= d,
        num_warps=num_warps,
    )
    # dS: d in chunks of 64 so that B * d / 64 programs share the loop over the K tracklets
    block_ds = max(16, min(triton.next_power_of_2(d), 64))
    _ta_bwd_semantics_kernel[(b, triton.cdiv(d, block_ds))](
        r,
        da,
        ds,
        *r.stride(),
        *ds.stride(),
        t,
        k,
        d,
        BLOCK_T=block_t,
        BLOCK_K=block_k,
        BLOCK_D=block_ds,
        num_warps=4,
    )
    return dr, ds
