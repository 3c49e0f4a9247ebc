"""The text-constrained semantics bank (Sec. III-E, Eq. 12-17).

Legend: N_prom prompt templates, N_cls classes, C_t text width, B videos, K selected classes.

S^0 (N_prom, N_cls, C_t) comes from CLIP's text encoder (``artlib.text.build_semantic_bank``). The
bank keeps two copies: ``S``, a buffer that the forward pass reads and no gradient reaches, and the
agent bank ``agent`` (S^a), a parameter trained only by L_sema. After every optimizer step
``ema_update()`` does S <- mu S + (1 - mu) S^a (Eq. 12).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from artlib.nn._checks import check_tensor

__all__ = ["SemanticBank", "read_bank"]


def read_bank(path: str | os.PathLike, num_classes: int | None = None) -> Tensor:
    """S⁰ (N_prom, N_cls, C_t) from a file written by ``build_semantic_bank``/``save_bank`` (or a
    file holding just the tensor), validated: a finite float tensor of three dimensions, with
    ``num_classes`` classes when given. The one reader of bank files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: semantics bank file not found: {path!r}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    bank = obj.get("bank") if isinstance(obj, dict) else obj
    if not isinstance(bank, Tensor) or bank.dim() != 3 or not bank.is_floating_point():
        got = tuple(bank.shape) if isinstance(bank, Tensor) else type(bank).__name__
        raise ValueError(f"path: {path!r} does not hold a float (N_prom, N_cls, C_t) bank: {got}")
    if not torch.isfinite(bank).all():
        raise ValueError(f"path: the bank in {path!r} holds non-finite values")
    if num_classes is not None and bank.shape[1] != num_classes:
        raise ValueError(
            f"path: the bank in {path!r} has {bank.shape[1]} classes, expected {num_classes}"
        )
    return bank.float()


class SemanticBank(nn.Module):
    """Holds S (buffer) and S^a (parameter), selects top-K classes and computes L_sema's two terms.

    Args:
        s0: initial bank (N_prom, N_cls, C_t), e.g. CLIP text embeddings of prompt templates.
        momentum: mu of Eq. 12 (default 0.999).
    """

    def __init__(self, s0: Tensor, momentum: float = 0.999):
        super().__init__()
        check_tensor("s0", s0, ("N_prom", "N_cls", "C_t"), finite=True)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        s0 = s0.detach().clone().float()
        self.register_buffer("S", s0.clone())
        self.agent = nn.Parameter(s0.clone())

    @property
    def num_prompts(self) -> int:
        return self.S.shape[0]

    @property
    def num_classes(self) -> int:
        return self.S.shape[1]

    @property
    def text_dim(self) -> int:
        return self.S.shape[2]

    @classmethod
    def from_file(
        cls, path, momentum: float = 0.999, map_location="cpu", num_classes: int | None = None
    ) -> SemanticBank:
        """Load a bank saved by ``artlib.text.build_semantic_bank`` (a tensor or {"bank": tensor}),
        read and validated by :func:`read_bank` (the one reader of bank files)."""
        return cls(read_bank(path, num_classes).to(map_location), momentum=momentum)

    @torch.no_grad()
    def ema_update(self) -> None:
        """Eq. 12: S <- mu S + (1 - mu) S^a. Call after ``optimizer.step()``."""
        self.S.mul_(self.momentum).add_(
            self.agent.detach().to(self.S.dtype), alpha=1 - self.momentum
        )

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        """float32 at least (bf16/fp16 embeddings are upcast), float64 when the input or bank is."""
        return torch.promote_types(torch.promote_types(x.dtype, self.S.dtype), torch.float32)

    def class_embeddings(self) -> Tensor:
        """Prompt-averaged class embeddings of S, (N_cls, C_t); no gradient (S is a buffer)."""
        return self.S.mean(0)

    @torch.no_grad()
    def topk_classes(self, video_emb: Tensor, k: int) -> Tensor:
        """Indices (B, K) of the K classes whose prompt-averaged S is closest in cosine to each video
        embedding (B, C_t). Uses no label: the same rule in training and evaluation (step 3)."""
        check_tensor("video_emb", video_emb, ("B", "C_t"), sizes={"C_t": self.text_dim})
        if not 1 <= k <= self.num_classes:
            raise ValueError(f"k must be in [1, N_cls = {self.num_classes}], got {k}")
        dt = self._compute_dtype(video_emb)
        sim = (
            F.normalize(video_emb.to(dt), dim=-1)
            @ F.normalize(self.class_embeddings().to(dt), dim=-1).T
        )
        return sim.topk(k, dim=-1).indices

    def video_consistency_loss(
        self, video_emb: Tensor, labels: Tensor, logit_scale: Tensor
    ) -> Tensor:
        """Eq. 13-14: S_cls[b, c] = max_j cos(v_b, S^a[j, c]) * scale, cross-entropy with the label."""
        check_tensor("video_emb", video_emb, ("B", "C_t"), sizes={"C_t": self.text_dim})
        dt = self._compute_dtype(video_emb)
        v = F.normalize(video_emb.to(dt), dim=-1)
        sa = F.normalize(self.agent.to(dt), dim=-1)  # (N_prom, N_cls, C_t)
        scores = torch.einsum("bc,pnc->bpn", v, sa).amax(dim=1)  # Eq. 13: winner over prompts
        return F.cross_entropy(logit_scale * scores, labels)  # Eq. 14

    def prototype_consistency_loss(self, prototypes: Tensor, logit_scale: Tensor) -> Tensor:
        """Eq. 15-16: S_prot[c, c'] = mean_j cos(MLP(W)_c, S^a[j, c']) * scale, cross-entropy against
        the identity. ``prototypes`` is MLP(W), (N_cls, C_t)."""
        check_tensor(
            "prototypes",
            prototypes,
            ("N_cls", "C_t"),
            sizes={"N_cls": self.num_classes, "C_t": self.text_dim},
        )
        dt = self._compute_dtype(prototypes)
        p = F.normalize(prototypes.to(dt), dim=-1)
        sa = F.normalize(self.agent.to(dt), dim=-1)
        sim = torch.einsum("nc,pmc->pnm", p, sa).mean(0)  # Eq. 15: (N_cls, N_cls)
        target = torch.arange(self.num_classes, device=sim.device)
        return F.cross_entropy(logit_scale * sim, target)  # Eq. 16

    def extra_repr(self) -> str:
        return (
            f"num_prompts={self.num_prompts}, num_classes={self.num_classes}, "
            f"text_dim={self.text_dim}, momentum={self.momentum}"
        )
