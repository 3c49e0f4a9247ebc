"""A small training engine for ART (torchtitan-style parts): config, distributed setup, checkpoints,
metrics, logging and the train/eval loop. The example scripts are thin wrappers around ``train``."""

from artlib.engine.checkpoint import CheckpointManager
from artlib.engine.config import TrainConfig, build_parser, config_from_args
from artlib.engine.metrics import ConfusionMatrix

__all__ = [
    "CheckpointManager",
    "ConfusionMatrix",
    "TrainConfig",
    "build_parser",
    "config_from_args",
]
