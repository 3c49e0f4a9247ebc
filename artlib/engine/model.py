"""The run's model: built from the config (the one call site that turns a ``TrainConfig`` into a
model), its input contract for the loaders, and the wrappers the trainer puts around it
(DistributedDataParallel, ``torch.compile``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from artlib.engine.config import MTC_TERMS, TrainConfig, head_options

__all__ = ["build_model", "compile_model", "data_config", "unwrap", "wrap_model"]


def _weights(value: str | None) -> str | None:
    return None if value in (None, "none") else value


def build_model(cfg: TrainConfig, class_names: list[str], bank=None) -> nn.Module:
    """Backbone + ART head (or the baseline head): the one way to build a model from a config.
    ``bank``: a ready SemanticBank, else one from ``--bank`` or built with the text encoder over
    the class names."""
    from artlib.models import ART, build_backbone
    from artlib.nn import SemanticBank
    from artlib.text import load_bank

    m = cfg.model
    kw = {} if m.backbone.startswith("tea") else {"img_size": cfg.data.crop_size}
    backbone = build_backbone(m.backbone, pretrained=_weights(m.pretrained), **kw)
    common = dict(num_frames=cfg.data.num_frames, dropout=m.dropout)
    if m.baseline:
        return ART(backbone, len(class_names), None, baseline=True, **common)
    if bank is None and m.bank:
        bank = load_bank(m.bank, momentum=m.bank_momentum, num_classes=len(class_names))
    elif bank is None and m.text_model == "random":
        # A seeded random bank: distinct, unit-norm class embeddings. Without pretrained text
        # weights a random CLIP text tower maps all class names to nearly one vector (pairwise cos
        # 0.93-0.99 measured for the 8 synthetic classes), which gives the K queries nothing to
        # tell apart; this is the small preset's bank.
        g = torch.Generator().manual_seed(cfg.run.seed)
        s0 = F.normalize(torch.randn(8, len(class_names), m.dim, generator=g), dim=-1)
        bank = SemanticBank(s0, momentum=m.bank_momentum)
    elif bank is None:
        from artlib.text import build_semantic_bank, clean_labels

        s0 = build_semantic_bank(
            clean_labels(class_names), m.text_model, pretrained=_weights(m.text_pretrained)
        )
        bank = SemanticBank(s0, momentum=m.bank_momentum)
    if bank.num_classes != len(class_names):
        raise ValueError(f"--bank has {bank.num_classes} classes, the data set {len(class_names)}")
    return ART(backbone, len(class_names), bank, **common, **head_options(cfg))


def data_config(model: nn.Module) -> dict:
    """What ``model`` expects of its input: ``{"mean", "std"}`` on the 0-1 scale, its backbone's
    (CLIP's for CLIP towers, 0.45/0.225 after an official UniFormerV2 checkpoint, ImageNet's for
    TEA-R50)."""
    from artlib.data import CLIP_MEAN, CLIP_STD

    bb = getattr(unwrap(model), "backbone", model)
    return {
        "mean": tuple(getattr(bb, "mean", CLIP_MEAN)),
        "std": tuple(getattr(bb, "std", CLIP_STD)),
    }


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
