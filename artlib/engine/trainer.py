"""The trainer: a model, two loaders and a config in; the epoch loop, validation, checkpoints and
the final outputs out. It is handed its parts (``artlib.engine.data`` builds the loaders,
``artlib.engine.model`` the model) and builds the rest from the config: the optimizer and its
schedule (``optim``), the weight EMA (``ema``), the checkpointer (``checkpoint``), the logs
(``logs``).

    trainer = Trainer(cfg, model, train_loader, val_loader, class_names, info)
    metrics = trainer.fit()      # resume, epochs, validation, checkpoints, FINAL line

``train(cfg)`` assembles all of it (``artlib-train``); examples/train_finegym.py does the same
step by step.

Legend: B videos per rank and step, T frames, N_cls classes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from artlib._io import atomic_save_torch
from artlib.engine.checkpoint import Checkpointer
from artlib.engine.config import TrainConfig, builtin_data, head_options, save_config
from artlib.engine.data import build_items, build_loaders
from artlib.engine.distributed import (
    DistInfo,
    barrier,
    cleanup_distributed,
    setup_distributed,
)
from artlib.engine.ema import ModelEma
from artlib.engine.evaluation import EvalResult, agreed_batches, evaluate, exact_loader
from artlib.engine.logs import Logs, interval_line, progress, setup_logging
from artlib.engine.metrics import save_confusion_png, save_per_class_csv
from artlib.engine.model import build_model, compile_model, data_config, unwrap, wrap_model
from artlib.engine.optim import build_optimizer, effective_lr, global_batch, lr_factor
from artlib.engine.rundir import (
    RunFolderError,
    RunFolderLock,
    check_fresh,
    ignore_agent_signals,
    remove_stale_parts,
    set_parent_death_signal,
)
from artlib.nn import set_check_inputs
from artlib.nn._checks import check_labels
from artlib.nn.localization import health_scalars

__all__ = ["Trainer", "claim_output_dir", "run_session", "seed_everything", "train"]
# the names other modules imported from here before the engine was split into parts
__all__ += ["build_items", "build_model", "build_optimizer", "compile_model", "head_options"]
__all__ += ["lr_factor"]

log = logging.getLogger("artlib.train")
_unwrap = unwrap


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def to_device(batch, device, num_classes: int | None = None, check_inputs: bool = False):
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


class LossMeter:
    """The epoch's loss terms, summed on the device (clip-weighted) and read at the log interval:
    ``read`` is the step's one host sync; a non-finite mean stops the run there."""

    def __init__(self, epoch: int):
        self.epoch, self.sums, self.seen = epoch, {}, 0
        self.last: dict[str, float] = {}  # the epoch's means at the last read-out
        self.interval: dict[str, float] = {}  # the means over the last interval
        self.at_last: tuple[dict[str, float], int] = ({}, 0)  # the sums and clips read before it

    def add(self, losses: dict, n: int) -> None:
        self.seen += n
        with torch.no_grad():
            for k, v in losses.items():
                if v.dim() == 0:
                    acc = v.detach().float() * n  # stays on the device
                    self.sums[k] = self.sums[k].add_(acc) if k in self.sums else acc

    def read(self, step: int) -> dict[str, float]:
        """The epoch's running means; ``interval`` gets the means since the last read."""
        sums = {k: float(v) for k, v in self.sums.items()}  # the one sync
        vals = {k: v / max(self.seen, 1) for k, v in sums.items()}
        if not all(math.isfinite(v) for v in vals.values()):
            raise FloatingPointError(
                f"loss is not finite by epoch {self.epoch + 1}, step {step} (running means: "
                + ", ".join(f"{k}={v:.4g}" for k, v in vals.items())
                + "); try a lower --lr or --grad-clip, or --check-inputs to find a bad batch; "
                "--resume auto continues from the last checkpoint"
            )
        before, n_before = self.at_last
        n = max(self.seen - n_before, 1)
        self.interval = {k: (v - before.get(k, 0.0)) / n for k, v in sums.items()}
        self.at_last, self.last = (sums, self.seen), vals
        return vals


class Trainer:
    """Trains ``model`` (unwrapped, on ``info.device``) on ``train_loader``, validates on every
    clip of ``val_loader``'s set, checkpoints, logs and writes the final outputs to
    ``cfg.run.output_dir``. ``optimizer``/``scheduler``: built from ``cfg`` when not given.
    ``model(video, labels)`` -> (logits, {"total": loss, other scalar terms}) and
    ``model.ema_update()`` after each optimizer step (ART's bank, Eq. 12)."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        train_loader,
        val_loader,
        class_names: list[str],
        info: DistInfo | None = None,
        optimizer=None,
        scheduler=None,
    ):
        self.cfg, self.info = cfg, info or DistInfo()
        self.model, self.class_names = model, list(class_names)
        set_check_inputs(model, cfg.run.check_inputs)  # value checks that sync the host: debugging
        self.train_loader = train_loader
        self.val_loader = None if val_loader is None else exact_loader(val_loader)
        if optimizer is None:
            optimizer, scheduler = build_optimizer(cfg, model, self.info.world_size)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.ema = ModelEma(model, cfg.optim.model_ema) if cfg.optim.model_ema else None
        self.out = Path(cfg.run.output_dir)
        self.checkpointer = Checkpointer(
            self.out / "checkpoints",
            cfg=cfg,
            class_names=self.class_names,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            ema=self.ema,
            keep=cfg.run.keep_checkpoints,
        )
        # ART's steps also log the tracklet health (train_health_*): its maps come with the
        # losses (return_maps); the baseline has none
        self.health = not cfg.model.baseline and "return_maps" in _parameters(model.forward)
        self.net = None  # the model as the steps run it (DDP, compiled), set by fit()
        self.logs = None
        self.best, self.steps_done, self.start_epoch = 0.0, 0, 0

    @property
    def scored(self) -> nn.Module:
        """What is evaluated and exported: the EMA with --model-ema, else the model."""
        return self.model if self.ema is None else self.ema.module

    def autocast(self):  # bfloat16 on CUDA needs no loss scaling
        if self.cfg.optim.amp and self.info.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # -------------------------------------------------------------------------------- a step
    def train_step(self, video, labels, step_now: bool) -> dict:
        """Forward and backward of one micro-batch; the optimizer steps when ``step_now`` (the
        last micro-batch of --accum-steps; the gradients are all-reduced then, not before)."""
        net = self.net or self.model
        no_sync = nullcontext() if step_now or not self.info.distributed else net.no_sync()
        with no_sync:
            with self.autocast():
                if self.health:  # the last decoder layer's maps -> the tracklet health figures
                    _, losses = net(video, labels, return_maps=True)
                    losses.update(health_scalars(losses.pop("maps")))  # 0-dim, on the device
                else:
                    _, losses = net(video, labels)
            (losses["total"] / self.cfg.optim.accum_steps).backward()
        if step_now:
            self.optimizer_step()
        return losses

    def optimizer_step(self) -> None:
        o = self.cfg.optim
        if o.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.ema_update()  # Eq. 12: S <- mu S + (1 - mu) S^a after each step
        if self.ema is not None:  # --model-ema: after the bank's update, so it averages that too
            self.ema.update(self.model)
        self.steps_done += 1

    def flush_gradients(self) -> None:
        """An optimizer step on micro-batch gradients still pending at the end of an epoch (its
        last steps were skipped on every rank). They were accumulated under ``no_sync``, so they
        are averaged over the ranks here, as DDP would have."""
        if self.info.distributed:
            import torch.distributed as dist

            for p in self.model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(self.info.world_size)
        self.optimizer_step()

    # ------------------------------------------------------------------------------ an epoch
    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training loader -> ``{"train_<term>": epoch mean}``. Which steps run
        is decided over all ranks (``agreed_batches``); the losses are read at the log interval."""
        o, r = self.cfg.optim, self.cfg.run
        (self.net or self.model).train()
        steps, meter = len(self.train_loader), LossMeter(epoch)
        batches = agreed_batches(self.train_loader, self.cfg.data.max_failure_fraction)
        show = self.info.is_main and r.progress
        bar = progress(batches, total=steps, desc=f"epoch {epoch + 1}/{o.epochs}", enabled=show)
        self.optimizer.zero_grad(set_to_none=True)
        clock, pending, i = _Clock(), 0, -1
        for i, batch in enumerate(bar):
            clock.data_ready()
            video, labels = to_device(
                batch, self.info.device, len(self.class_names), r.check_inputs
            )
            pending += 1
            step_now = pending == o.accum_steps or i + 1 == steps
            losses = self.train_step(video, labels, step_now)
            pending = 0 if step_now else pending
            meter.add(losses, labels.numel())
            clock.step_done(labels.numel())
            if i == 0 and r.compile and epoch == self.start_epoch:
                log.info("torch.compile mode=%s: first step took %.1f s", r.compile, clock.first)
            if (i + 1) % r.log_every == 0 or i + 1 == steps:
                self.log_interval(epoch, i + 1, meter.read(i + 1), meter.interval, clock, bar)
        if pending:  # the epoch's last steps were skipped on every rank
            self.flush_gradients()
        if meter.sums and meter.at_last[1] != meter.seen:
            meter.read(i + 1)
        return {f"train_{k}": v for k, v in meter.last.items()}

    def log_interval(self, epoch, step, means, interval, clock, bar) -> None:
        """The interval's scalars: to TensorBoard, and to the bar or one plain line."""
        scalars = {**interval, "lr": self.optimizer.param_groups[0]["lr"], **clock.read()}
        if self.logs is not None:
            self.logs.step(self.steps_done, scalars)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{means['total']:.3f}")
        elif self.info.is_main and self.cfg.run.progress:
            steps, epochs = len(self.train_loader), self.cfg.optim.epochs
            log.info(interval_line(epoch + 1, epochs, step, steps, scalars))

    def validate(self) -> EvalResult:
        """Exact validation (artlib.engine.evaluation): every clip once, on any number of ranks."""
        return evaluate(
            self.scored,
            self.val_loader,
            len(self.class_names),
            device=self.info.device,
            autocast=self.autocast,
            max_failure_fraction=self.cfg.data.max_failure_fraction,
            progress=self.info.is_main and self.cfg.run.progress and _tty(),
        )

    def run_epoch(self, epoch: int) -> EvalResult | None:
        """Train one epoch, validate when due, log the row, checkpoint; -> the validation."""
        o, r = self.cfg.optim, self.cfg.run
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        started = time.time()
        row = self.train_epoch(epoch)
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        result, is_best = None, False
        if (epoch + 1) % r.eval_every == 0 or epoch + 1 == o.epochs:
            result = self.validate()
            row.update({f"val_{k}": v for k, v in result.metrics().items()})
            is_best = row["val_top1"] > self.best or not self.checkpointer.best_path.exists()
            self.best = max(self.best, row["val_top1"])
        row["epoch_time_s"] = round(time.time() - started, 2)
        row["skipped_videos"] = _failures(self.train_loader, self.val_loader)
        if self.info.is_main:
            log.info("epoch %d: %s", epoch + 1, " ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
            # the checkpoint first, then the row: a kill in between loses the row (a resume
            # trains the epoch after the checkpoint), never writes an epoch twice
            self.checkpointer.save(epoch + 1, self.best, best=is_best)  # best.pt: the best Top-1
        self.logs.epoch(epoch + 1, row)
        barrier()
        return result

    # ------------------------------------------------------------------------------- the run
    def fit(self) -> dict:
        """Resume (--resume), train the remaining epochs, write the final outputs; -> the final
        validation metrics (on every rank)."""
        t0 = time.time()
        self.start_epoch, self.best = self.checkpointer.resume(self.cfg.run.resume)
        # optimizer steps so far (ceil(batches / --accum-steps) per epoch): the x axis of the
        # interval scalars continues where the checkpoint left it
        self.steps_done = self.start_epoch * -(
            -len(self.train_loader) // self.cfg.optim.accum_steps
        )
        if self.info.is_main:  # what the run actually uses, resumed options included
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")  # --config on it reproduces the run
        self.prepare_native()
        self.net = wrap_model(self.model, self.cfg, self.info.device, self.info.distributed)
        self.logs = Logs(self.out, self.info.is_main, epoch=self.start_epoch, step=self.steps_done)
        self.log_start()
        result = None
        for epoch in range(self.start_epoch, self.cfg.optim.epochs):
            result = self.run_epoch(epoch) or result
        self.logs.close()
        if result is None:  # resumed after the last epoch: evaluate once more
            result = self.validate()
        metrics = {f"val_{k}": v for k, v in result.metrics().items()}
        if self.info.is_main:
            self.write_outputs(result, metrics, minutes=(time.time() - t0) / 60)
        return metrics

    def prepare_native(self) -> None:
        """On CPU, load the native kernels ART's ops will use before the first epoch, so that a
        first build (1-4 min, announced by one log line, then cached) is not timed as the first
        step. Nothing for the baseline, on a GPU, or where another backend is chosen."""
        if self.info.device.type != "cpu" or self.cfg.model.baseline:
            return
        from artlib.ops import _backend, _native

        if any(_backend.planned(op, "cpu") == "native" for op in _native.OPS):
            _native.load()  # warns and falls back to the reference when it cannot build

    def log_start(self) -> None:
        cfg, m, info = self.cfg, self.cfg.model, self.info
        log.info(
            "%s | %s%s | T=%d -> %d token frames | %d classes | %d train / %d val batches per "
            "rank | %.2fM params | %s x%d",
            "baseline" if m.baseline else "ART",
            m.backbone,
            f" (weights: {m.pretrained})"
            if m.pretrained not in (None, "none")
            else " (random init)",
            cfg.data.num_frames,
            self.model.token_frames,
            len(self.class_names),
            len(self.train_loader),
            len(self.val_loader),
            sum(p.numel() for p in self.model.parameters()) / 1e6,
            info.device,
            info.world_size,
        )
        o, ranks = cfg.optim, info.world_size
        log.info(
            "lr %.4g for a global batch of %d (%d per rank x %d rank%s x %d accumulation step%s; "
            "--lr-scale %s, --lr %g)",
            effective_lr(cfg, ranks),
            global_batch(cfg, ranks),
            o.batch_size,
            ranks,
            "s" if ranks > 1 else "",
            o.accum_steps,
            "s" if o.accum_steps > 1 else "",
            o.lr_scale,
            o.lr,
        )

    def write_outputs(self, result: EvalResult, metrics: dict, minutes: float) -> None:
        """per_class.csv, confusion.png, summary.json, backbone.pt and the FINAL line."""
        names, out, m = self.class_names, self.out, self.cfg.model
        save_per_class_csv(result.matrix, out / "per_class.csv", names)
        save_confusion_png(result.matrix, out / "confusion.png", names)  # warns without matplotlib
        k = min(5, len(names))  # a 3-class model's best 5 are all its classes: a Top-3
        summary = {
            "model": "baseline" if m.baseline else "ART",
            "top1": round(metrics["val_top1"], 4),
            f"top{k}": round(metrics[f"val_top{k}"], 4),
            "mean_class_acc": round(metrics["val_mean_class_acc"], 4),
            "count": metrics["val_count"],
            "skipped": metrics["val_skipped"],
            "best_top1": round(self.best, 4),
            "epochs": self.cfg.optim.epochs,
            "minutes": round(minutes, 2),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        # the trained backbone alone, for --pretrained of a later run (e.g. ART on a harder set)
        atomic_save_torch(self.scored.backbone.state_dict(), out / "backbone.pt")
        print(
            f"FINAL {summary['model']} top1={summary['top1']:.4f} top{k}={summary[f'top{k}']:.4f} "
            f"mean_class_acc={summary['mean_class_acc']:.4f} best_top1={summary['best_top1']:.4f} "
            f"epochs={self.cfg.optim.epochs} time={minutes:.1f}min output={out}",
            flush=True,
        )


class _Clock:
    """Host time waiting for data vs running steps, and clips, since the last ``read``."""

    def __init__(self):
        self.mark = time.perf_counter()
        self.data = self.step = 0.0
        self.clips = self.steps = 0
        self.first = None

    def data_ready(self) -> None:
        now = time.perf_counter()
        self.data, self.mark = self.data + now - self.mark, now

    def step_done(self, clips: int) -> None:
        now = time.perf_counter()
        self.step, self.mark = self.step + now - self.mark, now
        self.clips, self.steps = self.clips + clips, self.steps + 1
        self.first = self.step if self.first is None else self.first

    def read(self) -> dict:
        """``clips_per_s``, ``data_s`` and ``step_s`` (means per step) since the last read."""
        n, total = max(self.steps, 1), self.data + self.step
        out = {
            "clips_per_s": self.clips / total if total > 0 else 0.0,
            "data_s": self.data / n,
            "step_s": self.step / n,
        }
        self.data = self.step = 0.0
        self.clips = self.steps = 0
        return out


def _parameters(fn) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else f"{v}"


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()


def _failures(*loaders) -> int:
    """Distinct videos skipped so far on this rank (the loaders log each with its path)."""
    return len(set().union(*(getattr(ld, "failures", {}) for ld in loaders)))


# ---------------------------------------------------------------------------------- assembly
def train(cfg: TrainConfig) -> dict:
    """The whole run from a config: the parts assembled, then ``Trainer.fit``; returns the final
    metrics (on every rank)."""
    with run_session(cfg) as info:
        announce(cfg, info)
        seed_everything(cfg.run.seed, cfg.run.deterministic)
        items = build_items(cfg, info)
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        model = build_model(cfg, items.class_names).to(info.device)
        loaders = build_loaders(cfg, info, items, data_config(model))
        return Trainer(cfg, model, *loaders, items.class_names, info).fit()


@contextmanager
def run_session(cfg: TrainConfig):
    """The run's processes and its output folder, around the training: a worker under torchrun
    dies with its agent (parent-death signal), the ranks join their process group, the logs are
    set up, and rank 0 owns ``--output-dir`` (``claim_output_dir``) until the block ends.

        with run_session(cfg) as info:    # DistInfo
            ...                           # build the parts, Trainer(...).fit()
    """
    if "LOCAL_RANK" in os.environ:  # under torchrun: die with the agent, never as an orphan
        set_parent_death_signal()
    info = setup_distributed(cfg.run.device)
    setup_logging(info)
    lock = None
    try:
        lock = claim_output_dir(cfg, info)
        yield info
    finally:
        if lock is not None:
            lock.release()
        cleanup_distributed()


def claim_output_dir(cfg: TrainConfig, info: DistInfo) -> RunFolderLock | None:
    """Rank 0 takes the output folder's lock, refuses a new run into a folder that holds one
    (``--overwrite`` removes it instead) and removes the ``.part`` files a killed run left. Its
    refusal reaches every rank, so each stops with the same one line (:class:`RunFolderError`)
    instead of waiting for rank 0. -> the lock (rank 0), or None."""
    out, r = Path(cfg.run.output_dir), cfg.run
    lock, error = None, None
    if info.is_main:
        try:
            lock = RunFolderLock(out).acquire()
            removed = check_fresh(out, r.resume, overwrite=r.overwrite)
            if removed:
                log.warning("--overwrite: removed the earlier run's %s", ", ".join(removed))
            parts = remove_stale_parts(out)
            if parts:
                log.info(
                    "removed %d unfinished write(s) of a killed run: %s",
                    len(parts),
                    ", ".join(str(p.relative_to(out)) for p in parts),
                )
        except RunFolderError as e:
            error = str(e)
            if lock is not None:
                lock.release()
                lock = None
        except OSError as e:  # e.g. a folder that cannot be created
            error = f"--output-dir: {out}: {e.strerror or e}"
    if info.distributed:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        if info.distributed:  # every rank stops on it: each says it, whoever exits first
            ignore_agent_signals()
        raise RunFolderError(error)
    return lock


def announce(cfg: TrainConfig, info: DistInfo) -> None:
    """The first log line: the recipe and the data (config.yaml is written after the resume,
    ``Trainer.fit``)."""
    d = cfg.data
    data = "the built-in synthetic set" if builtin_data(cfg) else (d.train_list or d.data_root)
    log.info(
        "preset %s: %s on %s (--preset small|paper picks the recipe, --data-root or --train-list "
        "the data; --help lists every option)",
        cfg.preset,
        "the small recipe" if cfg.preset == "small" else "the paper's recipe",
        f"{data}, {info.device}",
    )
