"""What an evaluation writes from its confusion matrix (``artlib.engine.evaluation.EvalResult``,
which computes Top-1, Top-5 and the mean per-class accuracy): a per-class CSV and a
confusion-matrix PNG (when matplotlib is installed)."""

from __future__ import annotations

import csv
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

from artlib.visualize import MATPLOTLIB_HINT, have_matplotlib

__all__ = [
    "MATPLOTLIB_HINT",
    "final_line",
    "have_matplotlib",
    "save_confusion_png",
    "save_per_class_csv",
    "topk_named",
]

log = logging.getLogger("artlib.metrics")
_warned_png = False


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


def topk_named(metrics: dict, num_classes: int) -> dict:
    """``metrics`` with its "top5" named for the k it measures: k = min(5, num_classes) (a 3-class
    model's best 5 are all its classes, so its "top5" is a Top-3)."""
    k = min(5, num_classes)
    return {(f"top{k}" if key == "top5" else key): v for key, v in metrics.items()}


def final_line(metrics: dict, prefix: str = "FINAL eval") -> str:
    """``FINAL eval top1=... topK=... mean_class_acc=... count=N skipped=S`` (K = 5, or fewer)."""
    (k,) = [key for key in metrics if key.startswith("top") and key != "top1"]
    return (
        f"{prefix} top1={metrics['top1']:.4f} {k}={metrics[k]:.4f} "
        f"mean_class_acc={metrics['mean_class_acc']:.4f} count={metrics['count']} "
        f"skipped={metrics['skipped']}"
    )
