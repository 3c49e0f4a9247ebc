"""Tracklets (Sec. III-C, Eq. 4) and their aggregation (Sec. III-D, Eq. 9).

Legend: B videos, T frames, K tracklets, d width. Tr_k = (r_1k, ..., r_Tk) is a view of R (B,T,K,d).
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from artlib.ops.tracklet_aggregate import AGG_MODES, tracklet_aggregate

__all__ = ["tracklets", "TrackletAggregation", "AGGREGATIONS"]

# Eq. 9's modes (the fused op) and "sequence", which keeps every frame of each tracklet in order
AGGREGATIONS = (*AGG_MODES, "sequence")


def tracklets(responses: Tensor) -> Tensor:
    """Eq. 4: the K tracklets of R (B,T,K,d) as (B,K,T,d)."""
    return rearrange(responses, "b t k d -> b k t d")


class TrackletAggregation(nn.Module):
    """Eq. 9: aggregate each tracklet over time with text-guided temporal saliency.

    ``mode="saliency"`` weights frames by the mean over the K semantics s_i of softmax_t(<s_i, r_tk>)
    and returns 1/T sum_t r_tk w_tk; ``"mean"`` and ``"sum"`` are the ablation's plain pooling.
    ``temperature`` divides the inner products (1 = as printed in the paper).
    ``"sequence"`` is not Eq. 9: it keeps each tracklet whole, its T responses in frame order
    (B,K,T*d), so that a classifier on it can tell the order of a motion ("up, back, up" from "up,
    back"), which any weighted average over time loses. An artlib option, off by default.

    ``forward(responses (B,T,K,d), semantics (B,K,d)) -> (B,K,d)``, or (B,K,T*d) for "sequence";
    :meth:`out_dim` gives that width.
    """

    def __init__(self, mode: str = "saliency", temperature: float = 1.0):
        super().__init__()
        if mode not in AGGREGATIONS:
            raise ValueError(f"mode must be one of {AGGREGATIONS}, got {mode!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.mode, self.temperature = mode, float(temperature)

    def out_dim(self, dim: int, num_frames: int) -> int:
        """Width of each aggregated tracklet for responses of width ``dim`` over ``num_frames``."""
        return dim * num_frames if self.mode == "sequence" else dim

    def forward(self, responses: Tensor, semantics: Tensor | None = None) -> Tensor:
        if self.mode == "sequence":
            if responses.dim() != 4:
                raise ValueError(
                    f"responses: expected (B,T,K,d), got shape {tuple(responses.shape)}"
                )
            return rearrange(responses, "b t k d -> b k (t d)")
        return tracklet_aggregate(responses, semantics, self.mode, self.temperature)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, temperature={self.temperature}"
