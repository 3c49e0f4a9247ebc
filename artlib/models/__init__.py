"""Backbones (frame tokens + a global token), the full ART model, and its builder.

Every backbone: ``forward(video (B,T,3,H,W)) → (tokens (B,T',L,C), cls (B,C))``, ``out_dim`` = C,
``num_tokens(H, W)`` = L, ``frames_out(T)`` = T', ``data_config(T)`` (mean, std, input size,
T -> T'), a create function (``create_<name>``) and ``init_kwargs``. ``build_art(config)`` makes
an ART or baseline model from a plain config, which the model records (``model.config``).
"""

from artlib.models.art import ART, as_bank, param_groups
from artlib.models.builder import (
    HEAD_OPTIONS,
    MTC_TERMS,
    build_art,
    make_bank,
    model_config_from_train_config,
)
from artlib.models.registry import (
    BACKBONES,
    BUILTIN_WEIGHTS,
    build_backbone,
    builtin_weights,
    count_parameters,
    create_tea_r50,
    create_tiny,
    create_tiny_cnn,
    create_tiny_cnn_t1,
    create_uniformerv2_b16,
    create_uniformerv2_l14,
    default_data_config,
    list_backbones,
)
from artlib.models.tea import MotionExcitation, MultipleTemporalAggregation, TEAResNet50
from artlib.models.tiny import TinyConvVideoBackbone, TinyVideoBackbone
from artlib.models.uniformerv2 import GlobalUniBlock, LocalMHRA, LocalUniBlock, UniFormerV2
from artlib.models.uniformerv2_weights import create_uniformerv2
from artlib.weights_io import RANDOM_WEIGHTS, wants_random_weights

__all__ = [
    "ART",
    "BACKBONES",
    "BUILTIN_WEIGHTS",
    "GlobalUniBlock",
    "HEAD_OPTIONS",
    "LocalMHRA",
    "LocalUniBlock",
    "MTC_TERMS",
    "MotionExcitation",
    "MultipleTemporalAggregation",
    "RANDOM_WEIGHTS",
    "TEAResNet50",
    "TinyConvVideoBackbone",
    "TinyVideoBackbone",
    "UniFormerV2",
    "as_bank",
    "build_art",
    "build_backbone",
    "builtin_weights",
    "count_parameters",
    "create_tea_r50",
    "create_tiny",
    "create_tiny_cnn",
    "create_tiny_cnn_t1",
    "create_uniformerv2",
    "create_uniformerv2_b16",
    "create_uniformerv2_l14",
    "default_data_config",
    "list_backbones",
    "make_bank",
    "model_config_from_train_config",
    "param_groups",
    "wants_random_weights",
]
