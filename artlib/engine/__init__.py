"""A small training engine for ART (torchtitan-style parts): config, distributed setup, checkpoints,
metrics, a weight EMA, logging and the train/eval loop. The example scripts are thin wrappers
around ``artlib.engine.cli.main``. Imports are lazy: the command line answers before torch loads."""

import importlib

_EXPORTS = {
    "CheckpointManager": "artlib.engine.checkpoint",
    "EvalResult": "artlib.engine.evaluation",
    "evaluate": "artlib.engine.evaluation",
    "ModelEma": "artlib.engine.ema",
    "TrainConfig": "artlib.engine.config",
    "config_from_dict": "artlib.engine.config",
    "config_to_dict": "artlib.engine.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'artlib.engine' has no attribute {name!r}")
