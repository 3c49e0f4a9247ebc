"""The run's data: the items of the configured data set (the built-in synthetic set, a FineGym or
Diving48 root, or your own lists) and the two loaders, built for a model's input contract.

    items = build_items(cfg, info)                        # paths, labels, class names
    train_loader, val_loader = build_loaders(cfg, info, items, data_config(model))
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from artlib._io import cache_root
from artlib.engine.config import TrainConfig, builtin_data, dataset_files, read_class_names
from artlib.engine.distributed import DistInfo, barrier

__all__ = ["DataItems", "build_items", "build_loaders"]

log = logging.getLogger("artlib.train")


class DataItems(NamedTuple):
    """The run's videos: train and val ``VideoItem`` lists and the class names (label order)."""

    train: list
    val: list
    class_names: list[str]


def build_items(cfg: TrainConfig, info: DistInfo) -> DataItems:
    """The items of the configured data set (the synthetic set is written once by rank 0 into the
    cache); the class names from --class-names, the layout, or ``class <i>``."""
    from artlib.data.layouts import read_train_val

    if builtin_data(cfg):
        train, val, names = _synthetic_items(cfg, info)
    else:
        f = dataset_files(cfg)
        train, val, names = read_train_val(
            f["kind"], f["train"], f["val"], f["root"], f.get("extra")
        )
    n_labels = max(it.label for it in (*train, *val)) + 1
    if cfg.data.class_names:
        names = read_class_names(cfg.data.class_names)
        if len(names) < n_labels:
            raise ValueError(f"--class-names: {len(names)} names, but label {n_labels - 1} occurs")
    if names is None:
        names = [f"class {i}" for i in range(n_labels)]
    return DataItems(train, val, list(names))


def _synthetic_items(cfg: TrainConfig, info: DistInfo):
    from artlib.data import read_generic_list
    from artlib.data.synthetic import make_finegrained_set

    s = cfg.synthetic
    spec = dict(
        num_classes=s.classes,
        train_per_class=s.train_per_class,
        val_per_class=s.val_per_class,
        size=(s.size, s.size),
        distractors=s.distractors,
        distractor_amplitude=s.distractor_amplitude,
        seed=s.seed,
    )
    root = cache_root() / "synthetic"
    if info.is_main:  # rank 0 writes the videos once; the others then reuse the cached files
        make_finegrained_set(root, **spec)
    barrier()
    syn = make_finegrained_set(root, **spec)
    train, _ = read_generic_list(syn.train_list)
    val, _ = read_generic_list(syn.val_list)
    return train, val, list(syn.class_names)


def build_loaders(cfg: TrainConfig, info: DistInfo, items: DataItems, data_config: dict):
    """-> (train_loader, val_loader) over ``items``, normalised as ``data_config`` says (the
    model's ``{"mean", "std"}``, 0-1 scale): DALI on GPU (``--loader auto``) when installed, else
    PyAV."""
    d = cfg.data
    common = dict(
        num_frames=d.num_frames,
        crop_size=d.crop_size,
        seed=cfg.run.seed,
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
    )
    if _use_dali(cfg, info):
        from artlib.data.dali import make_dali_loader

        dali = dict(
            batch_size=cfg.optim.batch_size,
            device_id=info.local_rank,
            shard_id=info.rank,
            num_shards=info.world_size,
            num_threads=max(d.workers, 1),
            **common,
        )
        train = make_dali_loader(items.train, train=True, flip=d.flip, **dali)
        return train, make_dali_loader(items.val, train=False, flip=False, **dali)
    from artlib.data import VideoDataset, make_loader

    scale = (d.crop_scale_min, 1.0)
    train_ds = VideoDataset(items.train, train=True, flip=d.flip, scale=scale, **common)
    val_ds = VideoDataset(items.val, train=False, flip=False, num_clips=d.eval_clips, **common)
    kw = dict(
        num_workers=d.workers,
        distributed=info.distributed,
        seed=cfg.run.seed,
        max_failure_fraction=d.max_failure_fraction,
    )
    bs = cfg.optim.batch_size
    return make_loader(train_ds, bs, train=True, **kw), make_loader(val_ds, bs, train=False, **kw)


def _use_dali(cfg: TrainConfig, info: DistInfo) -> bool:
    loader = cfg.data.loader
    if not (loader == "dali" or (loader == "auto" and info.device.type == "cuda")):
        return False
    try:
        from artlib.data.dali import require_dali

        require_dali()  # DALI itself is imported lazily: fail here, where PyAV can take over
    except ImportError as exc:
        if loader == "dali":
            raise
        log.warning("DALI unavailable (%s): using the PyAV loader", exc)
        return False
    return True
