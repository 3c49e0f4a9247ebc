"""Train ART on Diving48 (V2 annotations) — or, with no --data-root, on the built-in synthetic
fine-grained set with the small tiny_cnn backbone on CPU (a few minutes on 2 cores).

    # CPU, no data: the synthetic set (the README's "run the main job" command)
    python examples/train_diving48.py

    # one GPU
    python examples/train_diving48.py --data-root /data/diving48

    # 8 GPUs on one node (the paper's recipe by default: SGD 0.9, lr 0.01 x0.1/20 epochs, 50 epochs)
    torchrun --nproc_per_node=8 examples/train_diving48.py --data-root /data/diving48

    # 2 CPU ranks (gloo), synthetic data
    torchrun --nproc_per_node=2 examples/train_diving48.py --epochs 2

    # resume a killed run from its last checkpoint
    torchrun --nproc_per_node=8 examples/train_diving48.py --data-root /data/diving48 --resume auto

Ablations (paper Tables IV-VI, Fig. 5): --baseline, --no-se, --no-ta, --mtc-terms spatial,temporal,
--no-sema-video, --no-sema-prot, --num-queries 4, --lam 0.4. `--help` lists every flag.
"""

import sys

from artlib.engine.cli import main

if __name__ == "__main__":
    sys.exit(main("diving48"))
