"""Checkpoints: plain types only (weights_only loads), self-describing, refused when they would
run code (by every path that reads one), converted from the old format and resumed bit-identically,
``load_model`` round trip, best.pt, and a run without matplotlib."""

from __future__ import annotations

import json
import logging
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.ckpt_fixtures import CLASSES, REPO, env, make_checkpoint, write_clips, write_crafted

SCRIPT = str(REPO / "examples" / "train_finegym.py")
TINY = [
    "--synthetic-classes", "4", "--synthetic-train-per-class", "4",
    "--synthetic-val-per-class", "2", "--synthetic-size", "32", "--num-frames", "4",
    "--crop-size", "32", "--batch-size", "4", "--workers", "0", "--dim", "32", "--heads", "2",
    "--no-progress", "--seed", "1", "--deterministic",
]  # fmt: skip


def _run(cmd, check=True, timeout=300, **kw):
    res = subprocess.run(
        cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr}")
    return res


def _train(out, *flags, block_matplotlib=False):
    """The example trainer in a subprocess; with block_matplotlib, as if it were not installed."""
    argv = [SCRIPT, *TINY, "--output-dir", str(out), *flags]
    if block_matplotlib:
        code = (
            "import runpy, sys; sys.modules['matplotlib'] = None; "
            f"sys.argv = {argv!r}; runpy.run_path({SCRIPT!r}, run_name='__main__')"
        )
        return _run([sys.executable, "-c", code])
    return _run([sys.executable, *argv])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """2 epochs, deterministic, without matplotlib (a module-wide run the tests below read)."""
    out = tmp_path_factory.mktemp("run")
    bank = out / "bank.pt"
    torch.save({"bank": torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))}, bank)
    res = _train(out, "--bank", str(bank), "--epochs", "2", block_matplotlib=True)
    return out, str(bank), res


def test_rng_states_round_trip_through_a_safe_file(tmp_path):
    from artlib.engine.checkpoint import capture_rng, restore_rng

    random.seed(5), np.random.seed(6), torch.manual_seed(7)
    random.gauss(0, 1), np.random.standard_normal()  # cached gaussians are part of the state
    torch.save(capture_rng(), tmp_path / "rng.pt")
    want = (random.random(), random.gauss(0, 1), np.random.standard_normal(4), torch.rand(3))
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(4), torch.rand(3))
    assert want[:2] == got[:2]
    assert np.array_equal(want[2], got[2]) and torch.equal(want[3], got[3])


def test_trainer_checkpoint_is_plain_and_describes_the_model(run):
    from artlib.engine.checkpoint import config_from_dict, load_checkpoint

    out, _, _ = run
    path = out / "checkpoints" / "checkpoint_epoch0002.pt"
    state = torch.load(path, weights_only=True)  # plain types only
    assert state["format"] == "artlib.checkpoint" and state["format_version"] == 1
    assert state["epoch"] == 2 and state["class_names"] == list(CLASSES) and "scaler" not in state
    assert state["preprocess"] == {
        "num_frames": 4,
        "crop_size": 32,
        "mean": pytest.approx([0.48145466, 0.4578275, 0.40821073]),
        "std": pytest.approx([0.26862954, 0.26130258, 0.27577711]),
        "sampling": "tsn",
        "num_clips": 1,
    }
    info = state["model_info"]
    assert info["backbone"] == "tiny_cnn" and not info["baseline"] and info["num_classes"] == 4
    assert info["head"]["dim"] == 32 and info["head"]["heads"] == 2
    cfg = config_from_dict(state["config"])
    assert (cfg.data.crop_size, cfg.model.dim, cfg.run.seed, cfg.optim.epochs) == (32, 32, 1, 2)
    assert load_checkpoint(path)["epoch"] == 2


def test_best_pt_is_the_best_epoch(run):
    import csv

    out, _, _ = run
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    top1 = [float(r["val_top1"]) for r in rows]
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 1 + top1.index(max(top1))  # the first epoch with the best Top-1
    assert best["best_top1"] == pytest.approx(max(top1))
    same = torch.load(
        out / "checkpoints" / f"checkpoint_epoch{best['epoch']:04d}.pt", weights_only=True
    )
    assert all(torch.equal(same["model"][k], v) for k, v in best["model"].items())


def test_without_matplotlib_the_run_finishes_and_warns_once(run):
    out, _, res = run
    assert "FINAL ART" in res.stdout
    assert (out / "summary.json").is_file() and (out / "backbone.pt").is_file()
    assert json.loads((out / "summary.json").read_text())["count"] == 8
    assert (out / "per_class.csv").read_text().count("\n") == 5
    assert not (out / "confusion.png").exists()
    assert res.stderr.count("matplotlib is not installed") == 1, res.stderr[-3000:]
    assert "pip install matplotlib" in res.stderr


def test_save_confusion_png_without_matplotlib_warns_once(tmp_path, monkeypatch, caplog):
    from artlib.engine import metrics

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(metrics, "_warned_png", False)
    with caplog.at_level(logging.WARNING, logger="artlib.metrics"):
        for _ in range(2):
            assert metrics.save_confusion_png(torch.eye(3), tmp_path / "c.png") is False
    assert len(caplog.records) == 1 and not (tmp_path / "c.png").exists()


def _legacy(state: dict, flat: bool) -> dict:
    """What the trainer wrote before the safe format: raw Python/NumPy RNG states and no format
    fields; with ``flat``, the earlier flat config (``synthetic_classes``, a tuple of MTC terms,
    ``None`` for random weights) and a grad-scaler entry."""
    from artlib.engine.config import options

    py, nps = state["rng"]["python"], state["rng"]["numpy"]
    rng = {
        "python": (py["version"], tuple(py["state"].tolist()), py["gauss"]),
        "numpy": (
            nps["name"],
            nps["keys"].numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached_gaussian"],
        ),
        "torch": state["rng"]["torch"],
    }
    keep = ("model", "optimizer", "scheduler", "model_ema", "epoch", "best_top1", "class_names")
    old = {k: state[k] for k in keep}
    old.update(rng=rng, config=state["config"])
    if flat:
        config = {"extra": {}}
        for o in options():
            section, _, name = o.key.rpartition(".")
            value = state["config"][section][name] if section else state["config"][name]
            if name == "pretrained" and value == "none":
                value = None
            config[f"synthetic_{name}" if section == "synthetic" else name] = value
        config["mtc_terms"] = tuple(config["mtc_terms"])
        old.update(scaler={}, config=config)
    return old


@pytest.mark.slow
def test_old_checkpoint_is_refused_then_converts_and_resumes_bit_identically(run, tmp_path):
    from artlib.engine.checkpoint import UnsafeCheckpointError, load_checkpoint

    out, bank, _ = run
    first = torch.load(out / "checkpoints" / "checkpoint_epoch0001.pt", weights_only=True)
    for flat in (False, True):  # the nested config of today's trainer, the flat one before it
        old, new = tmp_path / f"old{int(flat)}.pt", tmp_path / f"new{int(flat)}.pt"
        torch.save(_legacy(first, flat), old)
        with pytest.raises(UnsafeCheckpointError, match="numpy") as e:
            load_checkpoint(old)
        assert f"python -m artlib.convert_checkpoint {old} NEW.pt --trust" in str(e.value)
        conv = [sys.executable, "-m", "artlib.convert_checkpoint", str(old), str(new)]
        if not flat:
            res = _run(conv, check=False)
            assert res.returncode == 2 and "--trust" in res.stderr and not new.exists()
        _run([*conv, "--trust"])
        converted = load_checkpoint(new)
        for key in ("class_names", "preprocess", "model_info", "config", "epoch"):
            assert converted[key] == first[key], key
        for k, v in first["model"].items():
            assert torch.equal(converted["model"][k], v), k
        for part in ("python", "numpy"):
            for k, v in first["rng"][part].items():
                got = converted["rng"][part][k]
                assert torch.equal(v, got) if torch.is_tensor(v) else v == got, (part, k)

    # resuming from the converted file gives epoch 2 of the uninterrupted run, bit for bit
    resumed = tmp_path / "resumed"
    _train(resumed, "--bank", bank, "--epochs", "2", "--resume", str(new))  # the flat one
    a = torch.load(out / "checkpoints" / "checkpoint_epoch0002.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "checkpoint_epoch0002.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after convert + resume"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, s in a["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][i][k]))


def test_load_model_round_trip(tmp_path):
    """The loaded model's logits equal those of the model that was trained and saved (its EMA
    average when the run had one)."""
    import artlib
    from artlib import CheckpointError

    video = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    path = tmp_path / "ema.pt"
    trained, average = make_checkpoint(path, ema=0.5, steps=3)
    model, info = artlib.load_model(path)
    assert not model.training and info["ema"] and info["epoch"] == 1
    assert info["class_names"] == CLASSES and (info["num_frames"], info["crop_size"]) == (4, 32)
    assert info.class_names is info["class_names"] and info.std == info["std"]
    assert info["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    with torch.no_grad():
        assert torch.equal(model(video), average.module(video))
        last, _ = artlib.load_model(path, ema=False)
        assert torch.equal(last(video), trained(video))
        assert not torch.equal(last(video), model(video))

    base = tmp_path / "baseline.pt"
    trained, _ = make_checkpoint(base, baseline=True)
    model, info = artlib.load_model(base)
    with torch.no_grad():
        assert info["baseline"] and torch.equal(model(video), trained(video))

    # a file whose weights do not fit the model its config describes says what differs
    state = torch.load(path, weights_only=True)
    state["model_ema"] = None
    state["model"]["head.head_con.weight"] = torch.zeros(5, 3)
    del state["model"]["backbone.frame.0.weight"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as e:
        artlib.load_model(tmp_path / "bad.pt")
    msg = str(e.value)
    assert "backbone.frame.0.weight" in msg and "head.head_con.weight (5, 3) in the file" in msg


def test_crafted_checkpoint_is_refused_by_every_reader(run, tmp_path, capsys):
    """A checkpoint whose unpickling would create a marker file: every path that reads a
    checkpoint refuses it with the file, what it asked for and the conversion command."""
    import artlib
    from artlib.engine import checkpoint as engine_checkpoint
    from artlib.engine.checkpoint import CheckpointManager

    # the engine's class until it imports artlib.weights_io's (then both are one class)
    UnsafeCheckpointError = (artlib.UnsafeCheckpointError, engine_checkpoint.UnsafeCheckpointError)
    from artlib.models import build_backbone
    from artlib.nn import SemanticBank
    from artlib.text import load_bank

    out, bank, _ = run
    marker = tmp_path / "MARKER"
    folder = tmp_path / "resume" / "checkpoints"
    folder.mkdir(parents=True)
    crafted = write_crafted(folder / "checkpoint_epoch0001.pt", marker)

    def refused(message: str) -> None:
        assert str(crafted) in message and "posix.system" in message, message
        assert "python -m artlib.convert_checkpoint" in message and "--trust" in message
        assert not marker.exists()

    for read in (artlib.load_model, lambda p: CheckpointManager(p.parent).load("auto")):
        with pytest.raises(UnsafeCheckpointError) as e:
            read(crafted)
        refused(str(e.value))
    with pytest.raises(RuntimeError, match="could not read checkpoint"):  # --pretrained
        build_backbone("tiny_cnn", pretrained=str(crafted), img_size=32)
    for read_bank in (SemanticBank.from_file, load_bank):  # --bank
        with pytest.raises(pickle.UnpicklingError):
            read_bank(crafted)
    assert not marker.exists()

    # the command lines, in this process: --resume PATH, evaluate, predict, visualize_tracklets
    import runpy

    from artlib.engine.cli import main as train_main
    from artlib.evaluate import main as evaluate_main
    from artlib.predict import main as predict_main

    video = write_clips(tmp_path / "v", [1]).parent / "clip0.mp4"
    flags = [f for f in TINY if f != "--deterministic"]  # (a global switch, off in this process)
    capsys.readouterr()
    assert train_main("finegym", [*flags, "--bank", bank, "--output-dir", str(tmp_path / "t"),
                                  "--epochs", "1", "--resume", str(crafted)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" not in err
    refused(err.strip().splitlines()[-1])  # the trainer's last word: one line naming the file
    visualize_main = runpy.run_path(str(REPO / "examples" / "visualize_tracklets.py"))["main"]
    capsys.readouterr()
    for main, argv in (
        (evaluate_main, ["--checkpoint", str(crafted)]),
        (predict_main, [str(video), "--checkpoint", str(crafted)]),
        (visualize_main, ["--checkpoint", str(crafted), "--video", str(video),
                          "--out", str(tmp_path / "x.png")]),
    ):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err  # one line
        refused(err)


def test_a_checkpoint_of_a_newer_format_is_one_line(tmp_path):
    """The training checkpoint's format_version goes through the same check as a model folder's
    config.json (artlib.weights_io.check_format_version)."""
    from artlib.weights_io import CheckpointError, load_checkpoint

    path = tmp_path / "new.pt"
    torch.save({"format": "artlib.checkpoint", "format_version": 2, "artlib_version": "9.0"}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, what="--resume")
    assert str(e.value) == (
        f"--resume: {path} has format_version 2, written by artlib 9.0; this artlib reads "
        "versions 1 to 1: upgrade artlib"
    )
