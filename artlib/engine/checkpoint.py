"""Checkpoints that survive a kill: written to a temporary file in the same folder, flushed and
fsynced, then renamed over the final name (atomic on POSIX), keeping the last ``keep``.

A checkpoint holds everything a resumed run needs to continue as if never stopped: model (including
the bank's S and S^a), optimizer, scheduler, grad scaler, the ``--model-ema`` average, RNG states
(python, numpy, torch, CUDA), epoch and step.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

__all__ = ["CheckpointManager", "atomic_save", "capture_rng", "restore_rng"]

_NAME = re.compile(r"^checkpoint_epoch(\d+)\.pt$")


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file beside ``path``, fsync, rename: a reader (or a run killed
    mid-write) sees the old file or the whole new one, never half of it."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Save/load ``checkpoint_epoch{N}.pt`` files in ``directory``, keeping the newest ``keep``."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def path(self, epoch: int) -> Path:
        return self.directory / f"checkpoint_epoch{epoch:04d}.pt"

    def list(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1][1] if found else None

    def save(self, state: dict, epoch: int) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = atomic_save(state, self.path(epoch))
        for _, old in self.list()[: -self.keep]:
            old.unlink(missing_ok=True)
        return final

    def load(self, path: str | os.PathLike | None = None, map_location="cpu") -> dict | None:
        """Load ``path``, or the latest checkpoint here when ``path`` is None or "auto"."""
        if path in (None, "auto"):
            path = self.latest()
            if path is None:
                return None
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint file at {path}")
        return torch.load(path, map_location=map_location, weights_only=False)
