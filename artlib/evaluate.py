"""Evaluate a trained checkpoint: Top-1, Top-5 and mean per-class accuracy, exact on any number of
processes (Top-k with k = the number of classes when there are fewer than 5).

    # the validation set the checkpoint was trained with (read from the checkpoint)
    python -m artlib.evaluate --checkpoint runs/synthetic/checkpoints/best.pt

    # your own list of "<path> <label>" lines, 3 clips x 3 crops per video
    python -m artlib.evaluate --checkpoint best.pt --val-list val.txt --data-root /data/videos \
        --num-clips 3 --num-crops 3 --out runs/eval

    # 8 GPUs (or CPU processes): the same numbers as one process
    torchrun --nproc_per_node=8 -m artlib.evaluate --checkpoint best.pt

Everything not given comes from the checkpoint (data set, split, frames, crop size, clips). Videos
that cannot be decoded are skipped, listed and counted. Writes ``OUT/metrics.json``,
``OUT/per_class.csv`` and ``OUT/confusion.png`` (with matplotlib) and says which it wrote; the last
line printed is ``FINAL eval top1=... top5=... mean_class_acc=... count=N skipped=S`` (``top3=`` for a
3-class model: k is never more than the number of classes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from artlib._cli import DefaultsOnce, OneLineParser, prog_name, say
from artlib.engine.metrics import final_line, topk_named

__all__ = ["final_line", "main", "run", "topk_named"]

log = logging.getLogger("artlib.evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog_name("artlib.evaluate", "artlib-evaluate"),
        description="Evaluate a trained checkpoint (exact metrics on any number of processes).",
        formatter_class=DefaultsOnce,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint written by the trainer, or a model folder (artlib.save_model)",
    )
    p.add_argument(
        "--val-list",
        help="'<path> <label>' lines to evaluate (default: the checkpoint's validation set)",
    )
    p.add_argument(
        "--data-root",
        help="root of the videos: relative paths of --val-list resolve against it (default: the "
        "list's folder); without --val-list it replaces the checkpoint's data root",
    )
    p.add_argument("--split", help="FineGym split (default: the checkpoint's)")
    p.add_argument("--num-clips", type=int, help="clips per video (default: the checkpoint's)")
    p.add_argument("--num-crops", type=int, default=1, choices=[1, 3], help="crops per clip")
    p.add_argument("--batch-size", type=int, default=8, help="videos per process and batch")
    p.add_argument("--workers", type=int, default=2, help="decoding workers per process")
    p.add_argument(
        "--out", help="output folder (default: RUN/eval/<checkpoint name> beside the checkpoints)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "--max-failure-fraction",
        type=float,
        help="stop with an error when more than this fraction of the videos cannot be decoded "
        "(default: the checkpoint's)",
    )
    p.add_argument(
        "--localization",
        action="store_true",
        help="also measure where the region queries look, per RSSA layer: tracklet health, and "
        "the pointing game, attention mass and distractor hits when the videos have box sidecars "
        "(the synthetic set); prints them and writes OUT/localization.json",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def _default_out(ckpt: Path) -> Path:
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run / "eval" / ckpt.stem


def _check_args(p: argparse.ArgumentParser, args) -> None:
    """Every misuse answered before a model or data set is built: exit 2, one line."""
    if not Path(args.checkpoint).exists():
        p.error(f"--checkpoint: no file or model folder at {args.checkpoint}")
    if Path(args.checkpoint).is_dir() and not args.val_list:
        p.error("--val-list: needed with a model folder (it records no data set)")
    if args.val_list and not Path(args.val_list).is_file():
        p.error(f"--val-list: no file at {args.val_list}")
    if args.data_root and not Path(args.data_root).is_dir():
        p.error(f"--data-root: no folder at {args.data_root}")
    for flag, value, low in (
        ("--num-clips", args.num_clips, 1),
        ("--batch-size", args.batch_size, 1),
        ("--workers", args.workers, 0),
    ):
        if value is not None and value < low:
            p.error(f"{flag} must be >= {low}, got {value}")
    frac = args.max_failure_fraction
    if frac is not None and not 0 <= frac <= 1:
        p.error(f"--max-failure-fraction must be in [0, 1], got {frac}")
    if args.device not in ("auto", "cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device must be auto, cpu or cuda[:N], got {args.device!r}")


def _items(args, cfg, dist_info, num_classes: int):
    """The videos to evaluate: --val-list, else the checkpoint's validation set."""
    from artlib.data import read_generic_list

    if args.val_list:
        items, _ = read_generic_list(args.val_list, args.data_root)
        what = args.val_list
    else:
        from artlib.engine.trainer import build_items

        changes = {}
        if args.data_root:
            changes["data_root"] = args.data_root
        if args.split:
            changes["split"] = args.split
        data = dataclasses.replace(cfg.data, **changes)
        _, items, _ = build_items(dataclasses.replace(cfg, data=data), dist_info)
        what = "the checkpoint's validation set"
    bad = sorted({it.label for it in items if not 0 <= it.label < num_classes})
    if bad:
        raise ValueError(
            f"{what}: labels {bad[:5]} are outside the checkpoint's {num_classes} classes "
            f"(0..{num_classes - 1})"
        )
    return items


def _train_config(info):
    """The checkpoint's TrainConfig; None for a model folder (it records no training run)."""
    if info["config"] is None:
        return None
    from artlib.engine.checkpoint import config_from_dict

    return config_from_dict(info["config"])


def run(args) -> tuple[dict, Path]:
    """Evaluate as the command line says (every rank); -> (metrics, output folder)."""
    from artlib import load_model
    from artlib.api import eval_dataset
    from artlib.engine.distributed import setup_distributed
    from artlib.engine.evaluation import evaluate, exact_loader
    from artlib.engine.metrics import save_confusion_png, save_per_class_csv

    dist_info = setup_distributed(args.device)
    model, info = load_model(args.checkpoint, map_location=dist_info.device)
    cfg = _train_config(info)  # None for a model folder
    items = _items(args, cfg, dist_info, info["num_classes"])
    num_clips = args.num_clips or info["num_clips"]
    dataset = eval_dataset(items, info, num_clips, args.num_crops, seed=cfg.run.seed if cfg else 0)
    if dist_info.is_main:
        log.info(
            "%s (epoch %s, %s %s, %d classes): %d videos, %d clip(s) x %d crop(s), %d process(es)",
            args.checkpoint,
            info["epoch"],
            "baseline" if info["baseline"] else "ART",
            info["backbone"],
            info["num_classes"],
            len(items),
            num_clips,
            args.num_crops,
            dist_info.world_size,
        )
    loader = exact_loader(dataset, args.batch_size, args.workers)
    frac = args.max_failure_fraction
    result = evaluate(
        model,
        loader,
        info["num_classes"],
        device=dist_info.device,
        max_failure_fraction=(cfg.data.max_failure_fraction if cfg else 0.1)
        if frac is None
        else frac,
        progress=args.progress and dist_info.is_main,
    )
    metrics = result.metrics()  # its Top-k named for k = min(5, classes)
    out = Path(args.out) if args.out else _default_out(Path(args.checkpoint))
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        record = {
            **metrics,
            "skipped_files": result.skipped,
            "checkpoint": str(args.checkpoint),
            "epoch": info["epoch"],
            "num_clips": num_clips,
            "num_crops": args.num_crops,
            "processes": dist_info.world_size,
        }
        (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        save_per_class_csv(result.matrix, out / "per_class.csv", info["class_names"])
        wrote = ["metrics.json", "per_class.csv"]
        if save_confusion_png(result.matrix, out / "confusion.png", info["class_names"]):
            wrote.append("confusion.png")
        for path, reason in sorted(result.skipped.items()):
            print(f"skipped {path}: {reason}")
        if getattr(args, "localization", False):
            from artlib.localize import format_report, localization_report

            seed = cfg.run.seed if cfg is not None else 0  # a model folder has no run config
            rep = localization_report(model, info, items, dist_info.device, seed)
            (out / "localization.json").write_text(json.dumps(rep, indent=1) + "\n")
            print("\n".join(format_report(rep)))
            wrote.append("localization.json")
        print(f"wrote {', '.join(wrote)} in {out}")
        print(final_line(metrics), flush=True)
    return metrics, out


def _say(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        say(message)


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    _check_args(p, args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from artlib._io import torch_load_reason
    from artlib.data import TooManyFailures
    from artlib.engine.distributed import cleanup_distributed
    from artlib.weights_io import CheckpointError

    try:
        run(args)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        _say(f"error: {torch_load_reason(e)}")
        return 2
    except TooManyFailures as e:  # raised on every rank alike: said once
        message = str(e).replace("max_failure_fraction=", "--max-failure-fraction ", 1)
        if "--max-failure-fraction" not in message:
            message += "\n(the failure budget is --max-failure-fraction)"
        _say(f"error: {message}")
        return 1
    except OSError as e:  # e.g. the disk filled up while writing the results
        _say(f"error: {torch_load_reason(e)}")
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line per process, no traceback
        say(f"interrupted (rank {os.environ.get('RANK', '0')})")
        return 130
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
