"""Backbones (frame tokens + a global token), the full ART model, and its builder.

Every backbone: ``forward(video (B,T,3,H,W)) → (tokens (B,T',L,C), cls (B,C))``, ``out_dim`` = C,
``num_tokens(H, W)`` = L, ``frames_out(T)`` = T', ``data_config(T)`` (mean, std, input size,
T -> T'), a create function (``create_<name>``) and ``init_kwargs``. ``build_art(config)`` makes
an ART or baseline model from a plain config, which the model records (``model.config``).

The names load on first use (``artlib.models.names`` needs no torch: the command lines read the
backbone names from it before torch loads).
"""

import importlib

_EXPORTS = {
    "ART": "artlib.models.art",
    "as_bank": "artlib.models.art",
    "BACKBONES": "artlib.models.registry",
    "build_art": "artlib.models.builder",
    "build_backbone": "artlib.models.registry",
    "BUILTIN_WEIGHTS": "artlib.models.registry",
    "builtin_weights": "artlib.models.registry",
    "count_parameters": "artlib.models.registry",
    "create_tea_r50": "artlib.models.registry",
    "create_tiny": "artlib.models.registry",
    "create_tiny_cnn": "artlib.models.registry",
    "create_tiny_cnn_t1": "artlib.models.registry",
    "create_uniformerv2": "artlib.models.uniformerv2_weights",
    "create_uniformerv2_b16": "artlib.models.registry",
    "create_uniformerv2_l14": "artlib.models.registry",
    "default_data_config": "artlib.models.registry",
    "GlobalUniBlock": "artlib.models.uniformerv2",
    "HEAD_OPTIONS": "artlib.models.builder",
    "list_backbones": "artlib.models.registry",
    "LocalMHRA": "artlib.models.uniformerv2",
    "LocalUniBlock": "artlib.models.uniformerv2",
    "make_bank": "artlib.models.builder",
    "model_config_from_train_config": "artlib.models.builder",
    "MotionExcitation": "artlib.models.tea",
    "MTC_TERMS": "artlib.models.builder",
    "MultipleTemporalAggregation": "artlib.models.tea",
    "param_groups": "artlib.models.art",
    "RANDOM_WEIGHTS": "artlib.weights_io",
    "TEAResNet50": "artlib.models.tea",
    "TinyConvVideoBackbone": "artlib.models.tiny",
    "TinyVideoBackbone": "artlib.models.tiny",
    "UniFormerV2": "artlib.models.uniformerv2",
    "wants_random_weights": "artlib.weights_io",
}

__all__ = sorted(_EXPORTS, key=str.lower)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'artlib.models' has no attribute {name!r}")


def __dir__():
    return __all__
