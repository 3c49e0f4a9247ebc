"""The run's model: built from the config (the one call site that turns a ``TrainConfig`` into a
model), its input contract for the loaders, and the wrappers the trainer puts around it
(DistributedDataParallel, ``torch.compile``)."""

from __future__ import annotations

import torch
from torch import nn

from artlib.engine.config import MTC_TERMS, TrainConfig

__all__ = ["build_model", "compile_model", "data_config", "unwrap", "wrap_model"]


def build_model(cfg: TrainConfig, class_names: list[str], bank=None) -> nn.Module:
    """The run's ART (or baseline) from its config: ``artlib.models.build_art`` over the model
    configuration the training config describes (the model records it: ``model.config``).
    ``bank``: a ready SemanticBank, else the config's: ``--bank FILE``, a seeded random bank
    (``--text-model random``, the small recipe's) or one built with the text encoder over the
    class names."""
    from artlib.models import build_art, model_config_from_train_config

    return build_art(model_config_from_train_config(cfg, class_names), bank=bank)


def data_config(model: nn.Module) -> dict:
    """What ``model`` expects of its input, ``{"mean", "std", ...}`` (mean/std on the 0-1 scale):
    ART's ``data_config`` (its backbone's: CLIP's for CLIP towers, 0.45/0.225 after an official
    UniFormerV2 checkpoint, ImageNet's for TEA-R50); for another module its backbone's
    ``mean``/``std`` attributes, else CLIP's."""
    from artlib.data import CLIP_MEAN, CLIP_STD

    m = unwrap(model)
    try:
        dc = dict(m.data_config)
    except (AttributeError, TypeError):  # not an ART, or a backbone that declares none
        bb = getattr(m, "backbone", m)
        dc = {"mean": getattr(bb, "mean", CLIP_MEAN), "std": getattr(bb, "std", CLIP_STD)}
    return {**dc, "mean": tuple(dc["mean"]), "std": tuple(dc["std"])}


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP and ``torch.compile`` wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    model = model.module if hasattr(model, "module") else model
    return getattr(model, "_orig_mod", model)


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """``torch.compile`` over the model's forward, losses included (``--compile MODE``); the first
    call compiles, and its time is logged by the trainer."""
    return torch.compile(model, mode=None if mode == "default" else mode)


def wrap_model(model: nn.Module, cfg: TrainConfig, device: torch.device, distributed: bool):
    """``model`` as the steps run it: under DDP on several ranks, compiled with --compile."""
    if distributed:
        kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(
            model, find_unused_parameters=_has_unused(cfg), **kw
        )
    return compile_model(model, cfg.run.compile) if cfg.run.compile else model


def _has_unused(cfg: TrainConfig) -> bool:
    """Whether some parameters get no gradient (a head part switched off): DDP must know."""
    m = cfg.model
    return (
        m.baseline
        or not m.sema_video
        or not m.sema_prot
        or m.gamma_sema == 0
        or len(m.mtc_terms) < len(MTC_TERMS)
    )
