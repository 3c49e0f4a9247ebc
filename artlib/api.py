"""A trained model: ``save_model``, ``load_model``, ``load_video``, ``predict_proba``.

Legend: V views of a video (clips x crops), T frames, S crop size, N_cls classes.

    artlib.save_model(model, "my_model", class_names=names)      # model.safetensors + config.json
    model, info = artlib.load_model("my_model")                   # or a trainer's best.pt
    clips = artlib.load_video("video.mp4", info)                 # (V, T, 3, S, S)
    probs = artlib.predict_proba(model, clips)                    # (N_cls,)
    print(info["class_names"][int(probs.argmax())])

A model folder holds ``model.safetensors`` (the weights; no pickle) and ``config.json`` (the
model's own configuration, ``artlib.models.build_art``'s, the class names and the preprocessing).
A training checkpoint is read with ``weights_only=True`` (``artlib.weights_io``): loading never
runs code from the file. Neither needs the trainer: nothing of ``artlib.engine`` is imported.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from artlib.weights_io import CheckpointError, check_format_version, load_checkpoint

__all__ = ["ModelInfo", "load_model", "load_video", "predict_proba", "save_model"]

MODEL_FORMAT = "artlib.model"
MODEL_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ModelInfo(dict):
    """What ``load_model`` says about a model: a dict whose keys read as attributes too
    (``info["class_names"]`` or ``info.class_names``)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"ModelInfo has no {name!r}; keys: {sorted(self)}") from None


def _preprocess(model: nn.Module, given: dict | None) -> dict:
    """The input a model folder declares: the model's data config, with ``given``'s changes."""
    data = model.data_config
    pre = {
        "num_frames": int(data["num_frames"]),
        "crop_size": int(data["input_size"][-1]),
        "mean": [float(v) for v in data["mean"]],
        "std": [float(v) for v in data["std"]],
        "sampling": "tsn",  # T segment centres in evaluation (artlib.data.sampling)
        "num_clips": 1,
    }
    unknown = sorted(set(given or {}) - set(pre))
    if unknown:
        raise ValueError(f"preprocess: unknown key(s) {unknown}; known: {sorted(pre)}")
    pre.update(given or {})
    return json.loads(json.dumps(pre))


def save_model(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    preprocess: dict | None = None,
) -> Path:
    """Write ``model`` (an :class:`artlib.models.ART` made by ``build_art`` or ``build_backbone``)
    as a folder that :func:`load_model`, ``python -m artlib.predict`` and ``python -m
    artlib.evaluate`` read: ``model.safetensors`` (its state dict) and ``config.json``
    ({"format", "format_version", "artlib_version", "model": model.config, "class_names",
    "preprocess"}).

    class_names: N_cls names in label order (default "class 0", ...). preprocess: changes to the
    input description taken from ``model.data_config`` (keys ``num_frames``, ``crop_size``,
    ``mean``, ``std``, ``sampling``, ``num_clips``). Returns the folder's path. Raises ValueError
    for a model that cannot describe itself (a backbone ``build_backbone`` did not make).
    """
    from safetensors.torch import save

    import artlib
    from artlib._io import atomic_write

    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or not config.get("backbone"):
        raise ValueError(
            f"model: a {type(model).__name__} that does not record how it was built; save an "
            "ART made by artlib.models.build_art (or on a backbone from build_backbone)"
        )
    n = int(config["num_classes"])
    names = (
        [f"class {i}" for i in range(n)] if class_names is None else [str(c) for c in class_names]
    )
    if len(names) != n:
        raise ValueError(f"class_names: {len(names)} names for a model of {n} classes")
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "artlib_version": artlib.__version__,
        "model": config,
        "class_names": names,
        "preprocess": _preprocess(model, preprocess),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_write(directory / WEIGHTS_FILE, "wb") as fh:
        fh.write(save(weights, metadata={"format": MODEL_FORMAT}))
    with atomic_write(directory / CONFIG_FILE, "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    return directory


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", ema: bool | None = None
) -> tuple[nn.Module, ModelInfo]:
    """A trained ART (or baseline) model from a model folder (:func:`save_model`) or a training
    checkpoint (``checkpoint_epochNNNN.pt``, ``best.pt``), rebuilt from the model's own config
    (``artlib.models.build_art``) with a strict load of its weights.

    map_location: the device the model is put on. ema (checkpoints only): use the
    ``--model-ema`` average (default: when the checkpoint has one, as the trainer evaluated it)
    or the last step's weights (False).

    Returns ``(model, info)``: the model in eval mode, ``model(video (B, T, 3, S, S)) -> logits
    (B, N_cls)``; ``info`` a :class:`ModelInfo` (a dict, keys also as attributes) with
    ``class_names``, ``num_frames`` (T), ``crop_size`` (S), ``mean``/``std`` (the input
    normalization, 0-1 scale), ``sampling``, ``num_clips``, ``backbone``, ``baseline``,
    ``num_classes``, ``model_config`` (``build_art``'s), ``epoch`` and ``best_top1`` (None for a
    folder), ``ema`` (bool), ``artlib_version``, ``config`` (a checkpoint's training config as a
    plain dict, None for a folder) and ``path``.

    Raises FileNotFoundError, ``UnsafeCheckpointError`` (the file would run code when unpickled;
    nothing of it ran), ``CheckpointError`` (not an artlib model folder or checkpoint, a newer
    format, or weights that do not fit the model its config describes: the message says what
    differs).
    """
    path = Path(path)
    if path.is_dir():
        model_config, weights, meta = _read_folder(path, ema)
        info = dict(epoch=None, best_top1=None, ema=False, config=None)
    else:
        model_config, weights, meta, info = _read_checkpoint(path, ema)
    from artlib.models import build_art

    try:
        model = build_art(model_config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint: {path}: its model config cannot be built: {e}"
        ) from None
    _load_exactly(model, weights, path, model_config)
    model.eval().to(map_location)
    pre, names = meta["preprocess"], [str(n) for n in meta["class_names"]]
    return model, ModelInfo(
        class_names=names,
        num_frames=int(pre["num_frames"]),
        crop_size=int(pre["crop_size"]),
        mean=[float(x) for x in pre["mean"]],
        std=[float(x) for x in pre["std"]],
        sampling=pre.get("sampling", "tsn"),
        num_clips=int(pre.get("num_clips", 1)),
        backbone=model_config["backbone"],
        baseline=bool(model_config.get("baseline", False)),
        num_classes=len(names),
        model_config=model.config,
        artlib_version=meta.get("artlib_version"),
        path=os.fspath(path),
        **info,
    )


def _for_loading(config: dict, weights: dict, mean=None, std=None) -> dict:
    """A model config to rebuild saved weights: no backbone weights file (the weights are here),
    the bank as zeros of the saved shape, the saved normalisation."""
    config = copy.deepcopy(config)
    config["pretrained"] = None
    if not config.get("baseline") and "head.bank.S" in weights:
        momentum = (config.get("bank") or {}).get("momentum", 0.999)
        shape = list(weights["head.bank.S"].shape)
        config["bank"] = {"shape": shape, "init": "zeros", "momentum": momentum}
    if mean is not None:
        config["mean"], config["std"] = [float(v) for v in mean], [float(v) for v in std]
    return config


def _read_folder(path: Path, ema) -> tuple[dict, dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if ema:
        raise CheckpointError(f"checkpoint: {path} is a model folder: it has no EMA (ema=True)")
    cfg_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(
                f"checkpoint: {path} is a folder without {f.name} (a model folder holds "
                f"{CONFIG_FILE} and {WEIGHTS_FILE}, written by artlib.save_model)"
            )
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint: {cfg_file} is not JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"checkpoint: {cfg_file} is not an artlib model config")
    check_format_version(meta, MODEL_FORMAT_VERSION, f"checkpoint: {cfg_file}")
    for key in ("model", "class_names", "preprocess"):
        if key not in meta:
            raise CheckpointError(f"checkpoint: {cfg_file} has no {key!r}")
    try:
        weights = load_file(weights_file, device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint: {weights_file} cannot be read: {e}") from None
    return _for_loading(meta["model"], weights), weights, meta


def _read_checkpoint(path: Path, ema) -> tuple[dict, dict, dict, dict]:
    from artlib.models import model_config_from_train_config

    state = load_checkpoint(path, map_location="cpu", what="checkpoint")
    names = [str(n) for n in state["class_names"]]
    use_ema = state.get("model_ema") is not None if ema is None else bool(ema)
    if use_ema and state.get("model_ema") is None:
        raise CheckpointError(f"checkpoint: {path} has no --model-ema average (ema=True)")
    weights = state["model_ema"]["module"] if use_ema else state["model"]
    recorded = state.get("model_info") or {}
    try:
        config = model_config_from_train_config(state["config"], names, recorded.get("head"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint: {path}: its config cannot be read here: {e}") from None
    if not config["baseline"] and "head.bank.S" not in weights:
        raise CheckpointError(f"checkpoint: {path}: an ART model without 'head.bank.S'")
    pre = state["preprocess"]
    config = _for_loading(config, weights, pre["mean"], pre["std"])
    info = dict(
        epoch=int(state["epoch"]),
        best_top1=float(state.get("best_top1", 0.0)),
        ema=use_ema,
        config=state["config"],
    )
    return config, weights, state, info


def _load_exactly(model: nn.Module, weights: dict, path, config: dict) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [
        f"{k} {tuple(weights[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in own.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors ({', '.join(missing[:4])}, ...)")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])}, ...)")
        if shapes:
            parts.append("shapes differ: " + "; ".join(shapes[:4]))
        raise CheckpointError(
            f"checkpoint: {path} does not fit the model its config describes "
            f"(backbone {config.get('backbone')}, {config.get('num_classes')} classes): "
            + "; ".join(parts)
        )
    model.load_state_dict(weights)


def eval_dataset(items, info: dict, num_clips: int | None = None, num_crops: int = 1, seed=0):
    """A ``VideoDataset`` of ``items`` sampled and normalised as the checkpoint described by
    ``info`` (``load_model``'s) expects, in evaluation mode: segment centres, centre crop(s)."""
    from artlib.data import VideoDataset

    return VideoDataset(
        items,
        num_frames=info["num_frames"],
        train=False,
        crop_size=info["crop_size"],
        flip=False,
        mean=info["mean"],
        std=info["std"],
        num_clips=num_clips or info.get("num_clips", 1),
        num_crops=num_crops,
        seed=seed,
    )


def load_video(
    path: str | os.PathLike, info: dict, num_clips: int | None = None, num_crops: int = 1
) -> Tensor:
    """One video as the model's input: (V, T, 3, S, S) float32, V = num_clips x num_crops views
    (default: the checkpoint's ``num_clips``, the centre crop), sampled and normalized as in
    evaluation. Raises ``artlib.data.VideoDecodeError`` naming the file when it cannot be used."""
    from artlib.data import VideoDecodeError, VideoItem

    ds = eval_dataset([VideoItem(os.fspath(path), 0)], info, num_clips, num_crops)
    sample = ds[0]
    if not isinstance(sample, dict):  # SampleFailure(index, path, reason)
        raise VideoDecodeError(os.fspath(path), sample.reason)
    video = sample["video"]
    return video if video.dim() == 5 else video.unsqueeze(0)


def clip_scores(model: nn.Module, video: Tensor) -> Tensor:
    """(B, T, 3, H, W) -> logits (B, N_cls); (B, V, T, 3, H, W) -> the mean over the V views of
    the softmax (B, N_cls), the multi-clip / multi-crop rule of the paper's testing."""
    if video.dim() == 6:
        b, v = video.shape[:2]
        return model(video.flatten(0, 1)).float().softmax(-1).view(b, v, -1).mean(1)
    return model(video).float()


@torch.no_grad()
def predict_proba(model: nn.Module, clips: Tensor) -> Tensor:
    """The class probabilities of one video: the softmax of the model's logits for each of the V
    views (V, T, 3, S, S), averaged over the views -> (N_cls,)."""
    if clips.dim() != 5:
        raise ValueError(f"clips: expected (V, T, 3, S, S), got {tuple(clips.shape)}")
    device = next(model.parameters()).device
    return clip_scores(model, clips.to(device)[None])[0].cpu()  # evaluate's multi-view rule
