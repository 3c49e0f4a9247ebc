"""The model saves and loads itself: ``artlib.save_model`` writes model.safetensors + config.json,
``artlib.load_model`` reads that folder or a training checkpoint without the trainer, and
``examples/custom_loop.py`` trains from public parts into a folder that predict and evaluate read."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
import torch

from tests.ckpt_fixtures import CLASSES, REPO, env, make_checkpoint, tiny_model_config, write_clips
from tests.helpers import assert_close

VIDEO = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(9))


def _config(**changes) -> dict:
    return tiny_model_config(bank_seed=1, **changes)


def _trained(cfg: dict):
    """A model after two optimizer steps (so no tensor is at its initial value)."""
    from artlib.models import build_art

    torch.manual_seed(0)
    model = build_art(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        _, losses = model(VIDEO, torch.tensor([0, 1, 3]))
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        model.ema_update()
    return model.eval()


@pytest.mark.parametrize("baseline", [False, True])
def test_save_model_folder_round_trip(tmp_path, baseline):
    """save_model -> load_model gives the same logits; config.json is the model's config, the
    class names and the preprocessing; the weights file is safetensors."""
    from safetensors.torch import load_file

    import artlib

    cfg = _config(baseline=True, head={}, bank=None) if baseline else _config()
    model = _trained(cfg)
    folder = artlib.save_model(
        model, tmp_path / "m", class_names=CLASSES, preprocess={"num_clips": 2}
    )
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format"] == "artlib.model" and meta["class_names"] == CLASSES
    assert meta["model"] == model.config
    assert meta["preprocess"] == {
        "num_frames": 4,
        "crop_size": 32,
        "mean": list(model.backbone.mean),
        "std": list(model.backbone.std),
        "sampling": "tsn",
        "num_clips": 2,
    }
    saved = load_file(folder / "model.safetensors")
    assert saved.keys() == model.state_dict().keys()
    loaded, info = artlib.load_model(folder)
    assert not loaded.training and info["class_names"] == CLASSES and info.num_clips == 2
    assert info["epoch"] is None and info["config"] is None and info["baseline"] is baseline
    assert info["model_config"] == model.config
    with torch.no_grad():
        assert torch.equal(loaded(VIDEO), model(VIDEO))


def test_a_training_checkpoint_saved_as_a_folder_loads_the_same(tmp_path):
    """load_model(best.pt) -> save_model -> load_model(folder): the same logits and description;
    a checkpoint from a UniFormerV2 with 0.45/0.225 statistics keeps them (config's mean/std)."""
    import artlib

    path = tmp_path / "ckpt.pt"
    make_checkpoint(path, steps=2)
    model, info = artlib.load_model(path)
    pre = {k: info[k] for k in ("num_frames", "crop_size", "mean", "std", "num_clips")}
    folder = artlib.save_model(model, tmp_path / "m", class_names=info.class_names, preprocess=pre)
    again, info2 = artlib.load_model(folder)
    with torch.no_grad():
        assert torch.equal(again(VIDEO), model(VIDEO))
    for key in ("class_names", "num_frames", "crop_size", "mean", "std", "num_clips", "backbone"):
        assert info2[key] == info[key], key
    assert info["config"]["model"]["backbone"] == "tiny_cnn"  # the run's config, a plain dict

    model.backbone.mean, model.backbone.std = (0.45,) * 3, (0.225,) * 3
    artlib.save_model(model, tmp_path / "k", class_names=CLASSES)
    assert artlib.load_model(tmp_path / "k")[0].backbone.mean == (0.45,) * 3


def test_an_earlier_flat_config_checkpoint_loads(tmp_path):
    """A checkpoint whose config is the flat dict of earlier trainers (``num_frames``,
    ``synthetic_classes``, None for random weights, no model_info) loads to the same logits."""
    import artlib
    from artlib.engine.config import options

    path = tmp_path / "ckpt.pt"
    trained, _ = make_checkpoint(path, steps=2)
    state = torch.load(path, weights_only=True)
    flat = {}
    for o in options():
        section, _, name = o.key.rpartition(".")
        value = state["config"][section][name] if section else state["config"][name]
        flat[f"synthetic_{name}" if section == "synthetic" else name] = value
    flat["pretrained"] = None
    state["config"] = flat
    del state["model_info"]
    torch.save(state, tmp_path / "flat.pt")
    model, info = artlib.load_model(tmp_path / "flat.pt")
    with torch.no_grad():
        assert torch.equal(model(VIDEO), trained(VIDEO))


@pytest.mark.slow
def test_loading_imports_nothing_of_the_engine(tmp_path):
    """A fresh interpreter loads a model folder and a training checkpoint, runs them, and has not
    imported artlib.engine (nor anything under it)."""
    import artlib

    make_checkpoint(tmp_path / "ckpt.pt")
    artlib.save_model(_trained(_config()), tmp_path / "m", class_names=CLASSES)
    code = (
        "import sys, torch, artlib\n"
        "for path in sys.argv[1:]:\n"
        "    model, info = artlib.load_model(path)\n"
        "    model(torch.zeros(1, 4, 3, 32, 32))\n"
        "    loaded = sorted(m for m in sys.modules if m.startswith('artlib.engine'))\n"
        "    assert not loaded, (path, loaded)\n"
        "print('ok')\n"
    )
    for path in (tmp_path / "m", tmp_path / "ckpt.pt"):
        res = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_save_and_load_errors(tmp_path):
    """What cannot be saved or loaded says why: a model that does not record its build, a class
    count that does not fit, a folder without its files, another format, unfit weights."""
    from safetensors.torch import save_file

    import artlib
    from artlib import CheckpointError
    from artlib.models import ART, TinyConvVideoBackbone

    custom = ART(TinyConvVideoBackbone(width=32, img_size=32), 4, torch.randn(3, 4, 32))
    with pytest.raises(ValueError, match="does not record how it was built"):
        artlib.save_model(custom, tmp_path / "x")
    model = _trained(_config())
    with pytest.raises(ValueError, match="class_names: 2 names for a model of 4 classes"):
        artlib.save_model(model, tmp_path / "x", class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"preprocess: unknown key\(s\) \['frames'\]"):
        artlib.save_model(model, tmp_path / "x", preprocess={"frames": 3})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without config.json"):
        artlib.load_model(tmp_path / "empty")
    folder = artlib.save_model(model, tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(CheckpointError, match="not an artlib model config"):
        artlib.load_model(folder)
    for version in (2, 0, "1", None):  # newer, impossible, a string, missing: one line each
        (folder / "config.json").write_text(json.dumps({**meta, "format_version": version}))
        with pytest.raises(CheckpointError) as e:
            artlib.load_model(folder)
        assert str(e.value) == (
            f"checkpoint: {folder / 'config.json'} has format_version {version!r}, written by "
            f"artlib {artlib.__version__}; this artlib reads versions 1 to 1: upgrade artlib"
        )
    (folder / "config.json").write_text(json.dumps(meta))
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights["head.head_con.weight"] = torch.zeros(5, 3)
    del weights["backbone.frame.0.weight"]
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        artlib.load_model(folder)
    assert "backbone.frame.0.weight" in str(e.value)
    assert "head.head_con.weight (5, 3) in the file" in str(e.value)
    with pytest.raises(CheckpointError, match="has no EMA"):
        artlib.load_model(folder, ema=True)


def _names(tree: ast.AST) -> tuple[list[str], list[str]]:
    modules, names = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules.append(node.module or "")
            names += [a.name for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "artlib":
                names.append(node.attr)
    return modules, names


@pytest.mark.slow
def test_custom_loop_example_trains_saves_and_the_tools_read_its_folder(tmp_path, capsys):
    """examples/custom_loop.py: <= 80 lines, public names only, no engine; one tiny epoch writes a
    folder that ``python -m artlib.predict`` and ``python -m artlib.evaluate`` accept."""
    import artlib
    from artlib.evaluate import main as evaluate_main
    from artlib.predict import main as predict_main

    script = REPO / "examples" / "custom_loop.py"
    source = script.read_text()
    assert len(source.splitlines()) <= 80
    modules, names = _names(ast.parse(source))
    assert not [m for m in modules if m.startswith("artlib.engine") or "._" in m], modules
    assert not [n for n in names if n.startswith("_")], names
    out = tmp_path / "model"
    cmd = [sys.executable, str(script), "--out", str(out), "--epochs", "1", "--per-class", "2"]
    cmd += ["--val-per-class", "1", "--workers", "0", "--data", str(tmp_path / "data")]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("FINAL custom_loop top1=") and "(8 val videos)" in last, res.stdout
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()

    listed = write_clips(tmp_path / "v", [0, 1, 2], size=64, frames=8)
    video = listed.parent / "clip0.mp4"
    capsys.readouterr()
    assert predict_main([str(video), "--checkpoint", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, info = artlib.load_model(out)
    probs = artlib.predict_proba(model, artlib.load_video(video, info))
    p, idx = probs.topk(5)
    assert [t["label"] for t in got["topk"]] == idx.tolist()
    assert [t["prob"] for t in got["topk"]] == pytest.approx(p.tolist(), abs=1e-6)
    flags = ["--checkpoint", str(out), "--val-list", str(listed), "--workers", "0"]
    assert evaluate_main([*flags, "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    assert "FINAL eval" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["count"] == 3
    with pytest.raises(SystemExit) as e:  # a folder records no data set: the list is needed
        evaluate_main(["--checkpoint", str(out)])
    assert e.value.code == 2 and "--val-list: needed" in capsys.readouterr().err


@pytest.mark.slow
def test_export_takes_a_folder_or_a_checkpoint(tmp_path):
    """artlib.export(path): the loaded model's program, on an example made from its data config,
    gives the eager model's logits (a model folder and a training checkpoint)."""
    import artlib

    make_checkpoint(tmp_path / "ckpt.pt")
    artlib.save_model(_trained(_config()), tmp_path / "m", class_names=CLASSES)
    for path in (tmp_path / "m", tmp_path / "ckpt.pt"):
        eager, _ = artlib.load_model(path)
        program = artlib.export(path, dynamic_batch=True).module()
        with torch.no_grad():
            assert_close(program(VIDEO), eager(VIDEO), name=f"logits of the program of {path.name}")
