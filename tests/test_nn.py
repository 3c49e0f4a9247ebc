"""The plain-PyTorch ART modules: shapes, gradient flow, the MTC loss on hand-computed cases, Eq. 9
against a loop, EMA arithmetic, where gradients reach in the bank, overfitting, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_close

from artlib import RSSA, ARTHead, MTCLoss, SemanticBank, TrackletAggregation
from artlib.nn import set_check_inputs, tracklets


def small_head(num_classes=6, k=2, t=4, in_dim=24, dim=32, **kw):
    bank = SemanticBank(torch.randn(3, num_classes, 16))
    opts = dict(dim=dim, num_queries=k, num_frames=t, heads=4, se_layers=1, act_layers=2)
    opts.update(kw)
    return ARTHead(in_dim, num_classes, bank, **opts)


# ---------------------------------------------------------------------------------------- RSSA
@pytest.mark.parametrize("use_se", [True, False])
@pytest.mark.parametrize("k", [1, 3])
def test_rssa_shapes_maps_and_gradients(use_se, k):
    b, t, l, d, heads = 2, 3, 10, 16, 4
    m = RSSA(d, heads=heads, num_queries=k, num_frames=t, se_layers=2, act_layers=2, use_se=use_se)
    x = torch.randn(b, t, l, d, requires_grad=True)
    s = torch.randn(b, k, d, requires_grad=True)
    r, maps = m(x, s, return_attention=True)
    assert r.shape == (b, t, k, d)
    assert maps.shape == (b, t, heads, k, l)
    assert_close(maps.sum(-1), torch.ones(b, t, heads, k), name="maps sum over L")
    r.square().sum().backward()
    for name, g in [("x", x.grad), ("semantics", s.grad), ("prompts", m.prompts.grad)]:
        assert g is not None and g.abs().sum() > 0, f"no gradient reached {name}"
    assert (m.se is None) == (not use_se)


def test_rssa_frames_are_independent():
    """Eq. 1-3 work per frame: changing frame 0's tokens leaves the other frames' responses alone."""
    m = RSSA(16, heads=2, num_queries=2, num_frames=3, se_layers=1, act_layers=1).eval()
    x, s = torch.randn(1, 3, 5, 16), torch.randn(1, 2, 16)
    x2 = x.clone()
    x2[:, 0] += torch.randn(5, 16)
    r1, r2 = m(x, s), m(x2, s)
    assert not torch.allclose(r1[:, 0], r2[:, 0])
    assert_close(r2[:, 1:], r1[:, 1:], name="untouched frames")


def test_rssa_bad_input():
    m = RSSA(16, heads=2, num_queries=2, num_frames=3, se_layers=1, act_layers=1)
    with pytest.raises(ValueError, match="x must be"):
        m(torch.randn(3, 5, 16), torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="semantics must be .* K = 2"):
        m(torch.randn(1, 3, 5, 16), torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match="divisible"):
        RSSA(15, heads=2)


# ------------------------------------------------------------------------------------ MTC loss
def _hand_case():
    # B=1, T=2, K=2, d=2. Frame 1: (1,0), (0,2); frame 2: (3,0), (1,1).
    return torch.tensor([[[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [1.0, 1.0]]]], dtype=torch.float64)


def test_mtc_hand_computed_hinge():
    r = _hand_case()
    total, terms = MTCLoss(lam=0.9)(r, return_terms=True)
    spatial = math.sqrt(2) / 4  # (0 + 0 + 2 cos45) / (T K (K-1))
    temporal = (0.0 + (0.9 - 1 / math.sqrt(2))) / 2  # relu(0.9 - 1) = 0, relu(0.9 - cos45)
    tracklet = 3 / math.sqrt(60)  # <(1,0,3,0), (0,2,1,1)> / (sqrt10 sqrt6), both ordered pairs / 2
    assert terms["spatial"].item() == pytest.approx(spatial, rel=1e-6)
    assert terms["temporal"].item() == pytest.approx(temporal, rel=1e-6)
    assert terms["tracklet"].item() == pytest.approx(tracklet, rel=1e-6)
    assert total.item() == pytest.approx(spatial + temporal + tracklet, rel=1e-6)


def test_mtc_hand_computed_linear_and_weights():
    r = _hand_case()
    total, terms = MTCLoss(lam=0.9, temporal="linear", weights=(2.0, 0.5, 0.0))(r, True)
    temporal = 0.9 - (1.0 + 1 / math.sqrt(2)) / 2
    assert terms["temporal"].item() == pytest.approx(temporal, rel=1e-6)
    assert total.item() == pytest.approx(2 * math.sqrt(2) / 4 + 0.5 * temporal, rel=1e-6)


def test_mtc_batch_mean():
    r = torch.cat([_hand_case(), torch.randn(1, 2, 2, 2, dtype=torch.float64)])
    both = MTCLoss()(r)
    assert both.item() == pytest.approx((MTCLoss()(r[:1]) + MTCLoss()(r[1:])).item() / 2, rel=1e-6)


def test_mtc_k1_and_t1_terms_are_zero():
    total, terms = MTCLoss()(torch.randn(2, 4, 1, 8), return_terms=True)
    assert terms["spatial"].item() == 0 and terms["tracklet"].item() == 0
    assert total.item() == pytest.approx(terms["temporal"].item())
    r = torch.randn(2, 1, 3, 8, requires_grad=True)
    total, terms = MTCLoss()(r, return_terms=True)
    assert terms["temporal"].item() == 0
    total.backward()
    assert torch.isfinite(r.grad).all()


def test_mtc_zero_vectors_no_nan():
    r = torch.zeros(2, 3, 2, 8, requires_grad=True)
    total, terms = MTCLoss()(r, return_terms=True)
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["temporal"].item() == pytest.approx(0.6)  # cos(0, 0) = 0 -> relu(0.6 - 0)
    total.backward()
    assert torch.isfinite(r.grad).all()


def test_mtc_bad_input():
    with pytest.raises(ValueError, match="responses must be"):
        MTCLoss()(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="responses must be a floating"):
        MTCLoss()(torch.ones(2, 3, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="temporal"):
        MTCLoss(temporal="square")


def test_mtc_module_compiles_fullgraph():
    loss = MTCLoss()
    r = torch.randn(2, 4, 3, 8)
    compiled = torch.compile(loss, fullgraph=True)
    assert_close(compiled(r), loss(r), name="compiled MTCLoss")


# -------------------------------------------------------------------------- tracklet aggregation
def _eq9_loop(r, s):
    b, t, k, d = r.shape
    out = torch.zeros(b, k, d, dtype=r.dtype)
    for bi in range(b):
        for kk in range(k):
            w = torch.zeros(t, dtype=r.dtype)
            for i in range(k):
                e = torch.stack([torch.exp(s[bi, i] @ r[bi, tt, kk]) for tt in range(t)])
                w += e / e.sum() / k
            out[bi, kk] = sum(r[bi, tt, kk] * w[tt] for tt in range(t)) / t
    return out


def test_tracklet_aggregation_matches_eq9_loop():
    r, s = torch.randn(2, 5, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    assert_close(TrackletAggregation()(r, s), _eq9_loop(r, s), name="Eq. 9")
    assert_close(TrackletAggregation("mean")(r), r.mean(1), name="mean")
    assert_close(TrackletAggregation("sum")(r), r.sum(1), name="sum")
    assert tracklets(r).shape == (2, 3, 5, 4)


def test_tracklet_aggregation_sequence_keeps_frame_order():
    r = torch.randn(2, 5, 3, 4)
    agg = TrackletAggregation("sequence")
    out = agg(r)
    assert out.shape == (2, 3, 5 * 4) and agg.out_dim(4, 5) == 20
    for k in range(3):  # tracklet k is r[:, 0, k], r[:, 1, k], ... laid end to end
        assert_close(out[:, k], torch.cat([r[:, t, k] for t in range(5)], -1), name=f"Tr_{k}")
    # frame order matters: reversing time changes the output (a time average would not)
    assert not torch.allclose(agg(r.flip(1)), out)
    assert_close(
        TrackletAggregation("mean")(r.flip(1)), TrackletAggregation("mean")(r), name="mean"
    )
    with pytest.raises(ValueError, match="responses"):
        agg(torch.randn(2, 5, 4))


def test_head_with_sequence_aggregation():
    head = small_head(aggregation="sequence", t=4, dim=32, k=2)
    assert head.head_con.in_features == 24 + 2 * 4 * 32
    tok = torch.randn(3, 4, 9, 24, requires_grad=True)
    logits, losses = head(tok, torch.randn(3, 24), torch.tensor([0, 5, 2]))
    assert logits.shape == (3, 6)
    losses["total"].backward()
    assert tok.grad.abs().sum() > 0 and head.rssa.prompts.grad.abs().sum() > 0


def test_tracklet_aggregation_gradients_and_errors():
    r = torch.randn(2, 5, 3, 4, requires_grad=True)
    s = torch.randn(2, 3, 4, requires_grad=True)
    TrackletAggregation()(r, s).sum().backward()
    assert r.grad.abs().sum() > 0 and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="semantics must be"):
        TrackletAggregation()(r, torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match="mode"):
        TrackletAggregation("max")


# --------------------------------------------------------------------------------- semantic bank
def test_bank_ema_arithmetic():
    s0 = torch.randn(2, 3, 4)
    bank = SemanticBank(s0, momentum=0.9)
    with torch.no_grad():
        bank.agent.add_(1.0)
    bank.ema_update()
    assert_close(bank.S, 0.9 * s0 + 0.1 * (s0 + 1.0), name="S after one EMA step")
    bank.ema_update()
    assert_close(bank.S, 0.9 * (s0 + 0.1) + 0.1 * (s0 + 1.0), name="S after two EMA steps")
    assert not bank.S.requires_grad and "S" in dict(bank.named_buffers())


def test_bank_topk_uses_S_and_no_label():
    s0 = torch.eye(4).unsqueeze(0).repeat(2, 1, 1)  # class c embeds as e_c
    bank = SemanticBank(s0)
    v = torch.tensor([[0.1, 0.9, 0.5, 0.0]])
    assert bank.topk_classes(v, 2).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="k must be"):
        bank.topk_classes(v, 5)


def test_bank_gradients_reach_agent_only_through_sema():
    head = small_head()
    tok, cls, y = torch.randn(3, 4, 9, 24), torch.randn(3, 24), torch.tensor([0, 1, 2])
    _, losses = head(tok, cls, y)
    (losses["v"] + losses["con"] + losses["mtc"]).backward(retain_graph=True)
    assert head.bank.agent.grad is None or head.bank.agent.grad.abs().sum() == 0
    assert head.bank.S.grad is None
    head.zero_grad()
    losses["sema"].backward()
    assert head.bank.agent.grad.abs().sum() > 0
    assert head.bank.S.grad is None


def test_bank_from_file(tmp_path):
    s0 = torch.randn(2, 3, 4)
    torch.save({"bank": s0}, tmp_path / "bank.pt")
    assert_close(SemanticBank.from_file(tmp_path / "bank.pt").S, s0, name="loaded S")


# ------------------------------------------------------------------------------------- ART head
def test_head_shapes_losses_and_gradients():
    head = small_head()
    tok = torch.randn(3, 4, 9, 24, requires_grad=True)
    cls = torch.randn(3, 24, requires_grad=True)
    y = torch.tensor([0, 5, 2])
    logits = head(tok, cls)
    assert logits.shape == (3, 6)
    logits, losses = head(tok, cls, y)
    assert {"v", "con", "mtc", "sema", "total"} <= set(losses)
    expect = losses["v"] + losses["con"] + 5 * losses["mtc"] + 5 * losses["sema"]
    assert_close(losses["total"], expect, name="Eq. 18")
    losses["total"].backward()
    assert tok.grad.abs().sum() > 0 and cls.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"


def test_head_ablation_switches():
    head = small_head(
        use_se=False, aggregation="mean", mtc_weights=(0, 0, 0), sema_video=False, sema_prot=False
    )
    assert head.rssa.se is None
    _, losses = head(torch.randn(2, 4, 9, 24), torch.randn(2, 24), torch.tensor([1, 2]))
    assert losses["mtc"].item() == 0 and losses["sema"].item() == 0
    logits, maps = head(torch.randn(2, 4, 9, 24), torch.randn(2, 24), return_maps=True)
    assert maps.shape == (2, 4, 4, 2, 9)


def test_head_overfits_small_problem():
    """The head alone, on fixed random tokens, reaches 100% train accuracy."""
    torch.manual_seed(0)
    n, classes = 24, 4
    tok, cls = torch.randn(n, 4, 9, 24), torch.randn(n, 24) * 0.1
    y = torch.arange(n) % classes
    head = small_head(num_classes=classes, dropout=0.0, gamma_mtc=0.0, gamma_sema=0.1)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only adds sync overhead on a busy box
    try:
        _fit(head, opt, tok, cls, y, steps=150)
    finally:
        torch.set_num_threads(threads)
    head.eval()
    acc = (head(tok, cls).argmax(-1) == y).float().mean().item()
    assert acc == 1.0, f"train accuracy {acc}"


def _fit(head, opt, tok, cls, y, steps):
    for _ in range(steps):
        _, losses = head(tok, cls, y)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        head.ema_update()


def test_head_bad_input():
    head = small_head()
    tok, cls = torch.randn(2, 4, 9, 24), torch.randn(2, 24)
    with pytest.raises(ValueError, match="tokens must be"):
        head(tok[0], cls)
    with pytest.raises(ValueError, match="tokens must be .* C = 24"):
        head(torch.randn(2, 4, 9, 20), cls)
    with pytest.raises(ValueError, match="cls must be"):
        head(tok, torch.randn(3, 24))
    with pytest.raises(TypeError, match="tokens must be a Tensor"):
        head(tok.numpy(), cls)
    with pytest.raises(TypeError, match="labels must be int64"):
        head(tok, cls, torch.tensor([0.0, 1.0]))
    # value checks (a host sync each) run only when asked for
    assert not head.check_inputs
    head(torch.full_like(tok, float("nan")), cls)  # no check: NaN flows through
    set_check_inputs(head, True)
    assert head.check_inputs
    with pytest.raises(ValueError, match="NaN"):
        head(torch.full_like(tok, float("nan")), cls)
    with pytest.raises(ValueError, match="cls contains NaN"):
        head(tok, torch.full_like(cls, float("inf")))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 6\), got range \[0, 6\]"):
        head(tok, cls, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="labels must be in"):
        small_head(check_inputs=True)(tok, cls, torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="num_queries"):
        small_head(num_classes=3, k=4)
    with pytest.raises(ValueError, match="N_cls"):
        ARTHead(24, 5, SemanticBank(torch.randn(2, 6, 8)))


# ------------------------------------------------------------------- the whole model: compile, export
def _tiny_art(backbone: str, train: bool = True):
    from artlib.models import ART, TinyConvVideoBackbone, TinyVideoBackbone, UniFormerV2

    torch.manual_seed(0)
    s, n_cls = 32, 5
    if backbone == "uniformerv2":  # a small one: 2 blocks of width 32, 8x8 patches, T 4 -> 2
        bb = UniFormerV2(
            width=32,
            layers=2,
            heads=4,
            patch_size=8,
            img_size=s,
            temporal_downsample=True,
            no_lmhra=False,
            double_lmhra=True,
            n_layers=2,
            num_classes=n_cls,
            mlp_dropout=0.0,
            cls_dropout=0.0,
        )
    elif backbone == "vit":
        bb = TinyVideoBackbone(img_size=s)
    else:
        bb = TinyConvVideoBackbone(img_size=s)
    bank = torch.nn.functional.normalize(torch.randn(3, n_cls, 16), dim=-1)
    model = ART(bb, n_cls, bank, num_frames=4, dim=32, heads=4, se_layers=1, act_layers=1,
                proto_dim=16, dropout=0.0)  # fmt: skip
    video = torch.randn(2, 4, 3, s, s)
    labels = torch.tensor([1, 4])
    return model.train(train), video, labels


def _step(fn, model, video, labels):
    """Forward of ``fn`` (model or its compiled form) with labels (every loss term), backward of
    the total; -> losses, the gradients of model's parameters by name."""
    logits, losses = fn(video, labels)
    losses["total"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {"logits": logits.detach(), **{k: v.detach() for k, v in losses.items()}}, grads


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vit", "conv", "uniformerv2"])
def test_art_compiles_fullgraph(backbone):
    """Backbone + head + every loss in one graph (fullgraph: no graph break, no host sync in the
    step), forward and backward equal to eager. aot_eager traces exactly what inductor would
    compile; inductor's own code generation is torch's business (and takes minutes here)."""
    torch._dynamo.reset()
    model, video, labels = _tiny_art(backbone)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got, got_g = _step(compiled, model, video, labels)
    want, want_g = _step(model, model, video, labels)
    assert set(got) == set(want) and set(got_g) == set(want_g) and len(want_g) > 20
    for k in want:
        assert_close(got[k], want[k], name=k)
    for k in want_g:
        assert_close(got_g[k], want_g[k], name=f"grad {k}")


@pytest.mark.slow
def test_export_round_trip(tmp_path):
    """artlib.export -> torch.export.save/load -> the same logits as the eager eval-mode model, at
    the example's batch and (dynamic_batch) another one; the fused ops stay custom ops."""
    import artlib

    model, video, _ = _tiny_art("vit", train=True)
    ep = artlib.export(model, video, dynamic_batch=True)
    assert isinstance(ep, torch.export.ExportedProgram)
    assert model.training  # the mode is restored
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"artlib.region_attention.default", "artlib.tracklet_aggregate.default"} <= targets
    torch.export.save(ep, tmp_path / "art.pt2")
    loaded = torch.export.load(tmp_path / "art.pt2").module()
    model.eval()
    for v in (video, torch.randn(3, *video.shape[1:])):
        with torch.no_grad():
            assert_close(loaded(v), model(v), name=f"logits B={v.shape[0]}")
    with pytest.raises(ValueError, match="example_video"):
        artlib.export(model, video[0])


@pytest.mark.gpu
def test_art_step_has_no_host_sync_on_cuda():
    """A whole ART training step (forward with every loss, backward) never waits for the GPU:
    under set_sync_debug_mode("error") any synchronising call raises."""
    model, video, labels = _tiny_art("vit")
    model, video, labels = model.cuda(), video.cuda(), labels.cuda()
    model(video, labels)[1]["total"].backward()  # warm-up: lazy initialisation, kernel compiles
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, losses = model(video, labels)
        losses["total"].backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert all(bool(torch.isfinite(v).all()) for v in losses.values())
