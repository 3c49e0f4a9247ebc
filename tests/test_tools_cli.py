"""The tools' command lines: ``--help`` shows each default once and the name the tool was called
by; evaluate reports Top-k with k <= the number of classes, lists what it wrote, and its
failure-budget error names the flag that changes it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import tests.ckpt_fixtures as fx
from tests.ckpt_fixtures import REPO, env, make_checkpoint, write_clips

TOOLS = {  # module -> its console script
    "artlib.evaluate": "artlib-evaluate",
    "artlib.predict": "artlib-predict",
    "artlib.data.check": "artlib-check",
    "artlib.data.prepare": "artlib-prepare",
}


def _parsers():
    from artlib.data.check import _parser as check_parser
    from artlib.data.prepare.cli import _parser as prepare_parser
    from artlib.evaluate import build_parser as evaluate_parser
    from artlib.extract import build_parser as extract_parser
    from artlib.predict import build_parser as predict_parser

    prepare = prepare_parser()
    subs = next(a for a in prepare._actions if a.choices and isinstance(a.choices, dict))
    return {
        "evaluate": evaluate_parser(),
        "predict": predict_parser(),
        "check": check_parser(),
        "extract": extract_parser(),
        **{f"prepare {name}": sp for name, sp in subs.choices.items()},
    }


@pytest.mark.parametrize("name", ["evaluate", "predict", "check", "extract", "prepare finegym",
                                  "prepare kinetics", "prepare diving48"])  # fmt: skip
def test_help_shows_each_default_once(name):
    p = _parsers()[name]
    text = p.format_help()
    assert not re.search(r"\(default: [^)]*\)\s+\(default:", text), text
    assert "(default: None)" not in text, text
    fmt = p._get_formatter()
    for action in p._actions:
        if not action.option_strings or action.help is None:
            continue
        shown = fmt._expand_help(action) if action.help else ""
        assert shown.count("default") <= 1, f"{name} {action.option_strings}: {shown!r}"
        has_value = action.default not in (None, False, True) and action.nargs != 0
        if has_value and action.dest != "help":
            assert "default" in shown, (
                f"{name} {action.option_strings} hides its default: {shown!r}"
            )


def test_evaluate_help_names_each_default():
    text = _parsers()["evaluate"].format_help()
    flat = " ".join(text.split())
    assert "crops per clip (default: 1)" in flat
    assert "clips per video (default: the checkpoint's)" in flat
    assert flat.count("(default: the checkpoint's)") == 3  # --split, --num-clips, the budget
    assert "(default: None)" not in flat


@pytest.mark.parametrize("module", sorted(TOOLS))
def test_usage_says_the_name_it_was_called_by(module, tmp_path):
    """Through the console script: ``usage: artlib-check``; through ``python -m``: the module."""
    script = TOOLS[module]
    launcher = tmp_path / script  # what pip's console-script launcher does, under the same name
    launcher.write_text(f"import sys\nfrom {module} import main\nsys.exit(main())\n")
    by_script = subprocess.run(
        [sys.executable, str(launcher), "--help"], env=env(), capture_output=True, text=True,
        timeout=120, cwd=REPO,
    )  # fmt: skip
    assert by_script.returncode == 0, by_script.stderr[-2000:]
    assert by_script.stdout.startswith(f"usage: {script} "), by_script.stdout[:300]
    by_module = subprocess.run(
        [sys.executable, "-m", module, "--help"], env=env(), capture_output=True, text=True,
        timeout=120, cwd=REPO,
    )  # fmt: skip
    assert by_module.returncode == 0, by_module.stderr[-2000:]
    assert by_module.stdout.startswith(f"usage: python -m {module} "), by_module.stdout[:300]


def test_a_bad_flag_through_the_console_script_names_the_script(tmp_path):
    launcher = tmp_path / "artlib-check"
    launcher.write_text("import sys\nfrom artlib.data.check import main\nsys.exit(main())\n")
    res = subprocess.run(
        [sys.executable, str(launcher), "--list", str(tmp_path / "none.txt")], env=env(),
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"artlib-check: error: --list: no such file: "
                                               f"{tmp_path / 'none.txt'}"]  # fmt: skip


# ------------------------------------------------------------ evaluate on a 3-class model
@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """A 3-class checkpoint, 3 readable clips and a list with one broken clip more."""
    root = tmp_path_factory.mktemp("three")
    mp = pytest.MonkeyPatch()
    mp.setattr(fx, "CLASSES", fx.CLASSES[:3])  # make_checkpoint reads the module's CLASSES
    try:
        make_checkpoint(root / "model.pt", steps=1)
    finally:
        mp.undo()
    good = write_clips(root / "good", [0, 1, 2])
    broken = write_clips(root / "broken", [0, 1, 2, 0], broken={3})
    return root / "model.pt", good, broken


def _run_evaluate(capsys, *flags):
    from artlib.evaluate import main

    code = main([*flags, "--batch-size", "2", "--workers", "0", "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_top_k_is_never_more_than_the_classes_and_outputs_are_listed(three_classes, tmp_path,
                                                                     capsys):  # fmt: skip
    ckpt, good, _ = three_classes
    out = tmp_path / "eval"
    code, stdout, stderr = _run_evaluate(
        capsys, "--checkpoint", str(ckpt), "--val-list", str(good), "--out", str(out)
    )
    assert code == 0, stderr[-3000:]
    lines = stdout.strip().splitlines()
    final = lines[-1]
    assert re.fullmatch(
        r"FINAL eval top1=\d\.\d{4} top3=1\.0000 mean_class_acc=\d\.\d{4} count=3 skipped=0", final
    ), final
    assert "top5" not in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert "top5" not in metrics and metrics["top3"] == 1.0  # the 3 best of 3 classes: all
    assert metrics["count"] == 3
    wrote = [line for line in lines if line.startswith("wrote ")]
    listed = ["metrics.json", "per_class.csv"]
    listed += ["confusion.png"] if (out / "confusion.png").exists() else []
    assert wrote == [f"wrote {', '.join(listed)} in {out}"], lines
    for name in listed:
        assert (out / name).stat().st_size > 0, name


def test_top_k_naming_rule():
    from artlib.evaluate import final_line, topk_named

    m = {"top1": 0.5, "top5": 0.75, "mean_class_acc": 0.5, "count": 4, "skipped": 1}
    assert topk_named(m, 3) == {**{k: v for k, v in m.items() if k != "top5"}, "top3": 0.75}
    assert topk_named(m, 5) == m and topk_named(m, 99) == m
    assert list(topk_named(m, 2)) == ["top1", "top2", "mean_class_acc", "count", "skipped"]
    assert final_line(topk_named(m, 99)) == (
        "FINAL eval top1=0.5000 top5=0.7500 mean_class_acc=0.5000 count=4 skipped=1"
    )
    assert " top2=0.7500 " in final_line(topk_named(m, 2))


@pytest.mark.parametrize("given", [True, False], ids=["flag-given", "checkpoint-default"])
def test_the_failure_budget_error_names_its_flag(three_classes, tmp_path, capsys, given):
    """1 of 4 videos broken: over a budget of 0 (given) and of the checkpoint's (0.1 or less)."""
    ckpt, _, broken = three_classes
    flags = ["--checkpoint", str(ckpt), "--val-list", str(broken), "--out", str(tmp_path)]
    if given:
        flags += ["--max-failure-fraction", "0"]
    else:
        budget = fx.tiny_config().data.max_failure_fraction
        assert budget < 0.25, f"the checkpoint's budget {budget} lets 1 of 4 failures pass"
    code, _, stderr = _run_evaluate(capsys, *flags)
    assert code == 1, stderr[-3000:]
    assert "--max-failure-fraction" in stderr, stderr[-3000:]
    assert "1 of the 4 videos of the evaluation set failed" in stderr, stderr[-3000:]
    assert str(broken.parent / "clip3.mp4") in stderr
    assert not (tmp_path / "metrics.json").exists()


def test_say_writes_the_line_and_its_newline_in_one_write(monkeypatch):
    """Under torchrun the ranks share stderr; with PYTHONUNBUFFERED ``print`` writes the text and
    the newline separately and another rank's line can land between them (seen in CI)."""
    import io

    from artlib._cli import say

    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.writes = []

        def write(self, s):
            self.writes.append(s)
            return super().write(s)

    rec = Recorder()
    monkeypatch.setattr(sys, "stderr", rec)
    say("train_finegym.py [rank 1]: error: --output-dir: busy")
    assert rec.writes == ["train_finegym.py [rank 1]: error: --output-dir: busy\n"]
