"""Train ART on Diving48 (V2 annotations), on your own videos, or — with no data set named — on the built-in
synthetic fine-grained set with the small recipe (tiny_cnn, AdamW) on CPU (a few minutes on 2 cores).
``artlib-train`` with Diving48 as the data set under --data-root; examples/train_finegym.py shows
the same trainer assembled from its parts.

    # CPU, no data: the small recipe on the built-in set
    python examples/train_diving48.py

    # the small recipe on your own '<path> <label>' lists (learns on CPU, docs/training.md)
    python examples/train_diving48.py --preset small --train-list train.txt --val-list val.txt

    # the paper's recipe (--preset paper, implied by --data-root) on one GPU; the weights are
    # required, see docs/models.md "Pretrained weights" ('none' asks for random weights)
    python examples/train_diving48.py --data-root /data/diving48 \
        --pretrained WEIGHTS.pyth --text-pretrained openai

    # 8 GPUs on one node
    torchrun --nproc_per_node=8 examples/train_diving48.py --data-root /data/diving48 \
        --pretrained WEIGHTS.pyth --text-pretrained openai

    # your own videos: '<path> <label>' lists and one class name per line (docs/training.md)
    python examples/train_diving48.py --train-list train.txt --val-list val.txt \
        --class-names classes.txt --pretrained WEIGHTS.pyth --text-pretrained openai

    # 2 CPU ranks (gloo), synthetic data; resume a killed run; rerun a run from its config
    torchrun --nproc_per_node=2 examples/train_diving48.py --epochs 2
    python examples/train_diving48.py --output-dir runs/synthetic --resume auto
    python examples/train_diving48.py --config runs/synthetic/config.yaml --output-dir runs/again

Ablations (paper Tables IV-VI, Fig. 5): --baseline, --no-se, --no-ta, --mtc-terms spatial,temporal,
--no-sema-video, --no-sema-prot, --num-queries 4, --lam 0.4. `--help` lists every option with the
default of the chosen preset (`--preset paper --help` for the paper's). Same as `artlib-train`.
"""

import sys

from artlib.engine.cli import main

if __name__ == "__main__":
    sys.exit(main("diving48", prog="train_diving48.py"))
