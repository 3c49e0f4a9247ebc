"""The RSSA cross-attention's temperature (``attn_temperature``, ``--attn-temperature``): the module
against an independent softmax(q k^T / (t sqrt(d_head))) v, forward and gradients, in both forms of
the op; the decoder layer of Eq. 3 against its equations; the option through the model config,
save_model / load_model and the resume check.

Legend: N frames, K queries, L tokens, d width, h heads, dh = d / h.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from ckpt_fixtures import tiny_model_config
from helpers import assert_close

import artlib.nn.region_attention as ra_mod
from artlib.nn.region_attention import RegionAttention
from artlib.nn.rssa import RSSA, RegionDecoderLayer
from artlib.ops import region_attention


def attention_by_hand(query, x, w_in, b_in, w_out, b_out, heads, t):
    """softmax(q k^T / (t sqrt(dh))) v per head, heads concatenated, output projection.
    query (N, K, d), x (N, L, d) -> out (N, K, d), maps (N, h, K, L)."""
    n, k, d = query.shape
    dh = d // heads
    w_q, w_k, w_v = w_in.chunk(3)
    b_q, b_k, b_v = b_in.chunk(3)
    q = (query @ w_q.T + b_q).view(n, k, heads, dh).transpose(1, 2)  # (N, h, K, dh)
    key = (x @ w_k.T + b_k).view(n, -1, heads, dh).transpose(1, 2)  # (N, h, L, dh)
    v = (x @ w_v.T + b_v).view(n, -1, heads, dh).transpose(1, 2)
    logits = q @ key.transpose(-1, -2) / (t * math.sqrt(dh))
    maps = logits.softmax(-1)
    ctx = (maps @ v).transpose(1, 2).reshape(n, k, d)
    return ctx @ w_out.T + b_out, maps


def _module(d, heads, t, seed=0):
    torch.manual_seed(seed)
    m = RegionAttention(d, heads, temperature=t).double()
    with torch.no_grad():  # non-zero biases, so their gradients are tested too
        m.in_proj_bias.normal_(0, 0.5)
        m.out_proj.bias.normal_(0, 0.5)
    return m


@pytest.mark.parametrize("form", ["absorbed", "standard"])
@pytest.mark.parametrize("t", [0.25, 0.5, 1.0, 3.0])
def test_region_attention_temperature_matches_the_softmax_by_hand(t, form, monkeypatch):
    monkeypatch.setattr(ra_mod, "region_attention", functools.partial(region_attention, form=form))
    n, k, l, d, heads = 3, 2, 10, 16, 4
    m = _module(d, heads, t)
    g = torch.Generator().manual_seed(1)
    query = torch.randn(n, k, d, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(n, l, d, dtype=torch.float64, generator=g, requires_grad=True)
    out, maps = m(query, x, need_weights=True)
    params = [m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias]
    ref, ref_maps = attention_by_hand(query, x, *params, heads, t)
    assert_close(out, ref, dtype=torch.float64)
    assert_close(maps, ref_maps, dtype=torch.float64)
    upstream = torch.randn(out.shape, dtype=torch.float64, generator=g)
    got = torch.autograd.grad((out * upstream).sum() + maps.square().sum(), [query, x, *params])
    want = torch.autograd.grad(
        (ref * upstream).sum() + ref_maps.square().sum(), [query, x, *params]
    )
    for name, a, b in zip(["query", "x", "w_in", "b_in", "w_out", "b_out"], got, want):
        assert_close(a, b, dtype=torch.float64, name=f"grad of {name}, t={t}, form={form}")


def test_temperature_sharpens_the_maps_and_one_is_the_default():
    m1, m_sharp = _module(16, 2, 1.0), _module(16, 2, 0.25)
    assert m1.temperature == 1.0 and RegionAttention(16, 2).temperature == 1.0
    query, x = (
        torch.randn(4, 2, 16, dtype=torch.float64),
        torch.randn(4, 9, 16, dtype=torch.float64),
    )
    _, maps1 = m1(query, x, need_weights=True)
    _, maps_sharp = m_sharp(query, x, need_weights=True)
    ent = lambda p: -(p * p.log()).sum(-1).mean()  # noqa: E731
    assert ent(maps_sharp) < ent(maps1), (ent(maps_sharp), ent(maps1))
    # the parameters are unchanged by the temperature (it is applied at the call)
    assert torch.equal(m1.in_proj_weight, m_sharp.in_proj_weight)
    assert "temperature=0.25" in repr(m_sharp) and "temperature" not in repr(m1)


def test_decoder_layer_with_temperature_follows_eq3():
    """R = MCA(Q, X) + Q with MCA at temperature t; R = R + FFN(LN(R)) (pre-norm), by hand."""
    torch.manual_seed(0)
    d, heads, t = 16, 4, 0.5
    layer = RegionDecoderLayer(d, heads, ffn_ratio=2.0, attn_temperature=t).double()
    query = torch.randn(5, 2, d, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(5, 7, d, dtype=torch.float64, requires_grad=True)
    r, maps = layer(query, memory, need_weights=True)
    a = layer.attn
    q = F.layer_norm(query, (d,), layer.norm_q.weight, layer.norm_q.bias)
    att, ref_maps = attention_by_hand(
        q, memory, a.in_proj_weight, a.in_proj_bias, a.out_proj.weight, a.out_proj.bias, heads, t
    )
    ref = query + att
    ref = ref + layer.ffn(F.layer_norm(ref, (d,), layer.norm_ffn.weight, layer.norm_ffn.bias))
    assert_close(r, ref, dtype=torch.float64)
    assert_close(maps, ref_maps, dtype=torch.float64)
    gq, gm = torch.autograd.grad(r.sum(), [query, memory])
    rq, rm = torch.autograd.grad(ref.sum(), [query, memory])
    assert_close(gq, rq, dtype=torch.float64, name="grad of query")
    assert_close(gm, rm, dtype=torch.float64, name="grad of memory")


def test_rssa_passes_the_temperature_to_every_decoder_layer_and_checks_it():
    rssa = RSSA(16, 2, num_queries=2, num_frames=3, se_layers=1, act_layers=3, attn_temperature=0.5)
    assert rssa.attn_temperature == 0.5
    assert [layer.attn.temperature for layer in rssa.layers] == [0.5, 0.5, 0.5]
    assert all(layer.attn.temperature == 1.0 for layer in RSSA(16, 2, num_frames=3).layers)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="attn_temperature must be a finite number > 0"):
            RSSA(16, 2, num_frames=3, attn_temperature=bad)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        RegionAttention(16, 2, temperature=0.0)
    # nn.MultiheadAttention (the attention-dropout path) has no temperature: refused, not ignored
    with pytest.raises(ValueError, match="attn_temperature=0.5 needs RegionAttention"):
        RegionDecoderLayer(16, 2, attn_dropout=0.1, attn_temperature=0.5)
    assert isinstance(RegionDecoderLayer(16, 2, attn_dropout=0.1).attn, torch.nn.MultiheadAttention)


def test_build_save_load_round_trip_keeps_the_temperature(tmp_path):
    import artlib
    from artlib.models import build_art

    cfg = tiny_model_config()
    cfg["head"] = {**cfg["head"], "attn_temperature": 0.25}
    torch.manual_seed(0)
    model = build_art(cfg).eval()
    assert model.config["head"]["attn_temperature"] == 0.25
    assert model.head.rssa.layers[0].attn.temperature == 0.25
    artlib.save_model(model, tmp_path / "m", class_names=["a", "b", "c", "d"])
    loaded, _ = artlib.load_model(tmp_path / "m")
    assert loaded.config["head"]["attn_temperature"] == 0.25
    assert loaded.head.rssa.layers[0].attn.temperature == 0.25
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        assert_close(loaded(video), model(video), dtype=torch.float32)
        # the temperature changes the model: the same weights at t = 1 give other logits
        default = build_art(tiny_model_config())
        default.load_state_dict(model.state_dict())
        assert not torch.allclose(default.eval()(video), model(video), atol=1e-6)


def test_train_config_flag_model_config_and_resume():
    from artlib.engine.config import RESUME_FIXED, config_from_dict, config_to_dict, head_options
    from artlib.engine.rundir import RunFolderError, resume_diff
    from artlib.models.builder import model_config_from_train_config

    assert "model.attn_temperature" in RESUME_FIXED
    cfg = config_from_dict({"model": {"attn_temperature": 0.5}}, partial=True)
    assert head_options(cfg)["attn_temperature"] == 0.5
    assert model_config_from_train_config(cfg, 4)["head"]["attn_temperature"] == 0.5
    # a checkpoint's config from before the option builds the paper's scaling
    saved = config_to_dict(cfg)
    old = {**saved, "model": {k: v for k, v in saved["model"].items() if k != "attn_temperature"}}
    assert model_config_from_train_config(old, 4)["head"]["attn_temperature"] == 1.0
    new = config_to_dict(config_from_dict({"model": {"attn_temperature": 0.25}}, partial=True))
    with pytest.raises(RunFolderError, match=r"^--attn-temperature: .*0.5.*0.25"):
        resume_diff(saved, new, RESUME_FIXED)
    assert resume_diff(saved, config_to_dict(cfg), RESUME_FIXED) == {}
