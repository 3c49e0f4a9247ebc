"""Exact evaluation on any number of ranks, and the cross-rank decisions of the training loop.

Legend: B clips per batch, V views per clip (clips x crops), T frames, N_cls classes, R ranks.

**Exact**: every clip of the set is scored once. ``exact_loader`` shards the set unevenly (rank r
takes clips r, r + R, r + 2R, ... — no padding by repetition, so a rank may get one clip fewer),
and ``evaluate`` keys every result by the clip's index, gathers them on all ranks and counts each
index once: Top-1, Top-5, the mean per-class accuracy and the count are the same for 1 or R ranks
(even with a padded sampler, whose repeats are dropped). A clip that cannot be decoded is listed
in ``skipped`` and never counted; when more than ``max_failure_fraction`` of the set is skipped,
every rank raises the same ``TooManyFailures`` naming the files.

**Agreed**: in training, ``agreed_batches`` wraps a loader so that whether a step runs, whether
the epoch has ended and whether the failure budget is exceeded are decided from counts summed over
the ranks: all ranks take the same branch, so none waits forever in a collective another rank
skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from artlib.api import clip_scores  # the multi-view rule, shared with predict_proba

__all__ = [
    "EvalResult",
    "ExactShardSampler",
    "agreed_batches",
    "clip_scores",
    "evaluate",
    "exact_loader",
]

log = logging.getLogger("artlib.eval")
_GLOO: dict = {}


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _cpu_group():
    """A process group for small CPU-side decisions: the default one under gloo, a gloo group
    beside NCCL (so the decision never waits on the GPU stream). All ranks call it together."""
    if _world() == 1:
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    key = id(dist.group.WORLD)
    if key not in _GLOO:
        _GLOO[key] = dist.new_group(backend="gloo")
    return _GLOO[key]


def _gather(obj, group) -> list:
    if _world() == 1:
        return [obj]
    out: list = [None] * _world()
    dist.all_gather_object(out, obj, group=group)
    return out


class ExactShardSampler(torch.utils.data.Sampler):
    """Rank ``rank`` of ``world_size`` takes indices ``rank, rank + world_size, ...`` of ``n``, in
    order, without padding: the shards are disjoint and together hold every index once."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        self.n, self.rank, self.world_size = int(n), rank, world_size

    def set_epoch(self, epoch: int) -> None:  # the loaders call it; the order never changes
        pass

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))


def exact_loader(source, batch_size: int | None = None, num_workers: int | None = None):
    """An evaluation loader over this rank's exact shard (``ExactShardSampler``).

    source: a ``VideoDataset``, or a loader from ``make_loader`` / ``make_dali_loader`` whose
    dataset, batch size and workers are reused (DALI stays DALI). Its own failure limit is off:
    ``evaluate`` applies the limit to the whole set, across ranks.
    """
    from artlib.data import VideoLoader
    from artlib.data.dali import DaliVideoLoader

    rank = dist.get_rank() if _world() > 1 else 0
    dataset = getattr(source, "dataset", source)
    sampler = ExactShardSampler(len(dataset), rank, _world())
    if isinstance(source, VideoLoader):
        batch_size = batch_size or source.batch_size
        num_workers = source.num_workers if num_workers is None else num_workers
    if batch_size is None or batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if isinstance(source, DaliVideoLoader):
        return DaliVideoLoader(
            dataset, batch_size, sampler, source.device, False, 1.0,
            num_threads=source.num_threads, device_id=source.device_id,
        )  # fmt: skip
    return VideoLoader(dataset, batch_size, sampler, num_workers or 0, False, 1.0)


@dataclass
class EvalResult:
    """What ``evaluate`` returns (identical on every rank).

    matrix: (N_cls, N_cls) int64 confusion counts, rows the truth. top5_hits: clips whose label is
    among the 5 best scores (all classes when N_cls < 5). count: clips scored (each index once).
    total: clips in the set. skipped: path -> reason of the clips that could not be used.
    """

    matrix: Tensor
    top5_hits: int
    count: int
    total: int
    skipped: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict:
        """{"top1", "topK", "mean_class_acc", "count", "skipped"} with K = min(5, N_cls) (a
        3-class model's best 5 are all its classes: its "top5" is a "top3"); the accuracies over
        ``count`` and, for the mean, over the classes that have at least one clip."""
        from artlib.engine.metrics import topk_named

        n = max(self.count, 1)
        per_class_n = self.matrix.sum(1)
        seen = per_class_n > 0
        per_class = self.matrix.diagonal()[seen].double() / per_class_n[seen].double()
        metrics = {
            "top1": float(self.matrix.diagonal().sum()) / n,
            "top5": self.top5_hits / n,
            "mean_class_acc": float(per_class.mean()) if bool(seen.any()) else 0.0,
            "count": self.count,
            "skipped": len(self.skipped),
        }
        return topk_named(metrics, self.matrix.shape[0])

    def final_line(self, prefix: str = "FINAL eval") -> str:
        """``FINAL eval top1=... topK=... mean_class_acc=... count=N skipped=S``, K = min(5,
        the number of classes) (``artlib.engine.metrics.final_line``)."""
        from artlib.engine.metrics import final_line

        return final_line(self.metrics(), prefix)


def _failure_message(skipped: dict[str, str], total: int, fraction: float, what: str) -> str:
    listing = "\n".join(f"  {p}: {r}" for p, r in sorted(skipped.items()))
    return (
        f"{len(skipped)} of the {total} videos of the {what} failed, more than "
        f"max_failure_fraction={fraction}. Failed files:\n{listing}"
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    autocast: Callable | None = None,
    max_failure_fraction: float | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> EvalResult:
    """Score every clip of ``loader``'s set once, on all ranks together (module docstring).

    model: returns logits (B, N_cls) for video (B, T, 3, H, W) (a DDP wrapper is unwrapped: the
    evaluation itself runs no collective per batch). loader: yields {"video", "label", "index"}
    (``exact_loader``; a padded one works too). autocast: a context factory (e.g. bf16 on GPU).
    max_failure_fraction: raise ``TooManyFailures`` (the same on every rank) when more than this
    fraction of the set was skipped; None: never.
    """
    from artlib.data import TooManyFailures

    net = model.module if hasattr(model, "module") else model
    was_training = net.training
    net.eval()
    autocast = autocast or nullcontext
    k = min(5, num_classes)
    records: dict[int, tuple[int, list[int]]] = {}  # index -> (label, the k best classes)
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=desc, total=len(loader), leave=False, dynamic_ncols=True)
    try:
        for batch in batches:
            video = batch["video"].to(device, non_blocking=True)
            with autocast():
                scores = clip_scores(net, video)
            top = scores.float().topk(k, -1).indices.cpu().tolist()
            for i, y, t in zip(batch["index"].tolist(), batch["label"].tolist(), top):
                records.setdefault(int(i), (int(y), t))
    finally:
        net.train(was_training)
    dataset = loader.dataset
    failures = getattr(loader, "failures", {})
    mine = set(loader.sampler) if hasattr(loader, "sampler") else set()
    lost = {}
    for i in sorted(mine - set(records)):
        path = str(dataset.items[i][0])
        lost[path] = failures.get(path, "not decoded")
    merged: dict[int, tuple[int, list[int]]] = {}
    skipped: dict[str, str] = {}
    for recs, bad in _gather((records, lost), _cpu_group()):
        for i, r in recs.items():
            merged.setdefault(i, r)
        skipped.update(bad)
    good_paths = {str(dataset.items[i][0]) for i in merged}
    skipped = {p: r for p, r in skipped.items() if p not in good_paths}  # a repeat that decoded
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    hits = 0
    for label, top in merged.values():
        matrix[label, top[0]] += 1
        hits += label in top
    total = len(dataset)
    if max_failure_fraction is not None and len(skipped) > max_failure_fraction * total:
        raise TooManyFailures(
            _failure_message(skipped, total, max_failure_fraction, "evaluation set"), skipped
        )
    return EvalResult(matrix, hits, len(merged), total, skipped)


def _video(batch):
    """A batch's video: the "video" of a dict batch (None when every clip failed), else item 0."""
    return batch.get("video") if isinstance(batch, dict) else batch[0]


def agreed_batches(loader, max_failure_fraction: float) -> Iterator:
    """Iterate ``loader``'s batches in training, deciding each step across the ranks.

    Per step every rank contributes (has no batch, has run out, videos failed this epoch); the sums
    decide for all: a step runs only when every rank has a batch (else all skip it), the epoch ends
    when every rank has run out, and ``TooManyFailures`` (the same message, naming every rank's
    files) is raised on all ranks once the failures exceed ``max_failure_fraction`` of the epoch's
    videos over all ranks. The loader's own per-rank limit is suspended meanwhile.
    """
    from artlib.data import TooManyFailures

    group, world = _cpu_group(), _world()
    own = getattr(loader, "max_failure_fraction", None)
    per_rank = len(loader.sampler) if hasattr(loader, "sampler") else len(loader)
    sizes = torch.tensor([per_rank], dtype=torch.long)
    if world > 1:
        dist.all_reduce(sizes, group=group)
    total = int(sizes)
    allowed = max_failure_fraction * total
    if own is not None:
        loader.max_failure_fraction = 1.0  # decided below, over all ranks
    try:
        it, done, step = iter(loader), False, 0
        while True:
            batch = None if done else next(it, None)
            done = batch is None
            have = not done and _video(batch) is not None
            failed = int(getattr(loader, "stats", {}).get("epoch_failed", 0))
            flags = torch.tensor([int(not have), int(done), failed], dtype=torch.long)
            if world > 1:
                dist.all_reduce(flags, group=group)
            missing, finished, failed_all = (int(x) for x in flags)
            if failed_all > allowed:
                skipped: dict[str, str] = {}
                for part in _gather(dict(getattr(loader, "failures", {})), group):
                    skipped.update(part)
                raise TooManyFailures(
                    f"{failed_all} of the {total} videos of epoch {getattr(loader, 'epoch', 0)} "
                    f"failed, more than max_failure_fraction={max_failure_fraction}. Failed "
                    "files:\n" + "\n".join(f"  {p}: {r}" for p, r in sorted(skipped.items())),
                    skipped,
                )
            if finished == world:
                return
            step += 1
            if missing:
                if have:
                    log.warning(
                        "step %d skipped on every rank: another rank has no usable video for it",
                        step,
                    )
                continue
            yield batch
    finally:
        if own is not None:
            loader.max_failure_fraction = own
