"""The backbones by name: each has a create function (``create_<name>(pretrained=None, **kwargs)``)
and declares its input (``backbone.data_config(T)``: mean, std, input size, T -> T').

``build_backbone(name, pretrained=None, **kwargs)`` calls the create function and stamps the
module with ``backbone_name``, so that a model built on it can describe (and rebuild) itself.
"""

from __future__ import annotations

import os
from importlib import resources

import torch
from torch import nn

from artlib.models.names import PACKAGED_WEIGHTS
from artlib.models.tea import TEAResNet50
from artlib.models.tiny import TinyConvVideoBackbone, TinyVideoBackbone
from artlib.models.uniformerv2_weights import create_uniformerv2
from artlib.weights_io import load_state_dict_file, weights_source

BUILTIN_WEIGHTS = PACKAGED_WEIGHTS  # (backbone, tag) -> (file, the constructor arguments they fit)


def _key(name: str) -> str:
    return name.lower().replace("-", "_").replace("/", "")


def builtin_weights(name: str, tag: str) -> str:
    """The path of the packaged weights ``tag`` of backbone ``name``; ValueError if none."""
    if (_key(name), tag) not in BUILTIN_WEIGHTS:
        known = [f"{b}:{t}" for b, t in BUILTIN_WEIGHTS]
        raise ValueError(f"pretrained: no packaged weights {tag!r} for {name!r}; packaged: {known}")
    return str(resources.files("artlib.models") / "weights" / BUILTIN_WEIGHTS[_key(name), tag][0])


def _require_file(pretrained) -> str:
    path = os.path.expanduser(os.fspath(pretrained))
    if not os.path.isfile(path):
        packaged = [f"{b}:{t}" for b, t in BUILTIN_WEIGHTS if t == path]
        hint = f" ({path!r} is the packaged weights of {packaged} only)" if packaged else ""
        raise FileNotFoundError(f"pretrained: checkpoint file not found: {path!r}{hint}")
    return path


# ---------------------------------------------------------------------- the create functions
def create_tiny(pretrained=None, **kwargs) -> TinyVideoBackbone:
    """:class:`TinyVideoBackbone`; pretrained: a state dict file saved from it."""
    model = TinyVideoBackbone(**kwargs)
    if weights_source(pretrained) is not None:
        model.load_state_dict(load_state_dict_file(_require_file(pretrained))[0])
    return model


def _tiny_cnn(name: str, pretrained, kwargs: dict) -> TinyConvVideoBackbone:
    model = TinyConvVideoBackbone(**kwargs)
    pretrained = weights_source(pretrained)
    if pretrained is None:
        return model
    if ("tiny_cnn", pretrained) in BUILTIN_WEIGHTS:
        fits = BUILTIN_WEIGHTS["tiny_cnn", pretrained][1]
        got = {"width": model.out_dim, "img_size": model.img_size}
        got["temporal_layers"] = len(model.temporal)
        if got != fits or name != "tiny_cnn":
            raise ValueError(
                f"pretrained: the packaged {pretrained!r} weights are tiny_cnn with width "
                f"{fits['width']}, img_size {fits['img_size']} and "
                f"{fits['temporal_layers']} temporal layers; got {name} with width "
                f"{got['width']}, img_size {got['img_size']}, {got['temporal_layers']} "
                f"temporal layers (--crop-size {fits['img_size']}, or --pretrained none)"
            )
        pretrained = builtin_weights("tiny_cnn", pretrained)
    model.load_state_dict(load_state_dict_file(_require_file(pretrained))[0])
    return model


def create_tiny_cnn(pretrained=None, **kwargs) -> TinyConvVideoBackbone:
    """:class:`TinyConvVideoBackbone`; pretrained: a state dict file saved from it, or the
    packaged tag "synthetic" (``BUILTIN_WEIGHTS``, with the constructor arguments it fits)."""
    return _tiny_cnn("tiny_cnn", pretrained, kwargs)


def create_tiny_cnn_t1(pretrained=None, **kwargs) -> TinyConvVideoBackbone:
    """:class:`TinyConvVideoBackbone` with one 3x3x3 conv (each token sees 3 frames only);
    pretrained: a state dict file saved from it."""
    kwargs.setdefault("temporal_layers", 1)
    return _tiny_cnn("tiny_cnn_t1", pretrained, kwargs)


def create_uniformerv2_b16(pretrained=None, **kwargs) -> nn.Module:
    """UniFormerV2-B/16 (``create_uniformerv2("b16", ...)``): pretrained an official,
    mmaction2 or CLIP file, or an open_clip tag in the local cache."""
    return create_uniformerv2("b16", pretrained, **kwargs)


def create_uniformerv2_l14(pretrained=None, **kwargs) -> nn.Module:
    """UniFormerV2-L/14 (``create_uniformerv2("l14", ...)``)."""
    return create_uniformerv2("l14", pretrained, **kwargs)


def create_tea_r50(pretrained=None, **kwargs) -> TEAResNet50:
    """:class:`TEAResNet50`; pretrained: a torchvision ResNet-50 ImageNet checkpoint path."""
    kwargs.pop("img_size", None)  # any H×W runs; its weights' size is 224
    model = TEAResNet50(**kwargs)
    if weights_source(pretrained) is not None:
        model.load_imagenet(_require_file(pretrained))
    return model


# name -> (create function, one line)
BACKBONES = {
    "tiny": (create_tiny, "TinyVideoBackbone (CPU runs and tests); pretrained: a state dict"),
    "tiny_cnn": (
        create_tiny_cnn,
        "TinyConvVideoBackbone, a 2D+3D CNN that learns the synthetic set from scratch",
    ),
    "tiny_cnn_t1": (
        create_tiny_cnn_t1,
        "TinyConvVideoBackbone with one 3x3x3 conv: each token sees 3 frames only",
    ),
    "uniformerv2_b16": (
        create_uniformerv2_b16,
        "UniFormerV2-B/16; pretrained: UniFormerV2, mmaction2 or CLIP file, or tag",
    ),
    "uniformerv2_l14": (
        create_uniformerv2_l14,
        "UniFormerV2-L/14; pretrained: UniFormerV2, mmaction2 or CLIP file, or tag",
    ),
    "tea_r50": (create_tea_r50, "TEA ResNet-50; pretrained: a torchvision ResNet-50 ImageNet path"),
}


def list_backbones() -> list[str]:
    """The backbone names ``build_backbone`` knows."""
    return list(BACKBONES)


def build_backbone(name: str, pretrained: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build a backbone by name (:data:`BACKBONES`): "tiny", "tiny_cnn", "tiny_cnn_t1",
    "uniformerv2_b16", "uniformerv2_l14", "tea_r50".

    pretrained: None or "none" (random weights), or what the name's create function reads (see
    each ``create_<name>``). kwargs go to the constructor (e.g. small widths for tests). The
    module gets ``backbone_name`` (the registry key) and ``pretrained_source`` and keeps its
    ``init_kwargs``: together they rebuild it. Unknown names raise ValueError listing the known ones; a missing checkpoint file
    raises FileNotFoundError naming the path.
    """
    key = _key(name)
    if key not in BACKBONES:
        raise ValueError(f"name: unknown backbone {name!r}; known: {list_backbones()}")
    model = BACKBONES[key][0](pretrained, **kwargs)
    model.backbone_name = key
    source = weights_source(pretrained)
    model.pretrained_source = None if source is None else os.fspath(source)
    return model


def default_data_config(name: str, num_frames: int = 16, **kwargs) -> dict:
    """The input contract of backbone ``name`` built with ``kwargs`` and random weights (made on
    the meta device: no memory): ``backbone.data_config(num_frames)``. Weights can change mean
    and std (UniFormerV2's official checkpoints use 0.45/0.225): ask the built module then."""
    key = _key(name)
    if key not in BACKBONES:
        raise ValueError(f"name: unknown backbone {name!r}; known: {list_backbones()}")
    with torch.device("meta"):
        return BACKBONES[key][0](None, **kwargs).data_config(num_frames)


def count_parameters(model: nn.Module) -> int:
    """The number of parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "BACKBONES",
    "BUILTIN_WEIGHTS",
    "build_backbone",
    "builtin_weights",
    "count_parameters",
    "create_tea_r50",
    "create_tiny",
    "create_tiny_cnn",
    "create_tiny_cnn_t1",
    "create_uniformerv2_b16",
    "create_uniformerv2_l14",
    "default_data_config",
    "list_backbones",
]
