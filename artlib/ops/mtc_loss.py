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
from einops import rearrange
from torch import Tensor

__all__ = ["mtc_loss", "mtc_loss_ref", "TEMPORAL_MODES", "COS_EPS"]

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


def mtc_loss(
    responses: Tensor,
    lam: float = 0.6,
    temporal: str = "hinge",
    weights: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MTC loss over region responses ``(B, T, K, d)`` -> ``(total, spatial, temporal, tracklet)``.

    Equivalent to :func:`mtc_loss_ref`; dispatches to the fastest implementation for the device.
    """
    return mtc_loss_ref(responses, lam, temporal, weights)
