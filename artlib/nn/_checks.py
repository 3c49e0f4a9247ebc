"""Argument checks shared by the modules: errors name the argument, what was expected and what came."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


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
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x
