"""The configuration declared once (artlib.engine.config + cli): --help shows a real default for
every option of both presets, each misuse exits 2 with one line before torch loads, config files
and the saved config.yaml, your own data set with class names (and the lists that
``artlib.data.check --write-good`` writes), and a run rerun from its saved config."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from artlib.engine import config as C
from artlib.engine.cli import parse

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "examples" / "train_finegym.py")
SMALL = ["--num-frames", "4", "--crop-size", "32", "--batch-size", "4", "--workers", "0"]
SMALL += ["--dim", "32", "--heads", "2", "--se-layers", "1", "--act-layers", "1", "--no-progress"]
SMALL += ["--epochs", "1", "--seed", "3"]
NAMES = ["vault", "beam turn", "floor salto"]


def _help(*flags) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        parse([*flags, "--help"])
    assert e.value.code == 0
    return out.getvalue()


def _entries(text: str) -> dict[str, str]:
    """--help text -> {flag: its help entry} (argparse wraps an entry over several lines)."""
    entries, flag = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-\w, )?(--[\w-]+)", line)
        if m:
            flag = m.group(2)
            entries[flag] = line
        elif flag and line.startswith("    "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return entries


@pytest.mark.parametrize("own", [False, True], ids=["builtin", "own-lists"])
@pytest.mark.parametrize("preset", ["small", "paper"])
def test_help_shows_the_preset_default_of_every_option(preset, own):
    data = ["--train-list", "t.txt", "--val-list", "v.txt"] if own else []
    entries = _entries(_help("--preset", preset, *data))
    shown = [o for o in C.options() if C.applies(o, builtin=not own)]
    assert {o.flag for o in shown} <= set(entries)
    defaults = C.preset_defaults(preset, builtin=not own)
    for o in shown:
        entry = re.sub(r"\s+", " ", entries[o.flag])
        m = re.search(r"\(default: ([^)]*(?:\([^)]*\)[^)]*)*)\)$", entry)
        assert m and m.group(1) and "None" not in m.group(1), entry
        value = defaults[o.key]
        if isinstance(value, tuple):
            value = ",".join(value)
        if value is not None:
            assert m.group(1) == str(value), (o.flag, m.group(1), value)
    # options that do not apply to the data are hidden; the two recipes differ where they should
    hidden = [o.flag for o in C.options() if not C.applies(o, builtin=not own)]
    assert hidden and not set(hidden) & set(entries)
    assert ("--synthetic-classes" in entries) != own and ("--class-names" in entries) == own
    epochs = re.sub(r"\s+", " ", entries["--epochs"])
    assert epochs.endswith(f"(default: {50 if preset == 'paper' else 20})")


def test_recipe_and_data_are_separate_choices(tmp_path):
    """--preset small on your own lists is the main job's recipe (AdamW, tiny_cnn from its
    packaged weights, a seeded random bank: no class names or text weights needed); --preset
    paper on the built-in set is the paper's; 'synthetic' is the small recipe's earlier name, in
    flags and in config files."""
    lists = []
    for name in ("train.txt", "val.txt"):
        (tmp_path / name).write_text("a.mp4 0\nb.mp4 1\n")
        lists.append(str(tmp_path / name))
    own = ["--train-list", lists[0], "--val-list", lists[1]]
    small, builtin = parse(["--preset", "small", *own]), parse([])
    assert small.preset == builtin.preset == "small"
    assert small.model == builtin.model and small.optim == builtin.optim
    assert (small.model.pretrained, small.model.text_model) == ("synthetic", "random")
    assert small.run.output_dir == "runs/art" and builtin.run.output_dir == "runs/synthetic"
    assert parse(["--preset", "synthetic", *own]) == small
    paper = parse(["--preset", "paper", "--pretrained", "none", "--text-model", "random"])
    assert C.builtin_data(paper) and paper.optim.optimizer == "sgd" and paper.optim.epochs == 50
    old = tmp_path / "old.yaml"
    old.write_text("preset: synthetic\noptim:\n  epochs: 3\n")
    assert parse(["--config", str(old)]).preset == "small"
    assert C.config_from_dict({"preset": "synthetic"}, partial=True).preset == "small"


def test_config_files_of_earlier_versions_rerun(tmp_path):
    """A config.yaml written before the recipe/data split (preset 'synthetic', no --lr-scale; a
    paper run's file holding the synthetic section at its defaults) reruns as it was."""
    (tmp_path / "t.txt").write_text("a.mp4 0\n")
    (tmp_path / "v.txt").write_text("b.mp4 1\n")
    own = ["--train-list", str(tmp_path / "t.txt"), "--val-list", str(tmp_path / "v.txt")]
    paper = parse([*own, "--pretrained", "none", "--text-model", "random"])
    small = parse(["--epochs", "2"])
    for cfg, preset in [(paper, "paper"), (small, "synthetic")]:
        d = C.config_to_dict(cfg)
        del d["optim"]["lr_scale"]  # did not exist yet
        d["preset"] = preset
        if preset == "paper":
            assert d["synthetic"]["train_per_class"] == 48  # the field default, as then
        path = tmp_path / f"{preset}.yaml"
        path.write_text(json.dumps(d))
        assert parse(["--config", str(path)]) == cfg


def test_one_config_reader_reads_nested_and_flat_configs():
    """config_from_dict is one function (the checkpoint module re-exports it): it reads the nested
    config and the flat one of earlier checkpoints."""
    from artlib.engine import checkpoint

    assert checkpoint.config_from_dict is C.config_from_dict
    flat = {"preset": "synthetic", "num_frames": 4, "synthetic_classes": 3, "pretrained": None}
    cfg = C.config_from_dict(flat)
    assert (cfg.preset, cfg.data.num_frames, cfg.synthetic.classes) == ("small", 4, 3)
    assert cfg.model.pretrained == "none"


def test_help_shows_the_config_file_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  epochs: 7\n")
    assert "(default: 7)" in _entries(_help("--config", str(f)))["--epochs"]


def test_dict_round_trip_and_key_errors():
    cfg = parse(["--epochs", "3", "--mtc-terms", "spatial", "--model-ema", "0.5"])
    d = C.config_to_dict(cfg)
    assert json.loads(json.dumps(d)) == d  # plain types only
    assert d["model"]["mtc_terms"] == ["spatial"] and d["optim"]["epochs"] == 3
    assert C.config_from_dict(d) == cfg
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['model.colour'\]"):
        C.config_from_dict({**d, "model": {**d["model"], "colour": 1}})
    del d["run"]["seed"]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['run.seed'\]"):
        C.config_from_dict(d)
    assert C.config_from_dict(d, partial=True).run.seed == 0
    with pytest.raises(ValueError, match="--epochs: expected int"):
        C.config_from_dict({"optim": {"epochs": "many"}}, partial=True)


def test_declarations_match_the_model_registry():
    from artlib.models import list_backbones
    from artlib.models.registry import BUILTIN_WEIGHTS

    assert list(C.BACKBONES) == list_backbones()
    assert C.PACKAGED == {k: v[1]["img_size"] for k, v in BUILTIN_WEIGHTS.items()}
    flags = [o.flag for o in C.options()]
    assert len(flags) == len(set(flags))  # each option once
    assert all(o.meta["help"] for o in C.options())


def test_config_file_and_flag_precedence(tmp_path):
    y, j = tmp_path / "c.yaml", tmp_path / "c.json"
    y.write_text("optim:\n  epochs: 7\n  lr: 0.5\nmodel:\n  mtc_terms: [spatial, tracklet]\n")
    j.write_text(json.dumps({"optim": {"epochs": 7}}))
    cfg = parse(["--config", str(y), "--lr", "0.25"])
    assert (cfg.optim.epochs, cfg.optim.lr) == (7, 0.25)  # the file over the preset, the flag wins
    assert cfg.model.mtc_terms == ("spatial", "tracklet") and cfg.preset == "small"
    assert cfg.optim.batch_size == 16  # the small preset's, untouched by the file
    assert parse(["--config", str(j)]).optim.epochs == 7


MISUSES = [
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--lr", "abc"], "--lr: expected float, got 'abc'"),
    (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    (["--model-ema", "1.5"], "--model-ema must be in (0, 1), got 1.5"),
    (["--dim", "30", "--heads", "4"], "divisible"),
    (["--mtc-terms", "spatial,color"], "unknown term(s) ['color']"),
    (["--split", "gym288"], "--split needs a data set: --data-root or --train-list"),
    (["--split", "gym100"], "--split: 'gym100' is not one of gym99, gym288"),
    (["--data-root", "/d", "--synthetic-classes", "3"], "--synthetic-classes applies to the bui"),
    (["--class-names", "x.txt"], "--class-names needs a data set"),
    (["--preset", "paper"], "--pretrained is required with --preset paper"),
    (["--lr-scale", "sqrt"], "--lr-scale: 'sqrt' is not one of none, linear"),
    (["--backbone", "resnet9000"], "--backbone: 'resnet9000' is not one of"),
    (["--preset", "fast"], "--preset: 'fast' is not one of paper, small"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--config", "/no/such.yaml"], "--config: file not found"),
    (["--pretrained", "/no/such/weights.pt"], "--pretrained: checkpoint file not found"),
    (["--bank", "/no/bank.pt"], "--bank: file not found"),
    (["--resume", "/no/ckpt.pt"], "--resume: checkpoint file not found"),
    (["--output-dir", __file__], "--output-dir: "),
    (["--train-list", "a.txt"], "--train-list and --val-list must be given together"),
    (["--data-root", "/no/data"], "--pretrained is required with --preset paper"),
    (["--data-root", "/no/data", "--pretrained", "none"], "--text-pretrained is required"),
    (["--data-root", "/no/data", "--pretrained", "auto"], "--pretrained auto is for --preset sma"),
    (["--data-root", "/no/data", "--pretrained", "none", "--baseline"], "--data-root: folder not"),
]


def test_each_misuse_exits_2_with_one_line_before_torch(tmp_path):
    """All misuses in one interpreter (each answers through SystemExit(2)); torch never loads."""
    code = (
        "import io, json, sys, contextlib\n"
        "from artlib.engine.cli import parse\n"
        "out = []\n"
        "for flags in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            parse(flags)\n"
        "            out.append([0, ''])\n"
        "        except SystemExit as e:\n"
        "            out.append([e.code, err.getvalue()])\n"
        "print(json.dumps([out, 'torch' in sys.modules]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps([f for f, _ in MISUSES])],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    results, torch_loaded = json.loads(res.stdout)
    for (flags, message), (code_, err) in zip(MISUSES, results):
        assert code_ == 2 and message in err, (flags, code_, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
    # fast because torch never loads (a wall-clock bound would fail on a loaded machine)
    assert not torch_loaded, "a misuse imported torch: parse must answer before it loads"


# runs a script as ``python SCRIPT ARGS`` does, then prints on stdout whether torch was imported
_RUN_SCRIPT = (
    "import atexit, runpy, sys; atexit.register(lambda: print('torch' in sys.modules)); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_a_misuse_of_the_script_exits_2_within_seconds(tmp_path):
    """Within seconds: the misuse is answered before torch loads (not a wall-clock bound, which
    a loaded machine would exceed)."""
    res = subprocess.run(
        [sys.executable, "-c", _RUN_SCRIPT, SCRIPT, "--data-root", str(tmp_path), "--pretrained",
         "none", "--text-pretrained", "none"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60,
    )  # fmt: skip
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert res.stdout.strip() == "False", f"torch was imported: {res.stdout!r} {res.stderr!r}"
    assert res.stderr.count("\n") == 1 and "no annotation file" in res.stderr, res.stderr
    d48 = subprocess.run(
        [sys.executable, "-c", _RUN_SCRIPT, str(REPO / "examples" / "train_diving48.py"),
         "--data-root", str(tmp_path), "--pretrained", "none", "--text-pretrained", "none"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60,
    )  # fmt: skip
    assert d48.returncode == 2 and "Diving48_V2_train.json" in d48.stderr, d48.stderr
    assert d48.stdout.strip() == "False", f"torch was imported: {d48.stdout!r} {d48.stderr!r}"


def test_class_names_and_lists_are_checked_up_front(tmp_path):
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 3\n")
    (tmp_path / "val.txt").write_text("c.mp4 1\n")
    (tmp_path / "names.txt").write_text("x\ny\n")
    base = ["--train-list", str(tmp_path / "train.txt"), "--val-list", str(tmp_path / "val.txt")]
    base += ["--pretrained", "none", "--text-pretrained", "none"]
    for extra, message in [
        ([], "--class-names FILE is needed with --train-list"),
        (["--class-names", str(tmp_path / "no.txt")], "--class-names: file not found"),
        (["--class-names", str(tmp_path / "names.txt")], "names fewer classes than the lists'"),
    ]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
            parse(base + extra)
        assert e.value.code == 2 and message in err.getvalue(), err.getvalue()
    (tmp_path / "names.txt").write_text("x\ny\nx\n")
    with pytest.raises(ValueError, match=r"names \['x'\] more than once"):
        C.read_class_names(tmp_path / "names.txt")


# ------------------------------------------------------------------------- training runs
def _videos(root: Path) -> dict[str, list[str]]:
    """Six generated clips of three classes under root/clips, and lists with relative paths."""
    import numpy as np

    from artlib.data._write import write_video
    from artlib.data.synthetic import render_clip

    (root / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(9):
        label = i % 3
        write_video(str(root / "clips" / f"v{i}.mp4"), render_clip(label, rng, 8, (32, 32))[0])
        lines.append(f"clips/v{i}.mp4 {label}")
    return {"train": lines[:6], "val": lines[6:]}


def _train(flags, monkeypatch) -> tuple[C.TrainConfig, list]:
    """Run the trainer in this process; returns the config and the names the confusion matrix
    was drawn with."""
    from artlib.engine import trainer

    seen = []
    monkeypatch.setattr(trainer, "save_confusion_png", lambda m, p, names: seen.append(names))
    cfg = parse(flags)
    trainer.train(cfg)
    return cfg, seen


def _first_loss(out: Path) -> float:
    with open(out / "metrics.csv") as f:
        return float(next(csv.DictReader(f))["train_total"])


@pytest.mark.slow
def test_own_videos_with_class_names_train_and_rerun_from_the_saved_config(tmp_path, monkeypatch):
    data = tmp_path / "mydata"
    lists = _videos(data)
    (data / "train.txt").write_text("\n".join(lists["train"]) + "\n")
    (data / "val.txt").write_text("\n".join(lists["val"]) + "\n")
    (data / "names.txt").write_text("\n".join(NAMES) + "\n")
    out = tmp_path / "run"
    flags = ["--train-list", str(data / "train.txt"), "--val-list", str(data / "val.txt")]
    flags += ["--class-names", str(data / "names.txt"), "--backbone", "tiny_cnn"]
    flags += ["--pretrained", "none", "--text-model", "random", *SMALL, "--output-dir", str(out)]
    cfg, seen = _train(flags, monkeypatch)  # no --data-root: paths against the list's folder
    assert cfg.preset == "paper" and seen == [NAMES]
    assert (out / "summary.json").is_file()
    saved = C.load_config_file(str(out / "config.yaml"))
    assert C.config_from_dict(saved) == cfg
    # the same run from its own config file: the same first-epoch loss (with the value checks on)
    from artlib.engine import trainer

    checked, original = [], trainer.set_check_inputs
    monkeypatch.setattr(
        trainer, "set_check_inputs", lambda m, on: checked.append(original(m, on).head.check_inputs)
    )
    again = tmp_path / "again"
    flags = ["--config", str(out / "config.yaml"), "--output-dir", str(again), "--check-inputs"]
    cfg2, seen2 = _train(flags, monkeypatch)
    assert cfg2.model == cfg.model and cfg2.data == cfg.data and seen2 == [NAMES]
    assert checked == [True]  # --check-inputs reached ARTHead
    assert _first_loss(again) == _first_loss(out)


@pytest.mark.slow
def test_check_write_good_list_trains(tmp_path, monkeypatch):
    """A list with a broken video, checked by ``artlib.data.check --write-good``: the good list it
    writes trains as it is, with --data-root at the videos' root."""
    data = tmp_path / "mydata"
    lists = _videos(data)
    (data / "clips" / "broken.mp4").write_bytes(b"not a video")
    (data / "all.txt").write_text("\n".join([*lists["train"], "clips/broken.mp4 1"]) + "\n")
    (data / "val.txt").write_text("\n".join(lists["val"]) + "\n")
    (data / "names.txt").write_text("\n".join(NAMES) + "\n")
    good = data / "good.txt"
    res = subprocess.run(
        [sys.executable, "-m", "artlib.data.check", "--list", str(data / "all.txt"), "--root",
         str(data), "--num-frames", "4", "--write-good", str(good), "--workers", "1",
         "--no-progress"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300,
    )  # fmt: skip
    assert res.returncode == 1 and good.is_file(), res.stdout + res.stderr  # one problem found
    assert len(good.read_text().splitlines()) == 6
    flags = [
        "--data-root",
        str(data),
        "--train-list",
        str(good),
        "--val-list",
        str(data / "val.txt"),
    ]
    flags += ["--class-names", str(data / "names.txt"), "--backbone", "tiny_cnn", "--baseline"]
    flags += ["--pretrained", "none", *SMALL, "--output-dir", str(tmp_path / "run")]
    _, seen = _train(flags, monkeypatch)
    assert seen == [NAMES]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 1


@pytest.mark.parametrize("dataset", ["finegym", "diving48"])
def test_official_layouts_are_found_and_read(tmp_path, dataset):
    """The FineGym and Diving48 layouts under --data-root: found up front, read by the trainer
    with their class names; --class-names replaces them."""
    from artlib.engine.data import build_items
    from artlib.engine.distributed import DistInfo

    root = tmp_path / dataset
    weights = ["--pretrained", "none", "--text-pretrained", "none"]
    if dataset == "finegym":
        (root / "annotations").mkdir(parents=True)
        (root / "clips").mkdir()
        ids = [f"abcdefghijk_E_00001{i}_00002{i}_A_0001_0002" for i in range(3)]
        ann = root / "annotations"
        (ann / "gym99_train_element_v1.1.txt").write_text(f"{ids[0]} 0\n{ids[1]} 1\n")
        (ann / "gym99_val_element.txt").write_text(f"{ids[2]} 1\n")
        (ann / "gym99_categories.txt").write_text(
            "Clabel: 0; set: 1; Glabel: 5; (VT) round-off\nClabel: 1; set: 1; Glabel: 6; (FX) salto\n"
        )
        expect = ["(VT) round-off", "(FX) salto"]
    else:
        (root / "rgb").mkdir(parents=True)
        items = [{"vid_name": f"v{i}", "label": i % 2} for i in range(3)]
        (root / "Diving48_V2_train.json").write_text(json.dumps(items[:2]))
        (root / "Diving48_V2_test.json").write_text(json.dumps(items[2:]))
        (root / "Diving48_vocab.json").write_text(
            json.dumps([["Back", "15som"], ["Inward", "25som"]])
        )
        expect = ["Back 15som", "Inward 25som"]
    cfg = parse(["--dataset", dataset, "--data-root", str(root), *weights])
    train, val, names = build_items(cfg, DistInfo())
    assert (len(train), len(val), names) == (2, 1, expect)
    assert all(Path(it.path).parent.name in ("clips", "rgb") for it in train)
    (tmp_path / "names.txt").write_text("a\nb\n")
    cfg = parse(["--dataset", dataset, "--data-root", str(root), *weights, "--class-names",
                 str(tmp_path / "names.txt")])  # fmt: skip
    assert cfg.data.class_names == str(tmp_path / "names.txt")


def test_a_saved_config_reruns_from_any_entry_point(tmp_path):
    """A synthetic run's config.yaml, written by train_diving48.py, reruns from artlib-train (whose
    default data set is FineGym): the file's values are the run's, not options out of place."""
    cfg = parse(["--epochs", "2"], dataset="diving48")
    path = tmp_path / "config.yaml"
    C.save_config(cfg, path)
    again = parse(["--config", str(path)], dataset="finegym")
    assert again == cfg and again.data.dataset == "diving48"
