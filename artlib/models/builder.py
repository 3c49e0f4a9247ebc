"""``build_art(config)``: an ART (or baseline) model from a plain, JSON-able configuration, and
``model_config_from_train_config``: the trainer's saved config -> that configuration.

The model configuration (``ART.config`` returns one; every key but ``backbone`` and
``num_classes`` has a default)::

    {"backbone": "tiny_cnn",              # a name of artlib.models.BACKBONES
     "backbone_kwargs": {"img_size": 64}, # its constructor arguments
     "pretrained": None,                  # backbone weights: a path, a tag, None / "none"
     "num_classes": 8, "num_frames": 8, "dropout": 0.5, "baseline": False,
     "head": {"dim": 64, "heads": 4, "num_queries": 2, "gamma_mtc": 5.0, "lam": 0.6,
              "use_se": True, "aggregation": "saliency", "mtc_weights": [1, 1, 1], ...},
     "bank": {"shape": [8, 8, 64], "init": "random", "seed": 0, "momentum": 0.999},
     "mean": None, "std": None}           # overrides of the backbone's input normalisation

``head`` holds :class:`artlib.nn.ARTHead`'s keyword arguments. ``bank`` (ART only) is one of
``{"shape", "init": "random" | "zeros", "seed"}`` (a seeded random unit-norm bank, or zeros to be
filled by a state dict), ``{"file": PATH}`` (a bank file), ``{"text_model", "text_pretrained",
"class_names"}`` (built with CLIP's text tower, ``artlib.text.build_semantic_bank``), each with an
optional ``momentum`` (μ of Eq. 12); or pass a ready bank object as ``build_art(config, bank=...)``.
This module reads plain dicts only: it imports nothing of the trainer.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F

from artlib.models.art import ART, as_bank
from artlib.models.registry import build_backbone
from artlib.nn import SemanticBank
from artlib.weights_io import weights_source

__all__ = ["HEAD_OPTIONS", "MTC_TERMS", "build_art", "model_config_from_train_config"]

# the MTC terms in the order of ARTHead's mtc_weights
MTC_TERMS = ("spatial", "temporal", "tracklet")
# the trainer's model options that are ARTHead keyword arguments
HEAD_OPTIONS = (
    "dim",
    "heads",
    "num_queries",
    "se_layers",
    "act_layers",
    "use_se",
    "aggregation",
    "sema_video",
    "sema_prot",
    "lam",
    "temporal",
    "gamma_mtc",
    "gamma_sema",
    "attn_temperature",
)
_KEYS = {
    "backbone",
    "backbone_kwargs",
    "pretrained",
    "num_classes",
    "num_frames",
    "dropout",
    "baseline",
    "head",
    "bank",
    "mean",
    "std",
}
_BANK_KEYS = {"shape", "init", "seed", "file", "text_model", "text_pretrained", "class_names"}


def build_art(config: dict, bank=None) -> ART:
    """An :class:`ART` (or, with ``"baseline": True``, the backbone + linear baseline) from a
    plain ``config`` (module docstring). ``bank``: a SemanticBank, an S⁰ tensor (N_prom, N_cls,
    C_t) or a bank file path, used instead of ``config["bank"]``.

    The model records the configuration (``model.config``), its bank as a shape. Raises
    ValueError naming a key that is unknown, missing or of the wrong kind.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise ValueError(f"config: unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    for key in ("backbone", "num_classes"):
        if key not in config:
            raise ValueError(f"config: {key!r} is required")
    num_classes = int(config["num_classes"])
    if num_classes < 1:
        raise ValueError(f"config: num_classes must be >= 1, got {num_classes}")
    backbone = build_backbone(
        config["backbone"], config.get("pretrained"), **dict(config.get("backbone_kwargs") or {})
    )
    for key in ("mean", "std"):  # the normalisation its weights were trained with
        if config.get(key) is not None:
            setattr(backbone, key, tuple(float(v) for v in config[key]))
    common = dict(num_frames=int(config.get("num_frames", 16)))
    common["dropout"] = float(config.get("dropout", 0.5))
    if config.get("baseline", False):
        if config.get("head"):
            raise ValueError(f"config: a baseline takes no head options, got {config['head']}")
        return ART(backbone, num_classes, None, baseline=True, **common)
    spec = config.get("bank")
    momentum = float((spec or {}).get("momentum", 0.999)) if isinstance(spec, dict) else 0.999
    if bank is None:
        bank = make_bank(spec, num_classes)
    bank = as_bank(bank, momentum)
    if bank.num_classes != num_classes:
        raise ValueError(
            f"bank: it has {bank.num_classes} classes, the config's num_classes is {num_classes}"
        )
    head = dict(config.get("head") or {})
    if "mtc_weights" in head:
        head["mtc_weights"] = tuple(float(w) for w in head["mtc_weights"])
    return ART(backbone, num_classes, bank, momentum=momentum, **common, **head)


def make_bank(spec, num_classes: int) -> SemanticBank:
    """A SemanticBank from the ``bank`` entry of a model config (module docstring)."""
    if not isinstance(spec, dict):
        raise ValueError(
            f"config: 'bank' must be a dict ({{'shape': [N_prom, N_cls, C_t], 'init': "
            f"'random'}}, {{'file': PATH}} or {{'text_model': ...}}) or a bank passed as "
            f"build_art(config, bank=...), got {spec!r}"
        )
    unknown = sorted(set(spec) - _BANK_KEYS - {"momentum"})
    if unknown:
        raise ValueError(f"config: unknown bank key(s) {unknown}; known: {sorted(_BANK_KEYS)}")
    momentum = float(spec.get("momentum", 0.999))
    if "file" in spec:
        path = os.fspath(spec["file"])
        return SemanticBank.from_file(path, momentum=momentum, num_classes=num_classes)
    if "shape" in spec:
        shape = [int(n) for n in spec["shape"]]
        if len(shape) != 3:
            raise ValueError(f"config: bank shape must be [N_prom, N_cls, C_t], got {shape}")
        init = spec.get("init", "random")
        if init == "zeros":  # values to come from a state dict
            return SemanticBank(torch.zeros(shape), momentum=momentum)
        if init != "random":
            raise ValueError(f"config: bank init must be 'random' or 'zeros', got {init!r}")
        # distinct, unit-norm class embeddings from a seed: the bank of runs without text weights
        # (a random CLIP text tower maps every class name to nearly one vector)
        g = torch.Generator().manual_seed(int(spec.get("seed", 0)))
        return SemanticBank(F.normalize(torch.randn(shape, generator=g), dim=-1), momentum=momentum)
    if "text_model" in spec:
        from artlib.text import build_semantic_bank, clean_labels

        names = list(spec.get("class_names") or [])
        if len(names) != num_classes:
            raise ValueError(
                f"config: a text bank needs the {num_classes} class names, got {len(names)}"
            )
        s0 = build_semantic_bank(
            clean_labels(names),
            spec["text_model"],
            pretrained=weights_source(spec.get("text_pretrained")),
        )
        return SemanticBank(s0, momentum=momentum)
    raise ValueError(f"config: the bank needs 'shape', 'file' or 'text_model', got {sorted(spec)}")


# -------------------------------------------------------------- the trainer's config -> ours
def _reader(d: dict):
    """A getter over the trainer's config dict: nested ({"model": {...}, ...}) or the flat one of
    earlier checkpoints (``num_frames``, ``synthetic_classes``, ...)."""
    nested = isinstance(d.get("model"), dict)

    def get(section: str, name: str, default=KeyError):
        where = d.get(section, {}) if nested else d
        key = name if nested or section != "synthetic" else f"synthetic_{name}"
        if key in where:
            return where[key]
        if default is KeyError:
            raise KeyError(f"{section}.{name}")
        return default

    return get


def model_config_from_train_config(train_config, class_names, head: dict | None = None) -> dict:
    """The trainer's config (the ``config`` dict saved in a training checkpoint, nested or the
    earlier flat one, or the TrainConfig dataclass itself) and the run's class names (or their
    number) -> the model configuration that :func:`build_art` builds the run's model from.

    head: the ARTHead options as the checkpoint's ``model_info["head"]`` recorded them (used
    instead of reading them from the config). Raises KeyError naming a missing option.
    """
    d = dataclasses.asdict(train_config) if dataclasses.is_dataclass(train_config) else train_config
    if not isinstance(d, dict):
        raise TypeError(f"train_config: expected a dict, got {type(d).__name__}")
    get = _reader(d)
    names = list(class_names) if not isinstance(class_names, int) else None
    num_classes = len(names) if names is not None else int(class_names)
    backbone = str(get("model", "backbone"))
    momentum = float(get("model", "bank_momentum", 0.999))
    config = {
        "backbone": backbone,
        "backbone_kwargs": {}
        if backbone.startswith("tea")
        else {"img_size": get("data", "crop_size")},
        "pretrained": weights_source(get("model", "pretrained", None)),
        "num_classes": num_classes,
        "num_frames": int(get("data", "num_frames")),
        "dropout": float(get("model", "dropout")),
        "baseline": bool(get("model", "baseline", False)),
        "head": {},
        "bank": None,
    }
    if config["baseline"]:
        return config
    if head is None:
        head = {name: get("model", name) for name in HEAD_OPTIONS if name != "attn_temperature"}
        head["attn_temperature"] = float(get("model", "attn_temperature", 1.0))  # older runs: 1
        terms = get("model", "mtc_terms")
        terms = [t for t in terms.split(",") if t] if isinstance(terms, str) else list(terms)
        head["mtc_weights"] = [1.0 if t in terms else 0.0 for t in MTC_TERMS]
    config["head"] = {k: list(v) if isinstance(v, tuple) else v for k, v in head.items()}
    text_model = get("model", "text_model", "ViT-B-16")
    if get("model", "bank", None):
        config["bank"] = {"file": os.fspath(get("model", "bank")), "momentum": momentum}
    elif text_model == "random":
        dim = int(config["head"].get("dim", 256))
        seed = int(get("run", "seed", 0))
        config["bank"] = {"shape": [8, num_classes, dim], "init": "random", "seed": seed}
        config["bank"]["momentum"] = momentum
    else:
        config["bank"] = {
            "text_model": text_model,
            "text_pretrained": weights_source(get("model", "text_pretrained", None)),
            "class_names": names,
            "momentum": momentum,
        }
    return config
