"""Fused Triton kernels for the MTC loss (Eq. 5-8), forward and backward.

Shapes: B videos, T frames, K region queries, d width; R (B, T, K, d) with any strides.

Everything the loss needs is a K x K Gram matrix or a per-query dot product:

* G_t = R_t R_tᵀ (K x K) per frame: its diagonal gives the norms n_tk, its off-diagonal the spatial
  cosines G_ij / (max(n_i, eps) max(n_j, eps))                                           (Eq. 5)
* c_tk = <r_tk, r_(t+1)k> per query: the temporal cosines                                 (Eq. 6)
* H = sum_t G_t per video: the Gram of vec(Tr_k), so the tracklet cosines                 (Eq. 7)

Forward: one program per video streams its T frames once, keeps G_t and H in registers and writes
the video's four terms, already divided by B, plus H (B, K, K) for the backward. A frame that fits
one tile (K <= 16 at d = 256) is loaded once and kept for the next frame's c_t; a larger one is
read in d-chunks, the previous frame's chunk again from cache. Tile sizes: see ``_blocks``.

Backward: one program per (video, frame). With s_k = 1 / max(n_k, eps) and u_k = s_k r_k, the gradient
of sum_{i!=j} <u_i, u_j> is a K x K matrix times R_t, the temporal term adds multiples of r_(t-1)k and
r_(t+1)k, so  dR_t = (M_t + M^tr + diag(D_t)) R_t + P_t * R_(t-1) + N_t * R_(t+1)  with
M_ij = 2 a s_i s_j (i != j),  M_ii = -[n_i >= eps] 2 a s_i^2 sum_{j!=i} s_i s_j G_ij
(the projection onto the tangent of the unit sphere; a vector shorter than eps is divided by eps, as
in the reference's clamp). Pass 1 over d builds G_t and the neighbours' dot products, pass 2 writes
dR_t (from registers when the frames fit one tile each, K <= 16 at d = 256). H comes from the forward, so the backward
also reads R once (the neighbours' tiles from cache).

Accumulation is fp32 for fp16/bf16/fp32 inputs (loaded, then cast: bf16 arithmetic is wrong under
TRITON_INTERPRET=1). ``tl.dot`` runs with ``input_precision="ieee"``: TF32 would put ~1e-3 relative
error into the norms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["mtc_loss_fwd_triton", "mtc_loss_bwd_triton"]

COS_EPS = 1e-8


@triton.jit(do_not_specialize=["T", "K"])  # shapes with the same blocks share a compile
def _mtc_fwd_kernel(
    r_ptr,
    part_ptr,
    gram_ptr,
    stride_rb,
    stride_rt,
    stride_rk,
    stride_rd,
    T,
    K,
    D,
    lam,
    w_s,
    w_t,
    w_tr,
    c_s,
    c_t,
    c_tr,
    inv_b,
    EPS: tl.constexpr,
    HINGE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
):
    b = tl.program_id(0)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    mask_k = offs_k < K
    eye = offs_k[:, None] == offs_k[None, :]
    offdiag = (offs_k[:, None] != offs_k[None, :]) & mask_k[:, None] & mask_k[None, :]
    base = r_ptr + b.to(tl.int64) * stride_rb
    mask_kd = mask_k[:, None] & (offs_d < D)[None, :]

    h = tl.zeros([BLOCK_K, BLOCK_K], tl.float32)  # sum_t G_t: Gram of vec(Tr_k), Eq. 7
    spatial = tl.zeros([BLOCK_K], tl.float32)
    temporal = tl.zeros([BLOCK_K], tl.float32)
    s_prev = tl.zeros([BLOCK_K], tl.float32)
    prev_tile = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
    for t in range(0, T):
        row = base + t * stride_rt + offs_k[:, None] * stride_rk
        if SINGLE_D:
            # A frame is one tile: each frame is loaded once and kept for the next c_t.
            cur = tl.load(row + offs_d[None, :] * stride_rd, mask=mask_kd, other=0.0)
            cur = cur.to(tl.float32)
            g = tl.dot(cur, tl.trans(cur), input_precision="ieee")
            cross = tl.sum(prev_tile * cur, axis=1)  # <r_(t-1)k, r_tk>
            prev_tile = cur
        else:
            g = tl.zeros([BLOCK_K, BLOCK_K], tl.float32)
            cross = tl.zeros([BLOCK_K], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + offs_d
                m = mask_k[:, None] & (cols < D)[None, :]
                ptrs = row + cols[None, :] * stride_rd
                cur = tl.load(ptrs, mask=m, other=0.0).to(tl.float32)
                prev = tl.load(ptrs - stride_rt, mask=m & (t > 0), other=0.0).to(tl.float32)
                g += tl.dot(cur, tl.trans(cur), input_precision="ieee")
                cross += tl.sum(prev * cur, axis=1)
        sq = tl.sum(tl.where(eye, g, 0.0), axis=1)
        s = 1.0 / tl.maximum(tl.sqrt(sq), EPS)
        # Eq. 5: sum_{i != j} cos(r_ti, r_tj)
        spatial += tl.sum(tl.where(offdiag, g * s[:, None] * s[None, :], 0.0), axis=1)
        # Eq. 6: the pair (t-1, t)
        cos = cross * s_prev * s
        if HINGE:
            val = tl.maximum(lam - cos, 0.0)
        else:
            val = lam - cos
        temporal += tl.where(mask_k & (t > 0), val, 0.0)
        s_prev = s
        h += g

    hs = 1.0 / tl.maximum(tl.sqrt(tl.sum(tl.where(eye, h, 0.0), axis=1)), EPS)
    tracklet_b = tl.sum(
        tl.sum(tl.where(offdiag, h * hs[:, None] * hs[None, :], 0.0), axis=1), axis=0
    )
    spatial_b = tl.sum(spatial, axis=0) * c_s
    temporal_b = tl.sum(temporal, axis=0) * c_t
    tracklet_b = tracklet_b * c_tr
    total_b = w_s * spatial_b + w_t * temporal_b + w_tr * tracklet_b  # Eq. 8
    tl.store(part_ptr + b * 4 + 0, total_b * inv_b)
    tl.store(part_ptr + b * 4 + 1, spatial_b * inv_b)
    tl.store(part_ptr + b * 4 + 2, temporal_b * inv_b)
    tl.store(part_ptr + b * 4 + 3, tracklet_b * inv_b)
    gptrs = gram_ptr + b * K * K + offs_k[:, None] * K + offs_k[None, :]
    tl.store(gptrs, h, mask=mask_k[:, None] & mask_k[None, :])


@triton.jit(do_not_specialize=["T", "K"])  # shapes with the same blocks share a compile
def _mtc_bwd_kernel(
    r_ptr,
    gram_ptr,
    g_total_ptr,
    g_spatial_ptr,
    g_temporal_ptr,
    g_tracklet_ptr,
    dr_ptr,
    stride_rb,
    stride_rt,
    stride_rk,
    stride_rd,
    stride_gb,
    stride_gt,
    stride_gk,
    stride_gd,
    T,
    K,
    D,
    lam,
    w_s,
    w_t,
    w_tr,
    c_s,
    c_t,
    c_tr,
    inv_b,
    EPS: tl.constexpr,
    HINGE: tl.constexpr,
    GRADS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
):
    b = tl.program_id(0)
    t = tl.program_id(1)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    mask_k = offs_k < K
    eye = offs_k[:, None] == offs_k[None, :]
    offdiag = (offs_k[:, None] != offs_k[None, :]) & mask_k[:, None] & mask_k[None, :]
    has_prev = t > 0
    has_next = t < T - 1

    # The incoming gradient of each term (bit i of GRADS: output i has one), through Eq. 8 and the
    # mean over B.
    g_total = 0.0
    g_s = 0.0
    g_t = 0.0
    g_tr = 0.0
    if GRADS & 1:
        g_total = tl.load(g_total_ptr).to(tl.float32)
    if GRADS & 2:
        g_s = tl.load(g_spatial_ptr).to(tl.float32)
    if GRADS & 4:
        g_t = tl.load(g_temporal_ptr).to(tl.float32)
    if GRADS & 8:
        g_tr = tl.load(g_tracklet_ptr).to(tl.float32)
    a_s = (g_total * w_s + g_s) * inv_b * c_s
    a_t = (g_total * w_t + g_t) * inv_b * c_t
    a_tr = (g_total * w_tr + g_tr) * inv_b * c_tr

    row = r_ptr + b.to(tl.int64) * stride_rb + t * stride_rt + offs_k[:, None] * stride_rk
    # Pass 1: G_t and the dot products with the neighbouring frames.
    if SINGLE_D:  # the three frames are one tile each: loaded once, kept for pass 2
        m1 = mask_k[:, None] & (offs_d < D)[None, :]
        ptrs1 = row + offs_d[None, :] * stride_rd
        cur1 = tl.load(ptrs1, mask=m1, other=0.0).to(tl.float32)
        prev1 = tl.load(ptrs1 - stride_rt, mask=m1 & has_prev, other=0.0).to(tl.float32)
        nxt1 = tl.load(ptrs1 + stride_rt, mask=m1 & has_next, other=0.0).to(tl.float32)
        g = tl.dot(cur1, tl.trans(cur1), input_precision="ieee")
        c_prev = tl.sum(prev1 * cur1, axis=1)
        c_next = tl.sum(cur1 * nxt1, axis=1)
        sq_prev = tl.sum(prev1 * prev1, axis=1)
        sq_next = tl.sum(nxt1 * nxt1, axis=1)
    else:
        g = tl.zeros([BLOCK_K, BLOCK_K], tl.float32)
        c_prev = tl.zeros([BLOCK_K], tl.float32)
        c_next = tl.zeros([BLOCK_K], tl.float32)
        sq_prev = tl.zeros([BLOCK_K], tl.float32)
        sq_next = tl.zeros([BLOCK_K], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + offs_d
            m = mask_k[:, None] & (cols < D)[None, :]
            ptrs = row + cols[None, :] * stride_rd
            cur = tl.load(ptrs, mask=m, other=0.0).to(tl.float32)
            prev = tl.load(ptrs - stride_rt, mask=m & has_prev, other=0.0).to(tl.float32)
            nxt = tl.load(ptrs + stride_rt, mask=m & has_next, other=0.0).to(tl.float32)
            g += tl.dot(cur, tl.trans(cur), input_precision="ieee")
            c_prev += tl.sum(prev * cur, axis=1)
            c_next += tl.sum(cur * nxt, axis=1)
            sq_prev += tl.sum(prev * prev, axis=1)
            sq_next += tl.sum(nxt * nxt, axis=1)

    n = tl.sqrt(tl.sum(tl.where(eye, g, 0.0), axis=1))
    s = 1.0 / tl.maximum(n, EPS)
    proj = (n >= EPS) & mask_k  # below eps the reference divides by the constant eps

    # Eq. 5: spatial repulsion within frame t.
    sg = tl.where(offdiag, g * s[:, None] * s[None, :], 0.0)
    p = 2.0 * a_s * tl.sum(sg, axis=1)  # <dL/du_i, u_i>
    mat = tl.where(offdiag, 2.0 * a_s * s[:, None] * s[None, :], 0.0)
    diag = tl.where(proj, -s * s * p, 0.0)

    # Eq. 7: tracklet repulsion, through H = sum_t G_t saved by the forward.
    hptrs = gram_ptr + b * K * K + offs_k[:, None] * K + offs_k[None, :]
    h = tl.load(hptrs, mask=mask_k[:, None] & mask_k[None, :], other=0.0)
    hn = tl.sqrt(tl.sum(tl.where(eye, h, 0.0), axis=1))
    hs = 1.0 / tl.maximum(hn, EPS)
    hproj = (hn >= EPS) & mask_k
    shg = tl.where(offdiag, h * hs[:, None] * hs[None, :], 0.0)
    hp = 2.0 * a_tr * tl.sum(shg, axis=1)
    mat += tl.where(offdiag, 2.0 * a_tr * hs[:, None] * hs[None, :], 0.0)
    diag += tl.where(hproj, -hs * hs * hp, 0.0)

    # Eq. 6: the pairs (t-1, t) and (t, t+1); gamma = a_t * d term / d cos.
    s_prev = 1.0 / tl.maximum(tl.sqrt(sq_prev), EPS)
    s_next = 1.0 / tl.maximum(tl.sqrt(sq_next), EPS)
    cos_prev = c_prev * s_prev * s
    cos_next = c_next * s * s_next
    if HINGE:
        gam_prev = tl.where(lam - cos_prev > 0.0, -a_t, 0.0)
        gam_next = tl.where(lam - cos_next > 0.0, -a_t, 0.0)
    else:
        gam_prev = tl.zeros([BLOCK_K], tl.float32) - a_t
        gam_next = tl.zeros([BLOCK_K], tl.float32) - a_t
    gam_prev = tl.where(mask_k & has_prev, gam_prev, 0.0)
    gam_next = tl.where(mask_k & has_next, gam_next, 0.0)
    coef_prev = s * gam_prev * s_prev
    coef_next = s * gam_next * s_next
    diag += tl.where(proj, -s * s * (gam_prev * cos_prev + gam_next * cos_next), 0.0)

    mat += tl.where(eye, diag[:, None], 0.0)

    # Pass 2: dR_t = mat R_t + coef_prev * R_(t-1) + coef_next * R_(t+1).
    out_row = dr_ptr + b.to(tl.int64) * stride_gb + t * stride_gt + offs_k[:, None] * stride_gk
    if SINGLE_D:
        dr = tl.dot(mat, cur1, input_precision="ieee")
        dr += coef_prev[:, None] * prev1 + coef_next[:, None] * nxt1
        tl.store(out_row + offs_d[None, :] * stride_gd, dr.to(dr_ptr.dtype.element_ty), mask=m1)
    else:
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + offs_d
            m = mask_k[:, None] & (cols < D)[None, :]
            ptrs = row + cols[None, :] * stride_rd
            cur = tl.load(ptrs, mask=m, other=0.0).to(tl.float32)
            prev = tl.load(ptrs - stride_rt, mask=m & has_prev, other=0.0).to(tl.float32)
            nxt = tl.load(ptrs + stride_rt, mask=m & has_next, other=0.0).to(tl.float32)
            dr = tl.dot(mat, cur, input_precision="ieee")
            dr += coef_prev[:, None] * prev + coef_next[:, None] * nxt
            tl.store(out_row + cols[None, :] * stride_gd, dr.to(dr_ptr.dtype.element_ty), mask=m)


def _blocks(k: int, d: int, backward: bool) -> tuple[int, int, int]:
    """(BLOCK_K, BLOCK_D, num_warps). K is padded to a power of two >= 16 (``tl.dot``'s minimum on
    GPUs). The d-chunk is the largest that compiles without (or with a few bytes of) register spills
    for sm_90, fp32/fp16/bf16, 8 warps (checked with ptxas -v): BLOCK_K * BLOCK_D <= 4096 forward
    (it holds two frames), and backward <= 4096 at BLOCK_K = 16, <= 2048 beyond (it holds frames
    t-1, t, t+1 and several K x K matrices: 190 registers at 16 x 256). At d = 256 a whole frame is
    one tile (SINGLE_D: read once) up to K = 16."""
    block_k = max(16, triton.next_power_of_2(k))
    cap = 4096 if not backward or block_k <= 16 else 2048
    block_d = max(16, min(triton.next_power_of_2(d), cap // block_k))
    num_warps = 8 if block_k * block_d >= 2048 else 4
    return block_k, block_d, num_warps


def _coefs(t: int, k: int) -> tuple[float, float, float]:
    """Normalizers of Eq. 5, 6, 7; 0 where a term is defined as 0 (K = 1, T = 1)."""
    c_s = 1.0 / (t * k * (k - 1)) if k > 1 else 0.0
    c_t = 1.0 / ((t - 1) * k) if t > 1 else 0.0
    c_tr = 1.0 / (k * (k - 1)) if k > 1 else 0.0
    return c_s, c_t, c_tr


def mtc_loss_fwd_triton(
    r: Tensor, lam: float, hinge: bool, w_s: float, w_t: float, w_tr: float
) -> tuple[Tensor, Tensor]:
    """-> (out (4,) fp32 = [total, spatial, temporal, tracklet], H (B, K, K) fp32)."""
    b, t, k, d = r.shape
    block_k, block_d, num_warps = _blocks(k, d, backward=False)
    part = torch.empty((b, 4), device=r.device, dtype=torch.float32)
    gram = torch.empty((b, k, k), device=r.device, dtype=torch.float32)
    c_s, c_t, c_tr = _coefs(t, k)
    _mtc_fwd_kernel[(b,)](
        r,
        part,
        gram,
        *r.stride(),
        t,
        k,
        d,
        float(lam),
        float(w_s),
        float(w_t),
        float(w_tr),
        c_s,
        c_t,
        c_tr,
        1.0 / b,
        EPS=COS_EPS,
        HINGE=bool(hinge),
        BLOCK_K=block_k,
        BLOCK_D=block_d,
        SINGLE_D=block_d >= d,
        num_warps=num_warps,
    )
    return part.sum(0), gram


def mtc_loss_bwd_triton(
    grads: Sequence[Tensor | None],
    r: Tensor,
    gram: Tensor,
    lam: float,
    hinge: bool,
    w_s: float,
    w_t: float,
    w_tr: float,
) -> Tensor:
    """The 0-d gradients of (total, spatial, temporal, tracklet) (None: no gradient), H from the
    forward -> dR like r (contiguous). The gradients are read in the kernel: no host sync, and no
    zero-filled tensors for the terms nothing depends on."""
    b, t, k, d = r.shape
    mask = sum(1 << i for i, g in enumerate(grads) if g is not None)
    ptrs = [gram if g is None else g for g in grads]
    block_k, block_d, num_warps = _blocks(k, d, backward=True)
    dr = torch.empty((b, t, k, d), device=r.device, dtype=r.dtype)
    c_s, c_t, c_tr = _coefs(t, k)
    _mtc_bwd_kernel[(b, t)](
        r,
        gram,
        *ptrs,
        dr,
        *r.stride(),
        *dr.stride(),
        t,
        k,
        d,
        float(lam),
        float(w_s),
        float(w_t),
        float(w_tr),
        c_s,
        c_t,
        c_tr,
        1.0 / b,
        EPS=COS_EPS,
        HINGE=bool(hinge),
        GRADS=mask,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
        SINGLE_D=block_d >= d,
        num_warps=num_warps,
    )
    return dr
