"""artlib: Action-Region Tracking (ART) for fine-grained video action recognition.

from artlib import RSSA, MTCLoss, ARTHead, SemanticBank, TrackletAggregation, RegionAttention
model, info = artlib.load_model("runs/synthetic/checkpoints/best.pt")   # a trained checkpoint

The names load on first use, so that the command-line tools answer a misuse before torch loads.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ARTHead": "artlib.nn",
    "MTCLoss": "artlib.nn",
    "RSSA": "artlib.nn",
    "RegionAttention": "artlib.nn.region_attention",
    "SemanticBank": "artlib.nn",
    "TrackletAggregation": "artlib.nn",
    "export": "artlib.export",
    "load_model": "artlib.api",
    "load_video": "artlib.api",
    "predict_proba": "artlib.api",
    "predict_timeline": "artlib.timeline",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # importing artlib.export binds the module here: the function wins
        return value
    raise AttributeError(f"module 'artlib' has no attribute {name!r}")


def __dir__():
    return __all__
