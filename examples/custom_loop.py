"""Train ART in a plain PyTorch loop from artlib's public parts: the synthetic data set, the model
(``build_art``), its losses and ``save_model``. 20 epochs on CPU (~300 s of CPU time): Top-1 1.000.

    python examples/custom_loop.py --out runs/custom_loop
    python -m artlib.predict VIDEO.mp4 --checkpoint runs/custom_loop
    python -m artlib.evaluate --checkpoint runs/custom_loop --val-list LIST
"""

import argparse
import math
import os
import tempfile

import torch
from tqdm import tqdm

import artlib
from artlib.data import VideoDataset, make_finegrained_set, make_loader, read_generic_list
from artlib.models import build_art

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--out", default="runs/custom_loop", help="the model folder to write")
p.add_argument("--epochs", type=int, default=20)
p.add_argument("--per-class", type=int, default=32, help="training videos per class")
p.add_argument("--val-per-class", type=int, default=16, help="validation videos per class")
p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "artlib_synthetic"))
p.add_argument("--workers", type=int, default=2)


def loader(list_file, train, model, per_batch=16, workers=2):
    """Clips sampled and normalised as the model's data config says."""
    data = model.data_config
    items, _ = read_generic_list(list_file)
    kw = dict(crop_size=data["input_size"][-1], mean=data["mean"], std=data["std"], flip=False)
    ds = VideoDataset(items, data["num_frames"], train, scale=(0.8, 1.0), **kw)
    return make_loader(ds, per_batch, train=train, num_workers=workers)


def main(args):
    torch.manual_seed(0)
    data = make_finegrained_set(
        args.data, train_per_class=args.per_class, val_per_class=args.val_per_class
    )
    model = build_art({
        "backbone": "tiny_cnn", "pretrained": "synthetic", "backbone_kwargs": {"img_size": 64},
        "num_classes": len(data.class_names), "num_frames": 8, "dropout": 0.0,
        "head": {"dim": 64, "heads": 4, "se_layers": 1, "act_layers": 2, "aggregation": "sequence",
                 "gamma_mtc": 0.5, "gamma_sema": 0.5},
        "bank": {"shape": [8, len(data.class_names), 64], "init": "random", "momentum": 0.99},
    })  # fmt: skip
    train = loader(data.train_list, True, model, workers=args.workers)
    val = loader(data.val_list, False, model, workers=args.workers)
    opt = torch.optim.AdamW(model.param_groups(2e-3, weight_decay=0.05), lr=2e-3)
    steps = max(1, args.epochs * len(train))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    for epoch in range(args.epochs):
        model.train()
        train.set_epoch(epoch)
        for batch in tqdm(train, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False):
            _, losses = model(batch["video"], batch["label"])  # losses["total"]: Eq. 18
            opt.zero_grad()
            losses["total"].backward()
            opt.step()
            sched.step()
            model.ema_update()  # the bank's EMA, Eq. 12
        right = total = 0
        model.eval()
        with torch.no_grad():
            for batch in val:
                right += (model(batch["video"]).argmax(-1) == batch["label"]).sum().item()
                total += len(batch["label"])
        print(f"epoch {epoch + 1}: loss {losses['total'].item():.3f}, val top1 {right / total:.3f}")
    artlib.save_model(model, args.out, class_names=data.class_names)
    print(f"FINAL custom_loop top1={right / total:.3f} ({total} val videos), model in {args.out}")


if __name__ == "__main__":
    main(p.parse_args())
