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
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from artlib._io import atomic_save_torch
from artlib.engine.checkpoint import CheckpointManager, restore_rng, training_state
from artlib.engine.config import MTC_TERMS, TrainConfig
from artlib.engine.distributed import DistInfo, barrier, cleanup_distributed, setup_distributed
from artlib.engine.ema import ModelEma
from artlib.engine.evaluation import EvalResult, agreed_batches, evaluate, exact_loader
from artlib.engine.metrics import save_confusion_png, save_per_class_csv

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
def _dataset_files(cfg: TrainConfig):
    """Annotation readers for the real data sets, by name, with the official file layout."""
    from artlib.data import read_diving48, read_finegym, read_generic_list

    root = Path(cfg.data_root)
    if cfg.train_list or cfg.val_list:
        if not (cfg.train_list and cfg.val_list):
            raise ValueError("--train-list and --val-list must be given together")
        tr, names = read_generic_list(cfg.train_list, root)
        va, _ = read_generic_list(cfg.val_list, root)
        return tr, va, names
    if cfg.dataset == "finegym":  # the layout of README "Preparing FineGym"
        ann = root / "annotations"
        train_file = _first(
            ann,
            [
                f"{cfg.split}_train_element_v1.1.txt",
                f"{cfg.split}_train_element_v2.txt",
                f"{cfg.split}_train_element.txt",
            ],
            "annotation file",
        )
        val_file = _first(ann, [f"{cfg.split}_val_element.txt"], "annotation file")
        videos = _first(root, ["clips", "subactions", "videos"], "clip folder")
        cats = ann / f"{cfg.split}_categories.txt"
        cats = cats if cats.is_file() else None
        tr, names = read_finegym(train_file, videos, cats)
        va, _ = read_finegym(val_file, videos, cats)
        return tr, va, names
    if cfg.dataset == "diving48":
        vocab = root / "Diving48_vocab.json"
        tr, names = read_diving48(root / "Diving48_V2_train.json", root / "rgb", vocab)
        va, _ = read_diving48(root / "Diving48_V2_test.json", root / "rgb", vocab)
        return tr, va, names
    raise ValueError(f"unknown dataset {cfg.dataset!r}")


def _first(folder: Path, names: list[str], what: str) -> Path:
    for n in names:
        if (folder / n).exists():
            return folder / n
    raise FileNotFoundError(
        f"no {what} in {folder} (looked for {', '.join(names)}): see the README section "
        "'Preparing FineGym and Diving48' for the expected layout under --data-root"
    )


def build_data(cfg: TrainConfig, info: DistInfo):
    """-> (train_loader, val_loader, class_names)."""
    from artlib.data import VideoDataset, make_loader, read_generic_list

    if cfg.data_root is None:  # the built-in synthetic fine-grained set
        from artlib.data.synthetic import make_finegrained_set

        root = Path(os.environ.get("ARTLIB_CACHE", Path.home() / ".cache" / "artlib")) / "synthetic"
        spec = dict(
            num_classes=cfg.synthetic_classes,
            train_per_class=cfg.synthetic_train_per_class,
            val_per_class=cfg.synthetic_val_per_class,
            size=(cfg.synthetic_size, cfg.synthetic_size),
            distractors=cfg.synthetic_distractors,
            distractor_amplitude=cfg.synthetic_distractor_amplitude,
            seed=cfg.synthetic_seed,
        )
        if info.is_main:  # rank 0 writes the videos once; the others then reuse the cached files
            make_finegrained_set(root, **spec)
        barrier()
        syn = make_finegrained_set(root, **spec)
        train_items, _ = read_generic_list(syn.train_list)
        val_items, _ = read_generic_list(syn.val_list)
        names = list(syn.class_names)
    else:
        train_items, val_items, names = _dataset_files(cfg)
    if names is None:
        names = [f"class {i}" for i in range(max(it.label for it in train_items) + 1)]

    use_dali = cfg.loader == "dali" or (cfg.loader == "auto" and info.device.type == "cuda")
    if use_dali:
        try:
            from artlib.data.dali import make_dali_loader, require_dali

            require_dali()  # DALI itself is imported lazily: fail here, where PyAV can take over
        except ImportError as exc:
            if cfg.loader == "dali":
                raise
            log.warning("DALI unavailable (%s): using the PyAV loader", exc)
            use_dali = False
    common = dict(num_frames=cfg.num_frames, crop_size=cfg.crop_size, seed=cfg.seed)
    if use_dali:
        train_loader = make_dali_loader(
            train_items,
            batch_size=cfg.batch_size,
            train=True,
            flip=cfg.flip,
            device_id=info.local_rank,
            shard_id=info.rank,
            num_shards=info.world_size,
            num_threads=max(cfg.workers, 1),
            **common,
        )
        val_loader = make_dali_loader(
            val_items,
            batch_size=cfg.batch_size,
            train=False,
            flip=False,
            device_id=info.local_rank,
            shard_id=info.rank,
            num_shards=info.world_size,
            num_threads=max(cfg.workers, 1),
            **common,
        )
        return train_loader, val_loader, names

    train_ds = VideoDataset(
        train_items, train=True, flip=cfg.flip, scale=(cfg.crop_scale_min, 1.0), **common
    )
    val_ds = VideoDataset(val_items, train=False, flip=False, num_clips=cfg.eval_clips, **common)
    kw = dict(
        num_workers=cfg.workers,
        distributed=info.distributed,
        seed=cfg.seed,
        max_failure_fraction=cfg.max_failure_fraction,
    )
    train_loader = make_loader(train_ds, cfg.batch_size, train=True, **kw)
    val_loader = make_loader(val_ds, cfg.batch_size, train=False, **kw)
    return train_loader, val_loader, names


def _unpack(batch, device):
    """A batch from either loader -> (video (B, T, 3, H, W), labels (B,))."""
    if isinstance(batch, dict):
        video, labels = batch["video"], batch["label"]
    else:
        video, labels = batch[0], batch[1]
    return video.to(device, non_blocking=True), labels.to(device, non_blocking=True).long()


# ----------------------------------------------------------------------------------------- model
def head_options(cfg: TrainConfig) -> dict:
    return dict(
        dim=cfg.dim,
        heads=cfg.heads,
        num_queries=cfg.num_queries,
        se_layers=cfg.se_layers,
        act_layers=cfg.act_layers,
        gamma_mtc=cfg.gamma_mtc,
        gamma_sema=cfg.gamma_sema,
        lam=cfg.lam,
        temporal=cfg.temporal,
        mtc_weights=tuple(1.0 if t in cfg.mtc_terms else 0.0 for t in MTC_TERMS),
        use_se=cfg.use_se,
        aggregation=cfg.aggregation,
        sema_video=cfg.sema_video,
        sema_prot=cfg.sema_prot,
    )


def build_model(cfg: TrainConfig, class_names: list[str], bank=None) -> nn.Module:
    """Backbone + ART head (or the baseline head). ``bank``: a ready SemanticBank, else one from
    ``--bank`` or built with the text encoder over the class names."""
    from artlib.models import ART, build_backbone
    from artlib.nn import SemanticBank

    kw = {} if cfg.backbone.startswith("tea") else {"img_size": cfg.crop_size}
    backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained, **kw)
    common = dict(num_frames=cfg.num_frames, dropout=cfg.dropout)
    if cfg.baseline:
        return ART(backbone, len(class_names), None, baseline=True, **common)
    if bank is None and cfg.bank:
        bank = SemanticBank.from_file(cfg.bank, momentum=cfg.bank_momentum)
    elif bank is None and cfg.text_model == "random":
        # A seeded random bank: distinct, unit-norm class embeddings. Without pretrained text
        # weights a random CLIP text tower maps all class names to nearly one vector (pairwise cos
        # 0.93-0.99 measured for the 8 synthetic classes), which gives the K queries nothing to
        # tell apart; this is the synthetic preset's bank.
        g = torch.Generator().manual_seed(cfg.seed)
        s0 = F.normalize(torch.randn(8, len(class_names), cfg.dim, generator=g), dim=-1)
        bank = SemanticBank(s0, momentum=cfg.bank_momentum)
    elif bank is None:
        from artlib.text import build_semantic_bank, clean_labels

        s0 = build_semantic_bank(
            clean_labels(class_names), cfg.text_model, pretrained=cfg.text_pretrained
        )
        bank = SemanticBank(s0, momentum=cfg.bank_momentum)
    if bank.num_classes != len(class_names):
        raise ValueError(f"--bank has {bank.num_classes} classes, the data set {len(class_names)}")
    return ART(backbone, len(class_names), bank, **common, **head_options(cfg))


def build_optimizer(cfg: TrainConfig, model: nn.Module):
    """SGD or AdamW over four groups: (backbone | head) x (decayed | not: biases, norms, the bank's
    agent). The backbone's groups run at ``lr * backbone_lr_mult``; the schedule scales all."""
    buckets: dict[tuple[bool, bool], list] = {}  # (in the backbone, decayed) -> parameters
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = not (p.ndim < 2 or name.endswith("agent"))
        buckets.setdefault((name.startswith("backbone."), decayed), []).append(p)
    groups = [
        {
            "params": params,
            "weight_decay": cfg.weight_decay if decayed else 0.0,
            "lr": cfg.lr * (cfg.backbone_lr_mult if in_backbone else 1.0),
        }
        for (in_backbone, decayed), params in sorted(buckets.items())
    ]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, cfg))
    return opt, sched


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """The lr multiplier for ``epoch`` (0-based; the scheduler steps once per epoch)."""
    if epoch < cfg.warmup_epochs:
        return 0.1 + 0.9 * epoch / cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    return cfg.lr_gamma ** (epoch // cfg.lr_step)


# ------------------------------------------------------------------------------------------ loop
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def train_one_epoch(
    model, loader, optimizer, scaler, cfg, info, epoch, autocast, ema: ModelEma | None = None
) -> dict:
    model.train()
    sums: dict[str, float] = {}
    seen = 0
    steps = len(loader)
    # which steps run (and when too many videos failed) is decided over all ranks
    batches = agreed_batches(loader, cfg.max_failure_fraction)
    bar = _progress(batches, info, cfg, f"epoch {epoch + 1}/{cfg.epochs}", total=steps)
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        video, labels = _unpack(batch, info.device)
        last_micro = (i + 1) % cfg.accum_steps == 0 or i + 1 == steps
        sync = nullcontext() if last_micro or not info.distributed else model.no_sync()
        with sync:
            with autocast():
                _, losses = model(video, labels)
            loss = losses["total"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {i + 1}; terms: "
                    + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items() if v.dim() == 0)
                )
            scaler.scale(loss / cfg.accum_steps).backward()
        if last_micro:
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            _unwrap(model).ema_update()  # Eq. 12: S <- mu S + (1 - mu) S^a after each step
            if ema is not None:  # --model-ema: after the bank's update, so it averages that too
                ema.update(_unwrap(model))
        n = labels.numel()
        seen += n
        for k, v in losses.items():
            if v.dim() == 0:
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        if info.is_main and cfg.progress and hasattr(bar, "set_postfix") and i % cfg.log_every == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    return {f"train_{k}": v / max(seen, 1) for k, v in sums.items()}


def _validate(model, loader, num_classes, info, cfg, autocast) -> EvalResult:
    """Exact validation (artlib.engine.evaluation): every clip once, on any number of ranks."""
    return evaluate(
        model,
        loader,
        num_classes,
        device=info.device,
        autocast=autocast,
        max_failure_fraction=cfg.max_failure_fraction,
        progress=info.is_main and cfg.progress,
    )


def _progress(it, info, cfg, desc, leave=True, total=None):
    if not (info.is_main and cfg.progress):
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    return tqdm(it, desc=desc, leave=leave, total=total, dynamic_ncols=True)


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
    info = setup_distributed(cfg.device)
    logging.basicConfig(
        level=logging.INFO if info.is_main else logging.WARNING,
        format=f"[rank {info.rank}] %(asctime)s %(levelname)s %(message)s",
    )
    try:
        return _train(cfg, info)
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    out = Path(cfg.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    seed_everything(cfg.seed, cfg.deterministic)
    t0 = time.time()
    train_loader, val_loader, names = build_data(cfg, info)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, names).to(info.device)
    optimizer, scheduler = build_optimizer(cfg, model)
    use_amp = cfg.amp and info.device.type == "cuda"
    scaler = torch.amp.GradScaler(info.device.type, enabled=False)  # bf16 needs no loss scaling

    def autocast():
        if use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    ckpt = CheckpointManager(out / "checkpoints", keep=cfg.keep_checkpoints)
    start_epoch, best, state = 0, 0.0, None
    if cfg.resume:
        state = ckpt.load(cfg.resume, map_location="cpu")  # weights_only: never runs code
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
            log.info("resumed from epoch %d (%s)", start_epoch, cfg.resume)
    ema = ModelEma(model, cfg.model_ema) if cfg.model_ema else None  # from the (resumed) weights
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
    logs = _Logs(out, info.is_main)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s | %s%s | %d classes | %d train / %d val batches per rank | %.2fM params | %s x%d",
        "baseline" if cfg.baseline else "ART",
        cfg.backbone,
        f" (weights: {cfg.pretrained})" if cfg.pretrained else " (random init)",
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
    for epoch in range(start_epoch, cfg.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        te = time.time()
        row = train_one_epoch(
            model, train_loader, optimizer, scaler, cfg, info, epoch, autocast, ema
        )
        row["lr"] = optimizer.param_groups[0]["lr"]
        scheduler.step()
        is_best = False
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
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
        _maybe_die(epoch + 1)

    logs.close()
    if result is None:  # resumed after the last epoch: evaluate once more
        result = _validate(scored, val_exact, len(names), info, cfg, autocast)
        metrics = {f"val_{k}": v for k, v in result.metrics().items()}
    if info.is_main:
        save_per_class_csv(result.matrix, out / "per_class.csv", names)
        save_confusion_png(result.matrix, out / "confusion.png", names)  # warns without matplotlib
        summary = {
            "model": "baseline" if cfg.baseline else "ART",
            "top1": round(metrics["val_top1"], 4),
            "top5": round(metrics["val_top5"], 4),
            "mean_class_acc": round(metrics["val_mean_class_acc"], 4),
            "count": metrics["val_count"],
            "skipped": metrics["val_skipped"],
            "best_top1": round(best, 4),
            "epochs": cfg.epochs,
            "minutes": round((time.time() - t0) / 60, 2),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        # the trained backbone alone, for --pretrained of a later run (e.g. ART on a harder set)
        atomic_save_torch(_unwrap(scored).backbone.state_dict(), out / "backbone.pt")
        print(
            f"FINAL {summary['model']} top1={summary['top1']:.4f} top5={summary['top5']:.4f} "
            f"mean_class_acc={summary['mean_class_acc']:.4f} best_top1={summary['best_top1']:.4f} "
            f"epochs={cfg.epochs} time={summary['minutes']:.1f}min output={out}",
            flush=True,
        )
    return metrics


def _has_unused(cfg: TrainConfig) -> bool:
    return (
        cfg.baseline
        or not cfg.sema_video
        or not cfg.sema_prot
        or cfg.gamma_sema == 0
        or len(cfg.mtc_terms) < len(MTC_TERMS)
    )


def _failures(*loaders) -> dict:
    """Distinct videos skipped so far on this rank (the loaders log each with its path)."""
    return {"skipped_videos": len(set().union(*(getattr(ld, "failures", {}) for ld in loaders)))}


def _maybe_die(epoch: int) -> None:
    """For the kill-and-resume test: ARTLIB_TEST_KILL_AFTER_EPOCH=N kills this process with SIGKILL
    right after epoch N's checkpoint, like an out-of-memory kill or a pre-empted node."""
    at = os.environ.get("ARTLIB_TEST_KILL_AFTER_EPOCH")
    if at is not None and int(at) == epoch:
        os.kill(os.getpid(), signal.SIGKILL)
