"""Localization metrics and tracklet health (artlib.nn.localization) against hand-built attention
maps and boxes, and against plain-loop re-implementations of their definitions."""

import itertools
import math

import pytest
import torch

from artlib.nn import RSSA
from artlib.nn.localization import (
    attention_entropy,
    box_coverage,
    crop_boxes,
    head_mean,
    health_scalars,
    localization_metrics,
    map_overlap,
    peak_jump,
    record_rssa,
    tracklet_cosine,
    tracklet_health,
)


def _one_hot(l, idx):
    a = torch.zeros(l)
    a[idx] = 1.0
    return a


def test_box_coverage_of_hand_placed_boxes():
    """A 32x32 input on a 4x4 grid (8 px cells): a box on exactly cell (1, 2) covers that token
    only; a box over half of cell (0, 0) covers 0.5 of it; a box straddling four cells covers a
    quarter of each; an empty box covers nothing."""
    boxes = torch.tensor([[16.0, 8, 24, 16], [0, 0, 4, 8], [4, 4, 12, 12], [5, 5, 5, 9]])
    cov = box_coverage(boxes, (4, 4), (32, 32)).view(4, 4, 4)
    want = torch.zeros(4, 4, 4)
    want[0, 1, 2] = 1
    want[1, 0, 0] = 0.5
    want[2, 0, 0] = want[2, 0, 1] = want[2, 1, 0] = want[2, 1, 1] = 0.25
    torch.testing.assert_close(cov, want)


def test_crop_boxes_follows_the_crop_resize_and_flip():
    """A crop window (top 8, left 4, 32x32) resized to 64: coordinates shift and double; flipped,
    x mirrors about the input's width; parts outside the window are clipped."""
    box = torch.tensor([10.0, 12, 20, 30])
    out = crop_boxes(box, (8, 4, 32, 32, False), (64, 64))
    torch.testing.assert_close(out, torch.tensor([12.0, 8, 32, 44]))
    flipped = crop_boxes(box, (8, 4, 32, 32, True), (64, 64))
    torch.testing.assert_close(flipped, torch.tensor([32.0, 8, 52, 44]))
    clipped = crop_boxes(torch.tensor([0.0, 0, 40, 40]), (8, 4, 32, 32, False), (64, 64))
    torch.testing.assert_close(clipped, torch.tensor([0.0, 0, 64, 64]))


def test_pointing_mass_and_distractor_hits_on_hand_built_maps():
    """2 videos x 3 frames, K = 3 queries on a 4x4 grid. Query 0 always peaks on the limb's cell,
    query 1 always on the distractor's, query 2 is uniform (its argmax is token 0, which is in no
    box). The figures follow by hand."""
    b, t, l = 2, 3, 16
    limb_tok, dis_tok = 5, 10
    limb = torch.zeros(b, t, l)
    limb[..., limb_tok] = 1.0
    limb[..., limb_tok + 1] = 0.5  # a second cell, half covered
    dis = torch.zeros(b, t, 1, l)
    dis[..., dis_tok] = 1.0
    att = torch.stack(
        [
            0.7 * _one_hot(l, limb_tok) + 0.3 * _one_hot(l, 0),
            _one_hot(l, dis_tok),
            torch.full((l,), 1 / l),
        ]
    ).expand(b, t, 3, l)
    m = localization_metrics(att, limb, dis)
    torch.testing.assert_close(m["pointing"], torch.tensor([1.0, 0.0, 0.0]))
    assert m["pointing_best"] == 1.0 and m["pointing_any"] == 1.0
    torch.testing.assert_close(m["pointing_chance"], torch.tensor(2 / 16))  # two cells touched
    torch.testing.assert_close(m["pointing_any_chance"], torch.tensor(1 - (14 / 16) ** 3))
    torch.testing.assert_close(m["mass"], torch.tensor([0.7, 0.0, 1.5 / 16]))
    torch.testing.assert_close(m["mass_chance"], torch.tensor(1.5 / 16))  # uniform == chance
    torch.testing.assert_close(m["distractor_hits"], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(m["distractor_chance"], torch.tensor(1 / 16))
    none = localization_metrics(att, limb, None)
    assert torch.isnan(none["distractor_hits"]).all() and torch.isnan(none["distractor_chance"])


def test_localization_matches_a_plain_loop_on_random_maps():
    """Random maps, random boxes: every figure equals a frame-by-frame loop over the definitions."""
    g = torch.Generator().manual_seed(0)
    b, t, k, gh, gw = 3, 4, 2, 4, 5
    l = gh * gw
    att = torch.rand(b, t, k, l, generator=g).softmax(-1)
    xy = torch.rand(b, t, 3, 2, generator=g) * torch.tensor([40.0, 32.0])
    wh = 3 + torch.rand(b, t, 3, 2, generator=g) * 8
    boxes = torch.cat([xy, xy + wh], -1)  # (B,T,3,4): the limb, then two distractors
    cov = box_coverage(boxes, (gh, gw), (32, 40))
    m = localization_metrics(att, cov[:, :, 0], cov[:, :, 1:])
    hits = torch.zeros(k)
    dhits = torch.zeros(k)
    mass = torch.zeros(k)
    share = dshare = mchance = anyhit = 0.0
    for bi, ti in itertools.product(range(b), range(t)):
        lim = cov[bi, ti, 0]
        other = [(cov[bi, ti, 1, j] > 0 or cov[bi, ti, 2, j] > 0) and lim[j] == 0 for j in range(l)]
        share += float((lim > 0).sum()) / l
        dshare += sum(bool(o) for o in other) / l
        mchance += float(lim.sum()) / l
        frame_any = False
        for ki in range(k):
            p = int(att[bi, ti, ki].argmax())
            hits[ki] += float(lim[p] > 0)
            frame_any |= bool(lim[p] > 0)
            dhits[ki] += float(other[p])
            mass[ki] += float((att[bi, ti, ki] * lim).sum())
        anyhit += frame_any
    n = b * t
    torch.testing.assert_close(m["pointing"], hits / n)
    torch.testing.assert_close(m["pointing_any"], torch.tensor(anyhit / n))
    torch.testing.assert_close(m["distractor_hits"], dhits / n)
    torch.testing.assert_close(m["mass"], mass / n)
    torch.testing.assert_close(m["pointing_chance"], torch.tensor(share / n))
    torch.testing.assert_close(m["distractor_chance"], torch.tensor(dshare / n))
    torch.testing.assert_close(m["mass_chance"], torch.tensor(mchance / n))


def test_health_of_a_tracking_pair_and_of_a_collapsed_pair():
    """Healthy: two one-hot queries on different tokens, each moving one cell right per frame:
    entropy 0, no overlap, peak jump 1 cell. Collapsed: both uniform: entropy 1, cosine and
    intersection 1, peak jump 0 (argmax stays on token 0)."""
    b, t, gh = 1, 5, 4
    l = gh * gh
    healthy = torch.zeros(b, t, 2, l)
    for ti in range(t - 1):
        healthy[0, ti, 0, ti] = 1.0  # row 0, column ti
        healthy[0, ti, 1, 8 + ti] = 1.0  # row 2
    healthy[0, t - 1, 0, 3] = healthy[0, t - 1, 1, 11] = 1.0  # stays in the last frame
    h = tracklet_health(healthy)
    torch.testing.assert_close(h["entropy"], torch.zeros(2), atol=1e-5, rtol=0)
    assert h["map_cosine"] == 0 and h["map_intersection"] == 0
    torch.testing.assert_close(h["peak_jump"], torch.tensor([0.75, 0.75]))  # 3 moves of 4
    flat = tracklet_health(torch.full((b, t, 2, l), 1 / l))
    torch.testing.assert_close(flat["entropy"], torch.ones(2))
    torch.testing.assert_close(flat["map_cosine"], torch.tensor(1.0))
    torch.testing.assert_close(flat["map_intersection"], torch.tensor(1.0))
    torch.testing.assert_close(flat["peak_jump"], torch.zeros(2))
    # the chance level: the mean distance between two uniformly drawn cells, by a double loop
    cells = [(y, x) for y in range(gh) for x in range(gh)]
    want = sum(math.dist(p, q) for p in cells for q in cells) / len(cells) ** 2
    torch.testing.assert_close(h["peak_jump_chance"], torch.tensor(want))


def test_entropy_overlap_and_tracklet_cosine_by_definition():
    """Entropy against -sum p log p / log L on random rows; map cosine, intersection and tracklet
    cosine against their formulas on random inputs with K = 3 (three pairs)."""
    g = torch.Generator().manual_seed(1)
    att = torch.rand(2, 3, 3, 10, generator=g).softmax(-1)
    ent = attention_entropy(att)
    want = -(att * att.log()).sum(-1) / math.log(10)
    torch.testing.assert_close(ent, want)
    cos, inter = map_overlap(att)
    pairs = [(0, 1), (0, 2), (1, 2)]
    c = sum(
        torch.nn.functional.cosine_similarity(att[..., i, :], att[..., j, :], -1).mean()
        for i, j in pairs
    )
    m = sum(torch.minimum(att[..., i, :], att[..., j, :]).sum(-1).mean() for i, j in pairs)
    torch.testing.assert_close(cos, c / 3)
    torch.testing.assert_close(inter, m / 3)
    r = torch.randn(4, 3, 3, 5, generator=g)
    tr = r.permute(0, 2, 1, 3).reshape(4, 3, 15)
    want = sum(
        torch.nn.functional.cosine_similarity(tr[:, i], tr[:, j], -1).mean() for i, j in pairs
    )
    torch.testing.assert_close(tracklet_cosine(r), want / 3)
    same = torch.randn(2, 4, 1, 6, generator=g).expand(2, 4, 2, 6)
    torch.testing.assert_close(tracklet_cosine(same), torch.tensor(1.0))


def test_single_query_and_bad_shapes():
    """K = 1: the pairwise figures are NaN (not an error); a wrong shape names the argument."""
    att = torch.rand(1, 2, 1, 9).softmax(-1)
    h = tracklet_health(att, torch.randn(1, 2, 1, 4))
    assert torch.isnan(h["map_cosine"]) and torch.isnan(h["tracklet_cosine"])
    assert h["entropy"].shape == (1,)
    with pytest.raises(ValueError, match="limb"):
        localization_metrics(att, torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="grid"):
        peak_jump(torch.rand(1, 2, 1, 10))
    with pytest.raises(ValueError, match="maps"):
        head_mean(att)


def test_record_rssa_gives_every_layers_maps_and_leaves_the_output_alone():
    """record_rssa: one map per decoder layer; the last equals RSSA(return_attention=True)'s;
    R is the forward's output, unchanged by recording; each row is a distribution over L."""
    torch.manual_seed(0)
    rssa = RSSA(16, heads=2, num_queries=2, num_frames=3, se_layers=1, act_layers=3).eval()
    x, s = torch.randn(2, 3, 9, 16), torch.randn(2, 2, 16)
    with torch.no_grad():
        r_plain, last = rssa(x, s, return_attention=True)
        with record_rssa(rssa) as rec:
            r = rssa(x, s)
    assert len(rec["maps"]) == 3 and all(m.shape == (2, 3, 2, 2, 9) for m in rec["maps"])
    torch.testing.assert_close(r, r_plain)
    torch.testing.assert_close(rec["responses"], r_plain)
    torch.testing.assert_close(rec["maps"][-1], last)
    torch.testing.assert_close(rec["maps"][0].sum(-1), torch.ones(2, 3, 2, 2))
    assert not torch.equal(rec["maps"][0], rec["maps"][-1])
    with torch.no_grad():
        rssa(x, s)  # hooks gone: nothing recorded any more
    assert not rssa._forward_hooks and not rssa.layers[0]._forward_pre_hooks


def test_health_scalars_are_finite_0_dim_means_of_the_health():
    """health_scalars: 0-dim tensors, the per-query means of tracklet_health (head-averaged maps),
    the pairwise ones left out for K = 1 so that a trainer's finiteness check never trips."""
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(2, 3, 4, 2, 16, generator=g).softmax(-1)  # (B,T,heads,K,L)
    s = health_scalars(maps)
    h = tracklet_health(maps)
    assert all(v.dim() == 0 for v in s.values())
    torch.testing.assert_close(s["health_entropy"], h["entropy"].mean())
    torch.testing.assert_close(s["health_peak_jump"], h["peak_jump"].mean())
    torch.testing.assert_close(s["health_map_cosine"], h["map_cosine"])
    torch.testing.assert_close(
        tracklet_health(head_mean(maps))["entropy"], h["entropy"]
    )  # 5-dim input is averaged over heads first
    one = health_scalars(maps[:, :, :, :1])
    assert set(one) == {"health_entropy", "health_peak_jump"}
    assert all(torch.isfinite(v) for v in one.values())
