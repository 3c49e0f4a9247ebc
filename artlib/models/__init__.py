"""Backbones (frame tokens + a global token) and the full ART model.

Every backbone: ``forward(video (B,T,3,H,W)) → (tokens (B,T',L,C), cls (B,C))``, ``out_dim`` = C,
``num_tokens(H, W)`` = L, ``frames_out(T)`` = T'. Imports need only torch, einops and numpy.
"""

from artlib.models.art import ART, as_bank
from artlib.models.checkpoint import RANDOM_WEIGHTS, wants_random_weights
from artlib.models.registry import (
    BACKBONES,
    BUILTIN_WEIGHTS,
    build_backbone,
    builtin_weights,
    count_parameters,
    list_backbones,
)
from artlib.models.tea import MotionExcitation, MultipleTemporalAggregation, TEAResNet50
from artlib.models.tiny import TinyConvVideoBackbone, TinyVideoBackbone
from artlib.models.uniformerv2 import GlobalUniBlock, LocalMHRA, LocalUniBlock, UniFormerV2

__all__ = [
    "ART",
    "BACKBONES",
    "BUILTIN_WEIGHTS",
    "GlobalUniBlock",
    "LocalMHRA",
    "LocalUniBlock",
    "MotionExcitation",
    "MultipleTemporalAggregation",
    "RANDOM_WEIGHTS",
    "TEAResNet50",
    "TinyConvVideoBackbone",
    "TinyVideoBackbone",
    "UniFormerV2",
    "as_bank",
    "build_backbone",
    "builtin_weights",
    "count_parameters",
    "list_backbones",
    "wants_random_weights",
]
