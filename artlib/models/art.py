"""ART = a video backbone + the ART head (Fig. 3 of the paper).

Legend: B videos, T frames in, T' frames out of the backbone, L tokens per frame, C backbone width,
N_cls classes, N_prom prompts, C_t text width.

    video (B,T,3,H,W) -> backbone -> tokens X (B,T',L,C), x_cls (B,C) -> ARTHead -> logits (B,N_cls)
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from artlib.models._layers import plain
from artlib.nn import ARTHead, SemanticBank


def as_bank(bank, momentum: float = 0.999) -> SemanticBank:
    """A SemanticBank from a SemanticBank, an S⁰ tensor (N_prom, N_cls, C_t) or a bank file path."""
    if isinstance(bank, SemanticBank):
        return bank
    if isinstance(bank, Tensor):
        return SemanticBank(bank, momentum=momentum)
    if isinstance(bank, (str, os.PathLike)):
        if not os.path.isfile(bank):
            raise FileNotFoundError(f"bank: semantics bank file not found: {os.fspath(bank)!r}")
        return SemanticBank.from_file(bank, momentum=momentum)
    raise TypeError(
        f"bank: expected a SemanticBank, an (N_prom, N_cls, C_t) tensor or a file path, "
        f"got {type(bank).__name__}"
    )


class ART(nn.Module):
    """The full model: ``backbone`` then :class:`artlib.nn.ARTHead`.

    Args:
        backbone: any module with ``forward(video (B,T,3,H,W)) → (tokens (B,T',L,C), cls (B,C))``
            and an ``out_dim`` (C); ``frames_out(T)`` if it changes the frame count.
        num_classes: N_cls.
        bank: the semantics bank (SemanticBank, S⁰ tensor or a file written by
            ``artlib.text.build_semantic_bank``); may be None with ``baseline=True``.
        baseline: backbone + dropout + linear classifier on ``cls`` only (the paper's Table IV
            baseline); its loss dict is {"v", "total"}.
        num_frames: T of the input videos. The head is sized for the backbone's frames out,
            T' = ``backbone.frames_out(T)`` (``self.token_frames``): 16 frames give 8 token frames
            with UniFormerV2's temporal downsampling.
        dropout: before the classifiers (paper 0.5).
        momentum: μ of the bank EMA when ``bank`` is not already a SemanticBank.
        **head_options: passed to ARTHead (dim, num_queries, heads, se_layers, act_layers,
            gamma_mtc, gamma_sema, use_se, aggregation, ...).

    ``forward(video, labels=None, return_maps=False)``: logits (B, N_cls) from head_con; with labels
    ``(logits, losses)`` with ``losses["total"]`` to backpropagate (Eq. 18). Call ``ema_update()``
    after every optimizer step (S ← μS + (1−μ)Sᵃ, Eq. 12). The text encoder is never run here.

    ``config``: the plain, JSON-able configuration that ``artlib.models.build_art`` rebuilds this
    model from (the bank as its shape: its values are in the state dict); ``data_config``: the
    input it expects (mean, std, input size, T frames in, T' token frames out).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        bank=None,
        baseline: bool = False,
        num_frames: int = 16,
        dropout: float = 0.5,
        momentum: float = 0.999,
        **head_options,
    ):
        super().__init__()
        if not hasattr(backbone, "out_dim"):
            raise TypeError(
                f"backbone: expected a module with an 'out_dim' attribute (its width C), got "
                f"{type(backbone).__name__}"
            )
        self.backbone = backbone
        self.num_classes, self.num_frames, self.baseline = num_classes, num_frames, baseline
        self._recorded = {"dropout": float(dropout), "head": plain(head_options)}
        width = int(backbone.out_dim)
        frames = backbone.frames_out(num_frames) if hasattr(backbone, "frames_out") else num_frames
        self.token_frames = frames
        # a backbone's own classifier (UniFormerV2's Kinetics head) is not used here: frozen, so
        # that no optimizer or DDP waits for its gradient; it stays in the state dict
        classifier = getattr(backbone, "classifier", None)
        if isinstance(classifier, nn.Module):
            classifier.requires_grad_(False)
        if baseline:
            if head_options:
                raise ValueError(f"baseline=True takes no head options, got {sorted(head_options)}")
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(width, num_classes)
            self.bank = as_bank(bank, momentum) if bank is not None else None
            self.head = None
        else:
            if bank is None:
                raise ValueError("bank: ART needs a semantics bank (or pass baseline=True)")
            self.head = ARTHead(
                width,
                num_classes,
                as_bank(bank, momentum),
                num_frames=frames,
                dropout=dropout,
                **head_options,
            )

    @property
    def config(self) -> dict:
        """The plain configuration this model was built with (``build_art(model.config)`` makes
        the same architecture; load its state dict for the same weights). ``backbone`` is None
        for a backbone that ``artlib.models.build_backbone`` did not make."""
        bb = self.backbone
        bank = self.head.bank if self.head is not None else self.bank
        return {
            "backbone": getattr(bb, "backbone_name", None),
            "backbone_kwargs": dict(getattr(bb, "init_kwargs", {})),
            "pretrained": getattr(bb, "pretrained_source", None),
            "num_classes": int(self.num_classes),
            "num_frames": int(self.num_frames),
            "baseline": bool(self.baseline),
            "dropout": self._recorded["dropout"],
            "head": dict(self._recorded["head"]),
            "bank": None
            if bank is None
            else {"shape": list(bank.S.shape), "init": "zeros", "momentum": bank.momentum},
            "mean": [float(v) for v in getattr(bb, "mean", ())] or None,
            "std": [float(v) for v in getattr(bb, "std", ())] or None,
        }

    @property
    def data_config(self) -> dict:
        """The input contract: the backbone's ``data_config(num_frames)`` ({"mean", "std",
        "input_size" (3, S, S), "num_frames" T, "token_frames" T', "tokens_per_frame" L})."""
        if hasattr(self.backbone, "data_config"):
            return self.backbone.data_config(self.num_frames)
        raise TypeError(f"backbone: {type(self.backbone).__name__} declares no data_config")

    def _check(self, video: Tensor) -> None:
        if not isinstance(video, Tensor) or video.dim() != 5:
            raise ValueError(
                f"video: expected (B, T, 3, H, W), got {getattr(video, 'shape', type(video).__name__)}"
            )
        if video.shape[1] != self.num_frames:
            raise ValueError(
                f"video: expected T = num_frames = {self.num_frames} frames, got shape "
                f"{tuple(video.shape)}"
            )

    def forward(self, video: Tensor, labels: Tensor | None = None, return_maps: bool = False):
        self._check(video)
        tokens, cls = self.backbone(video)
        if self.head is not None:
            return self.head(tokens, cls, labels, return_maps=return_maps)
        if return_maps:
            raise ValueError("return_maps: the baseline has no region attention maps")
        logits = self.fc(self.dropout(cls))
        if labels is None:
            return logits
        loss = F.cross_entropy(logits, labels)
        return logits, {"v": loss, "total": loss}

    @torch.no_grad()
    def ema_update(self) -> None:
        """Eq. 12 on the bank; a no-op for the baseline."""
        if self.head is not None:
            self.head.ema_update()

    def param_groups(self, lr: float, backbone_lr_scale: float = 1.0, weight_decay: float = 5e-4):
        """Optimizer groups of this model (:func:`param_groups`), as the trainer builds them."""
        return param_groups(self, lr, backbone_lr_scale, weight_decay)


def param_groups(
    model: nn.Module, lr: float, backbone_lr_scale: float = 1.0, weight_decay: float = 5e-4
) -> list[dict]:
    """Optimizer groups, (backbone | head) x (decayed | not): parameters under ``backbone.`` at
    ``lr * backbone_lr_scale``, the rest at ``lr``; parameters of fewer than two dimensions
    (biases, norms) and the bank's agent Sᵃ get no weight decay. The trainer's optimizer is built
    from these groups."""
    buckets: dict[tuple[bool, bool], list] = {}  # (in the backbone, decayed) -> parameters
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = not (p.ndim < 2 or name.endswith("agent"))
        buckets.setdefault((name.startswith("backbone."), decayed), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decayed else 0.0,
            "lr": lr * (backbone_lr_scale if in_backbone else 1.0),
        }
        for (in_backbone, decayed), params in sorted(buckets.items())
    ]
