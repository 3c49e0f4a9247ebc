"""An exponential moving average of a model's weights, evaluated in place of the trained weights.

``--model-ema DECAY`` keeps a second copy of the model whose float tensors (parameters *and*
buffers: BatchNorm statistics, ART's semantic bank) follow

    w_ema <- d w_ema + (1 - d) w,    d = min(DECAY, (1 + n) / (10 + n))

after each optimizer step n (the warm-up of ``d`` lets the average forget its random start, as in
timm's ``ModelEmaV2``); integer buffers are copied. The average, not the last step's weights, is
what is evaluated, checkpointed and written to ``backbone.pt``. It smooths the last epochs' SGD
noise; with a cosine schedule that already ends at lr 0 it changes little (within 0.002 Top-1 on
the synthetic set, README evidence section).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """The average of ``model`` (unwrapped, not DDP): ``update(model)`` after each step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--model-ema: the decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        mine = self.module.state_dict()
        averaged, current = [], []
        for name, value in model.state_dict().items():
            target = mine[name]
            if target.is_floating_point():
                averaged.append(target)
                current.append(value.detach().to(target.dtype))
            else:
                target.copy_(value)
        if averaged:  # one foreach lerp over all float tensors (fused kernels on CUDA)
            torch._foreach_lerp_(averaged, current, 1.0 - d)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
