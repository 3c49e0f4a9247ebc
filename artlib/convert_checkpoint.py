"""Convert a checkpoint you trust into the safe format artlib loads (plain types only).

    python -m artlib.convert_checkpoint OLD.pt NEW.pt --trust

Unpickling ``OLD.pt`` can run any code the file carries: this is the one place in artlib that
loads a file with ``weights_only=False``, and it does so only when ``--trust`` is given. Converts

- a training checkpoint of an older artlib (NumPy and Python RNG states as objects, the config as
  a flat dict, a grad-scaler entry) into the current format (``artlib.engine.checkpoint``): it
  resumes bit-identically and loads with ``artlib.load_model``;
- any other file (e.g. a state dict saved with NumPy values or an ``argparse.Namespace``) into the
  same content in plain types: tensors, numbers, strings, lists and dicts.

``NEW.pt`` is then read back with ``weights_only=True`` to prove it loads safely.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import random
import sys
from pathlib import Path

import numpy as np
import torch

from artlib._cli import DefaultsOnce, OneLineParser

__all__ = ["convert", "main"]


def _plain(value, where: str):
    """``value`` in types the safe unpickler accepts; TypeError names the entry that has none."""
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, (list, set, frozenset)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, argparse.Namespace):
        return _plain(vars(value), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), where)
    raise TypeError(
        f"{where}: a {type(value).__module__}.{type(value).__qualname__} has no plain form; "
        "convert it yourself or drop it"
    )


def _rng(state: dict) -> dict:
    """An old RNG entry (python's tuple, numpy's tuple with an array) -> the safe dict."""
    from artlib.engine.checkpoint import capture_rng

    if isinstance(state.get("python"), dict):  # already the safe form
        return _plain(state, "rng")
    saved_py, saved_np = random.getstate(), np.random.get_state()
    try:  # set the old states, read them back in the safe form
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        safe = capture_rng()
    finally:
        random.setstate(saved_py)
        np.random.set_state(saved_np)
    safe["torch"] = state["torch"]
    safe.pop("cuda", None)
    if "cuda" in state:
        safe["cuda"] = list(state["cuda"])
    return safe


def _training_checkpoint(old: dict) -> dict:
    import artlib
    from artlib.engine.checkpoint import (
        FORMAT,
        FORMAT_VERSION,
        config_from_dict,
        config_to_dict,
        describe_model,
    )

    cfg = config_from_dict(_plain(old["config"], "config"))  # nested, or the earlier flat one
    names = [str(n) for n in old["class_names"]]
    preprocess, info = describe_model(cfg, names)
    new = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "artlib_version": artlib.__version__,
        "epoch": int(old["epoch"]),
        "best_top1": float(old.get("best_top1", 0.0)),
        "model": old["model"],
        "model_ema": old.get("model_ema"),
        "optimizer": old["optimizer"],
        "scheduler": old["scheduler"],
        "rng": _rng(old["rng"]),
        "config": config_to_dict(cfg),
        "class_names": names,
        "preprocess": preprocess,
        "model_info": info,
    }
    return _plain(new, "checkpoint")


def convert(old_path: str | os.PathLike, new_path: str | os.PathLike) -> str:
    """Convert ``old_path`` (trusted: it is unpickled without restrictions) to ``new_path``;
    returns what it was ("training checkpoint" or "other file")."""
    from artlib._io import atomic_save_torch
    from artlib.engine.checkpoint import FORMAT

    old = torch.load(old_path, map_location="cpu", weights_only=False)  # trusted by the caller
    training = isinstance(old, dict) and {"model", "optimizer", "epoch", "config"} <= set(old)
    if training and old.get("format") != FORMAT:
        new, kind = _training_checkpoint(old), "training checkpoint"
    else:
        new, kind = _plain(old, "file"), "file"
    atomic_save_torch(new, new_path)
    torch.load(new_path, map_location="cpu", weights_only=True)  # proves it now loads safely
    return kind


def main(argv=None) -> int:
    p = OneLineParser(
        prog="python -m artlib.convert_checkpoint",
        formatter_class=DefaultsOnce,
        description="Convert a trusted checkpoint into the safe format (unpickles OLD fully).",
    )
    p.add_argument("old", metavar="OLD", help="the checkpoint to convert (you trust its origin)")
    p.add_argument("new", metavar="NEW", help="where to write the converted file")
    p.add_argument(
        "--trust",
        action="store_true",
        help="required: unpickling OLD can run code it carries; say you trust where it comes from",
    )
    args = p.parse_args(argv)
    if not args.trust:
        p.error(
            f"loading {args.old} unpickles it without restrictions, which runs any code it "
            "carries: pass --trust if you trust where it comes from"
        )
    if not Path(args.old).is_file():
        p.error(f"OLD: no file at {args.old}")
    if Path(args.new).resolve() == Path(args.old).resolve():
        p.error("NEW must differ from OLD (the original is kept)")
    if not Path(args.new).resolve().parent.is_dir():
        p.error(f"NEW: no folder {Path(args.new).resolve().parent}")
    from artlib._io import torch_load_reason

    try:
        kind = convert(args.old, args.new)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:  # torch.load's
        reason = torch_load_reason(e)
        print(
            f"error: OLD: {args.old} cannot be read as a torch.save file ({reason})",
            file=sys.stderr,
        )
        return 1
    except (TypeError, KeyError, ValueError) as e:
        print(f"error: {args.old}: {torch_load_reason(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the original is untouched; NEW is written atomically
        print("interrupted", file=sys.stderr)
        return 130
    print(f"wrote {args.new}: the {kind} of {args.old} in plain types (loads with weights_only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
