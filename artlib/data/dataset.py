"""The PyTorch data path on PyAV: ``VideoDataset`` (one clip per item) and ``make_loader``.

A sample is a dict ``{"video": float32 (T, 3, S, S) — or (V, T, 3, S, S) with V = num_clips·num_crops
views (clip-major) when V > 1 —,
"label": int, "index": int}``; a batch stacks them: video (B, T, 3, S, S), label (B,), index (B,).

Rules for bad inputs: the usability rule of ``artlib.data.probe_video``, the same one
``python -m artlib.data.check`` applies, decides.

- A video that is not usable — missing, empty (0 bytes), without a video stream (audio only),
  truncated (an unfinished download) or corrupt — makes ``__getitem__`` return a
  ``SampleFailure(index, path, reason, kind)`` instead of raising. The collate function drops it
  from the batch (which is then smaller than batch_size; a batch with no sample left is skipped),
  and the loader, in the main process, counts it, logs its path, kind and reason once (logger
  ``artlib.data``), and raises ``TooManyFailures`` listing the files as soon as the failures of an
  epoch exceed ``max_failure_fraction`` of the epoch's samples on this rank. Counting in the main
  process is what makes it work with worker processes.
- A container that declares more frames than decode, where the decoder ends cleanly, is not a
  failure: the clip is drawn again over the frames that do decode.
- A video shorter than T frames is not a failure: TSN sampling repeats its frames in order (see
  ``artlib.data.sampling``); it is counted in ``loader.stats["short"]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .annotations import VideoItem
from .decode import VideoDecodeError, decode_clip
from .probe import probe_video
from .sampling import crop_params, item_rng, sample_indices, three_crops

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SampleFailure",
    "ShardedSampler",
    "TooManyFailures",
    "VideoDataset",
    "VideoLoader",
    "collate_skip_failures",
    "make_loader",
]

log = logging.getLogger("artlib.data")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SampleFailure(NamedTuple):
    """What ``VideoDataset.__getitem__`` returns for a video it cannot use."""

    index: int
    path: str
    reason: str
    kind: str = "corrupt"  # a PROBLEM_KINDS entry of artlib.data.probe


class TooManyFailures(RuntimeError):
    """Raised by the loader when too many videos of an epoch failed; ``failures`` maps path -> reason."""

    def __init__(self, message: str, failures: dict[str, str]):
        super().__init__(message)
        self.failures = failures


class VideoDataset(torch.utils.data.Dataset):
    """Videos -> normalized clips, with TSN sampling, random resized crop and flip.

    items: VideoItem (or (path, label)) list. num_frames: T. train: random TSN offsets, random crop
    (area fraction in ``scale``, aspect in ``ratio``) and flip (if ``flip``); eval: segment centres
    (``num_clips`` offsets) and the centre square (``num_crops=3``: the squares at the start, centre
    and end of the long side, PyAV path only). The crop window is resized to crop_size² (bilinear,
    antialiased) and normalized with ``mean``/``std`` (0-1 scale; default CLIP's).

    Randomness comes from ``item_rng(seed, epoch, index)``: the same seed, epoch and index give the same
    frames, crop and flip in any process and on the DALI path (``artlib.data.dali``), which uses the
    same ``plan``. ``set_epoch`` (called by the loader) changes the draws per epoch.
    ``accurate_rgb=True``: YUV -> RGB bit-identical to DALI's (slower; see ``decode_frames``).
    """

    def __init__(
        self,
        items: Sequence[VideoItem | tuple[str, int]],
        num_frames: int,
        train: bool,
        crop_size: int = 224,
        scale: tuple[float, float] = (0.4, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        num_clips: int = 1,
        num_crops: int = 1,
        seed: int = 0,
        decode_threads: int | None = None,
        accurate_rgb: bool = False,
    ):
        if num_frames < 1:
            raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
        if crop_size < 1:
            raise ValueError(f"crop_size: expected >= 1, got {crop_size}")
        self.items = [VideoItem(str(p), int(y)) for p, y in items]
        self.num_frames = num_frames
        self.train = train
        self.crop_size = crop_size
        self.scale, self.ratio, self.flip = tuple(scale), tuple(ratio), flip
        self.set_normalization(mean, std)
        if num_clips < 1:
            raise ValueError(f"num_clips: expected >= 1, got {num_clips}")
        if num_crops not in (1, 3) or (train and num_crops != 1):
            raise ValueError(f"num_crops: expected 1, or 3 in eval mode, got {num_crops}")
        self.num_clips = num_clips
        self.num_crops = num_crops
        self.seed = seed
        self.epoch = 0
        self.decode_threads = decode_threads
        self.accurate_rgb = accurate_rgb
        self._frames: dict[int, int] = {}  # index -> true frame count when the header was wrong

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise clips with ``mean``/``std`` (3 values each, 0-1 scale), e.g. the backbone's."""
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean, std: expected 3 values each (std > 0), got {mean}, {std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plan(self, index: int, num_frames: int, height: int, width: int):
        """The draws of one sample: (frame indices (num_clips, T), (top, left, h, w, flip))."""
        rng = item_rng(self.seed, self.epoch, index)
        idx = sample_indices(num_frames, self.num_frames, self.train, rng, self.num_clips)
        crop = crop_params(height, width, self.train, rng, self.scale, self.ratio, self.flip)
        return idx, crop

    def _threads(self) -> int:
        if self.decode_threads is not None:
            return self.decode_threads
        # in DataLoader workers the workers already fill the cores: one decoder thread each
        return 1 if torch.utils.data.get_worker_info() is not None else 0

    def __getitem__(self, index: int) -> dict[str, Any] | SampleFailure:
        path, label = self.items[index]
        try:
            return self._load(index, path, label)
        except VideoDecodeError as e:
            return SampleFailure(
                index, path, e.reason, "corrupt" if e.kind == "past_end" else e.kind
            )
        except Exception as e:  # counted and logged by the loader, never swallowed silently
            return SampleFailure(index, path, f"{type(e).__name__}: {e}")

    def _load(self, index: int, path: str, label: int) -> dict[str, Any]:
        plans = {}

        def plan(info, n=None):
            n = n or self._frames.get(index, info.num_frames)
            plans["n"], plans["info"] = n, info
            plans["idx"], plans["crop"] = self.plan(index, n, info.height, info.width)
            return plans["idx"].reshape(-1)

        try:
            frames = self._decode(path, plan)
        except VideoDecodeError as e:
            # the one usability rule decides (the same as artlib.data.check's)
            probe = probe_video(path, self.num_frames)
            if not probe.usable:
                raise VideoDecodeError(path, probe.reason, probe.decoded, probe.kind) from None
            if e.kind != "past_end" or probe.decoded == plans.get("n"):
                raise  # usable by the rule, yet this clip's frames fail: corrupt inside
            true_n = self._frames[index] = probe.decoded  # the header overstated it
            frames = self._decode(path, lambda info: plan(info, true_n))
        n = plans["n"]
        if self.num_crops == 1:
            video = self.transform(frames, plans["crop"])  # (num_clips*T, 3, S, S)
        else:  # (num_clips, num_crops, T, ...) flattened clip-major
            info = plans["info"]
            views = [self.transform(frames, c) for c in three_crops(info.height, info.width)]
            video = torch.stack(views).view(self.num_crops, self.num_clips, self.num_frames, -1)
            video = video.transpose(0, 1).reshape(-1, *views[0].shape[1:])
        views = self.num_clips * self.num_crops
        if views > 1:
            video = video.view(views, self.num_frames, *video.shape[1:])
        return {"video": video, "label": label, "index": index, "short": n < self.num_frames}

    def _decode(self, path: str, plan) -> torch.Tensor:
        return decode_clip(path, plan, threads=self._threads(), accurate_rgb=self.accurate_rgb)[0]

    def transform(
        self, frames: torch.Tensor, crop: tuple[int, int, int, int, bool]
    ) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 (N, 3, S, S): crop window, resize, flip, normalize."""
        top, left, h, w, flipped = crop
        x = frames[:, top : top + h, left : left + w].permute(0, 3, 1, 2)  # channels-last NCHW view
        if (h, w) != (self.crop_size, self.crop_size):
            x = F.interpolate(
                x, size=(self.crop_size, self.crop_size), mode="bilinear", antialias=True
            )
        if flipped:
            x = x.flip(-1)
        return ((x.float() - self.mean) / self.std).contiguous()


def collate_skip_failures(samples: list) -> dict[str, Any]:
    """Stack the good samples, keep the failures aside: {"video", "label", "index", "short",
    "failures": [SampleFailure, ...]}; "video" is None when every sample failed."""
    good = [s for s in samples if not isinstance(s, SampleFailure)]
    failures = [s for s in samples if isinstance(s, SampleFailure)]
    if not good:
        return {"video": None, "label": None, "index": None, "short": 0, "failures": failures}
    return {
        "video": torch.stack([s["video"] for s in good]),
        "label": torch.tensor([s["label"] for s in good], dtype=torch.int64),
        "index": torch.tensor([s["index"] for s in good], dtype=torch.int64),
        "short": sum(bool(s["short"]) for s in good),
        "failures": failures,
    }


class ShardedSampler(torch.utils.data.Sampler):
    """DistributedSampler's rule without needing torch.distributed: the epoch's order (a permutation
    from (seed, epoch) when shuffling) is padded by repetition to a multiple of world_size, and rank r
    takes every world_size-th index from r. With drop_last the tail is cut instead of padded."""

    def __init__(self, n: int, shuffle: bool, seed=0, rank=0, world_size=1, drop_last=False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        if drop_last:
            self.num_samples = n // world_size
        else:
            self.num_samples = math.ceil(n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist()
        else:
            order = list(range(self.n))
        total = self.num_samples * self.world_size
        if total > len(order) and order:
            order += (order * math.ceil(total / len(order)))[: total - len(order)]
        return iter(order[:total][self.rank :: self.world_size])


class VideoLoader:
    """What ``make_loader`` returns: iterate for batches {"video", "label", "index"}; ``set_epoch``;
    ``len`` (batches per epoch on this rank); ``stats`` and ``failures`` (path -> reason)."""

    def __init__(self, dataset, batch_size, sampler, num_workers, drop_last, max_failure_fraction,
                 pin_memory=False, prefetch_factor=None, timeout=0):  # fmt: skip
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = sampler
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.max_failure_fraction = max_failure_fraction
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.timeout = timeout
        self.epoch = 0
        self.failures: dict[str, str] = {}  # every distinct failed path -> reason
        self.stats = {"samples": 0, "failed": 0, "short": 0, "epoch_failed": 0}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _record(self, failures: list[SampleFailure]) -> None:
        for f in failures:
            self.stats["failed"] += 1
            self.stats["epoch_failed"] += 1
            if f.path not in self.failures:
                self.failures[f.path] = f.reason
                log.warning("skipping video %s (%s): %s", f.path, f.kind, f.reason)
        allowed = self.max_failure_fraction * len(self.sampler)
        if self.stats["epoch_failed"] > allowed:
            listing = "\n".join(f"  {p}: {r}" for p, r in sorted(self.failures.items()))
            raise TooManyFailures(
                f"{self.stats['epoch_failed']} of the {len(self.sampler)} videos of epoch "
                f"{self.epoch} failed, more than max_failure_fraction="
                f"{self.max_failure_fraction}. Failed files:\n{listing}",
                dict(self.failures),
            )

    def __iter__(self):
        self.stats["epoch_failed"] = 0
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)  # before the workers copy the dataset
        kwargs = {}
        if self.num_workers > 0:
            kwargs["prefetch_factor"] = self.prefetch_factor or 2
            kwargs["timeout"] = self.timeout
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=collate_skip_failures,
            drop_last=self.drop_last,
            pin_memory=self.pin_memory,
            **kwargs,
        )
        for batch in loader:
            self._record(batch.pop("failures"))
            self.stats["short"] += batch.pop("short")
            if batch["video"] is None:
                continue
            self.stats["samples"] += len(batch["label"])
            yield batch


def _dist_rank_world(distributed: bool) -> tuple[int, int]:
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def make_loader(
    dataset: VideoDataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    distributed: bool = False,
    seed: int = 0,
    max_failure_fraction: float = 0.1,
    drop_last: bool | None = None,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> VideoLoader:
    """Batches of ``dataset`` -> VideoLoader. Shuffles per epoch when ``train`` (call ``set_epoch``),
    shards by rank when ``distributed`` and torch.distributed is initialized (DistributedSampler's
    rule), drops the last partial batch when ``drop_last`` (default: ``train``). Broken videos are
    skipped and counted (module docstring); past ``max_failure_fraction`` of an epoch it raises
    TooManyFailures listing the files."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if not 0 <= max_failure_fraction <= 1:
        raise ValueError(f"max_failure_fraction: expected in [0, 1], got {max_failure_fraction}")
    drop_last = train if drop_last is None else drop_last
    rank, world = _dist_rank_world(distributed)
    sampler = ShardedSampler(len(dataset), train, seed, rank, world, drop_last=drop_last and train)
    return VideoLoader(
        dataset, batch_size, sampler, num_workers, drop_last, max_failure_fraction,
        pin_memory=pin_memory, prefetch_factor=prefetch_factor,
    )  # fmt: skip
