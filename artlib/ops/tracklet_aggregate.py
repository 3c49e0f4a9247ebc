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

from artlib.ops import _backend
from artlib.ops._template import define_op

__all__ = [
    "tracklet_aggregate",
    "tracklet_aggregate_ref",
    "tracklet_aggregate_backward_ref",
    "tracklet_weights_ref",
    "AGG_MODES",
]

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


def tracklet_aggregate_backward_ref(
    grad: Tensor, responses: Tensor, semantics: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The gradient of saliency :func:`tracklet_aggregate_ref` in closed form, plain PyTorch (no
    autograd, no second forward): grad (B, K, d) -> (dR like responses, dS like semantics).
    Equivalent to ``torch.autograd.grad(tracklet_aggregate_ref(R, S, "saliency", tau), (R, S), grad)``
    and the specification of the Triton backward. With P = softmax_t(<s_i, r_tk> / tau) (B, K, T, K)
    and w = mean_i P:

        dw_tk = <g_k, r_tk> / T,   dA_itk = P_itk (dw_tk - sum_t' P_it'k dw_t'k) / (K tau)
        dR = w g / T + sum_i dA_i s_i,   dS_i = sum_(t,k) dA_itk r_tk
    """
    acc = torch.float64 if responses.dtype == torch.float64 else torch.float32
    r, s, g = responses.to(acc), semantics.to(acc), grad.to(acc)
    b, t, k, d = r.shape
    rows = r.reshape(b, t * k, d)  # rows (t, k): the layouts below are plain bmm, no copies of R
    p = (torch.bmm(s, rows.mT) / temperature).view(b, k, t, k).softmax(dim=2)  # Eq. 9, (B, i, T, K)
    w = p.mean(dim=1)  # (B, T, K)
    dw = (r * g.unsqueeze(1)).sum(-1) / t
    da = p * (dw.unsqueeze(1) - (p * dw.unsqueeze(1)).sum(2, keepdim=True)) / (k * temperature)
    da = da.reshape(b, k, t * k)
    dr = torch.bmm(da.mT, s).view(b, t, k, d).addcmul_(w.unsqueeze(-1) / t, g.unsqueeze(1))
    ds = torch.bmm(da, rows)
    return dr.to(responses.dtype), ds.to(semantics.dtype)


# ---------------------------------------------------------------------------------------------------
# The op (artlib/ops/_template.py): host forward and backward over the kernels, then define_op.
# Residuals: the native kernels keep the softmax P (B, K, K, T) and the weights w (B, K, T) for the
# backward; Triton and the reference keep nothing (they recompute P from R and S).


def _impl(responses: Tensor) -> str:
    return _backend.implementation("tracklet_aggregate", responses)


def _forward(responses: Tensor, semantics: Tensor, temperature: float) -> tuple[Tensor, ...]:
    """-> (out (B, K, d) in R's dtype, P, w) with P, w empty unless the native kernel ran."""
    impl = _impl(responses)
    if impl == "native":
        from artlib.ops import _native

        return _native.tracklet_aggregate_forward(responses, semantics, temperature)
    if impl == "triton":
        from artlib.ops.triton.tracklet_aggregate import tracklet_aggregate_fwd_triton

        out = tracklet_aggregate_fwd_triton(responses, semantics, temperature)
    else:
        out = tracklet_aggregate_ref(responses, semantics, "saliency", temperature).contiguous()
    empty = responses.new_empty(0)
    return out, empty, empty.clone()


def _fake(responses: Tensor, semantics: Tensor, temperature: float) -> tuple[Tensor, ...]:
    b, t, k, d = responses.shape
    if _impl(responses) != "native":
        return responses.new_empty(b, k, d), responses.new_empty(0), responses.new_empty(0)
    acc = torch.float64 if responses.dtype == torch.float64 else torch.float32
    p, w = responses.new_empty(b, k, k, t, dtype=acc), responses.new_empty(b, k, t, dtype=acc)
    return responses.new_empty(b, k, d), p, w


def _backward(grads, inputs, residuals) -> tuple[Tensor, Tensor]:
    """(dR, dS), contiguous, in the dtypes of responses and semantics."""
    (grad,), (responses, semantics, temperature), (p, w) = grads, inputs, residuals
    impl = _impl(responses)
    if impl == "native" and p.numel() == 0 and responses.numel() > 0:  # another forward ran
        impl = "reference"
    if impl == "native":
        from artlib.ops import _native

        return _native.tracklet_aggregate_backward(grad, responses, semantics, p, w, temperature)
    if impl == "triton":
        from artlib.ops.triton.tracklet_aggregate import tracklet_aggregate_bwd_triton

        return tracklet_aggregate_bwd_triton(grad, responses, semantics, temperature)
    return tracklet_aggregate_backward_ref(grad, responses, semantics, temperature)


_OP = define_op(
    "tracklet_aggregate",
    schema="(Tensor responses, Tensor semantics, float temperature) -> (Tensor, Tensor, Tensor)",
    num_tensors=2,
    num_outputs=1,
    forward=_forward,
    backward=_backward,
    fake=_fake,
)


def tracklet_aggregate(
    responses: Tensor,
    semantics: Tensor | None = None,
    mode: str = "saliency",
    temperature: float = 1.0,
) -> Tensor:
    """Aggregate each tracklet over time: R (B, T, K, d) [, S^topk (B, K, d)] -> (B, K, d) in R's dtype.

    Equivalent to :func:`tracklet_aggregate_ref` (forward and gradients). ``mode="saliency"`` (Eq. 9)
    runs fused Triton kernels for CUDA tensors (one read of R forward, one backward), the native
    CPU kernels (csrc/tracklet_aggregate.cpp) for CPU tensors once built, else the reference with a
    closed-form backward (:func:`tracklet_aggregate_backward_ref`); ``artlib.ops.backend(
    "tracklet_aggregate", device)`` says which. Under ``torch.compile`` it is the custom op
    ``artlib::tracklet_aggregate``, in eager mode the same host functions behind a
    ``torch.autograd.Function`` (artlib/ops/_template.py). ``"mean"`` and ``"sum"`` are a single
    reduction in plain PyTorch.
    """
    check_aggregate_args(responses, semantics, mode)
    if mode != "saliency":
        return tracklet_aggregate_ref(responses, semantics, mode, temperature)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return _OP.apply(responses, semantics, float(temperature))
