"""Export an inference model with ``torch.export``.

    ep = artlib.export(model, example_video)          # model: artlib.models.ART (or a backbone)
    ep = artlib.export("my_model")                    # a model folder or a training checkpoint
    torch.export.save(ep, "art.pt2")
    ...
    import artlib                                     # registers the artlib:: custom ops
    logits = torch.export.load("art.pt2").module()(video)

The exported graph is the eval-mode forward (``model(video) -> logits (B, N_cls)``). artlib's fused
ops stay in it as the custom ops ``artlib::region_attention`` and ``artlib::tracklet_aggregate``
(their fake implementations give the shapes), so the program runs the same kernels as eager: the
native CPU kernels, or Triton on CUDA. Loading it needs ``import artlib`` first, which registers
those ops.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

__all__ = ["export"]


def export(
    model: nn.Module | str | os.PathLike,
    example_video: Tensor | None = None,
    *,
    dynamic_batch: bool = False,
    strict: bool = False,
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` in eval mode on ``example_video`` (B, T, 3, H, W).

    model: a module, or the path of a model folder or training checkpoint (``artlib.load_model``).
    example_video: default zeros of the model's input (``model.data_config``: T, S), B = 1, or 2
    with ``dynamic_batch``.

    Returns a :class:`torch.export.ExportedProgram` whose ``module()(video)`` equals
    ``model.eval()(video)`` (the logits). ``dynamic_batch=True`` lets B vary (the example needs
    B >= 2); T, H and W stay those of the example. ``strict`` is passed to ``torch.export.export``.
    The model's train/eval mode is restored afterwards; its weights are not copied (the program
    holds references to them until it is saved).
    """
    if isinstance(model, (str, os.PathLike)):
        from artlib.api import load_model

        model = load_model(model)[0]
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be an nn.Module or a model folder / checkpoint path, got "
            f"{type(model).__name__}"
        )
    if example_video is None:
        if not hasattr(model, "data_config"):
            raise ValueError("example_video: needed for a model without a data_config")
        data = model.data_config
        size = data["input_size"][-1]
        example_video = torch.zeros(2 if dynamic_batch else 1, data["num_frames"], 3, size, size)
    if not isinstance(example_video, Tensor) or example_video.dim() != 5:
        raise ValueError(
            "example_video must be a (B, T, 3, H, W) tensor, got "
            f"{getattr(example_video, 'shape', type(example_video).__name__)}"
        )
    dynamic_shapes = None
    if dynamic_batch:
        if example_video.shape[0] < 2:
            raise ValueError(
                f"example_video: dynamic_batch needs an example with B >= 2, got B = "
                f"{example_video.shape[0]}"
            )
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(
                model, (example_video,), dynamic_shapes=dynamic_shapes, strict=strict
            )
    finally:
        model.train(was_training)
