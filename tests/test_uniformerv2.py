"""UniFormerV2: the official architecture and its checkpoint formats.

The reference below (``_official_forward``) is the official model's forward written in its own
layout — tokens first (N, B·T, C), ``F.multi_head_attention_forward``, the local MHRA and the DPE as
Conv3d over (B, C, T, h, w) — on the parameters of an artlib model; artlib's channels-last, SDPA,
absorbed-query implementation must give the same numbers in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from artlib.models import (
    ART,
    RANDOM_WEIGHTS,
    UniFormerV2,
    build_backbone,
    create_uniformerv2,
    wants_random_weights,
)
from artlib.models.uniformerv2_weights import CLIP, MMACTION2, OFFICIAL, is_clip_key
from tests.helpers import assert_close

# Kinetics: no local MHRA, no temporal downsampling; Something-Something: double local MHRA,
# temporal stride 2 (the two layouts OpenGVLab releases)
SMALL = dict(width=64, layers=3, heads=2, patch_size=16, img_size=48, n_layers=2)
K400 = dict(no_lmhra=True, temporal_downsample=False)
SSV2 = dict(no_lmhra=False, double_lmhra=True, temporal_downsample=True)
CONFIGS = {"k400": K400, "ssv2": SSV2}


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BatchNorm statistic random (also those that start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):  # norms
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                fan = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / fan**0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model


def _small(cfg: str, **kw) -> UniFormerV2:
    return _randomize(UniFormerV2(**{**SMALL, **CONFIGS[cfg], **kw}))


# The official forward, in the official layout -----------------------------------------------


def _quick(x):
    return x * torch.sigmoid(1.702 * x)


def _mha(attn, q, kv):
    C = q.shape[-1]
    return F.multi_head_attention_forward(
        q, kv, kv, C, attn.heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False,
    )[0]  # fmt: skip


def _ln(x, mod):
    return F.layer_norm(x, x.shape[-1:], mod.weight, mod.bias, mod.eps)


def _mlp(mlp, x, act):
    return F.linear(
        act(F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias)), mlp.c_proj.weight, mlp.c_proj.bias
    )


def _lmhra(mod, x5, training):
    """Official Local_MHRA on (B, C, T, H, W): BatchNorm3d then three Conv3d."""
    bn, down, tconv, up = mod.pos_embed
    if training:  # batch statistics (the running ones are not touched here)
        y = F.batch_norm(x5, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    else:
        y = F.batch_norm(
            x5, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
    y = F.conv3d(y, down.weight, down.bias)
    y = F.conv3d(y, tconv.weight, tconv.bias, padding=tconv.padding, groups=tconv.groups)
    return F.conv3d(y, up.weight, up.bias)


def _official_forward(m: UniFormerV2, video):
    act = _quick if type(m.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU" else F.gelu
    x = F.conv3d(
        video.permute(0, 2, 1, 3, 4), m.conv1.weight, None, m.conv1.stride, m.conv1.padding
    )
    B, C, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
    x = torch.cat([m.class_embedding + x.new_zeros(B * T, 1, C), x], dim=1) + m.positional_embedding
    x = _ln(x, m.ln_pre).permute(1, 0, 2)  # (N, B·T, C)
    N = x.shape[0]
    tr = m.transformer
    q = tr.temporal_cls_token.repeat(1, B, 1)  # (1, B, C)

    def local(x, mod):
        t = x[1:].view(H, W, B, T, C).permute(2, 4, 3, 0, 1)
        t = t + _lmhra(mod, t, m.training)
        return torch.cat(
            [x[:1], t.reshape(B, C, T, N - 1).permute(3, 0, 2, 1).reshape(N - 1, B * T, C)]
        )

    j = 0
    for i, blk in enumerate(tr.resblocks):
        if hasattr(blk, "lmhra1"):
            x = local(x, blk.lmhra1)
        y = _ln(x, blk.ln_1)
        x = x + _mha(blk.attn, y, y)
        if hasattr(blk, "lmhra2"):
            x = local(x, blk.lmhra2)
        x = x + _mlp(blk.mlp, _ln(x, blk.ln_2), act)
        if i in tr.return_list:
            t = x.view(N, B, T, C).clone()
            feats = t[1:].permute(1, 3, 2, 0).reshape(B, C, T, H, W).clone()
            dpe = tr.dpe[j]
            feats = F.conv3d(feats, dpe.weight, dpe.bias, padding=1, groups=C)
            t[1:] = t[1:] + feats.view(B, C, T, N - 1).permute(3, 0, 2, 1)
            y = t.permute(2, 0, 1, 3).flatten(0, 1)  # (T·N, B, C)
            dec = tr.dec[j]
            q = q + _mha(dec.attn, _ln(q, dec.ln_1), _ln(y, dec.ln_3))
            q = q + _mlp(dec.mlp, _ln(q, dec.ln_2), _quick)
            j += 1
    tokens = x[1:].view(N - 1, B, T, C).permute(1, 2, 0, 3)
    if tr.frozen:
        return tokens, q[0]
    w = torch.sigmoid(tr.balance)
    return tokens, (1 - w) * q[0] + w * x.view(N, B, T, C)[0].mean(1)


@pytest.mark.parametrize("cfg", ["k400", "ssv2"])
@pytest.mark.parametrize("training", [False, True])
def test_forward_equals_official_layout(cfg, training):
    """float64: tokens (last block's patch tokens) and cls (the fused feature) equal the official
    computation, in eval and in training (BatchNorm on batch statistics) mode."""
    m = _small(cfg, mlp_dropout=0.0).double().train(training)
    video = torch.randn(2, 4, 3, 48, 48, dtype=torch.float64)
    tokens, cls = m(video)
    ref_tokens, ref_cls = _official_forward(m, video)
    T = 2 if cfg == "ssv2" else 4
    assert tokens.shape == (2, T, 9, 64) and cls.shape == (2, 64) and m.frames_out(4) == T
    assert_close(tokens, ref_tokens, name=f"{cfg} tokens")
    assert_close(cls, ref_cls, name=f"{cfg} cls")
    g = torch.randn_like(cls)
    got = torch.autograd.grad(cls, [m.transformer.balance, m.conv1.weight], g)
    exp = torch.autograd.grad(ref_cls, [m.transformer.balance, m.conv1.weight], g)
    assert_close(got[0], exp[0], name="d balance")
    assert_close(got[1], exp[1], name="d conv1")


def test_frozen_and_grad_checkpointing():
    m = _small("ssv2", frozen=True).double().eval()
    assert "transformer.balance" not in m.state_dict()
    assert (
        not m.conv1.weight.requires_grad and m.transformer.dec[0].attn.in_proj_weight.requires_grad
    )
    video = torch.randn(1, 4, 3, 48, 48, dtype=torch.float64)
    assert_close(m(video)[1], _official_forward(m, video)[1], name="frozen cls = the query")
    a = _small("ssv2", mlp_dropout=0.0).train()
    b = _small("ssv2", mlp_dropout=0.0, grad_checkpointing=True).train()
    video = video.float()
    for model in (a, b):
        tokens, cls = model(video)
        (tokens.square().mean() + cls.square().mean()).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.grad is None:  # the classifier: not in this loss
            assert pb.grad is None and name.startswith("transformer.proj."), name
        else:
            assert_close(pb.grad, pa.grad, name=f"checkpointed grad {name}")


def test_modules_and_names_are_the_official_ones():
    """The official key names, and the number of tensors of B/16 in both layouts (meta device)."""
    with torch.device("meta"):
        k400 = build_backbone("uniformerv2_b16")
        ssv2 = build_backbone("uniformerv2_b16", **SSV2)
    sd = k400.state_dict()
    for key in ("conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight",
                "transformer.resblocks.11.attn.in_proj_weight", "transformer.temporal_cls_token",
                "transformer.dpe.3.weight", "transformer.dec.3.attn.out_proj.weight",
                "transformer.dec.3.ln_3.bias", "transformer.balance", "transformer.proj.0.weight",
                "transformer.proj.2.bias"):  # fmt: skip
        assert key in sd, key
    assert not any("ln_post" in k or "lmhra" in k for k in sd)
    assert tuple(sd["conv1.weight"].shape) == (768, 3, 1, 16, 16)
    ss = ssv2.state_dict()
    assert tuple(ss["conv1.weight"].shape) == (768, 3, 3, 16, 16)
    lmhra = ss["transformer.resblocks.0.lmhra2.pos_embed.1.weight"]
    assert tuple(lmhra.shape) == (512, 768, 1, 1, 1)
    assert (len(sd), len(ss)) == (219, 483)
    assert k400.frames_out(16) == 16 and ssv2.frames_out(16) == 8


# Checkpoint formats ---------------------------------------------------------------------------


def _assert_same_model(a: UniFormerV2, b: UniFormerV2, video):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    a.eval(), b.eval()
    with torch.no_grad():
        (ta, ca), (tb, cb) = a(video), b(video)
    assert torch.equal(ta, tb) and torch.equal(ca, cb)
    assert torch.equal(a.classify(ca), b.classify(cb))


@pytest.mark.parametrize("cfg", ["k400", "ssv2"])
def test_official_checkpoints_load(tmp_path, cfg):
    """OpenGVLab's flat ``backbone.`` state dict and SlowFast's {"model_state"}: configuration read
    from the keys (no kwargs but heads), no missing or unexpected keys, identical outputs."""
    ref = _small(cfg)
    flat = {f"backbone.{k}": v for k, v in ref.state_dict().items()}
    video = torch.randn(1, 4, 3, 48, 48)
    for name, obj in [("flat.pyth", flat), ("slowfast.pyth", {"model_state": flat, "epoch": 30})]:
        torch.save(obj, tmp_path / name)
        m = build_backbone("uniformerv2_b16", pretrained=tmp_path / name, heads=2)
        rep = m.pretrained_report
        assert rep["format"] == OFFICIAL and rep["loaded"] == len(flat)
        assert rep["initialised"] == [] and rep["ignored"] == []
        assert rep["config"]["no_lmhra"] == (cfg == "k400")
        assert rep["config"]["temporal_downsample"] == (cfg == "ssv2")
        assert m.config == ref.config and m.mean == (0.45, 0.45, 0.45)
        _assert_same_model(ref, m, video)
    with pytest.raises(ValueError, match="no_lmhra: the UniFormerV2 checkpoint has"):
        build_backbone("uniformerv2_b16", pretrained=tmp_path / "flat.pyth", heads=2,
                       no_lmhra=cfg != "k400")  # fmt: skip
    # another input size: the positional embedding is resized, nothing else changes
    m64 = build_backbone("uniformerv2_b16", pretrained=tmp_path / "flat.pyth", heads=2, img_size=64)
    assert m64(torch.randn(1, 4, 3, 64, 64))[0].shape[2] == 16
    # a new classifier: the head is the only part not loaded
    m10 = build_backbone(
        "uniformerv2_b16", pretrained=tmp_path / "flat.pyth", heads=2, num_classes=10
    )
    assert m10.pretrained_report["initialised"] == [
        f"transformer.proj.2.{x}" for x in ("weight", "bias")
    ]
    assert m10.classify(torch.randn(3, 64)).shape == (3, 10)


def test_mmaction2_checkpoint_loads(tmp_path):
    """mmaction2: the backbone's final norm is ``transformer.norm``, the classifier is the
    recognizer's ``cls_head.fc_cls``; the whole file is under "state_dict" beside "meta"."""
    ref = _small("ssv2")
    sd = {}
    for k, v in ref.state_dict().items():
        if k.startswith("transformer.proj.0."):
            sd["backbone.transformer.norm." + k.split(".")[-1]] = v
        elif k.startswith("transformer.proj.2."):
            sd["cls_head.fc_cls." + k.split(".")[-1]] = v
        else:
            sd["backbone." + k] = v
    torch.save(
        {"meta": {"epoch": 5, "mmengine_version": "0.10"}, "state_dict": sd}, tmp_path / "mm.pth"
    )
    m = build_backbone("uniformerv2_b16", pretrained=tmp_path / "mm.pth", heads=2)
    assert m.pretrained_report["format"] == MMACTION2 and m.pretrained_report["loaded"] == len(sd)
    _assert_same_model(ref, m, torch.randn(1, 4, 3, 48, 48))


def test_backbone_pt_round_trip_through_art(tmp_path):
    """The trainer's backbone.pt (the backbone's state dict) passed back as pretrained: every
    parameter and buffer comes back, the video parts included (after a training step)."""
    backbone = UniFormerV2(**SMALL, **SSV2)
    model = ART(backbone, 5, F.normalize(torch.randn(4, 5, 24), dim=-1), num_frames=4, dim=32,
                heads=4, se_layers=1, act_layers=1)  # fmt: skip
    assert model.token_frames == 2 and model.head.rssa.prompts.shape[0] == 2
    assert not any(p.requires_grad for p in backbone.classifier.parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    _, losses = model(torch.randn(2, 4, 3, 48, 48), torch.tensor([1, 3]))
    losses["total"].backward()
    opt.step()
    assert backbone.transformer.balance.abs().max() > 0  # the video parts moved
    assert backbone.transformer.resblocks[0].lmhra1.pos_embed[3].weight.abs().max() > 0
    torch.save(backbone.state_dict(), tmp_path / "backbone.pt")
    back = build_backbone("uniformerv2_b16", pretrained=tmp_path / "backbone.pt", heads=2)
    assert back.pretrained_report["format"] == OFFICIAL
    _assert_same_model(backbone, back, torch.randn(1, 4, 3, 48, 48))


def test_mismatch_names_the_formats_tried(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(RuntimeError) as e:
        build_backbone("uniformerv2_b16", pretrained=tmp_path / "other.pt")
    msg = str(e.value)
    assert "fits none of the checkpoint formats" in msg and "other.pt" in msg
    for fmt in (OFFICIAL, MMACTION2, CLIP):
        assert fmt in msg
    assert "missing 219" in msg and "'transformer.balance'" in msg and "'encoder.weight'" in msg
    # an official checkpoint with a key lost: that format, that key
    sd = {f"backbone.{k}": v for k, v in _small("k400").state_dict().items()}
    del sd["backbone.transformer.dec.1.ln_3.weight"]
    sd["backbone.transformer.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "broken.pyth")
    with pytest.raises(RuntimeError, match=r"official UniFormerV2.*missing 1 \['transformer.dec.1."
                       r"ln_3.weight'\], unexpected 1 \['transformer.extra'\]"):  # fmt: skip
        build_backbone("uniformerv2_b16", pretrained=tmp_path / "broken.pyth", heads=2)


def test_l14_checkpoint_for_b16_is_refused(tmp_path):
    sd = {"conv1.weight": torch.zeros(1024, 3, 1, 14, 14), "positional_embedding": torch.zeros(257, 1024),
          "transformer.temporal_cls_token": torch.zeros(1, 1, 1024)}  # fmt: skip
    torch.save({f"backbone.{k}": v for k, v in sd.items()}, tmp_path / "l14.pyth")
    with pytest.raises(ValueError, match="L14 checkpoint .* build it as 'uniformerv2_l14'"):
        build_backbone("uniformerv2_b16", pretrained=tmp_path / "l14.pyth")


def test_random_on_purpose():
    assert (
        RANDOM_WEIGHTS == "none" and wants_random_weights("None") and not wants_random_weights(None)
    )
    m = build_backbone("uniformerv2_b16", pretrained="none", **{**SMALL, "n_layers": 1})
    assert m.pretrained_report == {"format": "random", "path": None}
    assert build_backbone("tiny", pretrained="NONE", width=32, depth=1).out_dim == 32


# CLIP image towers ----------------------------------------------------------------------------


def _clip_vit(quick: bool = False, output_tokens: bool = True):
    pytest.importorskip("open_clip")
    from open_clip.transformer import QuickGELU, VisionTransformer

    return VisionTransformer(
        image_size=48, patch_size=16, width=64, layers=3, heads=2, mlp_ratio=4.0, output_dim=32,
        output_tokens=output_tokens, act_layer=QuickGELU if quick else nn.GELU,
    ).eval()  # fmt: skip


def _clip_block_outputs(vit, frames):
    """CLIP's last block output per frame (B·T, 1 + L, C), before ln_post."""
    out = {}
    hook = vit.transformer.register_forward_hook(lambda mod, i, o: out.setdefault("x", o))
    with torch.no_grad():
        vit(frames)
    hook.remove()
    x = out["x"]
    return x if x.shape[0] == frames.shape[0] else x.permute(1, 0, 2)


@pytest.mark.parametrize("cfg", ["k400", "ssv2"])
def test_clip_init_step0_is_the_image_vit(tmp_path, cfg):
    """From an open_clip state dict file (with "visual." and a text tower's keys): the official
    initialisation. These start at zero: every global block's attn.out_proj and mlp.c_proj, the
    local MHRAs' last conv (pos_embed.3), temporal_cls_token, balance (w = 0.5), and conv1's
    temporal taps other than the centre. So the tokens are CLIP's block output for each frame
    (frames 0, 2, ... with temporal stride 2) and cls = 0.5 · frame average of CLIP's class token."""
    vit = _clip_vit()
    sd = {f"visual.{k}": v for k, v in vit.state_dict().items()}
    sd.update({"logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.zeros(10, 8)})
    torch.save(sd, tmp_path / "open_clip_vit.bin")
    kw = {"no_lmhra": False} if cfg == "ssv2" else {}  # double_lmhra, stride 2 below
    m = build_backbone("uniformerv2_b16", pretrained=tmp_path / "open_clip_vit.bin", heads=2,
                       n_layers=2, **{**CONFIGS[cfg], **kw}).eval()  # fmt: skip
    rep = m.pretrained_report
    assert rep["format"] == CLIP and rep["config"]["quick_gelu"] is False  # LAION-style: GELU
    own = m.state_dict()
    assert rep["loaded"] == len([k for k in own if is_clip_key(k)]) == len(vit.state_dict()) - 3
    assert set(rep["initialised"]) == {k for k in own if not is_clip_key(k)}
    assert set(rep["ignored"]) == {"logit_scale", "token_embedding.weight", "ln_post.weight",
                                   "ln_post.bias", "proj"}  # fmt: skip
    B, T = 2, 4
    video = torch.randn(B, T, 3, 48, 48)
    with torch.no_grad():
        tokens, cls = m(video)
    used = video[:, ::2] if cfg == "ssv2" else video
    ref = _clip_block_outputs(vit, used.flatten(0, 1)).view(B, used.shape[1], 10, 64)
    assert_close(tokens, ref[:, :, 1:], name="step-0 tokens = CLIP's per frame")
    assert_close(cls, 0.5 * ref[:, :, 0].mean(1), name="step-0 cls = 0.5 x CLIP class token")
    # every part that starts at zero gets a gradient, so the video parts learn from step 1
    m.train()
    tokens, cls = m(video)
    (tokens.square().mean() + m.classify(cls).square().mean()).backward()
    zero_init = [m.transformer.dec[0].attn.out_proj.weight, m.transformer.dec[1].mlp.c_proj.weight,
                 m.transformer.balance]  # fmt: skip
    if cfg == "ssv2":
        zero_init.append(m.transformer.resblocks[0].lmhra2.pos_embed[3].weight)
    assert all(p.grad.abs().sum() > 0 for p in zero_init)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_openai_state_dict_and_torchscript(tmp_path):
    """OpenAI weights use QuickGELU: detected from OpenAI's state dict (its input_resolution /
    context_length / vocab_size entries) and from a TorchScript archive; quick_gelu= overrides."""
    vit = _clip_vit(quick=True, output_tokens=False)
    sd = {f"visual.{k}": v for k, v in vit.state_dict().items()}
    sd.update({"input_resolution": torch.tensor(48), "context_length": torch.tensor(77),
               "vocab_size": torch.tensor(49408)})  # fmt: skip
    torch.save(sd, tmp_path / "ViT-B-16.pt")

    class OpenAIClip(nn.Module):
        def __init__(self, visual):
            super().__init__()
            self.visual = visual
            self.logit_scale = nn.Parameter(torch.tensor(4.6))

        def forward(self, image):
            return self.visual(image)

    jit = torch.jit.trace(OpenAIClip(vit), torch.randn(1, 3, 48, 48), check_trace=False)
    jit.save(str(tmp_path / "jit.pt"))
    video = torch.randn(1, 2, 3, 48, 48)
    ref = _clip_block_outputs(vit, video[0])[None, :, 1:]
    for name in ("ViT-B-16.pt", "jit.pt"):
        m = build_backbone("uniformerv2_b16", pretrained=tmp_path / name, heads=2, n_layers=1)
        assert m.pretrained_report["config"]["quick_gelu"] is True, name
        with torch.no_grad():
            assert_close(m.eval()(video)[0], ref, name=f"{name}: tokens")
    forced = build_backbone("uniformerv2_b16", pretrained=tmp_path / "jit.pt", heads=2,
                            n_layers=1, quick_gelu=False)  # fmt: skip
    assert forced.pretrained_report["config"]["quick_gelu"] is False


def test_open_clip_tag_from_local_cache(tmp_path):
    """A tag is looked up in the local cache only (here OpenAI's file name under cache_dir)."""
    pytest.importorskip("open_clip")
    vit = _clip_vit(quick=True)
    torch.save({f"visual.{k}": v for k, v in vit.state_dict().items()}, tmp_path / "ViT-B-16.pt")
    m = create_uniformerv2("b16", "openai", cache_dir=str(tmp_path), heads=2, n_layers=1)
    rep = m.pretrained_report
    assert rep["format"] == CLIP and rep["tag"] == "openai" and rep["config"]["quick_gelu"] is True
    with pytest.raises(FileNotFoundError, match="never downloads"):
        create_uniformerv2("b16", "openai", cache_dir=str(tmp_path / "empty"))


def test_trainer_normalises_with_the_checkpoints_statistics(tmp_path):
    """The trainer feeds a backbone the mean/std it expects (backbone_normalization): 0.45/0.225
    after an official checkpoint, CLIP's for a CLIP-initialised or random UniFormerV2 and for the
    tiny backbones (what their packaged weights were trained with); the data set takes them."""
    from artlib.data import CLIP_MEAN, CLIP_STD, VideoDataset
    from artlib.engine.checkpoint import backbone_normalization
    from artlib.models import ART

    ref = _small("k400")
    torch.save({f"backbone.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "k400.pyth")
    official = build_backbone("uniformerv2_b16", pretrained=tmp_path / "k400.pyth", heads=2)
    bank = torch.randn(2, 3, 8)
    art = ART(official, 3, bank, num_frames=4, dim=16, heads=2, se_layers=1, act_layers=1)
    assert backbone_normalization(art) == ((0.45,) * 3, (0.225,) * 3)
    assert backbone_normalization(_small("k400")) == (CLIP_MEAN, CLIP_STD)
    assert backbone_normalization(build_backbone("tiny_cnn", pretrained="none")) == (
        CLIP_MEAN,
        CLIP_STD,
    )
    ds = VideoDataset([("a.mp4", 0)], num_frames=4, train=False, crop_size=32)
    ds.set_normalization(*backbone_normalization(art))
    assert torch.allclose(ds.mean.view(3), torch.full((3,), 0.45 * 255))
    with pytest.raises(ValueError, match="mean, std"):
        ds.set_normalization((0.5, 0.5), (0.2, 0.2, 0.2))


def test_model_from_an_official_checkpoint_saves_and_loads_without_the_file(tmp_path):
    """ART on a backbone read from an official checkpoint (its architecture and 0.45/0.225 taken
    from the file) records that architecture: save_model -> load_model rebuilds it without the
    checkpoint file, strictly, with the same logits and normalisation."""
    import artlib

    ref = _small("ssv2")  # temporal downsampling, two local MHRAs: not the preset
    torch.save({f"backbone.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "ssv2.pyth")
    official = build_backbone("uniformerv2_b16", pretrained=tmp_path / "ssv2.pyth", heads=2)
    art = ART(official, 3, torch.randn(2, 3, 8), num_frames=4, dim=16, heads=2, se_layers=1,
              act_layers=1).eval()  # fmt: skip
    assert art.config["backbone_kwargs"]["temporal_downsample"] is True and art.token_frames == 2
    folder = artlib.save_model(art, tmp_path / "m", class_names=["a", "b", "c"])
    (tmp_path / "ssv2.pyth").unlink()  # the folder alone rebuilds it
    loaded, info = artlib.load_model(folder)
    assert info.mean == [0.45] * 3 and loaded.backbone.mean == (0.45,) * 3
    video = torch.randn(2, 4, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(video), art(video))
