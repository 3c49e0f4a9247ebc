"""A small training engine for ART (torchtitan-style parts): config, distributed setup, checkpoints,
metrics, a weight EMA, logging and the train/eval loop. The example scripts are thin wrappers
around ``train``."""

from artlib.engine.checkpoint import CheckpointManager
from artlib.engine.config import TrainConfig, build_parser, config_from_args
from artlib.engine.ema import ModelEma
from artlib.engine.metrics import ConfusionMatrix

__all__ = [
    "CheckpointManager",
    "ConfusionMatrix",
    "ModelEma",
    "TrainConfig",
    "build_parser",
    "config_from_args",
]
