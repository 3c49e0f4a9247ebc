"""The optimizer and its schedule: SGD (the paper's) or AdamW over four parameter groups, a
per-epoch LambdaLR (step or cosine, with a linear warm-up), and the lr of the global batch.

**The lr and the global batch.** The global batch is ``--batch-size`` x ranks x
``--accum-steps``. With ``--lr-scale none`` (the default) ``--lr`` is used as given, whatever the
global batch. With ``--lr-scale linear`` ``--lr`` is the lr of a global batch of 24 (the paper's:
4 GPUs x 6) and is scaled by ``global batch / 24`` (the linear scaling rule of Goyal et al.).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from artlib.engine.config import REFERENCE_BATCH, TrainConfig

__all__ = ["build_optimizer", "effective_lr", "global_batch", "lr_factor"]


def global_batch(cfg: TrainConfig, world_size: int = 1) -> int:
    """Videos per optimizer step over all ranks."""
    return cfg.optim.batch_size * world_size * cfg.optim.accum_steps


def effective_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """The lr the optimizer starts from: ``--lr``, scaled with ``--lr-scale linear``."""
    o = cfg.optim
    if o.lr_scale == "linear":
        return o.lr * global_batch(cfg, world_size) / REFERENCE_BATCH
    return o.lr


def build_optimizer(cfg: TrainConfig, model: nn.Module, world_size: int = 1):
    """-> (optimizer, scheduler). SGD or AdamW over four groups: (backbone | head) x (decayed |
    not: biases, norms, the bank's agent). The backbone's groups run at ``lr *
    backbone_lr_mult``; the schedule (stepped once per epoch) scales all."""
    from artlib.models.art import param_groups

    o = cfg.optim
    lr = effective_lr(cfg, world_size)
    groups = param_groups(model, lr, o.backbone_lr_mult, o.weight_decay)
    if o.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=o.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, cfg))
    return opt, sched


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """The lr multiplier for ``epoch`` (0-based; the scheduler steps once per epoch)."""
    o = cfg.optim
    if epoch < o.warmup_epochs:
        return 0.1 + 0.9 * epoch / o.warmup_epochs
    if o.lr_schedule == "cosine":
        span = max(1, o.epochs - o.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - o.warmup_epochs) / span))
    return o.lr_gamma ** (epoch // o.lr_step)
