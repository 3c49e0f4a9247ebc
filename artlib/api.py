"""A trained checkpoint as a model: ``load_model``, ``load_video``, ``predict_proba``.

Legend: V views of a video (clips x crops), T frames, S crop size, N_cls classes.

    model, info = artlib.load_model("runs/synthetic/checkpoints/best.pt")
    clips = artlib.load_video("video.mp4", info)                 # (V, T, 3, S, S)
    probs = artlib.predict_proba(model, clips)                    # (N_cls,)
    print(info["class_names"][int(probs.argmax())])

The checkpoint is read with ``weights_only=True`` (artlib.engine.checkpoint): loading never runs
code from the file.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import Tensor, nn

__all__ = ["ModelInfo", "load_model", "load_video", "predict_proba"]


class ModelInfo(dict):
    """What ``load_model`` says about a checkpoint: a dict whose keys read as attributes too
    (``info["class_names"]`` or ``info.class_names``)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"ModelInfo has no {name!r}; keys: {sorted(self)}") from None


def _without_weights(cfg):
    """The config with its backbone weights source dropped: the checkpoint has the weights."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained="none"))


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", ema: bool | None = None
) -> tuple[nn.Module, ModelInfo]:
    """A trained ART (or baseline) model from a checkpoint written by the trainer.

    path: ``checkpoint_epochNNNN.pt`` or ``best.pt``. map_location: the device the model is put on.
    ema: use the ``--model-ema`` average (default: when the checkpoint has one, as the trainer
    evaluated it) or the last step's weights (False).

    Returns ``(model, info)``: the model in eval mode, ``model(video (B, T, 3, S, S)) -> logits
    (B, N_cls)``; ``info`` a :class:`ModelInfo` (a dict, keys also as attributes) with ``class_names``, ``num_frames`` (T), ``crop_size`` (S),
    ``mean``/``std`` (the input normalization, 0-1 scale), ``sampling``, ``num_clips``,
    ``backbone``, ``baseline``, ``num_classes``, ``epoch``, ``best_top1``, ``ema`` (bool),
    ``artlib_version``, ``config`` (the run's TrainConfig) and ``path``.

    Raises FileNotFoundError, ``UnsafeCheckpointError`` (the file would run code when unpickled;
    nothing of it ran), ``CheckpointError`` (not an artlib checkpoint, a newer format, or weights
    that do not fit the model its config describes: the message says what differs).
    """
    from artlib.engine.checkpoint import CheckpointError, config_from_dict, load_checkpoint
    from artlib.engine.trainer import build_model
    from artlib.nn import SemanticBank

    state = load_checkpoint(path, map_location="cpu", what="checkpoint")
    try:
        cfg = config_from_dict(state["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint: {path}: its config cannot be read here: {e}") from None
    names = [str(n) for n in state["class_names"]]
    use_ema = state.get("model_ema") is not None if ema is None else bool(ema)
    if use_ema and state.get("model_ema") is None:
        raise CheckpointError(f"checkpoint: {path} has no --model-ema average (ema=True)")
    weights = state["model_ema"]["module"] if use_ema else state["model"]
    bank = None
    bank_key = "head.bank.S"
    if not cfg.model.baseline:
        if bank_key not in weights:
            raise CheckpointError(f"checkpoint: {path}: an ART model without {bank_key!r}")
        # a placeholder of the right shape: S and S^a come from the checkpoint, and no text
        # encoder runs
        bank = SemanticBank(torch.zeros(weights[bank_key].shape), momentum=cfg.model.bank_momentum)
    model = build_model(_without_weights(cfg), names, bank=bank)
    _load_exactly(model, weights, path, state.get("model_info", {}))
    model.eval().to(map_location)
    pre = state["preprocess"]
    info = ModelInfo(
        class_names=names,
        num_frames=int(pre["num_frames"]),
        crop_size=int(pre["crop_size"]),
        mean=[float(x) for x in pre["mean"]],
        std=[float(x) for x in pre["std"]],
        sampling=pre.get("sampling", "tsn"),
        num_clips=int(pre.get("num_clips", 1)),
        backbone=cfg.model.backbone,
        baseline=bool(cfg.model.baseline),
        num_classes=len(names),
        epoch=int(state["epoch"]),
        best_top1=float(state.get("best_top1", 0.0)),
        ema=use_ema,
        artlib_version=state.get("artlib_version"),
        config=cfg,
        path=os.fspath(path),
    )
    return model, info


def _load_exactly(model: nn.Module, weights: dict, path, model_info: dict) -> None:
    from artlib.engine.checkpoint import CheckpointError

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
            f"(backbone {model_info.get('backbone')}, {model_info.get('num_classes')} classes): "
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


@torch.no_grad()
def predict_proba(model: nn.Module, clips: Tensor) -> Tensor:
    """The class probabilities of one video: the softmax of the model's logits for each of the V
    views (V, T, 3, S, S), averaged over the views -> (N_cls,)."""
    if clips.dim() != 5:
        raise ValueError(f"clips: expected (V, T, 3, S, S), got {tuple(clips.shape)}")
    from artlib.engine.evaluation import clip_scores

    device = next(model.parameters()).device
    return clip_scores(model, clips.to(device)[None])[0].cpu()  # evaluate's multi-view rule
