"""``build_backbone(name, pretrained=None, **kwargs)``: the backbones by name."""

from __future__ import annotations

import os
from importlib import resources

from torch import nn

from artlib.models.checkpoint import load_state_dict_file, wants_random_weights
from artlib.models.tea import TEAResNet50
from artlib.models.tiny import TinyConvVideoBackbone, TinyVideoBackbone
from artlib.models.uniformerv2 import UniFormerV2

BACKBONES = {
    "tiny": "TinyVideoBackbone (CPU runs and tests); pretrained: a state dict file of it",
    "tiny_cnn": "TinyConvVideoBackbone, a 2D+3D CNN that learns the synthetic set from scratch",
    "tiny_cnn_t1": "TinyConvVideoBackbone with one 3x3x3 conv: each token sees 3 frames only",
    "uniformerv2_b16": "UniFormerV2-B/16; pretrained: UniFormerV2, mmaction2 or CLIP file, or tag",
    "uniformerv2_l14": "UniFormerV2-L/14; pretrained: UniFormerV2, mmaction2 or CLIP file, or tag",
    "tea_r50": "TEA ResNet-50; pretrained: a torchvision ResNet-50 ImageNet checkpoint path",
}


# weights that ship inside the package (artlib/models/weights/, provenance in its README.md):
# (backbone, tag) -> (file, the constructor arguments they fit). "synthetic": tiny_cnn trained as
# the baseline on another synthetic set (generation seed 1), the synthetic preset's pretrained
# backbone.
BUILTIN_WEIGHTS = {
    ("tiny_cnn", "synthetic"): (
        "tiny_cnn_synthetic.pt",
        {"width": 64, "img_size": 64, "temporal_layers": 3},
    ),
}


def _key(name: str) -> str:
    return name.lower().replace("-", "_").replace("/", "")


def list_backbones() -> list[str]:
    return list(BACKBONES)


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


def build_backbone(name: str, pretrained: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build a backbone by name: "tiny", "tiny_cnn", "tiny_cnn_t1", "uniformerv2_b16",
    "uniformerv2_l14", "tea_r50".

    pretrained: None or "none" (random weights; "none" says so on purpose, see
    ``wants_random_weights``), or for UniFormerV2 an official UniFormerV2 checkpoint (OpenGVLab's
    flat or SlowFast files, mmaction2's, artlib's ``backbone.pt``), a CLIP image tower file or an
    open_clip tag ("openai", ...) found in the local cache (``UniFormerV2.from_pretrained``), for
    TEA a torchvision ResNet-50 ImageNet checkpoint path, for "tiny" a state dict saved from it, for "tiny_cnn" a state dict saved from it or the
    packaged tag "synthetic" (``BUILTIN_WEIGHTS``, with the constructor arguments it fits). kwargs
    go to the constructor (e.g. small widths for tests). Unknown names raise ValueError listing
    the known ones; a missing checkpoint file raises FileNotFoundError naming the path.
    """
    key = _key(name)
    if wants_random_weights(pretrained):
        pretrained = None
    if key == "tiny":
        model = TinyVideoBackbone(**kwargs)
        if pretrained is not None:
            sd, _ = load_state_dict_file(_require_file(pretrained))
            model.load_state_dict(sd)
        return model
    if key in ("uniformerv2_b16", "uniformerv2_l14"):
        return UniFormerV2.from_pretrained(key[-3:], pretrained, **kwargs)
    if key == "tea_r50":
        model = TEAResNet50(**kwargs)
        if pretrained is not None:
            model.load_imagenet(_require_file(pretrained))
        return model
    if key in ("tiny_cnn", "tiny_cnn_t1"):
        if key == "tiny_cnn_t1":
            kwargs.setdefault("temporal_layers", 1)
        model = TinyConvVideoBackbone(**kwargs)
        if pretrained is not None:
            if ("tiny_cnn", pretrained) in BUILTIN_WEIGHTS:
                fits = BUILTIN_WEIGHTS["tiny_cnn", pretrained][1]
                got = {"width": model.out_dim, "img_size": model.img_size}
                got["temporal_layers"] = len(model.temporal)
                if got != fits or key != "tiny_cnn":
                    raise ValueError(
                        f"pretrained: the packaged {pretrained!r} weights are tiny_cnn with width "
                        f"{fits['width']}, img_size {fits['img_size']} and "
                        f"{fits['temporal_layers']} temporal layers; got {key} with width "
                        f"{got['width']}, img_size {got['img_size']}, {got['temporal_layers']} "
                        f"temporal layers (--crop-size {fits['img_size']}, or --pretrained none)"
                    )
                pretrained = builtin_weights(key, pretrained)
            model.load_state_dict(load_state_dict_file(_require_file(pretrained))[0])
        return model
    raise ValueError(f"name: unknown backbone {name!r}; known: {list_backbones()}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "BACKBONES",
    "BUILTIN_WEIGHTS",
    "build_backbone",
    "builtin_weights",
    "count_parameters",
    "list_backbones",
]
