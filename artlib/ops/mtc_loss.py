"""The multi-level tracklet contrastive (MTC) loss, Eq. 5-8 of the ART paper.

Shapes: B videos, T frames, K region queries (= tracklets), d response width; R is (B, T, K, d).

Exactly DESIGN.md's "MTC loss": cos is the cosine similarity with eps 1e-8 on each norm
(u = r / max(|r|, eps)), and every term is averaged over B.

* L_spatial  = 1/(T K (K-1)) sum_t sum_{i!=j} cos(r_ti, r_tj)                       (Eq. 5; 0 if K = 1)
* L_temporal = 1/((T-1) K) sum_i sum_{t<T} relu(lam - cos(r_ti, r_(t+1)i))   "hinge"  (Eq. 6; 0 if T = 1)
               lam - 1/((T-1) K) sum_i sum_{t<T} cos(r_ti, r_(t+1)i)          "linear"
  Eq. 6 as printed would *repel* adjacent frames while the text says they are attracted up to a
  correlated degree lam; the hinge is that reading and the default, "linear" is the printed form
  with the sign that attracts.
* L_tracklet = 1/(K (K-1)) sum_{i!=j} cos(vec(Tr_i), vec(Tr_j)), vec(Tr_k) in R^{T d}  (Eq. 7; 0 if K = 1)
* L_MTC      = w_s L_spatial + w_t L_temporal + w_tr L_tracklet                        (Eq. 8)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import einsum, rearrange
from torch import Tensor

from artlib.ops._backend import implementation
from artlib.ops._template import define_op

__all__ = ["mtc_loss", "mtc_loss_ref", "mtc_loss_backward_ref", "TEMPORAL_MODES", "COS_EPS"]

TEMPORAL_MODES = ("hinge", "linear")
COS_EPS = 1e-8


def _unit(x: Tensor) -> Tensor:
    """x / max(|x|, eps) along the last dim: a zero vector stays zero (cos 0, no NaN)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(COS_EPS)


def _off_diagonal_mean(u: Tensor) -> Tensor:
    """Mean over i != j of <u_i, u_j> for u (..., K, D) -> (...); 0 when K = 1."""
    k = u.shape[-2]
    if k < 2:
        return u.new_zeros(u.shape[:-2])
    gram = u @ u.transpose(-1, -2)  # (..., K, K)
    off = gram.sum((-1, -2)) - torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)
    return off / (k * (k - 1))


def check_mtc_args(responses: Tensor, lam: float, temporal: str, weights: Sequence[float]) -> None:
    if not isinstance(responses, Tensor):
        raise TypeError(f"responses must be a Tensor, got {type(responses).__name__}")
    if responses.dim() != 4:
        raise ValueError(
            f"responses must be (B, T, K, d), got a {responses.dim()}-d tensor of shape "
            f"{tuple(responses.shape)}"
        )
    if not responses.is_floating_point():
        raise TypeError(f"responses must be a floating-point tensor, got {responses.dtype}")
    if min(responses.shape) < 1:
        raise ValueError(f"responses must have B, T, K, d >= 1, got {tuple(responses.shape)}")
    if temporal not in TEMPORAL_MODES:
        raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {temporal!r}")
    if len(weights) != 3:
        raise ValueError(f"weights must be 3 floats (spatial, temporal, tracklet), got {weights!r}")


def mtc_loss_ref(
    responses: Tensor,
    lam: float = 0.6,
    temporal: str = "hinge",
    weights: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Plain-PyTorch MTC loss: ``(total, spatial, temporal, tracklet)``, scalars in fp32 (float64 for
    float64 input). The ground truth for every other implementation."""
    check_mtc_args(responses, lam, temporal, weights)
    acc = torch.float64 if responses.dtype == torch.float64 else torch.float32
    r = responses.to(acc)
    b, t, k, _ = r.shape
    u = _unit(r)  # (B, T, K, d)

    # Eq. 5: repel the K responses of one frame.
    spatial = _off_diagonal_mean(u).mean(1).mean(0)  # (B, T) -> scalar

    # Eq. 6: attract the same query's responses in adjacent frames, up to lam.
    if t > 1:
        cos_adj = (u[:, :-1] * u[:, 1:]).sum(-1)  # (B, T-1, K)
        if temporal == "hinge":
            temporal_term = torch.relu(lam - cos_adj).mean((1, 2)).mean(0)
        else:
            temporal_term = (lam - cos_adj.mean((1, 2))).mean(0)
    else:
        temporal_term = r.new_zeros(())

    # Eq. 7: repel whole tracklets, vec(Tr_k) in R^{T d}.
    tracks = _unit(rearrange(r, "b t k d -> b k (t d)"))
    tracklet = _off_diagonal_mean(tracks).mean(0)

    w_s, w_t, w_tr = (float(w) for w in weights)
    total = w_s * spatial + w_t * temporal_term + w_tr * tracklet  # Eq. 8
    return total, spatial, temporal_term, tracklet


def _term_scales(t: int, k: int) -> tuple[float, float, float]:
    """The normalizers of Eq. 5, 6, 7: 1/(T K (K-1)), 1/((T-1) K), 1/(K (K-1)); 0 where a term is 0."""
    c_s = 1.0 / (t * k * (k - 1)) if k > 1 else 0.0
    c_t = 1.0 / ((t - 1) * k) if t > 1 else 0.0
    c_tr = 1.0 / (k * (k - 1)) if k > 1 else 0.0
    return c_s, c_t, c_tr


def _repel_grad_matrix(gram: Tensor, a: Tensor) -> Tensor:
    """M (..., K, K) with ``M @ X = d/dX [a * sum_{i!=j} cos(x_i, x_j)]`` for X (..., K, D) whose Gram
    matrix is ``gram``. With s_i = 1/max(|x_i|, eps) and u_i = s_i x_i: M_ij = 2 a s_i s_j (i != j) and
    M_ii = -2 a s_i^2 sum_{j!=i} <u_i, u_j> where |x_i| >= eps (below eps the reference divides by the
    constant eps, so there is no projection term)."""
    k = gram.shape[-1]
    norm = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    s = 1.0 / norm.clamp_min(COS_EPS)
    off = ~torch.eye(k, dtype=torch.bool, device=gram.device)
    ss = (s.unsqueeze(-1) * s.unsqueeze(-2)) * off
    proj_coef = (gram * ss).sum(-1)  # sum_{j!=i} <u_i, u_j>
    diag = torch.where(norm >= COS_EPS, -(s * s) * proj_coef, torch.zeros_like(s))
    return 2.0 * a * (ss + torch.diag_embed(diag))


def mtc_loss_backward_ref(
    grad: Tensor,
    responses: Tensor,
    lam: float = 0.6,
    temporal: str = "hinge",
    weights: Sequence[float] = (1.0, 1.0, 1.0),
) -> Tensor:
    """The gradient of :func:`mtc_loss_ref` in closed form, plain PyTorch (no autograd, no second
    forward): ``grad`` (4,) holds d out / d (total, spatial, temporal, tracklet); returns dR like
    ``responses``. Equivalent to ``torch.autograd.grad(torch.stack(mtc_loss_ref(R, ...)), R, grad)``
    and the specification of the Triton backward:

        dR_t = (M_t + M^tr) R_t + diag(D_t) R_t + P_t * R_(t-1) + N_t * R_(t+1)

    with M_t from G_t = R_t R_tᵀ (Eq. 5), M^tr from H = sum_t G_t (Eq. 7) (see
    :func:`_repel_grad_matrix`) and the per-query temporal coefficients (Eq. 6).
    """
    acc = torch.float64 if responses.dtype == torch.float64 else torch.float32
    r = responses.to(acc)
    g = grad.to(acc)
    b, t, k, _ = r.shape
    c_s, c_t, c_tr = _term_scales(t, k)
    w_s, w_t, w_tr = (float(w) for w in weights)
    a_s = (g[0] * w_s + g[1]) * (c_s / b)  # d out / d sum_{b,t,i!=j} cos, through Eq. 8 and mean_B
    a_t = (g[0] * w_t + g[2]) * (c_t / b)
    a_tr = (g[0] * w_tr + g[3]) * (c_tr / b)

    gram = einsum(r, r, "b t i d, b t j d -> b t i j")  # G_t
    mat = _repel_grad_matrix(gram, a_s)  # Eq. 5
    mat = mat + _repel_grad_matrix(gram.sum(1), a_tr).unsqueeze(1)  # Eq. 7, H = sum_t G_t
    dr = mat @ r  # (B, T, K, d)

    if t > 1:  # Eq. 6, the pairs (t, t+1)
        norm = torch.diagonal(gram, dim1=-2, dim2=-1).sqrt()  # (B, T, K)
        s = 1.0 / norm.clamp_min(COS_EPS)
        proj = (norm >= COS_EPS).to(acc)
        cos = (r[:, :-1] * r[:, 1:]).sum(-1) * s[:, :-1] * s[:, 1:]  # (B, T-1, K)
        if temporal == "hinge":
            gam = -a_t * (lam - cos > 0).to(acc)
        else:
            gam = (-a_t).expand_as(cos)
        pair = (gam * s[:, :-1] * s[:, 1:]).unsqueeze(-1)
        dr[:, :-1] += pair * r[:, 1:]
        dr[:, 1:] += pair * r[:, :-1]
        gc = gam * cos
        dr[:, :-1] -= (proj[:, :-1] * s[:, :-1] ** 2 * gc).unsqueeze(-1) * r[:, :-1]
        dr[:, 1:] -= (proj[:, 1:] * s[:, 1:] ** 2 * gc).unsqueeze(-1) * r[:, 1:]
    return dr.to(responses.dtype).contiguous()


# ---------------------------------------------------------------------------------------------------
# The op (artlib/ops/_template.py): host forward and backward over the kernels, then define_op.


def _impl(responses: Tensor) -> str:
    return implementation("mtc_loss", responses)


def _out_dtype(responses: Tensor) -> torch.dtype:
    return torch.float64 if responses.dtype == torch.float64 else torch.float32


def _forward(
    responses: Tensor, lam: float, hinge: bool, w_s: float, w_t: float, w_tr: float
) -> tuple[Tensor, Tensor]:
    """-> (out (4,) = [total, spatial, temporal, tracklet], stats). stats is what the backward of the
    same implementation reuses: H = sum_t R_t R_tᵀ (B, K, K) fp32 for Triton, empty otherwise."""
    impl = _impl(responses)
    if impl == "triton":
        from artlib.ops.triton.mtc_loss import mtc_loss_fwd_triton

        return mtc_loss_fwd_triton(responses, lam, hinge, w_s, w_t, w_tr)
    if impl == "native":
        from artlib.ops import _native

        out = _native.mtc_loss_forward(responses, lam, hinge, w_s, w_t, w_tr)
    else:
        temporal = "hinge" if hinge else "linear"
        out = torch.stack(mtc_loss_ref(responses, lam, temporal, (w_s, w_t, w_tr)))
    return out, responses.new_empty((0,), dtype=torch.float32)


def _fake(responses, lam, hinge, w_s, w_t, w_tr):
    b, _, k, _ = responses.shape
    stats = (b, k, k) if _impl(responses) == "triton" else (0,)
    out = responses.new_empty((4,), dtype=_out_dtype(responses))
    return out, responses.new_empty(stats, dtype=torch.float32)


def _backward(grads, inputs, residuals) -> tuple[Tensor]:
    """dR (contiguous, responses' dtype) from the gradient (4,) of [total, spatial, temporal,
    tracklet]."""
    (grad,), (responses, lam, hinge, w_s, w_t, w_tr), (stats,) = grads, inputs, residuals
    impl = _impl(responses)
    if impl == "triton":
        from artlib.ops.triton.mtc_loss import mtc_loss_bwd_triton

        if stats.numel() == 0:  # the forward ran on another backend: rebuild H
            r32 = responses.float()
            stats = einsum(r32, r32, "b t i d, b t j d -> b i j").contiguous()
        return (mtc_loss_bwd_triton(grad.unbind(0), responses, stats, lam, hinge, w_s, w_t, w_tr),)
    grad = grad.to(_out_dtype(responses))
    if impl == "native":
        from artlib.ops import _native

        return (_native.mtc_loss_backward(grad, responses, lam, hinge, w_s, w_t, w_tr),)
    temporal = "hinge" if hinge else "linear"
    return (mtc_loss_backward_ref(grad, responses, lam, temporal, (w_s, w_t, w_tr)),)


_OP = define_op(
    "mtc_loss",
    schema="(Tensor responses, float lam, bool hinge, float w_s, float w_t, float w_tr) -> "
    "(Tensor, Tensor)",
    num_tensors=1,
    num_outputs=1,
    forward=_forward,
    backward=_backward,
    fake=_fake,
)


def mtc_loss(
    responses: Tensor,
    lam: float = 0.6,
    temporal: str = "hinge",
    weights: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MTC loss over region responses ``(B, T, K, d)`` -> ``(total, spatial, temporal, tracklet)``,
    0-d tensors in fp32 (float64 for float64 input).

    Equivalent to :func:`mtc_loss_ref` (forward and gradient). Fused Triton kernels for CUDA tensors
    (one read of R forward, one backward), the native CPU kernels when built, else the reference
    with a closed-form backward (:func:`mtc_loss_backward_ref`); ``artlib.ops.backend("mtc_loss",
    device)`` says which runs. Under ``torch.compile`` it is the custom op ``artlib::mtc_loss``
    (opaque to the compiler, with its fake and autograd registered); in eager mode the same host
    functions run behind a ``torch.autograd.Function``, which costs less per call
    (artlib/ops/_template.py).
    ``temporal="hinge"`` (default) is DESIGN.md's reading of Eq. 6, ``"linear"`` the printed form.
    """
    check_mtc_args(responses, lam, temporal, weights)
    w_s, w_t, w_tr = (float(w) for w in weights)
    total, spatial, temporal_term, tracklet = _OP.apply(
        responses, float(lam), temporal == "hinge", w_s, w_t, w_tr
    ).unbind(0)
    return total, spatial, temporal_term, tracklet
