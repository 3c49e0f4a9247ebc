"""artlib.text: templates, label cleaning, and the CLIP text-tower semantics bank (issue 6)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from artlib.text import (
    EXTRA_TEMPLATES,
    TEMPLATES,
    bank_path,
    build_semantic_bank,
    build_text_tower,
    check_templates,
    clean_diving48_label,
    clean_finegym_label,
    clean_label,
    clean_labels,
    fill_templates,
    load_bank,
    parse_finegym_categories,
    read_bank,
    save_bank,
)
from tests.helpers import assert_close

open_clip = pytest.importorskip("open_clip")

MODEL = "ViT-S-16-alt"  # text width 256, 10 layers: the fast tower for tests
NAMES = ["back, 1.5 somersaults, 0.5 twist, free position", "vault: round-off", "switch leap"]
TWO_TEMPLATES = ("a video of a person doing {}.", "This is a video about {}.")


# Templates and labels -----------------------------------------------------------------------------


def test_templates():
    assert len(TEMPLATES) >= 8 and len(set(TEMPLATES + EXTRA_TEMPLATES)) == 16
    assert check_templates(TEMPLATES) == TEMPLATES
    prompts = fill_templates(["a", "b"], TEMPLATES[:2])
    assert prompts == [TEMPLATES[0].format("a"), TEMPLATES[0].format("b"),
                       TEMPLATES[1].format("a"), TEMPLATES[1].format("b")]  # fmt: skip
    with pytest.raises(ValueError, match=r"templates\[1\].*exactly one"):
        check_templates(["{} ok", "no slot"])
    with pytest.raises(ValueError, match="templates"):
        check_templates("a {}")


@pytest.mark.parametrize(
    "label, expected",
    [
        (["Back", "15som", "05Twis", "FREE"], "back, 1.5 somersaults, 0.5 twist, free position"),
        ("Back+15som+05Twis+FREE", "back, 1.5 somersaults, 0.5 twist, free position"),
        (["Forward", "Dive", "NoTwis", "STR"], "forward, dive, no twist, straight position"),
        ("Inward_25som_NoTwis_TUCK", "inward, 2.5 somersaults, no twist, tuck position"),
        (["Reverse", "1som", "2Twis", "PIKE"], "reverse, 1 somersault, 2 twists, pike position"),
    ],
)
def test_clean_diving48(label, expected):
    assert clean_diving48_label(label) == expected
    assert clean_label(label, "diving48") == expected


def test_clean_finegym():
    line = (
        "Clabel:   0; set:   1; Glabel:   1; (VT) round-off, flic-flac with 0.5 turn on, "
        "stretched salto forward with 0.5 turn off"
    )
    assert clean_finegym_label(line) == (
        "vault: round-off, flic-flac with 0.5 turn on, stretched salto forward with 0.5 turn off"
    )
    assert (
        clean_label("(UB) giant_circle  backward.", "gym288")
        == "uneven bars: giant circle backward"
    )
    lines = [
        "Clabel: 1; set: 2; Glabel: 5; (FX) switch leap with 1 turn",
        "",
        "Clabel: 0; set: 1; Glabel: 1; (BB) salto backward tucked",
    ]
    assert parse_finegym_categories(lines) == [
        "balance beam: salto backward tucked",
        "floor exercise: switch leap with 1 turn",
    ]
    with pytest.raises(ValueError, match="Clabel ids"):
        parse_finegym_categories(["Clabel: 3; set: 1; Glabel: 1; (VT) x"])
    with pytest.raises(ValueError, match="line 1"):
        parse_finegym_categories(["garbage"])
    with pytest.raises(FileNotFoundError, match="no_such_file"):
        parse_finegym_categories("/tmp/no_such_file_gym99.txt")
    with pytest.raises(ValueError, match="dataset"):
        clean_label("x", "kinetics")
    assert clean_labels(["PlayingGuitar", "pole_vault+jump"]) == [
        "playing guitar",
        "pole vault jump",
    ]


# Text tower --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    """A full open_clip CLIP (random weights, image tower included) saved the way open_clip saves."""
    with torch.random.fork_rng():
        torch.manual_seed(123)
        model = open_clip.create_model(MODEL).eval()
    path = tmp_path_factory.mktemp("clip") / "clip_random.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return model, str(path)


def test_text_tower_only(clip_checkpoint):
    full, path = clip_checkpoint
    tower = build_text_tower(MODEL, path)
    names = [n for n, _ in tower.named_parameters()]
    assert not any("visual" in n or "conv1" in n for n in names)
    n_text = sum(p.numel() for n, p in full.named_parameters() if not n.startswith("visual."))
    n_text -= full.logit_scale.numel()
    assert sum(p.numel() for p in tower.parameters()) == n_text
    # same embeddings as the full model's encode_text
    tok = open_clip.get_tokenizer(MODEL)(["a video of a person doing a back dive."])
    with torch.no_grad():
        assert_close(tower(tok), full.encode_text(tok), name="text features")


def test_bank_from_checkpoint_matches_open_clip(clip_checkpoint, tmp_path):
    full, path = clip_checkpoint
    bank = build_semantic_bank(NAMES, MODEL, pretrained=path, templates=TWO_TEMPLATES,
                               cache_dir=tmp_path)  # fmt: skip
    assert bank.shape == (2, 3, 256) and bank.dtype == torch.float32
    tok = open_clip.get_tokenizer(MODEL)(fill_templates(NAMES, TWO_TEMPLATES))
    with torch.no_grad():
        ref = F.normalize(full.encode_text(tok), dim=-1).reshape(2, 3, -1)
    assert_close(bank, ref, name="S0")
    assert_close(bank.norm(dim=-1), torch.ones(2, 3), name="unit norm")


class _FakeTower(torch.nn.Module):
    """Stands in for the CLIP text tower where only the cache logic is under test (fast)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(49408, 8)

    def forward(self, tokens):
        return self.emb(tokens).sum(1)


def test_bank_cache_hit_and_miss(tmp_path, monkeypatch):
    import artlib.text.bank as bank_mod

    calls = []

    def fake_build(*args, **kwargs):
        calls.append(1)
        torch.manual_seed(0)
        return _FakeTower()

    monkeypatch.setattr(bank_mod, "build_text_tower", fake_build)
    b1 = build_semantic_bank(NAMES, MODEL, templates=TWO_TEMPLATES, cache_dir=tmp_path)
    assert len(calls) == 1 and b1.shape == (2, 3, 8)
    assert os.path.isfile(bank_path(NAMES, MODEL, templates=TWO_TEMPLATES, cache_dir=tmp_path))
    b2 = build_semantic_bank(NAMES, MODEL, templates=TWO_TEMPLATES, cache_dir=tmp_path)
    assert len(calls) == 1, "second call with the same inputs must read the cache"
    assert torch.equal(b1, b2)
    build_semantic_bank(NAMES[:2], MODEL, templates=TWO_TEMPLATES, cache_dir=tmp_path)
    assert len(calls) == 2, "other class names: miss"
    build_semantic_bank(NAMES, MODEL, templates=TWO_TEMPLATES[::-1], cache_dir=tmp_path)
    assert len(calls) == 3, "other templates: miss"
    build_semantic_bank(NAMES, "ViT-B-16", templates=TWO_TEMPLATES, cache_dir=tmp_path)
    assert len(calls) == 4, "other model: miss"
    build_semantic_bank(NAMES, MODEL, templates=TWO_TEMPLATES, cache_dir=tmp_path, use_cache=False)
    assert len(calls) == 5
    assert len(list(tmp_path.iterdir())) == 4


def test_bank_cache_keyed_by_weights(clip_checkpoint, tmp_path):
    _, path = clip_checkpoint
    key_random = bank_path(NAMES, MODEL, None, TWO_TEMPLATES, tmp_path)
    key_ckpt = bank_path(NAMES, MODEL, path, TWO_TEMPLATES, tmp_path)
    assert key_random != key_ckpt
    # same bytes under another name: same key (the hash is over the content) ...
    other = tmp_path / "copy.pt"
    other.write_bytes(open(path, "rb").read())
    assert bank_path(NAMES, MODEL, other, TWO_TEMPLATES, tmp_path) == key_ckpt
    # ... other bytes: another key
    sd = torch.load(path, weights_only=True)["state_dict"]
    sd["module.ln_final.bias"] = sd["module.ln_final.bias"] + 1
    changed = tmp_path / "changed.pt"
    torch.save({"state_dict": sd}, changed)
    assert bank_path(NAMES, MODEL, changed, TWO_TEMPLATES, tmp_path) != key_ckpt


def test_bank_deterministic_and_rng_untouched(tmp_path):
    state = torch.get_rng_state()
    b1 = build_semantic_bank(NAMES, MODEL, templates=TWO_TEMPLATES, use_cache=False)
    b2 = build_semantic_bank(NAMES, MODEL, templates=TWO_TEMPLATES, use_cache=False)
    assert torch.equal(b1, b2)
    assert torch.equal(torch.get_rng_state(), state), "building a bank must not move the global RNG"
    # distinct classes get distinct embeddings
    assert (b1[:, 0] - b1[:, 1]).abs().max() > 1e-3


def test_load_bank(tmp_path):
    from artlib.nn import SemanticBank

    b = F.normalize(torch.randn(8, 5, 16), dim=-1)
    path = save_bank(b, tmp_path / "bank.pt", class_names=list("abcde"))
    bank = load_bank(path, momentum=0.9)
    assert isinstance(bank, SemanticBank) and bank.momentum == 0.9
    assert torch.equal(bank.S, b) and torch.equal(bank.agent.detach(), b)
    assert torch.equal(SemanticBank.from_file(path).S, b)
    assert torch.equal(read_bank(path), b)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_bank(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="N_prom, N_cls, C_t"):
        save_bank(b[0], tmp_path / "flat.pt")


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Nope'.*known"):
        build_semantic_bank(NAMES, "ViT-Nope", cache_dir=tmp_path)
    missing = tmp_path / "missing_weights.pt"
    with pytest.raises(FileNotFoundError, match="missing_weights.pt"):
        build_semantic_bank(NAMES, MODEL, pretrained=str(missing), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="known tags"):
        build_semantic_bank(NAMES, "ViT-B-16", pretrained="not_a_tag", cache_dir=tmp_path)
    # a real tag whose file is not in the local cache: no download, a clear error
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_semantic_bank(NAMES, "ViT-B-16", pretrained="laion2b_s34b_b88k", cache_dir=tmp_path,
                            clip_cache_dir=str(tmp_path / "empty"))  # fmt: skip
    with pytest.raises(ValueError, match="class_names"):
        build_semantic_bank([], MODEL, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"class_names\[1\]"):
        build_semantic_bank(["a", ""], MODEL, cache_dir=tmp_path)
    bad = tmp_path / "vision_only.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(RuntimeError, match="does not fit the text tower"):
        build_semantic_bank(NAMES, MODEL, pretrained=str(bad), cache_dir=tmp_path)
