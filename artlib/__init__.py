"""artlib: Action-Region Tracking (ART) for fine-grained video action recognition.

from artlib import RSSA, MTCLoss, ARTHead, SemanticBank, TrackletAggregation, RegionAttention
model = artlib.models.build_art(config)                # or artlib.load_model(folder or best.pt)
artlib.save_model(model, "my_model", class_names=names)  # model.safetensors + config.json
model, info = artlib.load_model("my_model")

The names load on first use, so that the command-line tools answer a misuse before torch loads.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ARTHead": "artlib.nn",
    "CheckpointError": "artlib.weights_io",
    "MTCLoss": "artlib.nn",
    "ModelInfo": "artlib.api",
    "RSSA": "artlib.nn",
    "RegionAttention": "artlib.nn.region_attention",
    "SemanticBank": "artlib.nn",
    "TrackletAggregation": "artlib.nn",
    "UnsafeCheckpointError": "artlib.weights_io",
    "build_art": "artlib.models",
    "export": "artlib.export",
    "load_model": "artlib.api",
    "load_video": "artlib.api",
    "predict_proba": "artlib.api",
    "predict_timeline": "artlib.timeline",
    "save_model": "artlib.api",
}
# the subpackages, imported on first use too: artlib.models.build_art(...) after `import artlib`
_SUBPACKAGES = ("data", "models", "nn", "ops", "text")

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"artlib.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # importing artlib.export binds the module here: the function wins
        return value
    raise AttributeError(f"module 'artlib' has no attribute {name!r}")


def __dir__():
    return __all__
