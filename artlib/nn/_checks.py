"""Argument checks shared by the modules: errors name the argument, what was expected and what came."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def check_positive(name: str, value) -> float:
    """``value`` as a float, finite and > 0 (a temperature), else a ValueError naming ``name``."""
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return v


def check_tensor(
    name: str,
    x: object,
    dims: Sequence[str],
    *,
    sizes: dict[str, int] | None = None,
    floating: bool = True,
    finite: bool = False,
) -> Tensor:
    """Check that ``x`` is a tensor of rank ``len(dims)``; ``sizes`` pins named dims.

    >>> check_tensor("tokens", t, ("B", "T", "L", "C"), sizes={"C": 768})
    """
    legend = "(" + ", ".join(dims) + ")"
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor {legend}, got {type(x).__name__}")
    if x.dim() != len(dims):
        raise ValueError(
            f"{name} must be {legend}, got a {x.dim()}-d tensor of shape {tuple(x.shape)}"
        )
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    for dim_name, want in (sizes or {}).items():
        got = x.shape[dims.index(dim_name)]
        if got != want:
            raise ValueError(
                f"{name} must be {legend} with {dim_name} = {want}, got shape {tuple(x.shape)}"
            )
    if finite and not bool(torch.isfinite(x).all()):  # reads the answer back: a host sync
        raise ValueError(f"{name} contains NaN or inf")
    return x


def check_labels(labels: Tensor, num_classes: int, name: str = "labels") -> None:
    """Check that every class index is in [0, num_classes) (one host sync: call it on CPU batches
    or behind a debug switch)."""
    lo, hi = (int(v) for v in torch.aminmax(labels.detach()))
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} must be in [0, {num_classes}), got range [{lo}, {hi}]")


def set_check_inputs(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch the value checks (finite inputs, label range) of every submodule that has them
    (``check_inputs`` attribute, e.g. :class:`artlib.nn.ARTHead`) on or off; returns ``module``.

    >>> set_check_inputs(model, True)   # debug: a NaN or a bad label raises at once, naming it
    """
    for m in module.modules():
        if hasattr(m, "check_inputs"):
            m.check_inputs = bool(enabled)
    return module
