"""The DALI data path: ``fn.external_source`` (encoded bytes, frame indices, crop window, flip, label,
index) -> ``fn.decoders.video`` ("mixed" = NVDEC on a GPU, "cpu" without one) -> ``fn.slice`` (the crop
window) -> ``fn.resize`` to crop_size² (linear, antialiased) -> ``fn.crop_mirror_normalize`` (flip, mean/std, FCHW float) ->
``DALIGenericIterator``; sharded per DDP rank.

The frame indices, crop window and flip of each sample come from ``VideoDataset.plan`` — the same
seeded draws as the PyAV path — so both paths read the same frames (index i = i-th decoded frame in
display order) with the same augmentation parameters. The decoded frames are bit-identical to the
PyAV path's with ``accurate_rgb=True``; the resized clips agree within one grey level inside and
differ at the outer two pixels of the crop (DALI's resize repeats the edge pixel, PyTorch's
antialiased resize renormalizes its weights there).

DALI's CPU decoder reads only VP8, VP9 and MJPEG; on CPU DALI silently drops an H.264 file and later
fails with an unrelated message (``num_shards_ <= Size()``), so ``DaliVideoLoader`` reads each file's
codec first and refuses such files with a message that says what to do. Rotated videos (a display
matrix, as phones write) are refused too, per file, with the reason: DALI would give them sideways.
Files that cannot be opened (missing, empty, corrupt headers, no video stream) are skipped, counted and logged like on the PyAV
path; a stream that breaks inside DALI's decoder stops the run (DALI cannot skip a sample mid-batch).

DALI (``nvidia-dali-cuda130``) and PyAV are imported lazily; the frame counts come from PyAV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .dataset import SampleFailure, ShardedSampler, VideoDataset, VideoLoader, _dist_rank_world
from .decode import VideoDecodeError, video_info

__all__ = [
    "CPU_CODECS",
    "DaliVideoLoader",
    "dali_decode_frames",
    "make_dali_loader",
    "require_dali",
]

CPU_CODECS = ("vp8", "vp9", "mjpeg")


_ROTATED = (
    "rotated video (display matrix: turn {rotation} degrees clockwise): DALI's decoder does not "
    "turn frames upright; use make_loader (PyAV), or cut upright clips with artlib.data.prepare"
)


def require_dali() -> None:
    """Raise ImportError, saying how to install it, when NVIDIA DALI cannot be imported."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the DALI path needs NVIDIA DALI: pip install nvidia-dali-cuda130 (or use make_loader, "
            "the PyAV path)"
        ) from e


def _dali():
    require_dali()
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    return fn, types, pipeline_def, DALIGenericIterator, LastBatchPolicy


class _Source:
    """The external source: one batch per call, for this rank, skipping (and reporting) bad files."""

    def __init__(self, loader: DaliVideoLoader):
        self.loader = loader
        self.order: list[int] = []
        self.pos = 0
        self.pending_failures: list[SampleFailure] = []

    def start_epoch(self) -> None:
        self.order = list(iter(self.loader.sampler))
        if self.loader.drop_last:  # DALI cannot drop the partial batch of an external source
            bs = self.loader.batch_size
            self.order = self.order[: len(self.order) // bs * bs]
        self.pos = 0

    def __call__(self):
        ds: VideoDataset = self.loader.dataset
        cols: list[list[Any]] = [[] for _ in range(6)]
        while len(cols[0]) < self.loader.batch_size and self.pos < len(self.order):
            index = self.order[self.pos]
            self.pos += 1
            path, label = ds.items[index]
            try:
                info = video_info(path)
            except VideoDecodeError as e:
                kind = "corrupt" if e.kind == "past_end" else e.kind
                self.pending_failures.append(SampleFailure(index, path, e.reason, kind))
                continue
            if (
                info.rotation
            ):  # DALI does not read the display matrix: refuse, do not train sideways
                reason = _ROTATED.format(rotation=info.rotation)
                self.pending_failures.append(SampleFailure(index, path, reason, "rotated"))
                continue
            if self.loader.device == "cpu" and info.codec not in CPU_CODECS:
                raise ValueError(
                    f"{path}: codec {info.codec!r} cannot be decoded by DALI's CPU decoder, which "
                    f"reads only {', '.join(CPU_CODECS)} (H.264/HEVC/AV1 need device='gpu'). Use "
                    "make_loader (PyAV) on CPU, a GPU, or re-encode the files to VP9."
                )
            idx, (top, left, h, w, flipped) = ds.plan(
                index, info.num_frames, info.height, info.width
            )
            with open(path, "rb") as fh:
                cols[0].append(np.frombuffer(fh.read(), dtype=np.uint8))
            cols[1].append(idx.reshape(-1).astype(np.int32))
            cols[2].append(np.array([left, top], np.int32))  # slice anchor, WH order
            cols[3].append(np.array([w, h], np.int32))
            cols[4].append(np.array(int(flipped), np.int32))
            cols[5].append(np.array([label, index], np.int64))
            self.loader.stats["short"] += int(info.num_frames < ds.num_frames)
        if not cols[0]:
            raise StopIteration
        return tuple(cols)


class DaliVideoLoader(VideoLoader):
    """Iterate for batches {"video": float32 (B, T, 3, S, S) (or (B, num_clips, T, 3, S, S)),
    "label": int64 (B,), "index": int64 (B,)} like ``make_loader``'s, decoded by DALI.

    Tensors are on the GPU for device="gpu" and on the CPU for device="cpu". ``set_epoch``, ``len``,
    ``stats`` and ``failures`` behave as on VideoLoader; the last batch of an epoch may be partial
    (and smaller when files were skipped) unless ``drop_last``.
    """

    def __init__(self, dataset: VideoDataset, batch_size: int, sampler: ShardedSampler,
                 device: str, drop_last: bool, max_failure_fraction: float, num_threads: int = 2,
                 device_id: int | None = None, prefetch_queue_depth: int = 2):  # fmt: skip
        super().__init__(dataset, batch_size, sampler, 0, drop_last, max_failure_fraction)
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device: expected 'cpu' or 'gpu', got {device!r}")
        if dataset.num_crops != 1:
            raise ValueError(
                f"dataset.num_crops: the DALI path takes one crop per clip, got {dataset.num_crops} "
                "(use make_loader for multi-crop evaluation)"
            )
        self.device = device
        self.num_threads = num_threads
        self.device_id = device_id
        self.prefetch_queue_depth = prefetch_queue_depth
        self.source = _Source(self)
        self._iterator = None

    def _build(self):
        fn, types, pipeline_def, DALIGenericIterator, LastBatchPolicy = _dali()
        ds: VideoDataset = self.dataset
        S = ds.crop_size
        mean = (ds.mean.view(3)).tolist()  # already x255
        std = (ds.std.view(3)).tolist()
        gpu = self.device == "gpu"
        device_id = self.device_id
        if gpu and device_id is None:
            device_id = torch.cuda.current_device()

        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=device_id if gpu else None,
            prefetch_queue_depth=1,
            exec_async=False,
            exec_pipelined=False,
        )
        def pipe():
            encoded, frames, anchor, shape, flip, meta = fn.external_source(
                source=self.source, num_outputs=6, batch=True,
                dtype=[types.UINT8, types.INT32, types.INT32, types.INT32, types.INT32, types.INT64],
            )  # fmt: skip
            video = fn.decoders.video(encoded, frames=frames, device="mixed" if gpu else "cpu")
            # crop, then resize the window alone (as the PyAV path does; a resize ROI would also
            # read the pixels around the window at its edges)
            video = fn.slice(
                video, anchor, shape, axis_names="WH", normalized_anchor=False,
                normalized_shape=False,
            )  # fmt: skip
            video = fn.resize(video, size=[S, S], antialias=True, interp_type=types.INTERP_LINEAR)
            video = fn.crop_mirror_normalize(
                video, mirror=flip, mean=mean, std=std, dtype=types.FLOAT, output_layout="FCHW"
            )
            return video, meta

        p = pipe()
        p.build()
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        return DALIGenericIterator(
            [p],
            ["video", "meta"],
            last_batch_policy=policy,
            auto_reset=False,
            prepare_first_batch=False,
        )

    def __iter__(self):
        self.stats["epoch_failed"] = 0
        self.dataset.set_epoch(self.epoch)
        self.source.start_epoch()
        if self._iterator is None:
            self._iterator = self._build()
        else:
            self._iterator.reset()
        ds: VideoDataset = self.dataset
        for out in self._iterator:
            self._record(self.source.pending_failures)
            self.source.pending_failures = []
            data = out[0]
            video, meta = data["video"], data["meta"].cpu()
            if ds.num_clips > 1:
                video = video.view(video.shape[0], ds.num_clips, ds.num_frames, *video.shape[2:])
            self.stats["samples"] += len(meta)
            yield {"video": video, "label": meta[:, 0].clone(), "index": meta[:, 1].clone()}
        self._record(self.source.pending_failures)
        self.source.pending_failures = []

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def dali_decode_frames(path: str, indices, device: str = "cpu") -> torch.Tensor:
    """DALI's twin of ``decode_frames``: uint8 (len(indices), H, W, 3) of ``path`` by
    ``fn.decoders.video(frames=indices)`` (on the CPU for device="cpu", NVDEC for "gpu"). Builds a
    pipeline per call: for checks and benchmarks, not for training."""
    info = video_info(path)
    if info.rotation:
        raise ValueError(f"{path}: " + _ROTATED.format(rotation=info.rotation))
    if device == "cpu" and info.codec not in CPU_CODECS:
        raise ValueError(
            f"{path}: codec {info.codec!r} cannot be decoded by DALI's CPU decoder, which reads only "
            f"{', '.join(CPU_CODECS)}; use device='gpu' or decode_frames (PyAV)"
        )
    fn, types, pipeline_def, _, _ = _dali()
    with open(path, "rb") as fh:
        data = np.frombuffer(fh.read(), dtype=np.uint8)
    idx = np.asarray(indices, dtype=np.int32).reshape(-1)

    @pipeline_def(batch_size=1, num_threads=1, device_id=0 if device == "gpu" else None)
    def pipe():
        enc = fn.external_source(source=lambda: [data], batch=True, dtype=types.UINT8)
        fr = fn.external_source(source=lambda: [idx], batch=True, dtype=types.INT32)
        return fn.decoders.video(enc, frames=fr, device="mixed" if device == "gpu" else "cpu")

    p = pipe()
    p.build()
    (out,) = p.run()
    if device == "gpu":
        out = out.as_cpu()
    return torch.from_numpy(np.array(out[0]))


def make_dali_loader(
    dataset: VideoDataset | Sequence,
    batch_size: int,
    train: bool,
    device: str | None = None,
    distributed: bool = False,
    seed: int = 0,
    max_failure_fraction: float = 0.1,
    drop_last: bool | None = None,
    num_threads: int = 2,
    device_id: int | None = None,
    shard_id: int | None = None,
    num_shards: int | None = None,
    **dataset_kwargs,
) -> DaliVideoLoader:
    """The DALI twin of ``make_loader``: same dataset (its items, T, crop, flip, mean/std, seed), same
    sharding, same batch structure.

    dataset: a VideoDataset, or its items (``VideoItem`` list) with its keyword arguments in
    ``dataset_kwargs`` (``num_frames``, ``crop_size``, ``flip``, ...; ``train`` and ``seed`` are
    passed on). device: "gpu" (NVDEC; default when CUDA is available) or "cpu" (VP8/VP9/MJPEG only).
    Sharding: ``shard_id``/``num_shards`` if given, else the torch.distributed rank and world size
    when ``distributed``. device_id: the GPU (default: the current CUDA device)."""
    require_dali()  # here, not at the first batch: a caller can still fall back to PyAV
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if not isinstance(dataset, VideoDataset):
        dataset = VideoDataset(dataset, train=train, seed=seed, **dataset_kwargs)
    elif dataset_kwargs:
        raise ValueError(
            f"dataset_kwargs: only with a list of items, got a VideoDataset and {sorted(dataset_kwargs)}"
        )
    device = device or ("gpu" if torch.cuda.is_available() else "cpu")
    drop_last = train if drop_last is None else drop_last
    rank, world = _dist_rank_world(distributed)
    if num_shards is not None:
        rank, world = (shard_id or 0), num_shards
    sampler = ShardedSampler(len(dataset), train, seed, rank, world, drop_last=drop_last and train)
    if device == "gpu" and device_id is None:
        device_id = torch.cuda.current_device()
    return DaliVideoLoader(
        dataset, batch_size, sampler, device, drop_last, max_failure_fraction,
        num_threads=num_threads, device_id=device_id if device == "gpu" else None,
    )  # fmt: skip
