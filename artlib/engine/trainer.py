"""The training run: data, model, optimizer, resume, the epoch loop, evaluation, checkpoints, logs.

Legend: B videos per rank and step, T frames, N_cls classes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import fields
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from artlib._io import atomic_save_torch, cache_root
from artlib.engine.checkpoint import (
    CheckpointManager,
    backbone_normalization,
    restore_rng,
    training_state,
)
from artlib.engine.config import (
    MTC_TERMS,
    TrainConfig,
    dataset_files,
    read_class_names,
    save_config,
)
from artlib.engine.distributed import DistInfo, barrier, cleanup_distributed, setup_distributed
from artlib.engine.ema import ModelEma
from artlib.engine.evaluation import EvalResult, agreed_batches, evaluate, exact_loader
from artlib.engine.metrics import save_confusion_png, save_per_class_csv
from artlib.nn import set_check_inputs
from artlib.nn._checks import check_labels

__all__ = ["train", "build_model", "build_data"]

log = logging.getLogger("artlib.train")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# ------------------------------------------------------------------------------------------ data
def _read_items(cfg: TrainConfig):
    """-> (train items, val items, class names or None) of the data set the config names."""
    from artlib.data import read_diving48, read_finegym, read_generic_list

    files = dataset_files(cfg)
    if files["kind"] == "list":  # relative paths: against --data-root, else the list's folder
        tr, names = read_generic_list(files["train"], files["root"])
        va, _ = read_generic_list(files["val"], files["root"])
    elif files["kind"] == "finegym":
        tr, names = read_finegym(files["train"], files["root"], files["extra"])
        va, _ = read_finegym(files["val"], files["root"], files["extra"])
    else:
        tr, names = read_diving48(files["train"], files["root"], files["extra"])
        va, _ = read_diving48(files["val"], files["root"], files["extra"])
    return tr, va, names


def build_items(cfg: TrainConfig, info: DistInfo):
    """-> (train items, val items, class names) of the configured data set (the synthetic set is
    written once by rank 0 into the cache)."""
    from artlib.data import read_generic_list

    d = cfg.data
    if cfg.preset == "synthetic":  # the built-in fine-grained set
        from artlib.data.synthetic import make_finegrained_set

        root = cache_root() / "synthetic"
        s = cfg.synthetic
        spec = dict(
            num_classes=s.classes,
            train_per_class=s.train_per_class,
            val_per_class=s.val_per_class,
            size=(s.size, s.size),
            distractors=s.distractors,
            distractor_amplitude=s.distractor_amplitude,
            seed=s.seed,
        )
        if info.is_main:  # rank 0 writes the videos once; the others then reuse the cached files
            make_finegrained_set(root, **spec)
        barrier()
        syn = make_finegrained_set(root, **spec)
        train_items, _ = read_generic_list(syn.train_list)
        val_items, _ = read_generic_list(syn.val_list)
        names = list(syn.class_names)
    else:
        train_items, val_items, names = _read_items(cfg)
    n_labels = max(it.label for it in (*train_items, *val_items)) + 1
    if d.class_names:
        names = read_class_names(d.class_names)
        if len(names) < n_labels:
            raise ValueError(f"--class-names: {len(names)} names, but label {n_labels - 1} occurs")
    if names is None:
        names = [f"class {i}" for i in range(n_labels)]
    return train_items, val_items, names


def build_data(cfg: TrainConfig, info: DistInfo):
    """-> (train_loader, val_loader, class_names)."""
    from artlib.data import VideoDataset, make_loader

    d = cfg.data
    train_items, val_items, names = build_items(cfg, info)
    use_dali = d.loader == "dali" or (d.loader == "auto" and info.device.type == "cuda")
    if use_dali:
        try:
            from artlib.data.dali import make_dali_loader, require_dali

            require_dali()  # DALI itself is imported lazily: fail here, where PyAV can take over
        except ImportError as exc:
            if d.loader == "dali":
                raise
            log.warning("DALI unavailable (%s): using the PyAV loader", exc)
            use_dali = False
    common = dict(num_frames=d.num_frames, crop_size=d.crop_size, seed=cfg.run.seed)
    bs = cfg.optim.batch_size
    if use_dali:
        dali = dict(
            batch_size=bs,
            device_id=info.local_rank,
            shard_id=info.rank,
            num_shards=info.world_size,
            num_threads=max(d.workers, 1),
            **common,
        )
        train_loader = make_dali_loader(train_items, train=True, flip=d.flip, **dali)
        val_loader = make_dali_loader(val_items, train=False, flip=False, **dali)
        return train_loader, val_loader, names

    train_ds = VideoDataset(
        train_items, train=True, flip=d.flip, scale=(d.crop_scale_min, 1.0), **common
    )
    val_ds = VideoDataset(val_items, train=False, flip=False, num_clips=d.eval_clips, **common)
    kw = dict(
        num_workers=d.workers,
        distributed=info.distributed,
        seed=cfg.run.seed,
        max_failure_fraction=d.max_failure_fraction,
    )
    train_loader = make_loader(train_ds, bs, train=True, **kw)
    val_loader = make_loader(val_ds, bs, train=False, **kw)
    return train_loader, val_loader, names


def _unpack(batch, device, num_classes: int | None = None, check_inputs: bool = False):
    """A batch from either loader -> (video (B, T, 3, H, W), labels (B,)) on ``device``. The label
    range is checked while the batch is still on the CPU (no host sync); the finite check of the
    video only with ``--check-inputs``."""
    if isinstance(batch, dict):
        video, labels = batch["video"], batch["label"]
    else:
        video, labels = batch[0], batch[1]
    if num_classes is not None and labels.numel() and (labels.device.type == "cpu" or check_inputs):
        check_labels(labels, num_classes)
    if check_inputs and not bool(torch.isfinite(video).all()):
        raise FloatingPointError("video: the batch holds non-finite values (--check-inputs)")
    return video.to(device, non_blocking=True), labels.to(device, non_blocking=True).long()


# ----------------------------------------------------------------------------------------- model
def head_options(cfg: TrainConfig) -> dict:
    """ARTHead's keyword arguments: the model options declared ``head=True``, and the MTC terms as
    weights."""
    m = cfg.model
    opts = {f.name: getattr(m, f.name) for f in fields(m) if f.metadata.get("head")}
    opts["mtc_weights"] = tuple(1.0 if t in m.mtc_terms else 0.0 for t in MTC_TERMS)
    return opts


def _weights(value: str | None) -> str | None:
    return None if value in (None, "none") else value


def build_model(cfg: TrainConfig, class_names: list[str], bank=None) -> nn.Module:
    """Backbone + ART head (or the baseline head): the one way to build a model from a config.
    ``bank``: a ready SemanticBank, else one from ``--bank`` or built with the text encoder over
    the class names."""
    from artlib.models import ART, build_backbone
    from artlib.nn import SemanticBank
    from artlib.text import load_bank

    m = cfg.model
    kw = {} if m.backbone.startswith("tea") else {"img_size": cfg.data.crop_size}
    backbone = build_backbone(m.backbone, pretrained=_weights(m.pretrained), **kw)
    common = dict(num_frames=cfg.data.num_frames, dropout=m.dropout)
    if m.baseline:
        return ART(backbone, len(class_names), None, baseline=True, **common)
    if bank is None and m.bank:
        bank = load_bank(m.bank, momentum=m.bank_momentum, num_classes=len(class_names))
    elif bank is None and m.text_model == "random":
        # A seeded random bank: distinct, unit-norm class embeddings. Without pretrained text
        # weights a random CLIP text tower maps all class names to nearly one vector (pairwise cos
        # 0.93-0.99 measured for the 8 synthetic classes), which gives the K queries nothing to
        # tell apart; this is the synthetic preset's bank.
        g = torch.Generator().manual_seed(cfg.run.seed)
        s0 = F.normalize(torch.randn(8, len(class_names), m.dim, generator=g), dim=-1)
        bank = SemanticBank(s0, momentum=m.bank_momentum)
    elif bank is None:
        from artlib.text import build_semantic_bank, clean_labels

        s0 = build_semantic_bank(
            clean_labels(class_names), m.text_model, pretrained=_weights(m.text_pretrained)
        )
        bank = SemanticBank(s0, momentum=m.bank_momentum)
    if bank.num_classes != len(class_names):
        raise ValueError(f"--bank has {bank.num_classes} classes, the data set {len(class_names)}")
    return ART(backbone, len(class_names), bank, **common, **head_options(cfg))


def build_optimizer(cfg: TrainConfig, model: nn.Module):
    """SGD or AdamW over four groups: (backbone | head) x (decayed | not: biases, norms, the bank's
    agent). The backbone's groups run at ``lr * backbone_lr_mult``; the schedule scales all."""
    o = cfg.optim
    from artlib.models.art import param_groups

    groups = param_groups(_unwrap(model), o.lr, o.backbone_lr_mult, o.weight_decay)
    if o.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=o.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, cfg))
    return opt, sched


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """The lr multiplier for ``epoch`` (0-based; the scheduler steps once per epoch)."""
    o = cfg.optim
    if epoch < o.warmup_epochs:
        return 0.1 + 0.9 * epoch / o.warmup_epochs
    if o.lr_schedule == "cosine":
        span = max(1, o.epochs - o.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - o.warmup_epochs) / span))
    return o.lr_gamma ** (epoch // o.lr_step)


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """``torch.compile`` over the model's forward, losses included (``--compile MODE``); the first
    call compiles, and its time is logged by the caller."""
    return torch.compile(model, mode=None if mode == "default" else mode)


# ------------------------------------------------------------------------------------------ loop
def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    model = model.module if hasattr(model, "module") else model
    return getattr(model, "_orig_mod", model)


def train_one_epoch(
    model,
    loader,
    optimizer,
    cfg,
    info,
    epoch,
    autocast,
    ema: ModelEma | None = None,
    num_classes: int | None = None,
    compile_log: str | None = None,
) -> dict:
    """One pass over ``loader``. The loss terms accumulate on the device and are read (one host
    sync) every ``--log-every`` steps and at the end; a non-finite loss stops the run there."""
    model.train()
    o, r = cfg.optim, cfg.run
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    steps = len(loader)
    # which steps run (and when too many videos failed) is decided over all ranks
    batches = agreed_batches(loader, cfg.data.max_failure_fraction)
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{o.epochs}",
        total=steps,
        disable=not (info.is_main and r.progress),
        dynamic_ncols=True,
    )
    optimizer.zero_grad(set_to_none=True)
    t_start, vals, read_at, i = time.time(), {}, 0, -1

    def read_out(step: int) -> dict[str, float]:
        vals = {k: float(v) / max(seen, 1) for k, v in sums.items()}  # the one sync
        if not all(math.isfinite(v) for v in vals.values()):
            raise FloatingPointError(
                f"loss is not finite by epoch {epoch + 1}, step {step}; running means: "
                + ", ".join(f"{k}={v:.4g}" for k, v in vals.items())
            )
        return vals

    for i, batch in enumerate(bar):
        video, labels = _unpack(batch, info.device, num_classes, r.check_inputs)
        last_micro = (i + 1) % o.accum_steps == 0 or i + 1 == steps
        sync = nullcontext() if last_micro or not info.distributed else model.no_sync()
        with sync:
            with autocast():
                _, losses = model(video, labels)
            (losses["total"] / o.accum_steps).backward()
        if compile_log and i == 0:
            log.info(
                "torch.compile mode=%s: first step (compile) took %.1f s",
                compile_log,
                time.time() - t_start,
            )
        if last_micro:
            if o.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _unwrap(model).ema_update()  # Eq. 12: S <- mu S + (1 - mu) S^a after each step
            if ema is not None:  # --model-ema: after the bank's update, so it averages that too
                ema.update(_unwrap(model))
        n = labels.numel()
        seen += n
        with torch.no_grad():
            for k, v in losses.items():
                if v.dim() == 0:
                    acc = v.detach().float() * n  # stays on the device
                    sums[k] = sums[k].add_(acc) if k in sums else acc
        if (i + 1) % r.log_every == 0 or i + 1 == steps:
            vals, read_at = read_out(i + 1), i + 1
            if not bar.disable:
                bar.set_postfix(loss=f"{vals['total']:.3f}")
    if sums and read_at != i + 1:  # steps skipped on every rank: the last one came before `steps`
        vals = read_out(i + 1)
    return {f"train_{k}": v for k, v in vals.items()}  # read at the last step


def _validate(model, loader, num_classes, info, cfg, autocast) -> EvalResult:
    """Exact validation (artlib.engine.evaluation): every clip once, on any number of ranks."""
    return evaluate(
        model,
        loader,
        num_classes,
        device=info.device,
        autocast=autocast,
        max_failure_fraction=cfg.data.max_failure_fraction,
        progress=info.is_main and cfg.run.progress,
    )


class _Logs:
    """Per-epoch metrics to CSV and (when installed) TensorBoard, rank 0 only."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.csv_path = out / "metrics.csv"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.info("tensorboard not installed: metrics go to %s only", self.csv_path)

    def write(self, epoch: int, row: dict) -> None:
        if not self.enabled:
            return
        row = {"epoch": epoch, **row}
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, epoch)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ------------------------------------------------------------------------------------------ main
def train(cfg: TrainConfig) -> dict:
    """Run the whole training; returns the final metrics (on every rank)."""
    info = setup_distributed(cfg.run.device)
    logging.basicConfig(
        level=logging.INFO if info.is_main else logging.WARNING,
        format=f"[rank {info.rank}] %(asctime)s %(levelname)s %(message)s",
    )
    try:
        return _train(cfg, info)
    finally:
        cleanup_distributed()


_PRESET_LINE = {
    "synthetic": "preset synthetic: the built-in synthetic set on %s (pass --data-root or "
    "--train-list for your own data; --help lists every option)",
    "paper": "preset paper: the paper's recipe on %s",
}


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    d, m, o, r = cfg.data, cfg.model, cfg.optim, cfg.run
    where = d.train_list or d.data_root if cfg.preset == "paper" else info.device
    log.info(_PRESET_LINE[cfg.preset], where)
    out = Path(r.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")  # --config on it reproduces the run
    seed_everything(r.seed, r.deterministic)
    t0 = time.time()
    train_loader, val_loader, names = build_data(cfg, info)
    torch.manual_seed(r.seed)  # identical initial weights on every rank
    model = build_model(cfg, names).to(info.device)
    mean, std = backbone_normalization(model)  # e.g. 0.45/0.225 after an official UniFormerV2
    for loader in (train_loader, val_loader):
        loader.dataset.set_normalization(mean, std)
    set_check_inputs(model, r.check_inputs)  # value checks that sync the host: debugging only
    optimizer, scheduler = build_optimizer(cfg, model)
    use_amp = o.amp and info.device.type == "cuda"

    def autocast():  # bfloat16 needs no loss scaling
        if use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    ckpt = CheckpointManager(out / "checkpoints", keep=r.keep_checkpoints)
    start_epoch, best, state = 0, 0.0, None
    if r.resume:
        state = ckpt.load(r.resume, map_location="cpu")  # weights_only: never runs code
        if state is None:
            log.info("--resume auto: no checkpoint in %s, starting fresh", ckpt.directory)
        else:
            if state["class_names"] != list(names):
                raise ValueError(
                    f"--resume: the checkpoint's {len(state['class_names'])} classes differ from "
                    f"the data set's {len(names)}"
                )
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            restore_rng(state["rng"])
            start_epoch, best = state["epoch"], state.get("best_top1", 0.0)
            log.info("resumed from epoch %d (%s)", start_epoch, r.resume)
    ema = ModelEma(model, o.model_ema) if o.model_ema else None  # from the (resumed) weights
    if ema is not None and state is not None:
        if state.get("model_ema") is not None:
            ema.load_state_dict(state["model_ema"])
        else:  # a checkpoint from a run without --model-ema
            log.warning("--model-ema: the checkpoint has no average; starting it from here")
    del state  # the checkpoint's tensors (optimizer moments included) need not outlive the resume

    if info.distributed:
        ddp_kw = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(
            model, find_unused_parameters=_has_unused(cfg), **ddp_kw
        )
    if r.compile:
        model = compile_model(model, r.compile)
    logs = _Logs(out, info.is_main)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s | %s%s | T=%d -> %d token frames | %d classes | %d train / %d val batches per rank | "
        "%.2fM params | %s x%d",
        "baseline" if m.baseline else "ART",
        m.backbone,
        f" (weights: {m.pretrained})" if _weights(m.pretrained) else " (random init)",
        d.num_frames,
        _unwrap(model).token_frames,
        len(names),
        len(train_loader),
        len(val_loader),
        n_params / 1e6,
        info.device,
        info.world_size,
    )

    metrics: dict = {}
    result = None
    scored = model if ema is None else ema.module  # what is evaluated and exported
    val_exact = exact_loader(val_loader)  # every validation clip once, no padded repeats
    for epoch in range(start_epoch, o.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        te = time.time()
        row = train_one_epoch(
            model,
            train_loader,
            optimizer,
            cfg,
            info,
            epoch,
            autocast,
            ema,
            len(names),
            compile_log=r.compile if epoch == start_epoch else None,
        )
        row["lr"] = optimizer.param_groups[0]["lr"]
        scheduler.step()
        is_best = False
        if (epoch + 1) % r.eval_every == 0 or epoch + 1 == o.epochs:
            result = _validate(scored, val_exact, len(names), info, cfg, autocast)
            metrics = {f"val_{k}": v for k, v in result.metrics().items()}
            row.update(metrics)
            is_best = metrics["val_top1"] > best or not ckpt.best_path.exists()
            best = max(best, metrics["val_top1"])
        row["epoch_time_s"] = round(time.time() - te, 2)
        row.update(_failures(train_loader, val_exact))
        logs.write(epoch + 1, row)
        if info.is_main:
            log.info(
                "epoch %d: %s",
                epoch + 1,
                " ".join(
                    f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                ),
            )
            state = training_state(
                cfg=cfg,
                class_names=names,
                model=_unwrap(model),
                ema=ema,
                optimizer=optimizer,
                scheduler=scheduler,
                epoch=epoch + 1,
                best_top1=best,
            )
            ckpt.save(state, epoch + 1, best=is_best)  # best.pt: the best val Top-1 so far
            del state
        barrier()

    logs.close()
    if result is None:  # resumed after the last epoch: evaluate once more
        result = _validate(scored, val_exact, len(names), info, cfg, autocast)
        metrics = {f"val_{k}": v for k, v in result.metrics().items()}
    if info.is_main:
        save_per_class_csv(result.matrix, out / "per_class.csv", names)
        save_confusion_png(result.matrix, out / "confusion.png", names)  # warns without matplotlib
        summary = {
            "model": "baseline" if m.baseline else "ART",
            "top1": round(metrics["val_top1"], 4),
            "top5": round(metrics["val_top5"], 4),
            "mean_class_acc": round(metrics["val_mean_class_acc"], 4),
            "count": metrics["val_count"],
            "skipped": metrics["val_skipped"],
            "best_top1": round(best, 4),
            "epochs": o.epochs,
            "minutes": round((time.time() - t0) / 60, 2),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        # the trained backbone alone, for --pretrained of a later run (e.g. ART on a harder set)
        atomic_save_torch(_unwrap(scored).backbone.state_dict(), out / "backbone.pt")
        print(
            f"FINAL {summary['model']} top1={summary['top1']:.4f} top5={summary['top5']:.4f} "
            f"mean_class_acc={summary['mean_class_acc']:.4f} best_top1={summary['best_top1']:.4f} "
            f"epochs={o.epochs} time={summary['minutes']:.1f}min output={out}",
            flush=True,
        )
    return metrics


def _has_unused(cfg: TrainConfig) -> bool:
    m = cfg.model
    return (
        m.baseline
        or not m.sema_video
        or not m.sema_prot
        or m.gamma_sema == 0
        or len(m.mtc_terms) < len(MTC_TERMS)
    )


def _failures(*loaders) -> dict:
    """Distinct videos skipped so far on this rank (the loaders log each with its path)."""
    return {"skipped_videos": len(set().union(*(getattr(ld, "failures", {}) for ld in loaders)))}
