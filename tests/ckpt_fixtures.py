"""Shared by the checkpoint, evaluate and predict tests: a tiny ART checkpoint written without
training, generated videos, a broken one, and a checkpoint whose unpickling would run code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["limb up once", "limb down once", "limb left once", "limb right once"]


def tiny_config(**changes):
    """The synthetic preset at tiny sizes; ``changes``: {"section.name": value}."""
    from artlib.engine.config import config_from_dict

    values = {
        "preset": "synthetic",
        "model.backbone": "tiny_cnn",
        "model.pretrained": "none",
        "model.text_model": "random",
        "data.num_frames": 4,
        "data.crop_size": 32,
        "model.dim": 32,
        "model.heads": 2,
        "model.se_layers": 1,
        "model.act_layers": 1,
        "model.dropout": 0.0,
        "model.aggregation": "sequence",
        "optim.optimizer": "adamw",
        "optim.lr": 1e-3,
        "optim.epochs": 2,
        "run.seed": 3,
        "synthetic.classes": 4,
    }
    values.update(changes)
    nested: dict = {}
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        (nested.setdefault(section, {}) if section else nested)[name] = value
    return config_from_dict(nested, partial=True)


def tiny_model_config(bank_seed: int = 1, **changes) -> dict:
    """A small build_art config (tiny_cnn at 32x32, T = 4, 4 classes), with ``changes`` on top."""
    cfg = {
        "backbone": "tiny_cnn",
        "backbone_kwargs": {"img_size": 32, "width": 32},
        "num_classes": 4,
        "num_frames": 4,
        "dropout": 0.0,
        "head": {"dim": 32, "heads": 2, "se_layers": 1, "act_layers": 1, "aggregation": "sequence"},
        "bank": {"shape": [3, 4, 32], "init": "random", "seed": bank_seed, "momentum": 0.9},
    }
    return {**cfg, **changes}


def make_checkpoint(path, *, ema: float | None = None, steps: int = 1, baseline: bool = False):
    """Build the tiny model, take ``steps`` optimizer steps on random clips (so the EMA and the
    optimizer state are not trivial), write a checkpoint at ``path``. -> (model, ema or None)."""
    from artlib._io import atomic_save_torch
    from artlib.engine.checkpoint import training_state
    from artlib.engine.ema import ModelEma
    from artlib.engine.trainer import build_model, build_optimizer

    cfg = tiny_config(**{"model.baseline": baseline})
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg, CLASSES)
    opt, sched = build_optimizer(cfg, model)
    average = ModelEma(model, ema) if ema else None
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        t, size = cfg.data.num_frames, cfg.data.crop_size
        video = torch.randn(2, t, 3, size, size, generator=g)
        _, losses = model(video, torch.tensor([0, 2]))
        losses["total"].backward()
        opt.step()
        opt.zero_grad()
        model.ema_update()
        if average is not None:
            average.update(model)
    sched.step()
    state = training_state(
        cfg=cfg,
        class_names=CLASSES,
        model=model,
        ema=average,
        optimizer=opt,
        scheduler=sched,
        epoch=1,
        best_top1=0.5,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_save_torch(state, path)
    return model.eval(), average


def write_clips(folder, labels, size=32, frames=8, broken=()):
    """One generated video per label (``clip{i}.mp4``); the indices in ``broken`` get a file of
    garbage bytes instead. Writes ``folder/list.txt`` ('<name> <label>' lines) -> its path."""
    from artlib.data._write import write_video
    from artlib.data.synthetic import render_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, label in enumerate(labels):
        path = folder / f"clip{i}.mp4"
        if i in broken:
            path.write_bytes(b"\x00not a video\x00" * 64)
        else:
            rng = np.random.default_rng(100 + i)
            write_video(str(path), render_clip(label, rng, frames, (size, size))[0], fps=16)
        lines.append(f"{path.name} {label}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def write_crafted(path, marker) -> Path:
    """A torch.save file whose unpickling would create ``marker`` (os.system)."""
    code = (
        "import os, sys, torch\n"
        "class Payload:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ('touch {marker}',))\n"
        "torch.save({'format': 'artlib.checkpoint', 'format_version': 1, 'model': {},\n"
        "            'epoch': 1, 'x': Payload()}, sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)
    return Path(path)


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
