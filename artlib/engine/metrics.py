"""Evaluation metrics: Top-1, Top-5, mean per-class accuracy (the paper's "Mean") from a confusion
matrix; a per-class CSV and a confusion-matrix PNG (when matplotlib is installed)."""

from __future__ import annotations

import csv
import logging
import os

import torch
from torch import Tensor

from artlib.visualize import MATPLOTLIB_HINT, have_matplotlib

__all__ = [
    "ConfusionMatrix",
    "MATPLOTLIB_HINT",
    "have_matplotlib",
    "save_confusion_png",
    "save_per_class_csv",
]

log = logging.getLogger("artlib.metrics")
_warned_png = False


class ConfusionMatrix:
    """Accumulates a (N_cls, N_cls) confusion matrix (rows: truth) and Top-5 hits."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.top5_hits = 0
        self.count = 0

    def update(self, logits: Tensor, labels: Tensor) -> None:
        logits, labels = logits.detach().float().cpu(), labels.detach().cpu()
        pred = logits.argmax(-1)
        idx = labels * self.num_classes + pred
        self.matrix += torch.bincount(idx, minlength=self.num_classes**2).view_as(self.matrix)
        k = min(5, self.num_classes)
        self.top5_hits += int((logits.topk(k, -1).indices == labels[:, None]).any(-1).sum())
        self.count += int(labels.numel())

    def all_reduce(self) -> None:
        """Sum over ranks (no-op without an initialized process group)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        packed = torch.cat([self.matrix.flatten(), torch.tensor([self.top5_hits, self.count])])
        packed = packed.to(device)
        dist.all_reduce(packed)
        packed = packed.cpu()
        n = self.num_classes**2
        self.matrix = packed[:n].view(self.num_classes, self.num_classes)
        self.top5_hits, self.count = int(packed[n]), int(packed[n + 1])

    def compute(self) -> dict[str, float]:
        total = max(self.count, 1)
        per_class_n = self.matrix.sum(1)
        seen = per_class_n > 0
        per_class = self.matrix.diagonal()[seen].float() / per_class_n[seen].float()
        return {
            "top1": float(self.matrix.diagonal().sum()) / total,
            "top5": self.top5_hits / total,
            "mean_class_acc": float(per_class.mean()) if seen.any() else 0.0,
            "count": self.count,
        }


def save_per_class_csv(matrix: Tensor, path, class_names: list[str] | None = None) -> None:
    """``label,name,count,correct,accuracy`` per class (rows of ``matrix`` are the truth; accuracy
    is empty for a class with no clip)."""
    n = matrix.shape[0]
    names = class_names if class_names is not None else [f"class {i}" for i in range(n)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "name", "count", "correct", "accuracy"])
        for c in range(n):
            count, correct = int(matrix[c].sum()), int(matrix[c, c])
            w.writerow([c, names[c], count, correct, f"{correct / count:.6f}" if count else ""])


def save_confusion_png(matrix: Tensor, path, class_names: list[str] | None = None) -> bool:
    """Write the row-normalized confusion matrix as a PNG (matplotlib, Agg backend). Without
    matplotlib: warn once per process and return False (nothing written)."""
    global _warned_png
    try:
        import matplotlib
    except ImportError:
        if not _warned_png:
            log.warning(
                "matplotlib is not installed: %s not written (%s)", os.fspath(path), MATPLOTLIB_HINT
            )
            _warned_png = True
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = matrix.float()
    m = m / m.sum(1, keepdim=True).clamp_min(1)
    n = m.shape[0]
    size = max(4.0, min(0.35 * n + 2, 30.0))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(m.numpy(), cmap="Blues", vmin=0, vmax=1)
    if class_names is not None and n <= 60:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
