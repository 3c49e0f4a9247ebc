"""Train ART on FineGym (gym99 / gym288), on your own videos, or — with no data set named — on the built-in
synthetic fine-grained set with the small recipe (tiny_cnn, AdamW) on CPU (a few minutes on 2 cores).
The trainer assembled from artlib's public parts: config, data, model, Trainer; ``artlib-train``
runs the same assembly (``artlib.engine.trainer.train``).

    # CPU, no data: the small recipe on the built-in set (the README's "run the main job" command)
    python examples/train_finegym.py

    # the small recipe on your own '<path> <label>' lists (learns on CPU, docs/training.md)
    python examples/train_finegym.py --preset small --train-list train.txt --val-list val.txt

    # the paper's recipe (--preset paper, implied by --data-root) on one GPU; the weights are
    # required, see docs/models.md "Pretrained weights" ('none' asks for random weights)
    python examples/train_finegym.py --data-root /data/finegym --split gym99 \
        --pretrained WEIGHTS.pyth --text-pretrained openai

    # 8 GPUs on one node
    torchrun --nproc_per_node=8 examples/train_finegym.py --data-root /data/finegym --split gym99 \
        --pretrained WEIGHTS.pyth --text-pretrained openai

    # your own videos: '<path> <label>' lists and one class name per line (docs/training.md)
    python examples/train_finegym.py --train-list train.txt --val-list val.txt \
        --class-names classes.txt --pretrained WEIGHTS.pyth --text-pretrained openai

    # 2 CPU ranks (gloo), synthetic data; resume a killed run; rerun a run from its config
    torchrun --nproc_per_node=2 examples/train_finegym.py --epochs 2
    python examples/train_finegym.py --output-dir runs/synthetic --resume auto
    python examples/train_finegym.py --config runs/synthetic/config.yaml --output-dir runs/again

Ablations (paper Tables IV-VI, Fig. 5): --baseline, --no-se, --no-ta, --mtc-terms spatial,temporal,
--no-sema-video, --no-sema-prot, --num-queries 4, --lam 0.4. `--help` lists every option with the
default of the chosen preset (`--preset paper --help` for the paper's). Same as `artlib-train`.
"""

import sys

from artlib.engine.cli import parse, run_guarded


def main(argv=None) -> int:
    # the flags, checked before torch loads: a bad one exits 2 with one line
    cfg = parse(argv, dataset="finegym", prog="train_finegym.py")
    # a refused folder or resume, a non-finite loss, a full disk, Ctrl-C: one line, an exit status
    return run_guarded(cfg, lambda: train(cfg), prog="train_finegym.py")


def train(cfg) -> dict:
    import torch

    from artlib.engine.data import build_items, build_loaders
    from artlib.engine.model import build_model, data_config
    from artlib.engine.trainer import Trainer, announce, run_session, seed_everything

    # torchrun's ranks (each dies with its agent), or one process; rank 0 owns --output-dir:
    # a busy folder, or one holding a run without --resume/--overwrite, is refused here
    with run_session(cfg) as info:
        announce(cfg, info)  # the first log line
        seed_everything(cfg.run.seed, cfg.run.deterministic)
        # the data: FineGym's layout under --data-root, your lists, or the built-in set
        items = build_items(cfg, info)
        # the model, the same on every rank; the loaders feed it what it expects (mean, std)
        torch.manual_seed(cfg.run.seed)
        model = build_model(cfg, items.class_names).to(info.device)
        train_loader, val_loader = build_loaders(cfg, info, items, data_config(model))
        # optimizer, schedule, EMA, checkpoints and logs come from the config
        trainer = Trainer(cfg, model, train_loader, val_loader, items.class_names, info)
        return trainer.fit()  # --resume, the epochs, validation, best.pt, the FINAL line


if __name__ == "__main__":
    sys.exit(main())
