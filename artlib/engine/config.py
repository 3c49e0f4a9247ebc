"""Training configuration as code: a dataclass, the command-line flags that fill it, two presets.

* ``paper`` (used when ``--data-root`` is given): the paper's recipe (Sec. IV-A) — SGD momentum 0.9,
  lr 0.01 x0.1 every 20 epochs, 50 epochs, dropout 0.5, T = 16, 224^2, K = 2, d = 256, g1 = g2 = 5,
  lam = 0.6, UniFormerV2-B/16.
* ``synthetic`` (no ``--data-root``): the built-in fine-grained synthetic set with the small
  ``tiny_cnn`` backbone on CPU, finishing in a few minutes on 2 cores. The backbone starts from its
  packaged weights (``--pretrained synthetic``, trained on another synthetic set; only for tiny_cnn
  at 64x64, and ``--pretrained none`` gives random ones). Its loss weights, dropout and
  tracklet aggregation ("sequence": frames kept in order, not Eq. 9) are small-set choices (see the
  README's evidence section), not the paper's, which were tuned for FineGym.

Any flag given on the command line wins over the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

__all__ = ["TrainConfig", "build_parser", "config_from_args", "PRESETS", "MTC_TERMS"]

MTC_TERMS = ("spatial", "temporal", "tracklet")


@dataclass
class TrainConfig:
    # data
    dataset: str = "finegym"
    data_root: str | None = None
    split: str = "gym99"
    train_list: str | None = None
    val_list: str | None = None
    loader: str = "auto"  # auto | pyav | dali
    workers: int = 4
    num_frames: int = 16
    crop_size: int = 224
    flip: bool = True
    crop_scale_min: float = 0.4  # random resized crop keeps [crop_scale_min, 1] of the area
    eval_clips: int = 1
    max_failure_fraction: float = 0.1
    synthetic_classes: int = 8
    synthetic_train_per_class: int = 48
    synthetic_val_per_class: int = 16
    synthetic_size: int = 64
    synthetic_distractors: int = 0
    synthetic_distractor_amplitude: float = 0.5  # of the limb's amplitude
    synthetic_seed: int = 0  # which videos are generated (not the training seed)
    # model
    backbone: str = "uniformerv2_b16"
    pretrained: str | None = None
    text_model: str = "ViT-B-16"
    text_pretrained: str | None = None
    bank: str | None = None
    baseline: bool = False
    dim: int = 256
    heads: int = 8
    num_queries: int = 2
    se_layers: int = 4
    act_layers: int = 4
    use_se: bool = True
    # how a tracklet reaches head_con:
    # saliency (Eq. 9) | mean | sum | sequence (TrackletAggregation)
    aggregation: str = "saliency"
    mtc_terms: tuple[str, ...] = MTC_TERMS
    sema_video: bool = True
    sema_prot: bool = True
    lam: float = 0.6
    temporal: str = "hinge"
    gamma_mtc: float = 5.0
    gamma_sema: float = 5.0
    dropout: float = 0.5
    # optimization
    optimizer: str = "sgd"
    epochs: int = 50
    batch_size: int = 6  # per rank: the paper's 24 over 4 GPUs
    accum_steps: int = 1
    lr: float = 0.01
    backbone_lr_mult: float = 1.0  # the backbone learns at lr * this (e.g. 0.1 to keep pretraining)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step"  # step (the paper's: x lr_gamma every lr_step epochs) | cosine
    lr_step: int = 20
    lr_gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up from lr/10 (both schedules)
    bank_momentum: float = 0.999
    grad_clip: float | None = None
    model_ema: float | None = None  # decay of the weight average that is evaluated (off: None)
    amp: bool = True  # bf16 autocast on CUDA
    # run
    output_dir: str = "runs/art"
    resume: str | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    keep_checkpoints: int = 3
    eval_every: int = 1
    log_every: int = 10
    progress: bool = True
    preset: str = "paper"
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, dict] = {
    "paper": {},
    "synthetic": dict(
        backbone="tiny_cnn",  # the ViT ("tiny") does not learn this set from scratch
        text_model="random",  # see build_model: a random CLIP text tower gives one vector
        num_frames=8,
        crop_size=64,
        flip=False,  # a flip turns "limb left" into "limb right": it changes the synthetic labels
        crop_scale_min=0.8,  # keep the small limb in view
        epochs=20,
        batch_size=16,
        synthetic_train_per_class=32,
        synthetic_val_per_class=16,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.05,
        lr_schedule="cosine",
        warmup_epochs=1,
        aggregation="sequence",  # tracklets kept in frame order: see the README's evidence
        dim=64,
        heads=4,
        se_layers=1,
        act_layers=2,
        dropout=0.0,
        gamma_mtc=0.5,
        gamma_sema=0.5,
        bank_momentum=0.99,
        workers=2,
        output_dir="runs/synthetic",
        log_every=5,
    ),
}


def _bool_flag(p: argparse.ArgumentParser, name: str, dest: str, help: str) -> None:
    p.add_argument(name, dest=dest, action="store_true", default=None, help=help)


def build_parser(
    dataset: str = "finegym", description: str | None = None
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description or f"Train ART on {dataset}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-root", help="dataset root; omit it to train on the built-in synthetic set"
    )
    if dataset == "finegym":
        g.add_argument("--split", choices=["gym99", "gym288"], help="FineGym split (default gym99)")
    g.add_argument("--train-list", help="annotation file for training (default: the dataset's own)")
    g.add_argument("--val-list", help="annotation file for validation")
    g.add_argument(
        "--loader", choices=["auto", "pyav", "dali"], help="auto: DALI on GPU, PyAV on CPU"
    )
    g.add_argument("--workers", type=int, help="DataLoader workers per rank")
    g.add_argument("--num-frames", type=int, help="T, frames sampled per video (paper: 16)")
    g.add_argument("--crop-size", type=int, help="input resolution (paper: 224)")
    g.add_argument(
        "--no-flip",
        dest="flip",
        action="store_false",
        default=None,
        help="no horizontal flip (flips change some classes' meaning)",
    )
    g.add_argument(
        "--crop-scale-min",
        type=float,
        help="random resized crop keeps at least this fraction of the area",
    )
    g.add_argument("--eval-clips", type=int, help="clips per video in evaluation")
    g.add_argument(
        "--max-failure-fraction",
        type=float,
        help="stop when more than this fraction of videos fail to decode",
    )
    g.add_argument("--synthetic-classes", type=int)
    g.add_argument("--synthetic-train-per-class", type=int)
    g.add_argument("--synthetic-val-per-class", type=int)
    g.add_argument("--synthetic-size", type=int, help="frame size of the synthetic videos")
    g.add_argument(
        "--synthetic-distractors",
        type=int,
        help="look-alike squares doing class-like motions away from the body (the harder set)",
    )
    g.add_argument(
        "--synthetic-distractor-amplitude",
        type=float,
        help="the distractors' motion amplitude as a fraction of the limb's (default 0.5; at 1 "
        "only the attachment to the body tells the limb apart)",
    )
    g.add_argument(
        "--synthetic-seed",
        type=int,
        help="generation seed of the synthetic videos (another seed: another set of the same kind)",
    )

    g = p.add_argument_group("model")
    g.add_argument(
        "--backbone",
        help="tiny | tiny_cnn | tiny_cnn_t1 | uniformerv2_b16 | uniformerv2_l14 | tea_r50",
    )
    g.add_argument(
        "--pretrained",
        help="backbone weights: an open_clip tag, a local checkpoint path, 'synthetic' (tiny_cnn's "
        "packaged weights: the synthetic preset's default at 64x64) or 'none' (random init)",
    )
    g.add_argument(
        "--text-model",
        help="open_clip text tower for the semantics bank, or 'random' for a seeded random bank",
    )
    g.add_argument(
        "--text-pretrained", help="text tower weights: tag or local path (default: random)"
    )
    g.add_argument("--bank", help="a prebuilt semantics bank file (skips the text encoder)")
    _bool_flag(g, "--baseline", "baseline", "backbone + linear head only (Table IV, setting 1)")
    g.add_argument("--dim", type=int, help="RSSA width d (paper: 256)")
    g.add_argument("--heads", type=int, help="RSSA attention heads (paper: 8)")
    g.add_argument("--num-queries", type=int, help="K, region queries = tracklets (paper: 2)")
    g.add_argument("--se-layers", type=int)
    g.add_argument("--act-layers", type=int)
    g.add_argument(
        "--no-se",
        dest="use_se",
        action="store_false",
        default=None,
        help="no spatial semantic enhancement (Table IV)",
    )
    g.add_argument(
        "--no-ta",
        dest="aggregation",
        action="store_const",
        const="mean",
        help="mean pooling instead of tracklet aggregation (Table IV): --aggregation mean",
    )
    g.add_argument(
        "--aggregation",
        choices=["saliency", "mean", "sum", "sequence"],
        help="how a tracklet reaches head_con: saliency (Eq. 9, the paper), mean/sum (TA off), "
        "sequence (artlib: the whole tracklet, frames in order)",
    )
    g.add_argument(
        "--mtc-terms", help="comma list of spatial,temporal,tracklet, or 'none' (Table V)"
    )
    g.add_argument(
        "--no-sema-video",
        dest="sema_video",
        action="store_false",
        default=None,
        help="drop L_video from L_sema (Table VI)",
    )
    g.add_argument(
        "--no-sema-prot",
        dest="sema_prot",
        action="store_false",
        default=None,
        help="drop L_prot from L_sema (Table VI)",
    )
    g.add_argument("--lam", type=float, help="lambda of the temporal MTC term (Fig. 5)")
    g.add_argument("--temporal", choices=["hinge", "linear"], help="temporal MTC form")
    g.add_argument("--gamma-mtc", type=float, help="g1 of Eq. 18 (paper: 5)")
    g.add_argument("--gamma-sema", type=float, help="g2 of Eq. 18 (paper: 5)")
    g.add_argument("--dropout", type=float, help="dropout before the classifiers (paper: 0.5)")

    g = p.add_argument_group("optimization")
    g.add_argument("--optimizer", choices=["sgd", "adamw"])
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="videos per rank per step")
    g.add_argument("--accum-steps", type=int, help="gradient accumulation steps")
    g.add_argument("--lr", type=float)
    g.add_argument(
        "--backbone-lr-mult",
        type=float,
        metavar="M",
        help="the backbone's lr is --lr x M (default 1; e.g. 0.1 to keep more of its pretraining)",
    )
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument(
        "--lr-schedule",
        choices=["step", "cosine"],
        help="step: x lr_gamma every lr_step epochs (paper); cosine: to 0 over the epochs",
    )
    g.add_argument("--warmup-epochs", type=int, help="linear lr warm-up from lr/10, in epochs")
    g.add_argument("--lr-step", type=int, help="epochs between lr decays")
    g.add_argument("--lr-gamma", type=float, help="lr decay factor")
    g.add_argument("--bank-momentum", type=float, help="mu of the bank's EMA (Eq. 12)")
    g.add_argument("--grad-clip", type=float)
    g.add_argument(
        "--model-ema",
        type=float,
        metavar="DECAY",
        help="evaluate, checkpoint and export an EMA of the weights with this decay per step "
        "(e.g. 0.99); off by default",
    )
    g.add_argument(
        "--no-amp", dest="amp", action="store_false", default=None, help="no bf16 autocast on GPU"
    )

    g = p.add_argument_group("run")
    g.add_argument("--output-dir")
    g.add_argument("--resume", help="checkpoint path, or 'auto' for the latest in --output-dir")
    g.add_argument("--seed", type=int)
    _bool_flag(g, "--deterministic", "deterministic", "deterministic algorithms (slower)")
    g.add_argument("--device", help="auto | cpu | cuda")
    g.add_argument("--keep-checkpoints", type=int)
    g.add_argument("--eval-every", type=int, help="evaluate every N epochs")
    g.add_argument("--log-every", type=int, help="steps between progress-bar loss updates")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    return p


def config_from_args(args: argparse.Namespace, dataset: str = "finegym") -> TrainConfig:
    """Preset (``synthetic`` without --data-root, else ``paper``), then the flags given."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    preset = "paper" if given.get("data_root") else "synthetic"
    values = dict(PRESETS[preset])
    values.update(given)
    if preset == "synthetic" and "pretrained" not in given:
        from artlib.models.registry import BUILTIN_WEIGHTS

        # the packaged weights, where they fit the backbone and input size chosen
        packaged = BUILTIN_WEIGHTS.get((values.get("backbone"), "synthetic"))
        if packaged and packaged[1]["img_size"] == values.get("crop_size"):
            values["pretrained"] = "synthetic"
    if str(values.get("pretrained")).lower() == "none":
        values["pretrained"] = None
    values["preset"], values["dataset"] = preset, dataset
    if isinstance(values.get("mtc_terms"), str):
        values["mtc_terms"] = parse_mtc_terms(values["mtc_terms"])
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in values.items() if k in names})
    validate(cfg)
    return cfg


def parse_mtc_terms(text: str) -> tuple[str, ...]:
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    terms = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in terms if t not in MTC_TERMS]
    if bad:
        raise ValueError(f"--mtc-terms: unknown term(s) {bad}; choose from {MTC_TERMS} or 'none'")
    return terms


def validate(cfg: TrainConfig) -> None:
    """Clear errors for flag values that cannot work."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(msg)

    need(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
    need(cfg.accum_steps >= 1, f"--accum-steps must be >= 1, got {cfg.accum_steps}")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    need(cfg.backbone_lr_mult >= 0, f"--backbone-lr-mult must be >= 0, got {cfg.backbone_lr_mult}")
    need(cfg.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {cfg.warmup_epochs}")
    need(cfg.lr_step >= 1, f"--lr-step must be >= 1, got {cfg.lr_step}")
    need(
        cfg.synthetic_distractors >= 0,
        f"--synthetic-distractors must be >= 0, got {cfg.synthetic_distractors}",
    )
    need(
        0.0 <= cfg.synthetic_distractor_amplitude <= 1.0,
        f"--synthetic-distractor-amplitude must be in [0, 1], got "
        f"{cfg.synthetic_distractor_amplitude}",
    )
    need(cfg.num_frames >= 1, f"--num-frames must be >= 1, got {cfg.num_frames}")
    need(cfg.num_queries >= 1, f"--num-queries must be >= 1, got {cfg.num_queries}")
    need(cfg.crop_size >= 16, f"--crop-size must be >= 16, got {cfg.crop_size}")
    need(
        0 < cfg.crop_scale_min <= 1, f"--crop-scale-min must be in (0, 1], got {cfg.crop_scale_min}"
    )
    need(0 <= cfg.dropout < 1, f"--dropout must be in [0, 1), got {cfg.dropout}")
    need(
        0 <= cfg.max_failure_fraction <= 1,
        f"--max-failure-fraction must be in [0, 1], got {cfg.max_failure_fraction}",
    )
    need(cfg.dim % cfg.heads == 0, f"--dim ({cfg.dim}) must be divisible by --heads ({cfg.heads})")
    need(
        cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:"),
        f"--device must be auto, cpu or cuda[:N], got {cfg.device!r}",
    )
    need(
        cfg.model_ema is None or 0 < cfg.model_ema < 1,
        f"--model-ema must be in (0, 1), got {cfg.model_ema}",
    )
    need(cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}")
