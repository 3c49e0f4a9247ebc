"""A small training engine for ART, in parts that each read alone (torchtitan's habit): the
config and its command line (``config``, ``cli``), the data (``data``), the model's construction
and wrappers (``model``), the optimizer and schedule (``optim``), checkpoints (``checkpoint``:
``Checkpointer``), logs (``logs``), exact evaluation (``evaluation``), a weight EMA (``ema``),
distributed setup (``distributed``) and the ``Trainer`` that runs the epochs (``trainer``).
``examples/train_finegym.py`` assembles them; ``artlib-train`` runs ``trainer.train(cfg)``.
Imports are lazy: the command line answers before torch loads."""

import importlib

_EXPORTS = {
    "CheckpointManager": "artlib.engine.checkpoint",
    "Checkpointer": "artlib.engine.checkpoint",
    "EvalResult": "artlib.engine.evaluation",
    "evaluate": "artlib.engine.evaluation",
    "ModelEma": "artlib.engine.ema",
    "TrainConfig": "artlib.engine.config",
    "config_from_dict": "artlib.engine.config",
    "config_to_dict": "artlib.engine.config",
    "Trainer": "artlib.engine.trainer",
    "train": "artlib.engine.trainer",
    "build_items": "artlib.engine.data",
    "build_loaders": "artlib.engine.data",
    "build_model": "artlib.engine.model",
    "data_config": "artlib.engine.model",
    "build_optimizer": "artlib.engine.optim",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'artlib.engine' has no attribute {name!r}")
