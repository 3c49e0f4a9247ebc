"""Training checkpoints: a self-describing format that loads without running code, written
atomically, keeping the last ``keep`` and the best.

**The format** (``format_version`` 1) is a dict of plain types only — tensors, numbers, strings,
``None``, lists, tuples and dicts — so ``torch.load(path, weights_only=True)`` reads it and
unpickling it can never run code::

    {"format": "artlib.checkpoint", "format_version": 1, "artlib_version": str,
     "epoch": int, "best_top1": float,
     "model": state_dict, "model_ema": {"module": state_dict, "updates", "decay"} | None,
     "optimizer": state_dict, "scheduler": state_dict,
     "rng": {"python": {...}, "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor, ...]},
     "config": config_to_dict(cfg), "class_names": [str, ...],
     "preprocess": {"num_frames", "crop_size", "mean", "std", "sampling", "num_clips"},
     "model_info": {"backbone", "baseline", "num_classes", "num_frames", "dropout", "head"},
     "model_config": model.config}   # the model's own config: artlib.models.build_art rebuilds it

Python's and NumPy's RNG states are stored as tensors and numbers (``capture_rng``) and turned back
into their own types on resume (``restore_rng``). Every checkpoint in artlib is read through
:func:`load_checkpoint` (``artlib.weights_io``, below the engine, so a model loads without it); a file that needs anything more (a pickled object of some class, a NumPy
array, ...) is refused with :class:`UnsafeCheckpointError`, which names the file, what it asked for
and the command that converts a file you trust: ``python -m artlib.convert_checkpoint OLD NEW
--trust``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from artlib._io import atomic_save_torch, atomic_write
from artlib.engine.config import (
    RESUME_FIXED,
    _plain,
    config_from_dict,
    config_to_dict,
    head_options,
    with_absent,
)
from artlib.engine.model import data_config
from artlib.weights_io import (  # the safe reader, below the engine (artlib.load_model uses it)
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    unsafe_globals,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointWriteError",
    "Checkpointer",
    "UnsafeCheckpointError",
    "backbone_normalization",
    "capture_rng",
    "config_from_dict",
    "config_to_dict",
    "describe_model",
    "load_checkpoint",
    "restore_rng",
    "training_state",
    "unsafe_globals",
]

_NAME = re.compile(r"^checkpoint_epoch(\d+)\.pt$")
log = logging.getLogger("artlib.train")


# ------------------------------------------------------------------------------ config
def backbone_normalization(model) -> tuple[tuple, tuple]:
    """(mean, std) on the 0-1 scale that ``model``'s backbone expects (``data_config``)."""
    dc = data_config(model)
    return dc["mean"], dc["std"]


def describe_model(cfg, class_names: list[str], normalization=None) -> tuple[dict, dict]:
    """-> (preprocess, model_info) of a run's config: what a user of the checkpoint needs to feed
    the model and what it is. ``normalization``: the (mean, std) the run fed its backbone (its
    ``data_config``); CLIP's when not given (what earlier runs used)."""
    from artlib.data import CLIP_MEAN, CLIP_STD

    mean, std = normalization if normalization is not None else (CLIP_MEAN, CLIP_STD)
    d, m = cfg.data, cfg.model
    preprocess = {
        "num_frames": int(d.num_frames),
        "crop_size": int(d.crop_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "sampling": "tsn",  # T segment centres in evaluation (artlib.data.sampling)
        "num_clips": int(d.eval_clips),
    }
    info = {
        "backbone": m.backbone,
        "baseline": bool(m.baseline),
        "num_classes": len(class_names),
        "num_frames": int(d.num_frames),
        "dropout": float(m.dropout),
        "head": None if m.baseline else _plain(head_options(cfg)),
    }
    return preprocess, info


# ------------------------------------------------------------------------------------ RNG
def capture_rng() -> dict:
    """The RNG states of python, numpy, torch (and CUDA) as tensors, numbers and strings."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Set the RNGs from :func:`capture_rng`'s dict (CUDA's when both have it)."""
    py, nps = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    keys = nps["keys"].numpy().astype(np.uint32)
    np.random.set_state((nps["name"], keys, nps["pos"], nps["has_gauss"], nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------- writing
# every file is written to a temporary file beside it and renamed (artlib._io): a reader, or a run
# killed mid-write, sees the old file or the whole new one
def training_state(
    *, cfg, class_names, model, ema, optimizer, scheduler, epoch: int, best_top1: float
) -> dict:
    """The checkpoint dict of a run after ``epoch`` epochs (module docstring)."""
    import artlib

    preprocess, info = describe_model(cfg, class_names, backbone_normalization(model))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "artlib_version": artlib.__version__,
        "epoch": int(epoch),
        "best_top1": float(best_top1),
        "model": model.state_dict(),
        "model_ema": None if ema is None else ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng(),
        "config": config_to_dict(cfg),
        "class_names": [str(n) for n in class_names],
        "preprocess": preprocess,
        "model_info": info,
        "model_config": _plain(model.config) if hasattr(type(model), "config") else None,
    }


class CheckpointWriteError(OSError):
    """A checkpoint (or ``best.pt``) could not be written; the message is one line."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "checkpoint write failed"


class CheckpointManager:
    """``checkpoint_epoch{N}.pt`` files in ``directory`` (the newest ``keep`` kept) and
    ``best.pt``."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def path(self, epoch: int) -> Path:
        return self.directory / f"checkpoint_epoch{epoch:04d}.pt"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pt"

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

    def save(self, state: dict, epoch: int, best: bool = False) -> Path:
        """Write epoch ``epoch``'s checkpoint (and, when ``best``, the same as ``best.pt``).
        :class:`CheckpointWriteError` (one line) when the disk is full or not writable: the
        earlier files are intact (every write goes to a temporary file, then is renamed)."""
        target = self.path(epoch)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            final = atomic_save_torch(state, target)
            if best:  # the same bytes: copy the file instead of serialising the state again
                target = self.best_path
                with open(final, "rb") as src, atomic_write(self.best_path, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 << 20)
        except OSError as e:
            why = e.strerror or str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointWriteError(
                f"cannot write {target} ({why}); the earlier checkpoints are intact: free space "
                "or pick another --output-dir, then --resume auto"
            ) from None
        for _, old in self.list()[: -self.keep]:
            old.unlink(missing_ok=True)
        return final

    def load(self, path: str | os.PathLike | None = None, map_location="cpu") -> dict | None:
        """Load ``path``, or the latest checkpoint here when ``path`` is None or "auto" (None when
        there is none), through :func:`load_checkpoint`."""
        if path in (None, "auto"):
            path = self.latest()
            if path is None:
                return None
        return load_checkpoint(path, map_location=map_location, what="--resume")


class Checkpointer:
    """A run's stateful parts, saved and resumed together: the model (unwrapped), the optimizer,
    the scheduler, the weight EMA (or None), the epoch, the best validation Top-1 and the RNGs.

        ckpt = Checkpointer(out / "checkpoints", cfg=cfg, class_names=names, model=model,
                            optimizer=opt, scheduler=sched, ema=ema, keep=3)
        start_epoch, best = ckpt.resume("auto")     # (0, 0.0) when there is nothing to resume
        ckpt.save(epoch, best_top1, best=is_best)
    """

    def __init__(
        self, directory, *, cfg, class_names, model, optimizer, scheduler, ema=None, keep: int = 3
    ):
        self.files = CheckpointManager(directory, keep=keep)
        self.cfg, self.class_names = cfg, list(class_names)
        self.model, self.optimizer, self.scheduler, self.ema = model, optimizer, scheduler, ema

    @property
    def best_path(self) -> Path:
        return self.files.best_path

    def save(self, epoch: int, best_top1: float, best: bool = False) -> Path:
        """Write the parts after ``epoch`` epochs (and ``best.pt`` when ``best``)."""
        state = training_state(
            cfg=self.cfg,
            class_names=self.class_names,
            model=self.model,
            ema=self.ema,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            epoch=epoch,
            best_top1=best_top1,
        )
        return self.files.save(state, epoch, best=best)

    def resume(self, path: str | os.PathLike | None) -> tuple[int, float]:
        """Load every part from ``path`` ("auto": the newest readable checkpoint here, skipping
        an unreadable newer one with a warning; None: nothing) -> (the epoch to start from, the
        best Top-1 so far); (0, 0.0) when there is nothing to resume.

        The checkpoint's config is compared with this run's (``rundir.resume_diff``): an option
        that defines the model or the data refuses with one line (:class:`RunFolderError`);
        the others (lr, epochs, weight decay, ...) are applied: the optimizer's groups take this
        run's lr and weight decay and the schedule its base lrs, at the resumed epoch's factor.
        ``self.changes``: ``{dotted key: (saved, new)}`` of what changed."""
        from artlib.engine.rundir import (
            RunFolderError,
            newest_intact_checkpoint,
            resume_diff,
        )

        self.changes: dict = {}
        if path is None:
            return 0, 0.0
        if path == "auto":
            found = newest_intact_checkpoint(
                self.files.directory,
                lambda p: load_checkpoint(p, map_location="cpu", what="--resume auto"),
                warn=log.warning,
            )
            if found is None:
                log.info("--resume auto: no checkpoint in %s, starting fresh", self.files.directory)
                return 0, 0.0
            path, state = found
        else:  # weights_only: never runs code
            state = self.files.load(path, map_location="cpu")
        self.changes = resume_diff(
            with_absent(state.get("config") or {}),
            config_to_dict(self.cfg),
            RESUME_FIXED,
            flag=_flags(),
            ignore=("run.resume", "run.overwrite"),
        )
        if state["class_names"] != self.class_names:
            raise RunFolderError(
                f"--resume: the checkpoint was trained on {len(state['class_names'])} classes "
                f"({_names(state['class_names'])}), this run's data has {len(self.class_names)} "
                f"({_names(self.class_names)}); a resumed run keeps the classes: start a new "
                "--output-dir"
            )
        fresh = [dict(g) for g in self.optimizer.param_groups]  # built from this run's config
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if any(k.startswith("optim.") for k in self.changes):
            self._apply_optim(fresh)
        restore_rng(state["rng"])
        if self.ema is not None:
            self._resume_ema(state.get("model_ema"))
        log.info("resumed from epoch %d (%s)", state["epoch"], path)
        if self.changes:
            flags = _flags()
            log.info(
                "resume: applied %s",
                ", ".join(
                    f"{flags.get(k, k)} {a!r} -> {b!r}" for k, (a, b) in self.changes.items()
                ),
            )
        return state["epoch"], state.get("best_top1", 0.0)

    def _apply_optim(self, fresh: list[dict]) -> None:
        """This run's lr, weight decay and momentum into the loaded optimizer and schedule: each
        group's ``initial_lr`` and the schedule's ``base_lrs`` from the groups built from this
        run's config, its ``lr`` at the schedule's factor for the resumed epoch."""
        sched = self.scheduler
        lambdas = getattr(sched, "lr_lambdas", None)
        for i, (g, f) in enumerate(zip(self.optimizer.param_groups, fresh)):
            base = f.get("initial_lr", f["lr"])
            if lambdas is not None:
                g["lr"] = base * lambdas[min(i, len(lambdas) - 1)](sched.last_epoch)
            elif g.get("initial_lr"):
                g["lr"] = base * g["lr"] / g["initial_lr"]
            else:
                g["lr"] = base
            g["initial_lr"] = base
            for key in ("weight_decay", "momentum"):
                if key in f and key in g:
                    g[key] = f[key]
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        if hasattr(sched, "_last_lr"):
            sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _resume_ema(self, saved: dict | None) -> None:
        if saved is not None:
            self.ema.load_state_dict(saved)
            return
        # a checkpoint from a run without --model-ema: the average starts from the resumed weights
        log.warning("--model-ema: the checkpoint has no average; starting it from here")
        self.ema.module.load_state_dict(self.model.state_dict())
        self.ema.updates = 0


def _flags() -> dict[str, str]:
    """{dotted key: command-line flag} of every trainer option."""
    from artlib.engine.config import options

    return {o.key: o.flag for o in options()}


def _names(names: list[str], shown: int = 4) -> str:
    head = ", ".join(map(str, names[:shown]))
    return head + (f", ... {len(names) - shown} more" if len(names) > shown else "")
