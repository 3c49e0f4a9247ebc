"""The ART head: everything after the backbone (Fig. 3, DESIGN.md steps 1-12).

Legend: B videos, T frames, L tokens per frame, C backbone width, d latent width, K queries,
N_cls classes, C_t text width.

    tokens X (B,T,L,C), cls x_cls (B,C)
      -> proj C->d                                                     (step 1)
      -> top-K classes of cos(proj_v(x_cls), mean_p S) -> S^topk (B,K,d)  (step 3)
      -> RSSA -> R (B,T,K,d)                                           (Eq. 1-3)
      -> MTC loss on R                                                 (Eq. 5-8)
      -> tracklet aggregation -> Tr^agg (B,K,d)                        (Eq. 9)
      -> head_v(x_cls) (Eq. 10), head_con(concat(x_cls, Tr^agg)) (Eq. 11)
      -> L = L_v + L_con + g1 L_MTC + g2 L_sema                        (Eq. 18)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from artlib.nn._checks import check_labels, check_tensor
from artlib.nn.bank import SemanticBank
from artlib.nn.losses import MTCLoss
from artlib.nn.rssa import RSSA
from artlib.nn.tracklets import TrackletAggregation

__all__ = ["ARTHead"]


class ARTHead(nn.Module):
    """ART on top of any backbone that yields frame tokens and a global token.

    Args:
        in_dim: backbone width C.
        num_classes: N_cls (must match the bank).
        bank: the :class:`SemanticBank` (S^0 from CLIP text, or any (N_prom, N_cls, C_t) tensor).
        dim: RSSA latent width d (paper: 256).
        num_queries: K (paper: 2); must be <= N_cls since the K queries come from K classes.
        num_frames: T (the prompts P are (T, K, d)).
        heads, se_layers, act_layers, ffn_ratio: RSSA settings (paper: 8, 4, 4, 4).
        dropout: before both classifiers (paper: 0.5).
        gamma_mtc, gamma_sema: g1, g2 of Eq. 18 (paper: 5, 5).
        lam, temporal, mtc_weights: MTC loss settings; ``mtc_weights=(0, 0, 0)`` turns L_MTC off.
        use_se: spatial semantic enhancement on/off (Table IV "SE").
        aggregation: "saliency" (Eq. 9, TA on) or "mean"/"sum" (TA off, Table IV), or
            "sequence" (artlib: each tracklet kept whole, in frame order; head_con then sees
            concat(x_cls, Tr_1 ... Tr_K) with every Tr_k of width T*d).
        ta_temperature: divides Eq. 9's inner products (1 = as printed).
        attn_temperature: divides the RSSA cross-attention logits (Eq. 3), softmax(q k^T /
            (t sqrt(d_head))); 1 = the paper's scaling, < 1 sharper region maps.
        sema_video, sema_prot: the two terms of L_sema (Table VI).
        proto_dim: width D of the class prototypes W of Eq. 15.
        check_inputs: also check the *values* of the inputs (tokens and cls finite, labels in
            [0, N_cls)) on every forward. Off by default: those checks read the device's answer
            back to the host (a synchronisation per check on a GPU, and a graph break under
            torch.compile); shape, dtype and device checks always run and cost nothing. Switch it on
            to debug (the trainer's ``--check-inputs``; :func:`artlib.nn.set_check_inputs`).

    ``forward(tokens, cls, labels=None, return_maps=False)`` returns head_con's logits (B, N_cls);
    with labels, ``(logits, losses)`` where losses holds ``v, con, mtc, sema, total`` (and the MTC
    terms ``mtc_spatial, mtc_temporal, mtc_tracklet``); with ``return_maps`` the last decoder
    layer's attention maps (B,T,heads,K,L) are added as ``losses["maps"]`` or returned second.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        bank: SemanticBank,
        dim: int = 256,
        num_queries: int = 2,
        num_frames: int = 16,
        heads: int = 8,
        se_layers: int = 4,
        act_layers: int = 4,
        ffn_ratio: float = 4.0,
        dropout: float = 0.5,
        gamma_mtc: float = 5.0,
        gamma_sema: float = 5.0,
        lam: float = 0.6,
        temporal: str = "hinge",
        mtc_weights: Sequence[float] = (1.0, 1.0, 1.0),
        use_se: bool = True,
        aggregation: str = "saliency",
        ta_temperature: float = 1.0,
        attn_temperature: float = 1.0,
        sema_video: bool = True,
        sema_prot: bool = True,
        proto_dim: int = 256,
        check_inputs: bool = False,
    ):
        super().__init__()
        if not isinstance(bank, SemanticBank):
            raise TypeError(f"bank must be an artlib.SemanticBank, got {type(bank).__name__}")
        if bank.num_classes != num_classes:
            raise ValueError(
                f"bank has N_cls = {bank.num_classes} classes but num_classes = {num_classes}"
            )
        if not 1 <= num_queries <= num_classes:
            raise ValueError(
                f"num_queries (K = {num_queries}) must be in [1, num_classes = {num_classes}]: "
                "each query starts from one of the top-K classes"
            )
        self.in_dim, self.num_classes, self.dim = in_dim, num_classes, dim
        self.num_queries, self.num_frames = num_queries, num_frames
        self.gamma_mtc, self.gamma_sema = float(gamma_mtc), float(gamma_sema)
        self.sema_video, self.sema_prot = sema_video, sema_prot
        self.check_inputs = bool(check_inputs)
        c_t = bank.text_dim

        self.bank = bank
        self.token_proj = nn.Linear(in_dim, dim)  # step 1: C -> d
        self.video_proj = nn.Linear(in_dim, c_t)  # proj_v: x_cls into the text space
        self.text_proj = nn.Linear(c_t, dim)  # S^topk: C_t -> d
        self.rssa = RSSA(
            dim,
            heads,
            num_queries,
            num_frames,
            se_layers,
            act_layers,
            ffn_ratio,
            use_se=use_se,
            attn_temperature=attn_temperature,
        )
        self.mtc = MTCLoss(lam, temporal, mtc_weights)
        self.aggregate = TrackletAggregation(aggregation, ta_temperature)
        self.dropout = nn.Dropout(dropout)
        self.head_v = nn.Linear(in_dim, num_classes)  # Eq. 10
        agg_dim = self.aggregate.out_dim(dim, num_frames)
        self.head_con = nn.Linear(in_dim + num_queries * agg_dim, num_classes)  # Eq. 11
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.prototypes = nn.Parameter(torch.randn(num_classes, proto_dim) * 0.02)  # W, Eq. 15
        self.proto_mlp = nn.Sequential(
            nn.Linear(proto_dim, proto_dim), nn.GELU(), nn.Linear(proto_dim, c_t)
        )

    def ema_update(self) -> None:
        """S <- mu S + (1 - mu) S^a (Eq. 12); call after ``optimizer.step()``."""
        self.bank.ema_update()

    def select_semantics(self, cls: Tensor) -> tuple[Tensor, Tensor]:
        """Step 3: top-K class indices (B, K) (no label, no gradient) and S^topk (B, K, d)."""
        video_emb = self.video_proj(cls)
        idx = self.bank.topk_classes(video_emb, self.num_queries)
        s = self.bank.class_embeddings()[idx]  # (B, K, C_t), S is a buffer: no gradient
        return idx, self.text_proj(s.to(self.text_proj.weight.dtype))

    def _check(self, tokens: Tensor, cls: Tensor, labels: Tensor | None) -> None:
        """Shapes, dtypes and devices always (no host sync); values only with ``check_inputs``."""
        finite = self.check_inputs
        check_tensor(
            "tokens",
            tokens,
            ("B", "T", "L", "C"),
            sizes={"T": self.num_frames, "C": self.in_dim},
            finite=finite,
        )
        check_tensor(
            "cls", cls, ("B", "C"), sizes={"B": tokens.shape[0], "C": self.in_dim}, finite=finite
        )
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.shape != (tokens.shape[0],):
                raise ValueError(
                    f"labels must be a (B,) = ({tokens.shape[0]},) tensor of class indices, got "
                    f"{getattr(labels, 'shape', type(labels).__name__)}"
                )
            if labels.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"labels must be int64 class indices, got {labels.dtype}")
            if finite and labels.numel():
                check_labels(labels, self.num_classes)

    def forward(
        self, tokens: Tensor, cls: Tensor, labels: Tensor | None = None, return_maps: bool = False
    ):
        self._check(tokens, cls, labels)
        x = self.token_proj(tokens)  # (B, T, L, d)
        _, s_topk = self.select_semantics(cls)  # (B, K, d)
        out = self.rssa(x, s_topk, return_attention=return_maps)
        r, maps = out if return_maps else (out, None)  # R (B, T, K, d), Eq. 3
        agg = self.aggregate(r, s_topk.to(r.dtype))  # Eq. 9 -> (B, K, d); autocast: R may be fp32
        fused = torch.cat([cls, rearrange(agg, "b k e -> b (k e)").to(cls.dtype)], dim=-1)
        logits = self.head_con(self.dropout(fused))  # Eq. 11
        if labels is None:
            return (logits, maps) if return_maps else logits

        losses: dict[str, Tensor] = {}
        losses["v"] = F.cross_entropy(self.head_v(self.dropout(cls)), labels)  # Eq. 10
        losses["con"] = F.cross_entropy(logits, labels)  # Eq. 11
        mtc, terms = self.mtc(r, return_terms=True)  # Eq. 5-8
        losses["mtc"] = mtc
        losses.update({f"mtc_{k}": v for k, v in terms.items()})
        losses["sema"] = self.sema_loss(cls, labels)  # Eq. 17
        losses["total"] = (  # Eq. 18
            losses["v"]
            + losses["con"]
            + self.gamma_mtc * losses["mtc"]
            + self.gamma_sema * losses["sema"]
        )
        if return_maps:
            losses["maps"] = maps
        return logits, losses

    def sema_loss(self, cls: Tensor, labels: Tensor) -> Tensor:
        """L_sema = L_video + L_prot (Eq. 13-17), each switchable; trains S^a (and proj_v, W)."""
        scale = self.logit_scale.exp().clamp(max=100.0)
        loss = cls.new_zeros((), dtype=torch.float32)
        if self.sema_video:
            loss = loss + self.bank.video_consistency_loss(self.video_proj(cls), labels, scale)
        if self.sema_prot:
            loss = loss + self.bank.prototype_consistency_loss(
                self.proto_mlp(self.prototypes), scale
            )
        return loss
