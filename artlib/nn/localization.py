"""Do the region queries find regions? Localization against ground-truth boxes, and tracklet health
without them: pure tensor functions, no host synchronisation (every result is a tensor on the
input's device; read them out where the caller already reads its other figures).

Legend: B videos, T frames, heads attention heads, K region queries (tracklets), L = gh*gw tokens
of a frame on a (gh, gw) grid, d width, S_h x S_w the model input's pixels.

    maps (B,T,heads,K,L) of an RSSA decoder layer -> head_mean -> att (B,T,K,L), rows sum to 1
    boxes (B,T,4) pixels of the input (x0, y0, x1, y1) -> box_coverage -> cov (B,T,L) in [0, 1]

    localization_metrics(att, limb_cov, distractor_cov): pointing game, attention mass in the box,
        distractor hits, each with its chance level (uniform attention, a random argmax)
    tracklet_health(att, responses): entropy, overlap of the queries' maps, temporal stability of
        each query's peak, pairwise cosine of the tracklets

A token is "in" a box when its cell overlaps the box (coverage > 0); the attention mass in a box
weights each token by the fraction of its cell the box covers. Chance levels use the same cells, so
a coarse grid (a box covering few tokens' cells only partly) raises the metric and its chance alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from einops import rearrange
from torch import Tensor

__all__ = [
    "attention_entropy",
    "box_coverage",
    "crop_boxes",
    "head_mean",
    "health_scalars",
    "localization_metrics",
    "map_overlap",
    "peak_jump",
    "record_rssa",
    "tracklet_cosine",
    "tracklet_health",
]


def head_mean(maps: Tensor) -> Tensor:
    """(B,T,heads,K,L) per-head maps -> (B,T,K,L) averaged over heads (each row still sums to 1)."""
    if maps.dim() != 5:
        raise ValueError(f"maps: expected (B,T,heads,K,L), got shape {tuple(maps.shape)}")
    return maps.float().mean(2)


def _grid(l: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is None:
        side = int(round(math.sqrt(l)))
        if side * side != l:
            raise ValueError(f"grid: {l} tokens are not a square grid; pass grid=(gh, gw)")
        return side, side
    if grid[0] * grid[1] != l:
        raise ValueError(f"grid: {grid} does not hold the L = {l} tokens")
    return int(grid[0]), int(grid[1])


def crop_boxes(
    boxes: Tensor, crop: tuple[int, int, int, int, bool], out_size: tuple[int, int]
) -> Tensor:
    """Boxes (..., 4) in a frame's pixels -> the same boxes in the model input's pixels after the
    crop window (top, left, h, w, flipped) was resized to ``out_size`` (S_h, S_w) and maybe flipped
    (as ``VideoDataset.transform`` does), clipped to the input."""
    top, left, h, w, flipped = crop
    sh, sw = out_size
    sx, sy = sw / w, sh / h
    x0 = (boxes[..., 0] - left) * sx
    x1 = (boxes[..., 2] - left) * sx
    if flipped:
        x0, x1 = sw - x1, sw - x0
    y0 = (boxes[..., 1] - top) * sy
    y1 = (boxes[..., 3] - top) * sy
    out = torch.stack([x0.clamp(0, sw), y0.clamp(0, sh), x1.clamp(0, sw), y1.clamp(0, sh)], -1)
    return out


def box_coverage(boxes: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Boxes (..., 4) (x0, y0, x1, y1) in pixels of an input of ``size`` (S_h, S_w) -> (..., L):
    the fraction of each token's cell (the input cut into ``grid`` = (gh, gw) cells, row-major, as
    the backbone lays its tokens) that the box covers. An empty box covers nothing."""
    gh, gw = grid
    sh, sw = size
    b = boxes.float()
    ys = torch.arange(gh + 1, device=b.device, dtype=torch.float32) * (sh / gh)  # cell edges
    xs = torch.arange(gw + 1, device=b.device, dtype=torch.float32) * (sw / gw)
    ox = (torch.minimum(b[..., 2:3], xs[1:]) - torch.maximum(b[..., 0:1], xs[:-1])).clamp(min=0)
    oy = (torch.minimum(b[..., 3:4], ys[1:]) - torch.maximum(b[..., 1:2], ys[:-1])).clamp(min=0)
    cov = oy[..., :, None] * ox[..., None, :] / ((sh / gh) * (sw / gw))  # (..., gh, gw)
    return rearrange(cov, "... h w -> ... (h w)")


def localization_metrics(
    att: Tensor, limb: Tensor, distractors: Tensor | None = None
) -> dict[str, Tensor]:
    """Localization of K queries against ground truth, over every frame of every video.

    att: (B,T,K,L) attention of each query over a frame's tokens (rows sum to 1; ``head_mean``).
    limb: (B,T,L) the limb box's coverage of each token (``box_coverage``).
    distractors: (B,T,N,L) each distractor box's coverage, or None (no distractors).

    Returns (all tensors, on att's device, fractions in [0, 1]):
      ``pointing`` (K,): frames where query k's argmax token is in the limb's box;
      ``pointing_best`` (): the best query's; ``pointing_any`` (): frames where some query points in;
      ``pointing_chance`` (): the same for an argmax drawn uniformly (mean in-box share of tokens);
      ``pointing_any_chance`` (): for K independent uniform argmaxes, 1 - (1 - share)^K per frame;
      ``mass`` (K,): attention mass in the box (each token weighted by its covered fraction);
      ``mass_chance`` (): the same for uniform attention;
      ``distractor_hits`` (K,): frames where query k's argmax is in a distractor's box and not in
      the limb's; ``distractor_chance`` (): the share of such tokens (NaN without distractors).
    """
    if att.dim() != 4:
        raise ValueError(f"att: expected (B,T,K,L), got shape {tuple(att.shape)}")
    b, t, k, l = att.shape
    if limb.shape != (b, t, l):
        raise ValueError(f"limb: expected (B,T,L) = {(b, t, l)}, got {tuple(limb.shape)}")
    att = att.float()
    inside = limb.float() > 0  # (B,T,L)
    peak = att.argmax(-1)  # (B,T,K)
    hit = inside.gather(-1, peak).float()  # (B,T,K)
    pointing = hit.mean((0, 1))
    share = inside.float().mean(-1)  # (B,T) in-box share of tokens
    out = {
        "pointing": pointing,
        "pointing_best": pointing.max(),
        "pointing_any": hit.amax(-1).mean(),
        "pointing_chance": share.mean(),
        "pointing_any_chance": (1 - (1 - share) ** k).mean(),
        "mass": (att * limb.float()[:, :, None]).sum(-1).mean((0, 1)),
        "mass_chance": limb.float().mean(-1).mean(),
    }
    if distractors is None or distractors.shape[2] == 0:
        nan = att.new_full((), float("nan"))
        out["distractor_hits"] = att.new_full((k,), float("nan"))
        out["distractor_chance"] = nan
        return out
    if distractors.shape != (b, t, distractors.shape[2], l):
        raise ValueError(
            f"distractors: expected (B,T,N,L) with B,T,L = {(b, t, l)}, got "
            f"{tuple(distractors.shape)}"
        )
    other = (distractors.float() > 0).any(2) & ~inside  # (B,T,L)
    out["distractor_hits"] = other.gather(-1, peak).float().mean((0, 1))
    out["distractor_chance"] = other.float().mean()
    return out


def attention_entropy(att: Tensor) -> Tensor:
    """(..., L) attention rows -> (...) entropy divided by log L: 1 = uniform, 0 = one token."""
    p = att.float().clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    h = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return h / math.log(att.shape[-1])


def _pairs(k: int, device) -> tuple[Tensor, Tensor]:
    i, j = torch.triu_indices(k, k, offset=1, device=device)
    return i, j


def map_overlap(att: Tensor) -> tuple[Tensor, Tensor]:
    """Overlap of the K queries' maps (B,T,K,L), over every pair i < j, frames and videos:
    (mean cosine of the maps, mean histogram intersection sum_l min(a_i, a_j)), both 1 for
    identical maps; cosine 1 - O(1/L) between two near-uniform maps. NaN when K = 1."""
    k = att.shape[-2]
    i, j = _pairs(k, att.device)
    a = att.float()
    if i.numel() == 0:
        nan = a.new_full((), float("nan"))
        return nan, nan
    cos = torch.nn.functional.cosine_similarity(a[..., i, :], a[..., j, :], dim=-1)
    inter = torch.minimum(a[..., i, :], a[..., j, :]).sum(-1)
    return cos.mean(), inter.mean()


def peak_jump(att: Tensor, grid: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Temporal stability of each query's peak: (B,T,K,L) -> ((K,) mean distance in token cells
    between the argmax tokens of adjacent frames, () the same for two independent uniform
    argmaxes: the chance level). A query that follows one region moves by about its speed; one
    that jumps around moves by about the chance level. NaN when T = 1."""
    b, t, k, l = att.shape
    gh, gw = _grid(l, grid)
    peak = att.argmax(-1)  # (B,T,K)
    yx = torch.stack([peak // gw, peak % gw], -1).float()  # (B,T,K,2)
    jump = (yx[:, 1:] - yx[:, :-1]).norm(dim=-1)  # (B,T-1,K)
    cells = torch.stack(
        torch.meshgrid(
            torch.arange(gh, device=att.device), torch.arange(gw, device=att.device), indexing="ij"
        ),
        -1,
    ).reshape(-1, 2)
    chance = torch.cdist(cells.float(), cells.float()).mean()
    if t < 2:
        return att.new_full((k,), float("nan")), chance
    return jump.mean((0, 1)), chance


def tracklet_cosine(responses: Tensor) -> Tensor:
    """Mean pairwise cosine of the K tracklets of R (B,T,K,d), each tracklet its T responses
    flattened (Tr_k of Eq. 4): 1 = the same tracklet twice. NaN when K = 1."""
    if responses.dim() != 4:
        raise ValueError(f"responses: expected (B,T,K,d), got shape {tuple(responses.shape)}")
    tr = rearrange(responses.float(), "b t k d -> b k (t d)")
    i, j = _pairs(tr.shape[1], tr.device)
    if i.numel() == 0:
        return tr.new_full((), float("nan"))
    return torch.nn.functional.cosine_similarity(tr[:, i], tr[:, j], dim=-1).mean()


@torch.no_grad()
def tracklet_health(
    maps: Tensor, responses: Tensor | None = None, grid: tuple[int, int] | None = None
) -> dict[str, Tensor]:
    """Ground-truth-free health of the region queries, as tensors (no host sync): call it on a
    batch's maps (``ARTHead(..., return_maps=True)``: (B,T,heads,K,L), or head-averaged
    (B,T,K,L)) and, when at hand, the responses R (B,T,K,d).

    Returns ``entropy`` (K,) normalised attention entropy of each query (1 = uniform);
    ``map_cosine`` () and ``map_intersection`` () the overlap of the queries' maps (1 = the same
    map); ``peak_jump`` (K,) and ``peak_jump_chance`` () the adjacent-frame distance of each
    query's argmax in token cells and its chance level; ``tracklet_cosine`` () the pairwise cosine
    of the tracklets (only with ``responses``). docs/tracklet_health.md reads them.
    """
    att = head_mean(maps) if maps.dim() == 5 else maps.float()
    if att.dim() != 4:
        raise ValueError(f"maps: expected (B,T,heads,K,L) or (B,T,K,L), got {tuple(maps.shape)}")
    cos, inter = map_overlap(att)
    jump, chance = peak_jump(att, grid)
    out = {
        "entropy": attention_entropy(att).mean((0, 1)),
        "map_cosine": cos,
        "map_intersection": inter,
        "peak_jump": jump,
        "peak_jump_chance": chance,
    }
    if responses is not None:
        out["tracklet_cosine"] = tracklet_cosine(responses)
    return out


@torch.no_grad()
def health_scalars(maps: Tensor, prefix: str = "health_") -> dict[str, Tensor]:
    """``tracklet_health`` of a batch's maps (B,T,heads,K,L) as 0-dim tensors (per-query figures
    averaged over the queries), to be averaged like the loss terms: ``entropy``, ``peak_jump``,
    and for K > 1 ``map_cosine`` and ``map_intersection`` (absent for K = 1, where they are
    undefined, so that every value is finite). Keys carry ``prefix``. No host sync."""
    h = tracklet_health(maps)
    out = {f"{prefix}entropy": h["entropy"].mean(), f"{prefix}peak_jump": h["peak_jump"].mean()}
    if maps.shape[-2] > 1:
        out[f"{prefix}map_cosine"] = h["map_cosine"]
        out[f"{prefix}map_intersection"] = h["map_intersection"]
    return out


@contextmanager
def record_rssa(rssa: torch.nn.Module) -> Iterator[dict]:
    """Inside the block, every forward of ``rssa`` (an :class:`artlib.nn.RSSA`) records the maps
    of EVERY decoder layer and its responses: yields a dict whose ``"maps"`` becomes a list (one per
    layer, first to last) of (B,T,heads,K,L) and ``"responses"`` R (B,T,K,d), of the last forward.
    The forward's results are unchanged (the layers are asked for their weights, which they
    compute from the same scores). Hooks removed on exit."""
    rec: dict = {"maps": [None] * len(rssa.layers), "responses": None}
    state = {"b": 1}
    handles = []

    def top_pre(_module, args):
        state["b"] = args[0].shape[0]

    def top_post(_module, _args, out):
        rec["responses"] = out[0] if isinstance(out, tuple) else out

    def ask(_module, args, kwargs):
        return args, {**kwargs, "need_weights": True}

    def keep(i):
        def hook(_module, _args, _kwargs, out):
            rec["maps"][i] = rearrange(out[1], "(b t) h k l -> b t h k l", b=state["b"])

        return hook

    handles.append(rssa.register_forward_pre_hook(top_pre))
    handles.append(rssa.register_forward_hook(top_post))
    for i, layer in enumerate(rssa.layers):
        handles.append(layer.register_forward_pre_hook(ask, with_kwargs=True))
        handles.append(layer.register_forward_hook(keep(i), with_kwargs=True))
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()
