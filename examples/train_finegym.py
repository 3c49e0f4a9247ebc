"""Train ART on FineGym (gym99 / gym288), on your own videos, or — with no data set named — on the built-in
synthetic fine-grained set with the small tiny_cnn backbone on CPU (a few minutes on 2 cores).

    # CPU, no data: --preset synthetic (the README's "run the main job" command)
    python examples/train_finegym.py

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

from artlib.engine.cli import main

if __name__ == "__main__":
    sys.exit(main("finegym", prog="train_finegym.py"))
