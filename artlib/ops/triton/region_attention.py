"""Fused Triton kernels for the core of region attention (the absorbed form, DESIGN.md).

Shapes: N frames, heads H, K queries, M = H K folded query rows, L tokens, d width. Per frame::

    S = q x^T (M x L),  P = softmax_rows(S),  A = P x (M x d),  lse = logsumexp_rows(S)   (forward)
    dP = dA x^T, delta = rowsum(dA * A), dS = P * (dP - delta),
    dq = dS x,  dx = P^T dA + dS^T q                                                      (backward)

q, A, dA and dq are 4-D (H, N, K, d) tensors of any strides: row m = h K + k of frame n sits at
h*stride_h + n*stride_n + k*stride_k. The op keeps them heads-major, (H, N K, d) contiguous, which
is the layout of the per-head projections around the core (one bmm each, no copies); lse is (N, M).

Forward: one program per (frame, block of BLOCK_M rows, BLOCK_D output columns). For the paper's
shape (K = 2, 8 heads -> M = 16; d = 256) that is one program per frame: it reads the frame's x once
for all heads and queries, keeps the M x L scores on chip and accumulates in fp32, walking L in
BLOCK_L tiles with an online softmax; any L works (masked).

Backward: when M fits one row block, one fused program per frame computes dq and dx in one pass
over x. Otherwise a dq kernel (per row block, walking L; it also stores delta) and a dx kernel (per
L tile, walking the row blocks) split the work, so that no program needs atomics.

When d > 256 the scores are reduced over d in BLOCK_D slices and each program writes one BLOCK_D
slice of its outputs (the scores are then recomputed once per slice).

Tiles are at least 16 on each side (tl.dot needs that on GPUs). Under TRITON_INTERPRET=1 every tile
is cast to fp32 before the dots (bf16 arithmetic is wrong in the interpreter); on GPUs fp16/bf16 tiles
go to the tensor cores as they are (fp32 accumulation) and fp32 tiles use IEEE fp32 unless
``torch.backends.cuda.matmul.allow_tf32`` is set.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.errors import OutOfResources

__all__ = ["core_forward", "core_backward", "default_config"]


@triton.jit
def _rows(offs_m, KQ, stride_h, stride_k):
    """Offsets of folded rows m = h K + k in a (H, N, K, d) tensor (the frame's offset added apart)."""
    return (offs_m // KQ) * stride_h + (offs_m % KQ) * stride_k


@triton.jit
def _tile(row_ptrs, cols, stride_col, mask_rows, mask_cols, DOT_F32: tl.constexpr):
    """The (rows x cols) tile at row_ptrs[r] + cols[c] * stride_col, zero outside the masks; cast
    to fp32 when DOT_F32 (the interpreter's bf16 arithmetic is wrong, see the module docstring).
    Every load of q, dA, A and x in the kernels below is one of these."""
    t = tl.load(
        row_ptrs[:, None] + cols[None, :] * stride_col,
        mask=mask_rows[:, None] & mask_cols[None, :],
        other=0.0,
    )
    if DOT_F32:
        t = t.to(tl.float32)
    return t


@triton.jit
def _fwd_kernel(
    Q,
    X,
    A,
    LSE,
    stride_qh,
    stride_qn,
    stride_qk,
    stride_qd,
    stride_xn,
    stride_xl,
    stride_xd,
    stride_ah,
    stride_an,
    stride_ak,
    stride_ad,
    stride_ln,
    stride_lm,
    M,
    KQ,
    L,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    pid_d = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_l = tl.arange(0, BLOCK_L)
    offs_k = tl.arange(0, BLOCK_D)
    offs_o = pid_d * BLOCK_D + offs_k  # the output columns of this program
    mask_m = offs_m < M
    mask_o = offs_o < D
    q_rows = Q + pid_n * stride_qn + _rows(offs_m, KQ, stride_qh, stride_qk)
    x_ptr = X + pid_n * stride_xn

    q_o = _tile(q_rows, offs_o, stride_qd, mask_m, mask_o, DOT_F32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for l0 in range(0, L, BLOCK_L):
        cur_l = l0 + offs_l
        mask_l = cur_l < L
        x_o = _tile(x_ptr + cur_l * stride_xl, offs_o, stride_xd, mask_l, mask_o, DOT_F32)
        if SINGLE_D:
            s = tl.dot(q_o, tl.trans(x_o), input_precision=PRECISION)
        else:
            s = tl.zeros([BLOCK_M, BLOCK_L], tl.float32)
            for k0 in range(0, D, BLOCK_D):
                cur_k = k0 + offs_k
                mask_k = cur_k < D
                q_k = _tile(q_rows, cur_k, stride_qd, mask_m, mask_k, DOT_F32)
                x_k = _tile(x_ptr + cur_l * stride_xl, cur_k, stride_xd, mask_l, mask_k, DOT_F32)
                s += tl.dot(q_k, tl.trans(x_k), input_precision=PRECISION)
        s = tl.where(mask_l[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(x_o.dtype), x_o, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    a_rows = A + pid_n * stride_an + _rows(offs_m, KQ, stride_ah, stride_ak)
    tl.store(
        a_rows[:, None] + offs_o[None, :] * stride_ad,
        acc.to(A.dtype.element_ty),
        mask=mask_m[:, None] & mask_o[None, :],
    )
    if pid_d == 0:
        tl.store(LSE + pid_n * stride_ln + offs_m * stride_lm, m_i + tl.log(l_i), mask=mask_m)


@triton.jit
def _scores_and_dp(
    q_rows,
    da_rows,
    x_ptr,
    cur_l,
    mask_m,
    mask_l,
    offs_k,
    stride_qd,
    stride_dad,
    stride_xl,
    stride_xd,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """S = q x^T and dP = dA x^T for one row block and one L tile, reduced over all of d."""
    s = tl.zeros([BLOCK_M, BLOCK_L], tl.float32)
    dp = tl.zeros([BLOCK_M, BLOCK_L], tl.float32)
    for k0 in range(0, D, BLOCK_D):
        cur_k = k0 + offs_k
        mask_k = cur_k < D
        q_k = _tile(q_rows, cur_k, stride_qd, mask_m, mask_k, DOT_F32)
        da_k = _tile(da_rows, cur_k, stride_dad, mask_m, mask_k, DOT_F32)
        x_k = _tile(x_ptr + cur_l * stride_xl, cur_k, stride_xd, mask_l, mask_k, DOT_F32)
        s += tl.dot(q_k, tl.trans(x_k), input_precision=PRECISION)
        dp += tl.dot(da_k, tl.trans(x_k), input_precision=PRECISION)
    return s, dp


@triton.jit
def _bwd_kernel(
    DA,
    Q,
    X,
    A,
    LSE,
    DELTA,
    DQ,
    DX,
    stride_dah,
    stride_dan,
    stride_dak,
    stride_dad,
    stride_qh,
    stride_qn,
    stride_qk,
    stride_qd,
    stride_xn,
    stride_xl,
    stride_xd,
    stride_ah,
    stride_an,
    stride_ak,
    stride_ad,
    stride_ln,
    stride_lm,
    stride_dqh,
    stride_dqn,
    stride_dqk,
    stride_dqd,
    stride_dxn,
    stride_dxl,
    stride_dxd,
    M,
    KQ,
    L,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    WRITE_DX: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dq for one row block (walking L); with WRITE_DX (all rows in this block) also dx, else delta
    for the dx kernel."""
    pid_n = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    pid_d = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_l = tl.arange(0, BLOCK_L)
    offs_k = tl.arange(0, BLOCK_D)
    offs_o = pid_d * BLOCK_D + offs_k
    mask_m = offs_m < M
    mask_o = offs_o < D
    q_rows = Q + pid_n * stride_qn + _rows(offs_m, KQ, stride_qh, stride_qk)
    da_rows = DA + pid_n * stride_dan + _rows(offs_m, KQ, stride_dah, stride_dak)
    a_rows = A + pid_n * stride_an + _rows(offs_m, KQ, stride_ah, stride_ak)
    x_ptr = X + pid_n * stride_xn

    # delta = rowsum(dA * A) over all of d
    delta = tl.zeros([BLOCK_M], tl.float32)
    for k0 in range(0, D, BLOCK_D):
        cur_k = k0 + offs_k
        da_k = _tile(da_rows, cur_k, stride_dad, mask_m, cur_k < D, True)
        a_k = _tile(a_rows, cur_k, stride_ad, mask_m, cur_k < D, True)
        delta += tl.sum(da_k * a_k, 1)
    lse = tl.load(LSE + pid_n * stride_ln + offs_m * stride_lm, mask=mask_m, other=0.0)
    if not WRITE_DX:
        if pid_d == 0:
            tl.store(DELTA + pid_n * stride_ln + offs_m * stride_lm, delta, mask=mask_m)

    mask_mo = mask_m[:, None] & mask_o[None, :]
    q_o = _tile(q_rows, offs_o, stride_qd, mask_m, mask_o, DOT_F32)
    da_o = _tile(da_rows, offs_o, stride_dad, mask_m, mask_o, DOT_F32)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for l0 in range(0, L, BLOCK_L):
        cur_l = l0 + offs_l
        mask_l = cur_l < L
        mask_lo = mask_l[:, None] & mask_o[None, :]
        x_o = _tile(x_ptr + cur_l * stride_xl, offs_o, stride_xd, mask_l, mask_o, DOT_F32)
        if SINGLE_D:
            s = tl.dot(q_o, tl.trans(x_o), input_precision=PRECISION)
            dp = tl.dot(da_o, tl.trans(x_o), input_precision=PRECISION)
        else:
            s, dp = _scores_and_dp(
                q_rows,
                da_rows,
                x_ptr,
                cur_l,
                mask_m,
                mask_l,
                offs_k,
                stride_qd,
                stride_dad,
                stride_xl,
                stride_xd,
                D,
                BLOCK_M,
                BLOCK_L,
                BLOCK_D,
                DOT_F32,
                PRECISION,
            )
        p = tl.exp(s - lse[:, None])
        p = tl.where(mask_m[:, None] & mask_l[None, :], p, 0.0)
        ds = p * (dp - delta[:, None])
        ds_c = ds.to(x_o.dtype)
        dq += tl.dot(ds_c, x_o, input_precision=PRECISION)
        if WRITE_DX:
            dx = tl.dot(tl.trans(p.to(x_o.dtype)), da_o, input_precision=PRECISION)
            dx += tl.dot(tl.trans(ds_c), q_o, input_precision=PRECISION)
            dx_ptrs = (
                DX + pid_n * stride_dxn + cur_l[:, None] * stride_dxl + offs_o[None, :] * stride_dxd
            )
            tl.store(dx_ptrs, dx.to(DX.dtype.element_ty), mask=mask_lo)
    dq_rows = DQ + pid_n * stride_dqn + _rows(offs_m, KQ, stride_dqh, stride_dqk)
    tl.store(
        dq_rows[:, None] + offs_o[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty), mask=mask_mo
    )


@triton.jit
def _bwd_dx_kernel(
    DA,
    Q,
    X,
    LSE,
    DELTA,
    DX,
    stride_dah,
    stride_dan,
    stride_dak,
    stride_dad,
    stride_qh,
    stride_qn,
    stride_qk,
    stride_qd,
    stride_xn,
    stride_xl,
    stride_xd,
    stride_ln,
    stride_lm,
    stride_dxn,
    stride_dxl,
    stride_dxd,
    M,
    KQ,
    L,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dx for one L tile, walking every row block of the frame (used when M needs several)."""
    pid_n = tl.program_id(0).to(tl.int64)
    pid_l = tl.program_id(1)
    pid_d = tl.program_id(2)
    cur_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_k = tl.arange(0, BLOCK_D)
    offs_o = pid_d * BLOCK_D + offs_k
    mask_l = cur_l < L
    mask_o = offs_o < D
    mask_lo = mask_l[:, None] & mask_o[None, :]
    x_ptr = X + pid_n * stride_xn
    x_o = _tile(x_ptr + cur_l * stride_xl, offs_o, stride_xd, mask_l, mask_o, DOT_F32)
    dx = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        q_rows = Q + pid_n * stride_qn + _rows(offs_m, KQ, stride_qh, stride_qk)
        da_rows = DA + pid_n * stride_dan + _rows(offs_m, KQ, stride_dah, stride_dak)
        lse = tl.load(LSE + pid_n * stride_ln + offs_m * stride_lm, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + pid_n * stride_ln + offs_m * stride_lm, mask=mask_m, other=0.0)
        q_o = _tile(q_rows, offs_o, stride_qd, mask_m, mask_o, DOT_F32)
        da_o = _tile(da_rows, offs_o, stride_dad, mask_m, mask_o, DOT_F32)
        if SINGLE_D:
            s = tl.dot(q_o, tl.trans(x_o), input_precision=PRECISION)
            dp = tl.dot(da_o, tl.trans(x_o), input_precision=PRECISION)
        else:
            s, dp = _scores_and_dp(
                q_rows,
                da_rows,
                x_ptr,
                cur_l,
                mask_m,
                mask_l,
                offs_k,
                stride_qd,
                stride_dad,
                stride_xl,
                stride_xd,
                D,
                BLOCK_M,
                BLOCK_L,
                BLOCK_D,
                DOT_F32,
                PRECISION,
            )
        p = tl.exp(s - lse[:, None])
        p = tl.where(mask_m[:, None] & mask_l[None, :], p, 0.0)
        ds = p * (dp - delta[:, None])
        dx += tl.dot(tl.trans(p.to(x_o.dtype)), da_o, input_precision=PRECISION)
        dx += tl.dot(tl.trans(ds.to(x_o.dtype)), q_o, input_precision=PRECISION)
    tl.store(
        DX + pid_n * stride_dxn + cur_l[:, None] * stride_dxl + offs_o[None, :] * stride_dxd,
        dx.to(DX.dtype.element_ty),
        mask=mask_lo,
    )


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _blocks(m: int, d: int) -> tuple[int, int]:
    """BLOCK_M: all rows of a frame up to 64 (M = 16 for K = 2, 8 heads -> one block per frame);
    BLOCK_D: all of d up to 256 (one pass over x), else 128-wide slices."""
    block_m = min(max(16, triton.next_power_of_2(m)), 64)
    block_d = max(16, triton.next_power_of_2(d))
    if block_d > 256:
        block_d = 128
    return block_m, block_d


def default_config(
    kind: str, block_m: int, block_d: int, dtype: torch.dtype
) -> tuple[int, int, int]:
    """(BLOCK_L, num_warps, num_stages) for kernel ``kind`` ("fwd", "bwd", "bwd_dq", "bwd_dx").

    Measured on an H200, bf16, N = 384, L = 196, d = 256, 8 heads (benchmarks/gpu_region_attention.py
    --sweep; one config for all kernels of a pass): (32, 4, 3) was best or within noise for the
    forward at K = 2, 16, 64 (22 / 50 / 166 us) and for the split backward at K = 16 and 64
    (218 / 711 us; (32, 8, 2) took 355 / 1314 us); for the fused backward at K = 2 (42 us). A fused
    backward with 64-row blocks did better with 8 warps (518 us at K = 16 against 698 with 4, when it
    still added dx with atomics)."""
    if _interpret():
        return 16, 4, 1
    wide = block_m * block_d * (2 if dtype == torch.float32 else 1) > 16 * 256
    if kind == "bwd" and wide:
        return 32, 8, 2
    return 32, 4, 3


# The config that compiled and ran for each (kind, BLOCK_M, BLOCK_D, dtype): a config that runs out of
# shared memory or registers on some card falls back to smaller tiles instead of failing.
_CHOSEN: dict[tuple, tuple[int, int, int]] = {}
_FALLBACKS = [(32, 4, 2), (16, 4, 1), (16, 8, 1)]


def _launch(kernel, kind, grid, args, meta, dtype, config=None):
    key = (kind, meta["BLOCK_M"], meta["BLOCK_D"], dtype)
    if config is not None:
        candidates = [config]
    elif key in _CHOSEN:
        candidates = [_CHOSEN[key]]
    else:
        candidates = [default_config(kind, meta["BLOCK_M"], meta["BLOCK_D"], dtype), *_FALLBACKS]
    for i, (block_l, warps, stages) in enumerate(candidates):
        try:
            kernel[grid(block_l)](
                *args, BLOCK_L=block_l, num_warps=warps, num_stages=stages, **meta
            )
        except OutOfResources:
            if i == len(candidates) - 1:
                raise
            continue
        if config is None:
            _CHOSEN[key] = (block_l, warps, stages)
        return


def _common(q: Tensor) -> dict:
    fp32 = q.dtype == torch.float32
    dot_f32 = fp32 or _interpret()
    # IEEE fp32 for fp32 inputs (as torch's matmuls by default); fp16/bf16 tiles ignore the setting
    tf32 = (fp32 and q.is_cuda and torch.backends.cuda.matmul.allow_tf32) or not dot_f32
    return {"DOT_F32": dot_f32, "PRECISION": "tf32" if tf32 else "ieee"}


def _check(q: Tensor) -> None:
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the Triton region-attention kernels take fp32/fp16/bf16, got {q.dtype}")
    if q.dim() != 4:
        raise ValueError(f"q must be (heads, N, K, d), got shape {tuple(q.shape)}")


def core_forward(
    q: Tensor, x: Tensor, config: tuple[int, int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """q (H, N, K, d) (any strides), x (N, L, d) -> (A (H, N, K, d) contiguous in q's dtype,
    lse (N, H K) fp32). ``config`` = (BLOCK_L, num_warps, num_stages) overrides the default."""
    _check(q)
    h, n, k, d = q.shape
    m, l = h * k, x.shape[1]
    a = torch.empty((h, n, k, d), device=q.device, dtype=q.dtype)
    lse = torch.empty((n, m), device=q.device, dtype=torch.float32)
    if n == 0:
        return a, lse
    block_m, block_d = _blocks(m, d)
    args = (q, x, a, lse, *q.stride(), *x.stride(), *a.stride(), *lse.stride(), m, k, l, d)
    meta = dict(BLOCK_M=block_m, BLOCK_D=block_d, SINGLE_D=d <= block_d, **_common(q))
    grid = lambda _: (n, triton.cdiv(m, block_m), triton.cdiv(d, block_d))  # noqa: E731
    _launch(_fwd_kernel, "fwd", grid, args, meta, q.dtype, config)
    return a, lse


def core_backward(
    da: Tensor,
    q: Tensor,
    x: Tensor,
    a: Tensor,
    lse: Tensor,
    config: tuple[int, int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """-> (dq (H, N, K, d) contiguous in q's dtype, dx (N, L, d) in x's dtype): the gradients of
    :func:`core_forward` for the upstream gradient dA (H, N, K, d)."""
    _check(q)
    h, n, k, d = q.shape
    m, l = h * k, x.shape[1]
    dq = torch.empty((h, n, k, d), device=q.device, dtype=q.dtype)
    dx = torch.empty((n, l, d), device=x.device, dtype=x.dtype)
    if n == 0:
        return dq, dx
    block_m, block_d = _blocks(m, d)
    fused = m <= block_m
    delta = lse if fused else torch.empty_like(lse)  # delta is written only when not fused
    common = _common(q)
    args = (
        da,
        q,
        x,
        a,
        lse,
        delta,
        dq,
        dx,
        *da.stride(),
        *q.stride(),
        *x.stride(),
        *a.stride(),
        *lse.stride(),
        *dq.stride(),
        *dx.stride(),
        m,
        k,
        l,
        d,
    )
    meta = dict(BLOCK_M=block_m, BLOCK_D=block_d, SINGLE_D=d <= block_d, WRITE_DX=fused, **common)
    grid = lambda _: (n, triton.cdiv(m, block_m), triton.cdiv(d, block_d))  # noqa: E731
    _launch(_bwd_kernel, "bwd" if fused else "bwd_dq", grid, args, meta, q.dtype, config)
    if not fused:
        dx_block_m = 32 if block_d >= 256 else 64
        args = (
            da,
            q,
            x,
            lse,
            delta,
            dx,
            *da.stride(),
            *q.stride(),
            *x.stride(),
            *lse.stride(),
            *dx.stride(),
            m,
            k,
            l,
            d,
        )
        meta = dict(BLOCK_M=dx_block_m, BLOCK_D=block_d, SINGLE_D=d <= block_d, **common)
        grid = lambda bl: (n, triton.cdiv(l, bl), triton.cdiv(d, block_d))  # noqa: E731
        _launch(_bwd_dx_kernel, "bwd_dx", grid, args, meta, q.dtype, config)
    return dq, dx
