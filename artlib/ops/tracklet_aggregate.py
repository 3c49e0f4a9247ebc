"""Tracklet aggregation, Eq. 9 of the ART paper.

Shapes: B videos, T frames, K tracklets, d width; R (B, T, K, d), semantics S^topk (B, K, d).

``mode="saliency"`` (Eq. 9, as printed: plain inner product, no scaling)::

    a[b, i, t, k] = <s_i, r_tk> / tau                  (tau = temperature, 1 by default)
    w[b, t, k]    = 1/K sum_i softmax_t(a[b, i, :, k])[t]
    Tr_k^agg      = 1/T sum_t r_tk * w[b, t, k]        -> (B, K, d)

``mode="mean"``: 1/T sum_t r_tk; ``mode="sum"``: sum_t r_tk (the ablation's plain pooling).
"""

from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor

__all__ = ["tracklet_aggregate", "tracklet_aggregate_ref", "tracklet_weights_ref", "AGG_MODES"]

AGG_MODES = ("saliency", "mean", "sum")


def check_aggregate_args(responses: Tensor, semantics: Tensor | None, mode: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"mode must be one of {AGG_MODES}, got {mode!r}")
    if not isinstance(responses, Tensor):
        raise TypeError(f"responses must be a Tensor, got {type(responses).__name__}")
    if responses.dim() != 4:
        raise ValueError(f"responses must be (B, T, K, d), got shape {tuple(responses.shape)}")
    if not responses.is_floating_point():
        raise TypeError(f"responses must be a floating-point tensor, got {responses.dtype}")
    if mode != "saliency":
        return
    if not isinstance(semantics, Tensor):
        raise TypeError("semantics (B, K, d) is required for mode='saliency'")
    b, _, k, d = responses.shape
    if semantics.shape != (b, k, d):
        raise ValueError(
            f"semantics must be (B, K, d) = {(b, k, d)} to match responses {tuple(responses.shape)}, "
            f"got {tuple(semantics.shape)}"
        )
    if semantics.dtype != responses.dtype or semantics.device != responses.device:
        raise TypeError(
            f"semantics must have responses' dtype and device ({responses.dtype}, {responses.device}),"
            f" got ({semantics.dtype}, {semantics.device})"
        )


def tracklet_weights_ref(responses: Tensor, semantics: Tensor, temperature: float = 1.0) -> Tensor:
    """The temporal saliency S^temp of Eq. 9: (B, T, K), each column summing to 1 over T."""
    scores = einsum(semantics, responses, "b i d, b t k d -> b i t k") / temperature
    return scores.softmax(dim=2).mean(dim=1)


def tracklet_aggregate_ref(
    responses: Tensor,
    semantics: Tensor | None = None,
    mode: str = "saliency",
    temperature: float = 1.0,
) -> Tensor:
    """Plain-PyTorch tracklet aggregation -> (B, K, d) in the input dtype (computed in fp32 or fp64)."""
    check_aggregate_args(responses, semantics, mode)
    t = responses.shape[1]
    acc = torch.float64 if responses.dtype == torch.float64 else torch.float32
    r = responses.to(acc)
    if mode == "sum":
        out = r.sum(1)
    elif mode == "mean":
        out = r.mean(1)
    else:
        w = tracklet_weights_ref(r, semantics.to(acc), temperature)  # (B, T, K)
        out = einsum(r, w, "b t k d, b t k -> b k d") / t
    return out.to(responses.dtype)


def tracklet_aggregate(
    responses: Tensor,
    semantics: Tensor | None = None,
    mode: str = "saliency",
    temperature: float = 1.0,
) -> Tensor:
    """Aggregate each tracklet over time -> (B, K, d). Equivalent to :func:`tracklet_aggregate_ref`."""
    return tracklet_aggregate_ref(responses, semantics, mode, temperature)
