"""artlib.models: building blocks, TEA, tiny backbones, registry, ART (UniFormerV2: its own file)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from artlib.models import (
    ART,
    TEAResNet50,
    TinyConvVideoBackbone,
    TinyVideoBackbone,
    UniFormerV2,
    build_backbone,
    create_uniformerv2,
    list_backbones,
)
from artlib.models._layers import QueryAttention, temporal_conv
from artlib.models.tea import MotionExcitation, MultipleTemporalAggregation
from tests.helpers import assert_close


def _roundtrip(model: nn.Module, fresh: nn.Module, *inputs):
    """state_dict → bytes → a freshly built model gives the same outputs."""
    model.eval()
    fresh.eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        a, b = model(*inputs), fresh(*inputs)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# Building blocks --------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
def test_temporal_conv_matches_conv3d(k):
    B, T, C, H, W = 2, 4, 6, 3, 5
    x = torch.randn(B, T, C, H, W, dtype=torch.float64, requires_grad=True)
    w = torch.randn(k, C, 1, 1, dtype=torch.float64, requires_grad=True)
    out = temporal_conv(x, w)
    ref_w = w.detach().clone().requires_grad_()
    ref = F.conv3d(  # depthwise (k,1,1) conv over T with zero padding
        x.permute(0, 2, 1, 3, 4), ref_w[:, :, 0, 0].t().reshape(C, 1, k, 1, 1), padding=(k // 2, 0, 0),
        groups=C,
    ).permute(0, 2, 1, 3, 4)  # fmt: skip
    assert_close(out, ref, name="temporal_conv")
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, w), g)
    rx, rw = torch.autograd.grad(ref, (x, ref_w), g)
    assert_close(gx, rx, name="d x")
    assert_close(gw, rw, name="d w")


def test_query_attention_matches_multihead_attention():
    C, heads = 48, 6
    mha = nn.MultiheadAttention(C, heads, batch_first=True).double()
    qa = QueryAttention(C, heads).double()
    qa.load_state_dict(mha.state_dict())
    with torch.no_grad():
        for p in list(mha.parameters()) + list(qa.parameters()):
            p.normal_(0, 0.3)  # biases non-zero too
        qa.load_state_dict(mha.state_dict())
    q = torch.randn(3, 2, C, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 50, C, dtype=torch.float64, requires_grad=True)
    out = qa(q, x)
    ref = mha(q, x, x, need_weights=False)[0]
    assert_close(out, ref, name="absorbed attention")
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, x, qa.in_proj_weight, qa.in_proj_bias), g)
    exp = torch.autograd.grad(ref, (q, x, mha.in_proj_weight, mha.in_proj_bias), g)
    for name, a, e in zip(("dq", "dx", "d in_proj_weight"), got, exp):
        assert_close(a, e, name=name)
    # the key bias cancels in the softmax: its gradient is zero, MHA's too
    assert_close(got[3], exp[3], atol=1e-10, name="d in_proj_bias")


# TEA ---------------------------------------------------------------------------------------------


def test_tea_shapes_224_and_state_dict():
    m = TEAResNet50(base_width=8, layers=(1, 2, 1, 1))
    video = torch.randn(2, 2, 3, 224, 224)
    tokens, cls = m(video)
    assert tokens.shape == (2, 2, 49, 256) and cls.shape == (2, 256)
    assert m.out_dim == 256 and m.num_tokens(224) == 49
    assert_close(cls, tokens.mean((1, 2)), name="cls = token average")
    _roundtrip(m, TEAResNet50(base_width=8, layers=(1, 2, 1, 1)), video[:1])


def test_motion_excitation():
    me = MotionExcitation(32, reduction=4).eval()
    x = torch.randn(2 * 3, 32, 5, 5)
    assert torch.equal(me(x, 3), x), "conv_exp starts at zero: A = 0, ME is the identity"
    with torch.no_grad():
        me.conv_exp.weight.normal_()
        # reference: TEA's equations written out per frame
        xr = me.bn_red(me.conv_red(x)).view(2, 3, 8, 5, 5)
        xt = me.conv_trans(xr.flatten(0, 1)).view(2, 3, 8, 5, 5)
        m = torch.zeros_like(xr)
        for t in range(2):
            m[:, t] = xt[:, t + 1] - xr[:, t]
        a = 2 * torch.sigmoid(me.conv_exp(m.mean((-2, -1), keepdim=True).flatten(0, 1))) - 1
        assert_close(me(x, 3), x + x * a, name="ME")


@pytest.mark.parametrize("stride", [1, 2])
def test_multiple_temporal_aggregation(stride):
    mta = MultipleTemporalAggregation(16, stride)
    with torch.no_grad():
        for w in mta.temporal:
            w.normal_()
    B, T = 2, 3
    x = torch.randn(B * T, 16, 6, 6)

    def tconv(v, w):  # depthwise kernel-3 conv over time, as a Conv1d
        q = v.shape[1]
        seq = v.view(B, T, q, -1).permute(0, 3, 2, 1).reshape(-1, q, T)
        out = F.conv1d(seq, w[:, :, 0, 0].t().unsqueeze(1), padding=1, groups=q)
        return out.view(B, -1, q, T).permute(0, 3, 2, 1).reshape(v.shape)

    parts = x.chunk(4, dim=1)
    outs = [F.avg_pool2d(parts[0], 3, stride, 1) if stride > 1 else parts[0]]
    for i in range(1, 4):
        xi = parts[i] + outs[-1] if (i > 1 and stride == 1) else parts[i]
        outs.append(mta.spatial[i - 1](tconv(xi, mta.temporal[i - 1])))
    assert_close(mta(x, T), torch.cat(outs, 1), name=f"MTA stride {stride}")


def test_tea_imagenet_weights_load(tmp_path):
    """A torchvision ResNet-50 checkpoint loads; with TEA off the network *is* torchvision's."""
    tv = pytest.importorskip("torchvision")
    ref = tv.models.resnet50().eval()
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    plain = build_backbone("tea_r50", pretrained=path, tea_stages=()).eval()
    video = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        tokens, _ = plain(video)
        x = video[0]
        feats = ref.layer4(
            ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
        )
    assert_close(tokens[0], feats.flatten(2).transpose(1, 2), name="last-stage tokens")
    tea = build_backbone("tea_r50", pretrained=path)
    w = ref.layer2[0].conv2.weight
    assert torch.equal(tea.layer2[0].conv2.spatial[1].weight, w[64:96, 64:96])
    assert torch.equal(tea.layer3[2].bn2.running_var, ref.layer3[2].bn2.running_var)


# Tiny, registry ----------------------------------------------------------------------------------


def test_tiny_shapes_and_state_dict(tmp_path):
    m = TinyVideoBackbone(width=32, depth=2, patch_size=32, img_size=224, heads=2)
    video = torch.randn(2, 4, 3, 224, 224)
    tokens, cls = m(video)
    assert tokens.shape == (2, 4, 49, 32) and cls.shape == (2, 32)
    tokens, _ = m(torch.randn(1, 2, 3, 96, 96))  # other size: positional embedding resized
    assert tokens.shape == (1, 2, 9, 32)
    _roundtrip(m, TinyVideoBackbone(width=32, depth=2, patch_size=32, img_size=224, heads=2), video)
    path = tmp_path / "tiny.pt"
    torch.save(m.state_dict(), path)
    m2 = build_backbone(
        "tiny", pretrained=path, width=32, depth=2, patch_size=32, img_size=224, heads=2
    )
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_tiny_cnn_tokens_are_local_and_causal_in_time(tmp_path):
    """Shapes, cls = global average of the features, the positional embedding only on the tokens,
    and locality: a change in one corner of one frame moves only nearby tokens of nearby frames."""
    torch.manual_seed(0)
    m = TinyConvVideoBackbone(width=16, img_size=64, temporal_layers=1).eval()
    video = torch.randn(2, 6, 3, 64, 64)
    with torch.no_grad():
        tokens, cls = m(video)
        assert tokens.shape == (2, 6, 64, 16) and cls.shape == (2, 16)
        feats = tokens - m.positional_embedding
        assert_close(cls, feats.mean(dim=(1, 2)), name="cls")
        other = video.clone()
        other[:, 0, :, :8, :8] += 3.0  # top-left corner of frame 0
        moved = (m(other)[0] - tokens).abs().amax(dim=(0, 3))  # (T, L)
    assert moved[0, 0] > 0 and moved[1, 0] > 0  # the 3x3x3 conv reaches the next frame
    assert moved[2:].max() == 0  # but no further in time
    assert moved[:, 63].max() == 0  # nor to the far corner
    assert m(torch.randn(1, 2, 3, 96, 96))[0].shape == (1, 2, 144, 16)  # embedding resized
    with pytest.raises(ValueError, match="multiples of 8"):
        m(torch.randn(1, 2, 3, 60, 64))
    path = tmp_path / "cnn.pt"
    torch.save(m.state_dict(), path)
    m2 = build_backbone("tiny_cnn", pretrained=path, width=16, img_size=64, temporal_layers=1)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    short = build_backbone("tiny_cnn_t1", pretrained=path, width=16, img_size=64)  # the same net
    assert len(short.temporal) == 1 and short.state_dict().keys() == m.state_dict().keys()


def test_tiny_cnn_packaged_weights():
    """pretrained="synthetic": the tiny_cnn weights that ship inside the package (the synthetic
    preset's default), the file its manifest describes, loaded exactly; other tags are errors."""
    import hashlib
    import json

    from artlib.models import builtin_weights

    path = builtin_weights("tiny_cnn", "synthetic")
    manifest = json.loads((Path(path).parent / "manifest.json").read_text())[
        "tiny_cnn_synthetic.pt"
    ]
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == manifest["sha256"]
    sd = torch.load(path, map_location="cpu", weights_only=True)
    m = build_backbone("tiny-cnn", pretrained="synthetic")
    assert m.state_dict().keys() == sd.keys()
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    torch.manual_seed(0)
    fresh = build_backbone("tiny_cnn")
    assert not torch.equal(fresh.state_dict()["frame.0.weight"], sd["frame.0.weight"])
    with pytest.raises(ValueError, match="no packaged weights 'synthetic' for 'tiny'"):
        builtin_weights("tiny", "synthetic")
    with pytest.raises(FileNotFoundError, match="kinetics"):
        build_backbone("tiny_cnn", pretrained="kinetics")
    with pytest.raises(
        ValueError, match="width 64, img_size 64 .* got tiny_cnn with width 64, img_size 32"
    ):
        build_backbone("tiny_cnn", pretrained="synthetic", img_size=32)
    with pytest.raises(ValueError, match="got tiny_cnn_t1 with width 64, img_size 64, 1 temporal"):
        build_backbone("tiny_cnn_t1", pretrained="synthetic")
    with pytest.raises(FileNotFoundError, match=r"packaged weights of \['tiny_cnn:synthetic'\]"):
        build_backbone("tiny", pretrained="synthetic")


def test_build_backbone_errors(tmp_path):
    assert set(list_backbones()) == {
        "tiny",
        "tiny_cnn",
        "tiny_cnn_t1",
        "uniformerv2_b16",
        "uniformerv2_l14",
        "tea_r50",
    }
    with pytest.raises(
        ValueError, match=r"unknown backbone 'resnet9'.*tiny.*uniformerv2_b16.*tea_r50"
    ):
        build_backbone("resnet9")
    missing = str(tmp_path / "no_such_weights.pth")
    for name in ("tiny", "tea_r50", "uniformerv2_b16"):
        with pytest.raises(FileNotFoundError, match="no_such_weights.pth"):
            build_backbone(
                name,
                pretrained=missing,
                **({"width": 64, "layers": 1, "heads": 2} if "uni" in name else {}),
            )
    pytest.importorskip("open_clip")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        create_uniformerv2(
            "b16", "laion2b_s34b_b88k", cache_dir=str(tmp_path), width=64, layers=1, heads=2
        )
    with pytest.raises(ValueError, match="known tags"):
        build_backbone("uniformerv2_l14", pretrained="no_such_tag")
    with pytest.raises(ValueError, match="video"):
        UniFormerV2(width=64, layers=1, heads=2, n_layers=0)(torch.randn(1, 2, 3, 100, 100))
    with pytest.raises(ValueError, match="return_list"):
        UniFormerV2(width=64, layers=2, heads=2, return_list=[1, 0])


# ART ---------------------------------------------------------------------------------------------


def _art(**kw):
    backbone = TinyVideoBackbone(width=32, depth=1, patch_size=16, img_size=64, heads=2)
    bank = F.normalize(torch.randn(4, 5, 24), dim=-1)
    opts = dict(dim=32, num_queries=2, heads=4, se_layers=1, act_layers=1, dropout=0.0)
    return ART(backbone, 5, bank, num_frames=4, **{**opts, **kw})


def test_art_forward_losses_and_ema():
    model = _art()
    video, labels = torch.randn(3, 4, 3, 64, 64), torch.tensor([0, 4, 2])
    logits = model(video)
    assert logits.shape == (3, 5)
    logits, losses = model(video, labels)
    assert {"v", "con", "mtc", "sema", "total"} <= set(losses)
    losses["total"].backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.head.bank.agent.grad.abs().sum() > 0
    s_before = model.head.bank.S.clone()
    with torch.no_grad():
        model.head.bank.agent.add_(1.0)
    model.ema_update()
    mu = model.head.bank.momentum
    assert_close(
        model.head.bank.S, mu * s_before + (1 - mu) * model.head.bank.agent.detach(), name="EMA"
    )
    with pytest.raises(ValueError, match="num_frames = 4"):
        model(torch.randn(1, 3, 3, 64, 64))


def test_art_baseline_and_bank_inputs(tmp_path):
    backbone = TinyVideoBackbone(width=32, depth=1, patch_size=16, img_size=64, heads=2)
    base = ART(backbone, 5, None, baseline=True, num_frames=4, dropout=0.0)
    video, labels = torch.randn(2, 4, 3, 64, 64), torch.tensor([1, 3])
    logits, losses = base(video, labels)
    assert set(losses) == {"v", "total"}
    tokens, cls = backbone(video)
    assert_close(logits, base.fc(cls), name="baseline = linear on cls")
    base.ema_update()  # no bank: a no-op
    with pytest.raises(ValueError, match="bank"):
        ART(backbone, 5, None, num_frames=4)
    path = tmp_path / "bank.pt"
    torch.save({"bank": F.normalize(torch.randn(4, 5, 24), dim=-1)}, path)
    art = ART(backbone, 5, str(path), num_frames=4, dim=32, heads=4, se_layers=1, act_layers=1)
    assert torch.equal(art.head.bank.S, torch.load(path)["bank"])
    with pytest.raises(FileNotFoundError, match="missing_bank"):
        ART(backbone, 5, str(tmp_path / "missing_bank.pt"), num_frames=4)
    groups = art.param_groups(lr=1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(art.parameters()))


def test_art_state_dict_roundtrip():
    torch.manual_seed(1)
    a = _art()
    torch.manual_seed(2)
    b = _art()
    _roundtrip(a, b, torch.randn(2, 4, 3, 64, 64))


def test_art_bf16_autocast_step():
    model = _art()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = model(torch.randn(2, 4, 3, 64, 64), torch.tensor([1, 3]))
    losses["total"].backward()
    assert torch.isfinite(losses["total"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "name, C, L",
    [("uniformerv2_b16", 768, 196), ("uniformerv2_l14", 1024, 256), ("tea_r50", 2048, 49),
     ("tiny", 64, 784)],
)  # fmt: skip
def test_full_size_presets_on_meta(name, C, L):
    """The real configurations at 224², built and run on the meta device (shapes only, instant)."""
    with torch.device("meta"):
        m = build_backbone(name)
        tokens, cls = m(torch.empty(2, 3, 3, 224, 224))
    assert m.out_dim == C and m.num_tokens(224, 224) == L
    assert tokens.shape == (2, 3, L, C) and cls.shape == (2, C)


# build_art: the model from a plain config -----------------------------------------------------


def _tiny_config(**changes) -> dict:
    from tests.ckpt_fixtures import tiny_model_config

    return tiny_model_config(bank_seed=3, **changes)


def test_build_art_records_a_json_config_that_rebuilds_it():
    """model.config survives JSON, rebuilds the same architecture, and with the state dict gives
    the same logits (ART and the baseline)."""
    import json

    from artlib.models import build_art

    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for cfg in (_tiny_config(), _tiny_config(baseline=True, head={}, bank=None)):
        torch.manual_seed(0)
        model = build_art(cfg).eval()
        again = build_art(json.loads(json.dumps(model.config))).eval()
        assert again.config == model.config
        again.load_state_dict(model.state_dict())  # strict: the same tensors and shapes
        with torch.no_grad():
            assert torch.equal(again(video), model(video))
    assert model.config["bank"] is None and model.config["baseline"] is True
    art = build_art(_tiny_config())
    assert art.config["bank"] == {"shape": [3, 4, 32], "init": "zeros", "momentum": 0.9}
    assert art.data_config == {
        "mean": list(art.backbone.mean),
        "std": list(art.backbone.std),
        "input_size": [3, 32, 32],
        "num_frames": 4,
        "token_frames": 4,
        "tokens_per_frame": 16,
    }


def test_build_art_bank_forms_and_errors(tmp_path):
    """The bank from a seeded shape (unit-norm rows, the same for the same seed), zeros, a file,
    an object; wrong keys and class counts are named."""
    from artlib.models import build_art
    from artlib.nn import SemanticBank

    a = build_art(_tiny_config()).head.bank.S
    b = build_art(_tiny_config()).head.bank.S
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=-1), torch.ones(3, 4))
    zeros = build_art(_tiny_config(bank={"shape": [3, 4, 32], "init": "zeros"})).head.bank.S
    assert not zeros.any()
    torch.save({"bank": a * 2}, tmp_path / "bank.pt")
    from_file = build_art(_tiny_config(bank={"file": str(tmp_path / "bank.pt")}))
    assert torch.equal(from_file.head.bank.S, a * 2)
    given = build_art(_tiny_config(bank=None), bank=SemanticBank(a * 3, momentum=0.5))
    assert torch.equal(given.head.bank.S, a * 3) and given.config["bank"]["momentum"] == 0.5
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        build_art(_tiny_config(colour=1))
    with pytest.raises(ValueError, match="'num_classes' is required"):
        build_art({"backbone": "tiny"})
    with pytest.raises(ValueError, match="bank: it has 5 classes"):
        build_art(_tiny_config(bank={"shape": [3, 5, 32]}))
    with pytest.raises(ValueError, match="'bank' must be a dict"):
        build_art(_tiny_config(bank=None))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_art(_tiny_config(backbone="resnet"))


@pytest.mark.parametrize("baseline", [False, True])
def test_build_art_from_the_trainer_config_equals_the_trainers_model(baseline):
    """model_config_from_train_config + build_art build the model the trainer builds from the same
    config, weight for weight (same seed), from the nested config dict and from the dataclass."""
    from artlib.engine.config import MTC_TERMS as ENGINE_TERMS
    from artlib.engine.config import config_to_dict
    from artlib.engine.trainer import build_model
    from artlib.models import MTC_TERMS, build_art, model_config_from_train_config
    from tests.ckpt_fixtures import CLASSES, tiny_config

    assert MTC_TERMS == ENGINE_TERMS
    cfg = tiny_config(**{"model.baseline": baseline, "model.mtc_terms": ("spatial", "tracklet")})
    torch.manual_seed(5)
    ref = build_model(cfg, CLASSES)
    for source in (config_to_dict(cfg), cfg):
        torch.manual_seed(5)
        ours = build_art(model_config_from_train_config(source, CLASSES))
        assert ours.state_dict().keys() == ref.state_dict().keys()
        for k, v in ref.state_dict().items():
            assert torch.equal(ours.state_dict()[k], v), k
    if not baseline:
        assert ours.config["head"]["mtc_weights"] == [1.0, 0.0, 1.0]


def test_backbone_names_are_declared_once_without_torch():
    """artlib.models.names (what a command line offers before torch loads) lists the registry's
    backbones and packaged weights; importing it (and artlib.models) loads no torch."""
    import subprocess
    import sys

    from artlib.models import BACKBONES, BUILTIN_WEIGHTS
    from artlib.models.names import BACKBONE_NAMES, PACKAGED_WEIGHTS
    from tests.ckpt_fixtures import REPO, env

    assert tuple(BACKBONES) == BACKBONE_NAMES and BUILTIN_WEIGHTS == PACKAGED_WEIGHTS
    code = "import sys, artlib.models.names; assert 'torch' not in sys.modules, 'torch loaded'"
    res = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True,
                         cwd=REPO, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_every_backbone_declares_its_input():
    """data_config: mean/std of the weights, input size, T -> T' and L, for every registered
    backbone (built on the meta device), equal to what the built module says."""
    from artlib.data import CLIP_MEAN, IMAGENET_MEAN
    from artlib.models import default_data_config, list_backbones

    expected = {  # name: (mean, input size, token frames of 16, tokens per frame)
        "tiny": (CLIP_MEAN, 64, 16, 64),
        "tiny_cnn": (CLIP_MEAN, 64, 16, 64),
        "tiny_cnn_t1": (CLIP_MEAN, 64, 16, 64),
        "uniformerv2_b16": (CLIP_MEAN, 224, 16, 196),
        "uniformerv2_l14": (CLIP_MEAN, 224, 16, 256),
        "tea_r50": (IMAGENET_MEAN, 224, 16, 49),
    }
    assert sorted(expected) == sorted(list_backbones())
    for name, (mean, size, frames, tokens) in expected.items():
        cfg = default_data_config(name, 16)
        got = (tuple(cfg["mean"]), cfg["input_size"], cfg["token_frames"], cfg["tokens_per_frame"])
        assert got == (tuple(mean), [3, size, size], frames, tokens), name
    down = default_data_config("uniformerv2_b16", 16, temporal_downsample=True, img_size=112)
    assert (down["token_frames"], down["tokens_per_frame"], down["input_size"]) == (
        8,
        49,
        [3, 112, 112],
    )
