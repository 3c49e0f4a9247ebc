"""What a run tells: the log lines, the progress display and the metric files (rank 0 only).

* **Log lines** go through the ``artlib`` loggers only (``[rank R] time LEVEL message``); other
  libraries' INFO chatter (e.g. matplotlib's "generated new fontManager") is not shown.
* **Progress**: tqdm bars on a terminal; when the output is a file or a pipe (nohup, a batch job)
  one plain line per log interval instead: ``epoch 1/20 step 10/16 total=1.93 ... lr=0.0002
  clips/s=41.0 data=0.012s step=0.35s``.
* **Metrics**: per epoch a ``metrics.csv`` row and TensorBoard scalars (``tensorboard/epochs``);
  per log interval TensorBoard scalars under ``step/`` (``tensorboard/``): each loss term's interval mean, the lr, clips/s, and the
  mean data wait and step time. They use the values already read at the interval (no extra sync).
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

from artlib.engine.distributed import DistInfo

__all__ = ["Logs", "interval_line", "progress", "setup_logging"]

log = logging.getLogger("artlib.train")


def setup_logging(info: DistInfo) -> None:
    """INFO of the ``artlib`` loggers on rank 0 (WARNING on the others), to stderr."""
    root = logging.getLogger("artlib")
    root.setLevel(logging.INFO if info.is_main else logging.WARNING)
    if not any(getattr(h, "_artlib", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler._artlib = True
        handler.setFormatter(
            logging.Formatter(f"[rank {info.rank}] %(asctime)s %(levelname)s %(message)s")
        )
        root.addHandler(handler)


def progress(iterable, *, total: int, desc: str, enabled: bool, leave: bool = True):
    """tqdm over ``iterable`` on a terminal when ``enabled``, else ``iterable`` itself."""
    if not (enabled and sys.stderr.isatty()):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)


def interval_line(epoch: int, epochs: int, step: int, steps: int, scalars: dict) -> str:
    """The plain progress line of one log interval."""
    parts = " ".join(f"{k}={_fmt(v)}" for k, v in scalars.items())
    return f"epoch {epoch}/{epochs} step {step}/{steps} {parts}"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Logs:
    """Per-epoch rows to ``metrics.csv`` and TensorBoard, per-interval scalars to TensorBoard
    (when installed), on rank 0 only."""

    def __init__(self, out: Path, enabled: bool, *, epoch: int = 0, step: int = 0):
        """``epoch``/``step``: where a resumed run starts (0 for a new one): ``metrics.csv`` is
        cut back to that epoch and TensorBoard discards what a killed run logged after it
        (``purge_step``: the epoch rows in ``tensorboard/epochs`` from epoch + 1, the interval
        scalars in ``tensorboard/`` from optimizer step + 1)."""
        self.enabled = enabled
        self.csv_path = Path(out) / "metrics.csv"
        self.tb = self.tb_epochs = None
        if enabled and epoch:
            from artlib.engine.rundir import truncate_metrics

            dropped = truncate_metrics(self.csv_path, epoch)
            if dropped:
                log.info(
                    "metrics.csv: dropped %d row(s) after the resumed epoch %d", dropped, epoch
                )
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                tb = Path(out) / "tensorboard"
                resumed = bool(epoch or step)
                self.tb = SummaryWriter(str(tb), purge_step=step + 1 if resumed else None)
                self.tb_epochs = SummaryWriter(
                    str(tb / "epochs"), purge_step=epoch + 1 if resumed else None
                )
            except ImportError:
                log.info("tensorboard not installed: metrics go to %s only", self.csv_path)

    def step(self, global_step: int, scalars: dict) -> None:
        """One log interval's scalars, as ``step/<name>`` at ``global_step`` (optimizer steps)."""
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"step/{k}", v, global_step)

    def epoch(self, epoch: int, row: dict) -> None:
        if not self.enabled:
            return
        row = {"epoch": epoch, **row}
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb_epochs is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb_epochs.add_scalar(k, v, epoch)
            self.tb_epochs.flush()
            self.tb.flush()

    def close(self) -> None:
        for tb in (self.tb, self.tb_epochs):
            if tb is not None:
                tb.close()
