"""The multi-level tracklet contrastive loss as a module (Sec. III-C2, Eq. 5-8)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from artlib.ops.mtc_loss import TEMPORAL_MODES, mtc_loss

__all__ = ["MTCLoss"]


class MTCLoss(nn.Module):
    """L_MTC = w_s L_spatial + w_t L_temporal + w_tr L_tracklet over responses R (B,T,K,d).

    Exactly DESIGN.md's "MTC loss" (see :mod:`artlib.ops.mtc_loss`): spatial repels the K responses
    of a frame (Eq. 5); temporal attracts a query's responses in adjacent frames up to ``lam``
    (Eq. 6; ``temporal="hinge"`` is relu(lam - cos), the reading of the text, ``"linear"`` is
    lam - mean cos, Eq. 6 with the sign that attracts); tracklet repels whole tracklets (Eq. 7).
    Terms that do not exist (K = 1, T = 1) are 0. A weight of 0 drops a term.

    ``forward(responses, return_terms=False)`` -> total, or ``(total, {"spatial", "temporal",
    "tracklet"})``.
    """

    def __init__(
        self, lam: float = 0.6, temporal: str = "hinge", weights: Sequence[float] = (1.0, 1.0, 1.0)
    ):
        super().__init__()
        if temporal not in TEMPORAL_MODES:
            raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {temporal!r}")
        weights = tuple(float(w) for w in weights)
        if len(weights) != 3 or any(w < 0 for w in weights):
            raise ValueError(f"weights must be 3 non-negative floats, got {weights!r}")
        self.lam, self.temporal, self.weights = float(lam), temporal, weights

    def forward(self, responses: Tensor, return_terms: bool = False):
        total, spatial, temporal, tracklet = mtc_loss(
            responses, self.lam, self.temporal, list(self.weights)
        )
        if return_terms:
            return total, {"spatial": spatial, "temporal": temporal, "tracklet": tracklet}
        return total

    def extra_repr(self) -> str:
        return f"lam={self.lam}, temporal={self.temporal!r}, weights={self.weights}"
