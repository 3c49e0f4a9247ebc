"""The training configuration, declared once: nested dataclasses whose fields carry their help
text, choices and value range. The command line (``artlib.engine.cli``), the validation, the
config files and each run's saved ``config.yaml`` all derive from these declarations.

Two choices make a run: the **data** and the **recipe**.

* The data: ``--data-root`` (a FineGym or Diving48 layout) or ``--train-list/--val-list`` (your own
  videos); without them the built-in synthetic fine-grained set (``--synthetic-*`` options).
* The recipe, a preset (``PRESETS``) that changes the defaults and applies to any data:

  * ``paper`` (the default when a data set is named): the paper's recipe (Sec. IV-A): SGD
    momentum 0.9, lr 0.01 x0.1 every 20 epochs, 50 epochs, dropout 0.5, T = 16, 224^2, K = 2,
    d = 256, g1 = g2 = 5, lam = 0.6, UniFormerV2-B/16.
  * ``small`` (the default otherwise; ``synthetic`` is its earlier name): the small ``tiny_cnn``
    backbone from its packaged weights, AdamW with a cosine schedule, a seeded random semantics
    bank, 8 frames of 64^2, a small head. It learns on small data on CPU: the main job trains the
    built-in set with it in a few minutes on 2 cores. Its loss weights, dropout and tracklet
    aggregation ("sequence": frames kept in order, not Eq. 9) are small-set choices, not the
    paper's.

Precedence: field default < preset < ``--config FILE`` < flags. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from artlib._io import atomic_write

__all__ = [
    "TrainConfig", "DataConfig", "SyntheticConfig", "ModelConfig", "OptimConfig", "RunConfig",
    "PRESETS", "MTC_TERMS", "BACKBONES", "ConfigError", "config_to_dict", "config_from_dict",
    "resolve", "options", "check_paths", "dataset_files", "read_class_names", "save_config",
    "head_options", "builtin_data", "PRESET_ALIASES", "REFERENCE_BATCH",
]  # fmt: skip

MTC_TERMS = ("spatial", "temporal", "tracklet")
# artlib.models.list_backbones() without importing torch (a test keeps the two equal)
BACKBONES = ("tiny", "tiny_cnn", "tiny_cnn_t1", "uniformerv2_b16", "uniformerv2_l14", "tea_r50")
# the packaged backbone weights (artlib.models.registry.BUILTIN_WEIGHTS) -> the input size they fit
PACKAGED = {("tiny_cnn", "synthetic"): 64}
# the batch the paper's lr 0.01 was set for: 24 videos (4 GPUs x 6); --lr-scale linear scales to it
REFERENCE_BATCH = 24
PRESET_ALIASES = {"synthetic": "small"}  # the earlier name of the small recipe
WEIGHTS_DOC = "see docs/models.md, 'Pretrained weights'"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the option."""


def opt(default, help: str, **meta):
    """A field and its declaration. meta: ``choices``; ``range`` (">= 1", "(0, 1]", ...);
    ``only`` (the data it applies to: "builtin", the synthetic set, or "named", a data set under
    --data-root or in lists); ``flag`` (its command-line name when not the field's);
    ``path`` ("file" | "dir" | "weights": checked before training); ``head`` (an ARTHead option);
    ``absent`` (the value a run recorded before the option existed used: see :func:`with_absent`)."""
    return field(default=default, metadata={"help": help, **meta})


def fixed_opt(default, help: str, **meta):
    """An option that defines the model, its state's shapes or the data set: a resume refuses to
    change it (:data:`RESUME_FIXED`). Everything declared with :func:`opt` (lr, epochs, batch
    size, paths of the same data, ...) may change on resume and is recorded. The optimizer and
    the schedule are fixed because their saved states only load into the same kind."""
    return opt(default, help, fixed=True, **meta)


# fmt: off
@dataclass
class DataConfig:
    dataset: str = fixed_opt("finegym", "the data set whose layout --data-root holds",
                             choices=("finegym", "diving48"), only="named")
    data_root: str | None = opt(None, "data set root (the FineGym or Diving48 layout); with lists, "
                                "the base of their relative paths", path="dir")
    split: str = fixed_opt("gym99", "FineGym split", choices=("gym99", "gym288"), only="named")
    train_list: str | None = opt(None, "your own training list of '<path> <label>' lines; relative "
                                 "paths resolve against --data-root, else the list's folder",
                                 path="file")
    val_list: str | None = opt(None, "your own validation list, as --train-list", path="file")
    class_names: str | None = fixed_opt(None, "file of class names, one per line in label order (text "
                                        "bank, metrics, confusion matrix)", only="named", path="file")
    loader: str = opt("auto", "auto: DALI on GPU, PyAV on CPU", choices=("auto", "pyav", "dali"))
    workers: int = opt(4, "DataLoader workers per rank", range=">= 0")
    num_frames: int = fixed_opt(16, "T, frames sampled per video (paper: 16)", range=">= 1")
    crop_size: int = fixed_opt(224, "input resolution (paper: 224)", range=">= 16")
    flip: bool = opt(True, "random horizontal flip (flips change some classes' meaning)")
    crop_scale_min: float = opt(0.4, "random resized crop keeps at least this fraction of the area",
                                range="(0, 1]")
    eval_clips: int = opt(1, "clips per video in evaluation (softmax averaged)", range=">= 1")
    max_failure_fraction: float = opt(0.1, "stop when more than this fraction of videos fail to "
                                      "decode", range="[0, 1]")


@dataclass
class SyntheticConfig:  # flags --synthetic-<name>
    classes: int = fixed_opt(8, "classes of the synthetic set", range=">= 2", only="builtin")
    train_per_class: int = fixed_opt(48, "training videos per class", range=">= 1", only="builtin")
    val_per_class: int = fixed_opt(16, "validation videos per class", range=">= 1", only="builtin")
    size: int = fixed_opt(64, "frame size of the synthetic videos", range=">= 16", only="builtin")
    distractors: int = fixed_opt(0, "look-alike squares doing class-like motions away from the body "
                                 "(the harder set)", range=">= 0", only="builtin")
    distractor_amplitude: float = fixed_opt(0.5, "the distractors' motion amplitude as a fraction of the "
                                            "limb's (at 1 only the attachment to the body tells the limb "
                                            "apart)", range="[0, 1]", only="builtin")
    seed: int = fixed_opt(0, "generation seed of the videos (not the training seed)", only="builtin")


@dataclass
class ModelConfig:
    backbone: str = fixed_opt("uniformerv2_b16", "video backbone", choices=BACKBONES)
    pretrained: str | None = opt(None, "backbone weights: a checkpoint path, an open_clip tag, "
                                 "'synthetic' (tiny_cnn's packaged weights, 64x64), 'auto' (those "
                                 f"where they fit, else random), 'none' (random); {WEIGHTS_DOC}",
                                 path="weights")
    text_model: str = fixed_opt("ViT-B-16", "open_clip text tower that builds the semantics bank, or "
                                "'random' for a seeded random bank")
    text_pretrained: str | None = fixed_opt(None, "text tower weights: a checkpoint path, an open_clip "
                                            f"tag, 'none' (random); {WEIGHTS_DOC}", path="weights")
    bank: str | None = fixed_opt(None, "a prebuilt semantics bank file (skips the text encoder)",
                                 path="file")
    baseline: bool = fixed_opt(False, "backbone + linear head only (Table IV, setting 1)")
    dim: int = fixed_opt(256, "RSSA width d (paper: 256)", range=">= 1", head=True)
    heads: int = fixed_opt(8, "RSSA attention heads (paper: 8)", range=">= 1", head=True)
    num_queries: int = fixed_opt(2, "K, region queries = tracklets (paper: 2)", range=">= 1", head=True)
    se_layers: int = fixed_opt(4, "semantic enhancement layers (Eq. 1)", range=">= 1", head=True)
    act_layers: int = fixed_opt(4, "region semantics activation layers (Eq. 3)", range=">= 1", head=True)
    use_se: bool = fixed_opt(True, "spatial semantic enhancement (Table IV)", flag="se", head=True)
    aggregation: str = fixed_opt("saliency", "how a tracklet reaches head_con: saliency (Eq. 9), mean or "
                                 "sum (TA off, Table IV), sequence (frames in order)", head=True,
                                 choices=("saliency", "mean", "sum", "sequence"))
    mtc_terms: tuple[str, ...] = fixed_opt(MTC_TERMS, "MTC terms: a comma list of spatial,temporal,"
                                           "tracklet, or 'none' (Table V)")
    sema_video: bool = fixed_opt(True, "L_video in L_sema (Table VI)", head=True)
    sema_prot: bool = fixed_opt(True, "L_prot in L_sema (Table VI)", head=True)
    lam: float = opt(0.6, "lambda of the temporal MTC term (Fig. 5)", head=True)
    temporal: str = fixed_opt("hinge", "temporal MTC form", choices=("hinge", "linear"), head=True)
    gamma_mtc: float = opt(5.0, "g1 of Eq. 18 (paper: 5)", range=">= 0", head=True)
    gamma_sema: float = opt(5.0, "g2 of Eq. 18 (paper: 5)", range=">= 0", head=True)
    attn_temperature: float = fixed_opt(1.0, "t of the RSSA cross-attention, softmax(q k^T / (t "
                                        "sqrt(d_head))): 1 = the paper's scaling, < 1 sharper "
                                        "region maps", range="> 0", head=True, absent=1.0)
    dropout: float = opt(0.5, "dropout before the classifiers (paper: 0.5)", range="[0, 1)")
    bank_momentum: float = opt(0.999, "mu of the bank's EMA (Eq. 12)", range="[0, 1]")


@dataclass
class OptimConfig:
    optimizer: str = fixed_opt("sgd", "optimizer", choices=("sgd", "adamw"))
    epochs: int = opt(50, "training epochs", range=">= 1")
    batch_size: int = opt(6, "videos per rank and step (paper: 24 over 4 GPUs)", range=">= 1")
    accum_steps: int = opt(1, "gradient accumulation steps", range=">= 1")
    lr: float = opt(0.01, "learning rate of the global batch (with --lr-scale none) or of a global "
                    f"batch of {REFERENCE_BATCH} (with --lr-scale linear)", range="> 0")
    lr_scale: str = opt("none", "none: --lr as given; linear: --lr x global batch / "
                        f"{REFERENCE_BATCH} (the paper's batch), global batch = --batch-size x "
                        "ranks x --accum-steps", choices=("none", "linear"))
    backbone_lr_mult: float = opt(1.0, "the backbone's lr is --lr x this (e.g. 0.1 to keep more of "
                                  "its pretraining)", range=">= 0")
    momentum: float = opt(0.9, "SGD momentum", range="[0, 1)")
    weight_decay: float = opt(5e-4, "weight decay (none on biases, norms, the bank's agent)",
                              range=">= 0")
    lr_schedule: str = fixed_opt("step", "step: x --lr-gamma every --lr-step epochs (paper); cosine: to "
                                 "0 over the epochs", choices=("step", "cosine"))
    lr_step: int = opt(20, "epochs between lr decays", range=">= 1")
    lr_gamma: float = opt(0.1, "lr decay factor", range="(0, 1]")
    warmup_epochs: int = opt(0, "linear lr warm-up from lr/10, in epochs", range=">= 0")
    grad_clip: float | None = opt(None, "clip the gradient norm to this", range="> 0")
    model_ema: float | None = opt(None, "evaluate, checkpoint and export an EMA of the weights "
                                  "with this decay per step (e.g. 0.99)", range="(0, 1)")
    amp: bool = opt(True, "bfloat16 autocast on CUDA")


@dataclass
class RunConfig:
    output_dir: str = opt("runs/art", "folder of the config, checkpoints, metrics, final model")
    resume: str | None = opt(None, "a checkpoint path, or 'auto': the newest readable one in "
                             "--output-dir")
    overwrite: bool = opt(False, "start a new run in an --output-dir that holds one: its "
                          "checkpoints, metrics, logs and outputs are removed first")
    seed: int = opt(0, "training seed (weights, sampling, augmentation)")
    deterministic: bool = opt(False, "deterministic algorithms (slower)")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    keep_checkpoints: int = opt(3, "epoch checkpoints kept", range=">= 1")
    eval_every: int = opt(1, "evaluate every N epochs (and after the last)", range=">= 1")
    log_every: int = opt(10, "steps between loss read-outs (the step's only host sync)",
                         range=">= 1")
    progress: bool = opt(True, "progress bars")
    compile: str | None = opt(None, "torch.compile the model's forward and losses in this mode "
                              "(a bare --compile: default)",
                              choices=("default", "reduce-overhead", "max-autotune"))
    check_inputs: bool = opt(False, "check each batch for non-finite values and labels out of "
                             "range on the device (debugging; syncs the host)")


@dataclass
class TrainConfig:
    preset: str = fixed_opt("paper", "the recipe, on any data: paper (the paper's, Sec. IV-A); small "
                            "(tiny_cnn from its packaged weights, AdamW, CPU-sized; 'synthetic' is its "
                            "earlier name)", choices=("paper", "small"))
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS = {"data": DataConfig, "synthetic": SyntheticConfig, "model": ModelConfig,
            "optim": OptimConfig, "run": RunConfig}

# each preset's changes to the field defaults
PRESETS: dict[str, dict] = {
    "paper": {},
    "small": {
        "model.backbone": "tiny_cnn",  # the ViT ("tiny") does not learn this set from scratch
        "model.pretrained": "auto",
        "model.text_model": "random",  # a random CLIP text tower gives every class one vector
        "data.num_frames": 8, "data.crop_size": 64, "data.workers": 2,
        "data.flip": False,  # a flip turns "limb left" into "limb right": it changes the labels
        "data.crop_scale_min": 0.8,  # keep the small limb in view
        "synthetic.train_per_class": 32,
        "optim.epochs": 20, "optim.batch_size": 16, "optim.optimizer": "adamw", "optim.lr": 2e-3,
        "optim.weight_decay": 0.05, "optim.lr_schedule": "cosine", "optim.warmup_epochs": 1,
        "model.aggregation": "sequence",  # tracklets kept in frame order
        "model.dim": 64, "model.heads": 4, "model.se_layers": 1, "model.act_layers": 2,
        "model.dropout": 0.0, "model.gamma_mtc": 0.5, "model.gamma_sema": 0.5,
        "model.bank_momentum": 0.99,
        # sharper region maps (softmax(q k^T / (0.25 sqrt(d_head)))): on the main job the queries
        # point at the limb 7x chance instead of 4.5x, at the same accuracy (docs/evidence.md)
        "model.attn_temperature": 0.25,
        "run.log_every": 5,
    },
}
# the output folder by data: the built-in set's main job writes to runs/synthetic
OUTPUT_DIRS = {"builtin": "runs/synthetic", "named": "runs/art"}
# fmt: on


# ------------------------------------------------------------------------------- the options
@dataclass(frozen=True)
class Option:
    """One option: its key (``section.name``), flag, type (None allowed or not), declaration."""

    key: str
    flag: str
    type: type
    optional: bool
    meta: typing.Mapping
    default: object


@functools.cache
def options() -> tuple[Option, ...]:
    """Every option, in declaration order (``preset`` first); built once per process."""
    out = []
    for section, cls in [("", TrainConfig), *SECTIONS.items()]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in SECTIONS:
                continue
            args = typing.get_args(hints[f.name])
            kind = next((a for a in args if a is not type(None)), hints[f.name])
            kind = tuple if typing.get_origin(hints[f.name]) is tuple else kind
            prefix = "synthetic-" if section == "synthetic" else ""
            flag = "--" + prefix + f.metadata.get("flag", f.name).replace("_", "-")
            key = f"{section}.{f.name}" if section else f.name
            out.append(Option(key, flag, kind, type(None) in args, f.metadata, f.default))
    return tuple(out)


# the dotted keys declared with fixed_opt: a resume refuses to change them (rundir.resume_diff)
RESUME_FIXED = frozenset(o.key for o in options() if o.meta.get("fixed"))


def with_absent(saved: dict) -> dict:
    """A saved config (nested dict) with the options it predates filled in with the value they
    had then (``absent`` in their declaration), so that a resume compares a run recorded before
    ``--attn-temperature`` existed as t = 1, not as "not recorded"."""
    out = json.loads(json.dumps(saved))
    for o in options():
        if "absent" not in o.meta:
            continue
        *head, last = o.key.split(".")
        node = out
        for part in head:
            node = node.setdefault(part, {})
        node.setdefault(last, o.meta["absent"])
    return out


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg, key: str, value) -> None:
    *head, last = key.split(".")
    for part in head:
        cfg = getattr(cfg, part)
    setattr(cfg, last, value)


def coerce(o: Option, value):
    """A value from a flag or a config file -> the option's type; ConfigError naming the flag."""
    if value is None or (o.optional and isinstance(value, str) and value.lower() == "null"):
        if o.optional:
            return None
        raise ConfigError(f"{o.flag} cannot be empty")
    if o.key == "preset" and isinstance(value, str):
        value = PRESET_ALIASES.get(value, value)
    if o.type is tuple:  # the MTC terms
        if isinstance(value, str):
            value = [t for t in value.replace(" ", "").lower().split(",") if t not in ("", "none")]
        bad = [t for t in value if t not in MTC_TERMS]
        if bad:
            raise ConfigError(f"{o.flag}: unknown term(s) {bad}; choose from {MTC_TERMS} or none")
        return tuple(value)
    if isinstance(value, (list, tuple, dict, set)):  # e.g. `lr: [0.1]` in a config file
        raise ConfigError(f"{o.flag}: expected one {o.type.__name__}, got {value!r}")
    if o.type is bool and isinstance(value, str):
        value = {"true": True, "false": False, "yes": True, "no": False}.get(value.lower(), value)
    if o.type is bool and not isinstance(value, bool):
        raise ConfigError(f"{o.flag}: expected true or false, got {value!r}")
    try:
        if o.type in (int, float) and isinstance(value, bool):
            raise ValueError
        if o.type is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        value = o.type(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{o.flag}: expected {o.type.__name__}, got {value!r}") from None
    if o.meta.get("choices") and value not in o.meta["choices"]:
        raise ConfigError(f"{o.flag}: {value!r} is not one of {', '.join(o.meta['choices'])}")
    return value


def _in_range(v, spec: str) -> bool:
    if spec[0] in "<>":
        op, bound = spec.split()
        return {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}[op](
            v, float(bound)
        )
    lo, hi = (float(b) for b in spec[1:-1].split(","))
    return (v >= lo if spec[0] == "[" else v > lo) and (v <= hi if spec[-1] == "]" else v < hi)


# ------------------------------------------------------------------------------- dicts, files
def config_to_dict(cfg: TrainConfig) -> dict:
    """The config as a plain nested dict of str/int/float/bool/None/list: ``{"preset": ...,
    "data": {...}, "synthetic": {...}, "model": {...}, "optim": {...}, "run": {...}}``."""
    d = dataclasses.asdict(cfg)
    d["model"]["mtc_terms"] = list(d["model"]["mtc_terms"])
    return d


def flatten(d: dict) -> dict:
    """A nested config dict -> ``{"section.name": value}``; ConfigError for unknown keys."""
    if not isinstance(d, dict):
        raise ConfigError(f"config: expected a mapping of options, got {type(d).__name__}")
    flat = {}
    for k, v in d.items():
        if k in SECTIONS and not isinstance(v, dict):
            raise ConfigError(f"config: {k!r} must be a mapping, got {v!r}")
        flat.update({f"{k}.{kk}": vv for kk, vv in v.items()} if k in SECTIONS else {k: v})
    unknown = sorted(set(flat) - {o.key for o in options()})
    if unknown:
        raise ConfigError(f"config: unknown key(s) {unknown}")
    return flat


def config_from_dict(d: dict, partial: bool = False) -> TrainConfig:
    """The inverse of ``config_to_dict``: ValueError naming unknown keys, and missing ones unless
    ``partial`` (they keep the field defaults). Values are type-checked and range-checked. Also
    reads the flat config of earlier checkpoints (``synthetic_classes``, ``num_frames``, ...):
    keys that no longer exist are dropped, options that did not exist yet keep their defaults."""
    if _is_flat(d):
        d, partial = _from_flat(d), True
    flat, cfg = flatten(d), TrainConfig()
    missing = sorted({o.key for o in options()} - set(flat))
    if missing and not partial:
        raise ConfigError(f"config: missing key(s) {missing}")
    by_key = {o.key: o for o in options()}
    for key, value in flat.items():
        _set(cfg, key, coerce(by_key[key], value))
    validate(cfg, paper_rules=False)
    return cfg


def _is_flat(d) -> bool:
    """The flat config of earlier checkpoints: no section mapping, and keys beyond ``preset``."""
    return (
        isinstance(d, dict)
        and not any(isinstance(d.get(section), dict) for section in SECTIONS)
        and bool(set(d) - {"preset"})
    )


def _from_flat(d: dict) -> dict:
    nested: dict = {}
    for o in options():
        section, _, name = o.key.rpartition(".")
        flat = f"synthetic_{name}" if section == "synthetic" else name
        if flat in d:
            value = d[flat]
            if name == "pretrained" and value is None:
                value = "none"  # the flat config's None meant random weights
            (nested.setdefault(section, {}) if section else nested)[name] = _plain(value)
    return nested


def _plain(value):
    """A value of an earlier config -> str/int/float/bool/None/list/dict (e.g. a Path -> str)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def head_options(cfg: TrainConfig) -> dict:
    """ARTHead's keyword arguments: the model options declared ``head=True``, and the MTC terms as
    weights (plain JSON-able values)."""
    m = cfg.model
    opts = {f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.metadata.get("head")}
    opts["mtc_weights"] = tuple(1.0 if t in m.mtc_terms else 0.0 for t in MTC_TERMS)
    return opts


def builtin_data(cfg_or_values) -> bool:
    """True when the run trains the built-in synthetic set: no --data-root, no --train-list."""
    if isinstance(cfg_or_values, dict):
        v = cfg_or_values
        return not (v.get("data.data_root") or v.get("data.train_list"))
    d = cfg_or_values.data
    return not (d.data_root or d.train_list)


def load_config_file(path: str) -> dict:
    """A YAML or JSON config file (any subset of ``config_to_dict``'s keys) -> its dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file not found: {path!r}")
    try:
        if p.suffix.lower() == ".json":
            d = json.loads(p.read_text())
        else:
            import yaml

            d = yaml.safe_load(p.read_text())
    except Exception as exc:  # any parse error, reported with the file
        raise ConfigError(f"--config: cannot parse {path!r}: {str(exc).splitlines()[0]}") from None
    return d or {}


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (``.yaml``) or JSON (``.json``), atomically."""
    d = config_to_dict(cfg)
    if path.suffix == ".json":
        text = json.dumps(d, indent=2)
    else:
        import yaml

        text = yaml.safe_dump(d, sort_keys=False)
    with atomic_write(path, "w") as fh:
        fh.write(text)


# ------------------------------------------------------------------------------- resolving
def pick_preset(given: dict, file_values: dict) -> str:
    """``--preset``, else the config file's, else paper when a data set is named, else small."""
    both = {**file_values, **given}
    if "preset" in both:
        return PRESET_ALIASES.get(both["preset"], both["preset"])
    return "small" if builtin_data(both) else "paper"


def preset_defaults(preset: str, dataset: str = "finegym", builtin: bool = True) -> dict:
    """``{key: default}`` of ``preset`` (on the built-in set or on named data): the field
    defaults with the preset's changes."""
    preset = PRESET_ALIASES.get(preset, preset)
    if preset not in PRESETS:
        raise ConfigError(f"--preset: {preset!r} is not one of {', '.join(PRESETS)}")
    return {
        **{o.key: o.default for o in options()},
        **PRESETS[preset],
        "preset": preset,
        "data.dataset": dataset,
        "run.output_dir": OUTPUT_DIRS["builtin" if builtin else "named"],
    }


def applies(o: Option, builtin: bool) -> bool:
    """Whether option ``o`` applies to the data of the run (the built-in set or named data)."""
    return o.meta.get("only") in (None, "builtin" if builtin else "named")


def not_applying(o: Option, builtin: bool) -> str:
    if o.meta["only"] == "builtin":
        return f"{o.flag} applies to the built-in set only, not with --data-root or --train-list"
    return f"{o.flag} needs a data set: --data-root or --train-list/--val-list"


def resolve(given: dict, file_values: dict | None = None, dataset: str = "finegym") -> TrainConfig:
    """The run's config from the flags given (``{key: value}``) over a config file's (nested) values
    over the preset's defaults; checked: types, choices, ranges, and options that do not apply to
    the run's data (given as a flag, or set to another value than the default in the file)."""
    file_values = flatten(file_values or {})
    by_key = {o.key: o for o in options()}
    preset = coerce(by_key["preset"], pick_preset(given, file_values))
    builtin = builtin_data({**file_values, **given})
    defaults = preset_defaults(preset, file_values.get("data.dataset", dataset), builtin)
    values = {**defaults, **{k: coerce(by_key[k], v) for k, v in {**file_values, **given}.items()}}
    for key, o in by_key.items():
        set_here = key in given or (key in file_values and values[key] != defaults[key])
        if not applies(o, builtin) and set_here:
            raise ConfigError(not_applying(o, builtin))
    if "data.split" in given and values["data.dataset"] != "finegym":
        raise ConfigError(f"--split applies to FineGym only, not to {values['data.dataset']}")
    if values["model.pretrained"] == "auto" and preset == "paper":
        raise ConfigError(
            f"--pretrained auto is for --preset small: name the weights, or "
            f"'none' for random ones ({WEIGHTS_DOC})"
        )
    if values["model.pretrained"] == "auto":  # the packaged weights where they fit, else random
        fits = PACKAGED.get((values["model.backbone"], "synthetic")) == values["data.crop_size"]
        values["model.pretrained"] = "synthetic" if fits else "none"
    cfg = TrainConfig()
    for key, value in values.items():
        if key.endswith("pretrained") and isinstance(value, str) and value.lower() == "none":
            value = "none"
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig, paper_rules: bool = True) -> None:
    """Every option's range and the rules between options; ConfigError naming the flag.
    ``paper_rules``: the paper preset's refusals (no silent random weights, a data set named)."""
    for o in options():
        v, spec = _get(cfg, o.key), o.meta.get("range")
        if spec and v is not None and not _in_range(v, spec):
            raise ConfigError(f"{o.flag} must be {'' if spec[0] in '<>' else 'in '}{spec}, got {v}")
    d, m = cfg.data, cfg.model
    if m.dim % m.heads:
        raise ConfigError(f"--dim ({m.dim}) must be divisible by --heads ({m.heads})")
    device = cfg.run.device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    if bool(d.train_list) != bool(d.val_list):
        raise ConfigError("--train-list and --val-list must be given together")
    if m.pretrained == "synthetic" and PACKAGED.get((m.backbone, "synthetic")) != d.crop_size:
        raise ConfigError(
            "--pretrained synthetic: the packaged weights fit tiny_cnn at "
            f"--crop-size 64 only, not {m.backbone} at {d.crop_size}"
        )
    text = not m.baseline and m.bank is None and m.text_model != "random"
    if paper_rules and text and d.train_list and d.class_names is None:
        raise ConfigError(
            "--class-names FILE is needed with --train-list: the semantics bank "
            "is built from the class names (or give --bank FILE, or --text-model random)"
        )
    if cfg.preset != "paper" or not paper_rules:
        return
    for flag, value, needed in [
        ("--pretrained", m.pretrained, True),
        ("--text-pretrained", m.text_pretrained, text),
    ]:
        if needed and value is None:
            raise ConfigError(
                f"{flag} is required with --preset paper: a checkpoint path, an "
                f"open_clip tag, or 'none' for random weights ({WEIGHTS_DOC})"
            )


# ------------------------------------------------------------------------------- files on disk
def dataset_files(cfg: TrainConfig) -> dict:
    """The annotation files of the configured data set, checked to exist: {"kind": "list" |
    "finegym" | "diving48", "train", "val", "root" (the base of the videos' paths), "extra" (FineGym
    categories / Diving48 vocabulary file, or None)}."""
    d = cfg.data
    root = Path(d.data_root) if d.data_root else None
    if d.train_list:
        return {"kind": "list", "train": d.train_list, "val": d.val_list, "root": root}
    if d.dataset == "finegym":  # the layout of docs/data.md
        ann, s = root / "annotations", d.split
        versions = [f"{s}_train_element_v1.1.txt", f"{s}_train_element_v2.txt"]
        train = _first(ann, [*versions, f"{s}_train_element.txt"], "annotation file")
        val = _first(ann, [f"{s}_val_element.txt"], "annotation file")
        videos = _first(root, ["clips", "subactions", "videos"], "clip folder")
        extra = ann / f"{s}_categories.txt"
    else:
        train = _first(root, ["Diving48_V2_train.json"], "annotation file")
        val = _first(root, ["Diving48_V2_test.json"], "annotation file")
        videos, extra = _first(root, ["rgb"], "clip folder"), root / "Diving48_vocab.json"
    return {
        "kind": d.dataset,
        "train": train,
        "val": val,
        "root": videos,
        "extra": extra if extra.is_file() else None,
    }


def _first(folder: Path, names: list[str], what: str) -> Path:
    for n in names:
        if (folder / n).exists():
            return folder / n
    raise ConfigError(
        f"--data-root: no {what} in {folder} (looked for {', '.join(names)}); see "
        "docs/data.md for the layout under --data-root"
    )


def read_class_names(path) -> list[str]:
    """One class name per non-empty line, in label order; ConfigError if none or one repeats."""
    names = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    dup = sorted({n for n in names if names.count(n) > 1})
    if not names or dup:
        raise ConfigError(
            f"--class-names: {os.fspath(path)!r} "
            + (f"names {dup} more than once" if dup else "holds no name")
        )
    return names


def _max_label(flag: str, path) -> int:
    """The largest label of a '<path> <label>' list (its paths are not read here)."""
    top = -1
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.rsplit(maxsplit=1)
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise ConfigError(f"{flag}: {path}:{i}: expected '<path> <label>', got {line!r}")
        top = max(top, int(parts[1]))
    if top < 0:
        raise ConfigError(f"{flag}: {path!r} has no '<path> <label>' line")
    return top


def check_paths(cfg: TrainConfig) -> None:
    """Every file and folder the run reads or writes, checked before anything is built."""
    for o in options():
        v, kind = _get(cfg, o.key), o.meta.get("path")
        p = Path(os.path.expanduser(v)) if kind and v is not None else None
        if kind == "dir" and p and not p.is_dir():
            raise ConfigError(f"{o.flag}: folder not found: {v!r}")
        if kind == "file" and p and not p.is_file():
            raise ConfigError(f"{o.flag}: file not found: {v!r}")
        looks_like_file = p and (os.sep in v or v.startswith(("~", ".")) or p.suffix)
        if kind == "weights" and v not in ("none", "synthetic") and looks_like_file:
            if not p.is_file():
                raise ConfigError(f"{o.flag}: checkpoint file not found: {v!r} ({WEIGHTS_DOC})")
    resume, out = cfg.run.resume, Path(cfg.run.output_dir)
    if resume not in (None, "auto") and not Path(resume).is_file():
        raise ConfigError(f"--resume: checkpoint file not found: {resume!r}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir: {cfg.run.output_dir!r} exists and is not a folder")
    parent = next(p for p in [out.absolute(), *out.absolute().parents] if p.exists())
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--output-dir: cannot write under {str(parent)!r}")
    if builtin_data(cfg):
        return
    files = dataset_files(cfg)
    if files["kind"] == "list":
        top = max(
            _max_label("--train-list", files["train"]), _max_label("--val-list", files["val"])
        )
        if cfg.data.class_names and top >= len(read_class_names(cfg.data.class_names)):
            raise ConfigError(
                f"--class-names: {cfg.data.class_names!r} names fewer classes "
                f"than the lists' labels 0..{top}"
            )
