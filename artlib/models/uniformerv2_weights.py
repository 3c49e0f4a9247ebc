"""Reading UniFormerV2 weights: the official checkpoints, mmaction2's, artlib's and CLIP's.

Every format is brought to the official key layout (that of ``UniFormerV2.state_dict()``):

- official UniFormerV2 (OpenGVLab): recognised by ``transformer.temporal_cls_token``; the
  ``backbone.`` prefix is removed, SlowFast's ``{"model_state": ...}`` unwrapped.
- artlib's ``backbone.pt``: the same keys without a prefix; nothing changes.
- mmaction2's UniFormerV2: recognised by ``backbone.transformer.norm``; ``transformer.norm`` →
  ``transformer.proj.0``, the head's ``cls_head.fc_cls`` → ``transformer.proj.2``.
- a CLIP image tower (open_clip or OpenAI, ``visual.`` optional, OpenAI's TorchScript archive):
  recognised by a 2D ``conv1.weight``; the official initialisation (patch conv into conv1's centre
  temporal tap, every video part at its initial value; CLIP's ``ln_post`` and ``proj`` unused).

For the UniFormerV2 formats the configuration is read from the keys and shapes (``read_config``):
local MHRA off/single/double, temporal downsampling (conv1's temporal kernel), the number of
global blocks, the classifier's classes, B/16 or L/14 (width and patch), the input size.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from artlib.models.uniformerv2 import (
    CONFIGS,
    KINETICS_MEAN,
    KINETICS_STD,
    UniFormerV2,
    fit_positional_embedding,
    is_clip_key,
)
from artlib.weights_io import (
    load_state_dict_file,
    resolve_clip_pretrained,
    strip_prefix,
    weights_source,
)

OFFICIAL = "official UniFormerV2 (OpenGVLab; also artlib's backbone.pt)"
MMACTION2 = "mmaction2 UniFormerV2"
CLIP = "CLIP image tower (open_clip / OpenAI)"
FORMATS = (OFFICIAL, MMACTION2, CLIP)

# constructor arguments a checkpoint fixes (a different kwarg is an error, not an override)
_ARCH = (
    "width",
    "layers",
    "patch_size",
    "temporal_downsample",
    "kernel_size",
    "no_lmhra",
    "double_lmhra",
    "n_layers",
    "mlp_factor",
    "frozen",
)
_CLIP_EXTRA = ("ln_post.weight", "ln_post.bias", "proj")  # CLIP keys UniFormerV2 does not use


def _count(sd: dict, prefix: str, leaf: str) -> int:
    n = 0
    while f"{prefix}.{n}.{leaf}" in sd:
        n += 1
    return n


def read_config(sd: dict[str, Tensor]) -> dict:
    """Constructor arguments of the UniFormerV2 that an official-layout state dict comes from."""
    w = sd["conv1.weight"]  # (C, 3, k, p, p)
    if w.dim() != 5:
        raise ValueError(
            f"conv1.weight: expected a 3D patch conv (C, 3, k, p, p), got {tuple(w.shape)}"
        )
    width, k, patch = w.shape[0], w.shape[2], w.shape[-1]
    grid = int(round((sd["positional_embedding"].shape[0] - 1) ** 0.5))
    cfg = dict(
        width=width,
        layers=_count(sd, "transformer.resblocks", "ln_1.weight"),
        patch_size=patch,
        img_size=grid * patch,
        temporal_downsample=k > 1,
        no_lmhra="transformer.resblocks.0.lmhra1.pos_embed.1.weight" not in sd,
        double_lmhra="transformer.resblocks.0.lmhra2.pos_embed.1.weight" in sd,
        n_layers=_count(sd, "transformer.dec", "ln_1.weight"),
        frozen="transformer.balance" not in sd,
    )
    if k > 1:
        cfg["kernel_size"] = k
    if not cfg["no_lmhra"]:
        hidden = sd["transformer.resblocks.0.lmhra1.pos_embed.1.weight"].shape[0]
        # the official C' = int(C // r): r = 1.5 for every released model; else any r that gives C'
        cfg["dw_reduction"] = 1.5 if int(width // 1.5) == hidden else width / (hidden + 0.5)
    if cfg["n_layers"]:
        cfg["mlp_factor"] = sd["transformer.dec.0.mlp.c_fc.weight"].shape[0] / width
    if "transformer.proj.2.weight" in sd:
        cfg["num_classes"] = sd["transformer.proj.2.weight"].shape[0]
    return cfg


def _clip_config(sd: dict[str, Tensor]) -> dict:
    w = sd["conv1.weight"]  # (C, 3, p, p)
    grid = int(round((sd["positional_embedding"].shape[0] - 1) ** 0.5))
    return dict(
        width=w.shape[0],
        layers=_count(sd, "transformer.resblocks", "ln_1.weight"),
        patch_size=w.shape[-1],
        img_size=grid * w.shape[-1],
    )


def to_official_layout(sd: dict[str, Tensor]) -> tuple[str | None, dict, list[str]]:
    """A state dict in any supported layout → (format, official-layout state dict, ignored keys).

    The format is None if nothing matches. Keys outside the backbone (a whole model's head, a CLIP
    text tower, ``logit_scale``) are returned as ignored.
    """
    if any(k.startswith("backbone.") for k in sd):
        body = strip_prefix(sd, "backbone.")
        rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    else:
        body, rest = dict(sd), {}
    if "transformer.norm.weight" in body:  # mmaction2: the norm in the backbone, fc in the head
        body = {
            ("transformer.proj.0." + k[len("transformer.norm.") :])
            if k.startswith("transformer.norm.")
            else k: v
            for k, v in body.items()
        }
        for leaf in ("weight", "bias"):
            if f"cls_head.fc_cls.{leaf}" in rest:
                body[f"transformer.proj.2.{leaf}"] = rest.pop(f"cls_head.fc_cls.{leaf}")
        return MMACTION2, body, sorted(rest)
    if "transformer.temporal_cls_token" in body:
        return OFFICIAL, body, sorted(rest)
    if any(k.startswith("visual.") for k in sd):
        body = strip_prefix(sd, "visual.")
        rest = {k: v for k, v in sd.items() if not k.startswith("visual.")}
    w = body.get("conv1.weight")
    if w is not None and w.dim() == 4 and "positional_embedding" in body:
        return CLIP, body, sorted(rest)
    return None, body, sorted(rest)


def _short(keys, n: int = 6) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n})" if len(keys) > n else ""
    return f"{len(keys)} {keys[:n]}{more}"


def _mismatch(path: str, tried: list[tuple[str, list, list]]) -> RuntimeError:
    lines = [f"{fmt}: missing {_short(m)}, unexpected {_short(u)}" for fmt, m, u in tried]
    return RuntimeError(
        f"pretrained: {path!r} fits none of the checkpoint formats UniFormerV2 reads; tried "
        + "; ".join(lines)
    )


def _expected(variant: str, kwargs: dict) -> tuple[list[str], list[str]]:
    """Keys of the preset model (built on the meta device: no memory) → (all, CLIP keys)."""
    cfg = {k: v for k, v in CONFIGS[variant].items() if k != "clip_name"}
    with torch.device("meta"):
        keys = list(UniFormerV2(**{**cfg, **kwargs}).state_dict())
    return keys, [k for k in keys if is_clip_key(k)]


def _nothing_fits(path: str, sd: dict, variant: str, kwargs: dict) -> RuntimeError:
    keys, clip_keys = _expected(variant, {k: v for k, v in kwargs.items() if k in _ARCH})
    body = strip_prefix(sd, "backbone.") if any(k.startswith("backbone.") for k in sd) else sd
    mm = {k.replace("transformer.proj.0.", "transformer.norm."): 0 for k in keys}
    mm.pop("transformer.proj.2.weight")
    mm.pop("transformer.proj.2.bias")
    vis = strip_prefix(sd, "visual.") if any(k.startswith("visual.") for k in sd) else body
    tried = [
        (OFFICIAL, [k for k in keys if k not in body], [k for k in body if k not in keys]),
        (MMACTION2, [k for k in mm if k not in body], [k for k in body if k not in mm]),
        (
            CLIP,
            [k for k in clip_keys if k not in vis],
            [k for k in vis if k not in clip_keys and k not in _CLIP_EXTRA],
        ),
    ]
    return _mismatch(path, tried)


def _check_fixed(variant: str, ckpt_cfg: dict, kwargs: dict, what: str) -> None:
    for key in _ARCH:
        if key in kwargs and key in ckpt_cfg and kwargs[key] != ckpt_cfg[key]:
            if key == "mlp_factor" and abs(kwargs[key] - ckpt_cfg[key]) < 1e-6:
                continue
            raise ValueError(
                f"{key}: the {what} checkpoint has {key}={ckpt_cfg[key]!r}, got {kwargs[key]!r} "
                f"(leave it out: it is read from the checkpoint)"
            )
    other = {"b16": "l14", "l14": "b16"}[variant]
    o = CONFIGS[other]
    if (ckpt_cfg["width"], ckpt_cfg["patch_size"]) == (o["width"], o["patch_size"]):
        raise ValueError(
            f"pretrained: this is a {other.upper()} checkpoint (width {o['width']}, patch "
            f"{o['patch_size']}); build it as 'uniformerv2_{other}'"
        )


def _heads(variant: str, width: int, kwargs: dict) -> int:
    """Heads are not in the weights' shapes: the preset's at its width, else width / 64."""
    if "heads" in kwargs:
        return kwargs["heads"]
    preset = CONFIGS[variant]
    return preset["heads"] if width == preset["width"] else max(1, width // 64)


def _assemble(variant: str, preset: dict, read: dict, kwargs: dict) -> dict:
    """The constructor arguments: the preset, then what the checkpoint fixes (``read``), the
    input size (kwargs' ``img_size``, else the checkpoint's) and the heads; kwargs' ``img_size``
    is taken out of ``kwargs`` (the caller passes the rest on)."""
    cfg = {**preset, **{k: v for k, v in read.items() if k != "img_size"}}
    cfg["img_size"] = kwargs.pop("img_size", read["img_size"])
    cfg["heads"] = _heads(variant, read["width"], kwargs)
    return cfg


def create_uniformerv2(
    variant: str = "b16",
    pretrained: str | os.PathLike | None = None,
    cache_dir: str | None = None,
    **kwargs,
) -> UniFormerV2:
    """A UniFormerV2 preset ("b16" = CLIP ViT-B/16, "l14" = CLIP ViT-L/14), with weights.

    pretrained: None or "none" (random weights), a checkpoint file (official UniFormerV2
    ``.pyth``/``.pth``, flat ``backbone.``-prefixed or SlowFast ``{"model_state": ...}``;
    mmaction2's UniFormerV2; artlib's ``backbone.pt``; a CLIP image tower as an open_clip or
    OpenAI state dict or OpenAI's TorchScript archive), or an open_clip tag ("openai", ...) found
    in the local cache. An official or artlib checkpoint fixes the configuration (local MHRA,
    temporal downsampling, global blocks, classes); kwargs that contradict it raise ValueError,
    others (img_size, heads, dropouts, grad_checkpointing, ...) apply.

    ``model.pretrained_report`` then says what happened: ``format``, ``path``, ``loaded`` (how
    many tensors came from the file), ``initialised`` (parameters at their official initial value:
    the video parts under a CLIP init), ``ignored`` (checkpoint keys outside the backbone, e.g. a
    CLIP text tower) and ``config`` (what was read from the checkpoint). A file that fits no format
    raises RuntimeError naming the formats tried with their missing and unexpected keys.
    """
    if variant not in CONFIGS:
        raise ValueError(f"variant: expected one of {sorted(CONFIGS)}, got {variant!r}")
    preset = dict(CONFIGS[variant])
    clip_name = preset.pop("clip_name")
    if weights_source(pretrained) is None:
        model = UniFormerV2(**{**preset, **kwargs})
        model.pretrained_report = {"format": "random", "path": None}
        return model
    resolved = resolve_clip_pretrained(clip_name, pretrained, cache_dir=cache_dir)
    sd, jit = load_state_dict_file(resolved.path)
    fmt, body, ignored = to_official_layout(sd)
    if fmt is None:
        raise _nothing_fits(resolved.path, sd, variant, kwargs)
    if fmt == CLIP:
        return _load_clip(variant, preset, resolved, sd, body, ignored, jit, kwargs)

    ckpt_cfg = read_config(body)
    _check_fixed(variant, ckpt_cfg, kwargs, "UniFormerV2")
    cfg = _assemble(variant, preset, ckpt_cfg, kwargs)
    cfg.setdefault("quick_gelu", True)  # every official model runs OpenAI CLIP's QuickGELU
    initialised = []
    if "num_classes" in kwargs and kwargs["num_classes"] != ckpt_cfg.get("num_classes"):
        initialised = ["transformer.proj.2.weight", "transformer.proj.2.bias"]  # a new classifier
        for k in initialised:
            body.pop(k, None)
    model = UniFormerV2(**{**cfg, **kwargs})
    fit_positional_embedding(body, model.img_size, model.patch_size)
    allowed = set(initialised)
    if fmt == MMACTION2 and "transformer.proj.2.weight" not in body:
        allowed |= {"transformer.proj.2.weight", "transformer.proj.2.bias"}  # no cls_head saved
        initialised = sorted(allowed)
    own = model.state_dict()
    bad = [k for k in body if k in own and body[k].shape != own[k].shape]
    missing = [k for k in own if k not in body and k not in allowed]
    unexpected = [k for k in body if k not in own]
    if missing or unexpected or bad:
        raise _mismatch(resolved.path, [(fmt, missing, unexpected + [f"{k} (shape)" for k in bad])])
    model.load_state_dict(body, strict=False)
    model.mean, model.std = KINETICS_MEAN, KINETICS_STD
    model.pretrained_report = dict(
        format=fmt,
        path=resolved.path,
        loaded=len(body),
        initialised=initialised,
        ignored=ignored,
        config=ckpt_cfg,
    )
    return model


def _load_clip(variant, preset, resolved, sd, body, ignored, jit, kwargs) -> UniFormerV2:
    """The official initialisation from a CLIP image tower: the ViT weights as they are, the 2D
    patch conv into the centre temporal tap of conv1 (other taps zero), the positional embedding
    resized if the grid differs, every video part at its initial value."""
    vit = _clip_config(body)
    _check_fixed(variant, vit, kwargs, "CLIP")
    openai_marks = any(k in sd for k in ("input_resolution", "context_length", "vocab_size"))
    quick = bool(resolved.quick_gelu) or jit or openai_marks
    cfg = _assemble(variant, preset, vit, kwargs)
    cfg["quick_gelu"] = kwargs.pop("quick_gelu", quick)
    model = UniFormerV2(**{**cfg, **kwargs})
    own = model.state_dict()
    clip_keys = [k for k in own if is_clip_key(k)]
    vis = dict(body)
    w2 = vis.get("conv1.weight")
    if w2 is not None:
        w3 = torch.zeros_like(own["conv1.weight"])
        if w2.shape != w3[:, :, 0].shape:
            raise RuntimeError(
                f"conv1.weight: checkpoint {tuple(w2.shape)} does not fit this model's patch "
                f"conv {tuple(w3[:, :, 0].shape)}"
            )
        w3[:, :, w3.shape[2] // 2] = w2  # the official inflation: the centre tap
        vis["conv1.weight"] = w3
    fit_positional_embedding(vis, model.img_size, model.patch_size)
    missing = [k for k in clip_keys if k not in vis]
    unexpected = [k for k in vis if k not in clip_keys and k not in _CLIP_EXTRA]
    bad = [k for k in clip_keys if k in vis and vis[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise _mismatch(
            resolved.path, [(CLIP, missing, unexpected + [f"{k} (shape)" for k in bad])]
        )
    model.load_state_dict({k: vis[k] for k in clip_keys}, strict=False)
    model.pretrained_report = dict(
        format=CLIP,
        path=resolved.path,
        tag=resolved.tag,
        loaded=len(clip_keys),
        initialised=[k for k in own if not is_clip_key(k)],
        ignored=sorted(ignored + [k for k in _CLIP_EXTRA if k in vis]),
        config={**vit, "quick_gelu": model_quick(model)},
    )
    return model


__all__ = [
    "CLIP",
    "FORMATS",
    "MMACTION2",
    "OFFICIAL",
    "create_uniformerv2",
    "is_clip_key",
    "read_config",
    "to_official_layout",
]


def model_quick(model: UniFormerV2) -> bool:
    """Whether the CLIP blocks run QuickGELU."""
    return type(model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
