"""tools/localization_study.py: the table's means, spreads and per-seed figures from the runs'
localization reports, and its refusal of an unknown setting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import localization_study as study  # noqa: E402


def _report(top1, pointing, entropy, layers=2, chance=0.083):
    layer = {
        "pointing_best": pointing,
        "mass": [0.03, 0.05],
        "body_pointing": [0.5, 0.7],
        "distractor_hits": [0.01, 0.02],
        "entropy": entropy,
        "map_intersection": 0.9,
        "pointing_chance": chance,
        "mass_chance": 0.026,
    }
    return {"top1": top1, "tracklet_cosine": 0.5, "layers": [layer] * layers}


def test_table_means_spreads_and_seeds(tmp_path):
    for seed, (top1, pointing) in enumerate([(0.5, 0.2), (0.7, 0.4)]):
        loc = tmp_path / f"t025-s{seed}" / "loc"
        loc.mkdir(parents=True)
        (loc / "localization.json").write_text(json.dumps(_report(top1, pointing, [0.6, 0.8])))
    loc = tmp_path / "grid16-s0" / "loc"
    loc.mkdir(parents=True)
    (loc / "localization.json").write_text(json.dumps(_report(0.3, 0.1, [1.0, 1.0], 1, 0.02)))
    rows = study.table(tmp_path).splitlines()
    assert len(rows) == 4, rows
    t025 = next(r for r in rows if "--attn-temperature 0.25" in r)
    cells = [c.strip() for c in t025.split("|")[1:-1]]
    assert cells[1:4] == ["0 1", "0.600 ± 0.100", "0.300 ± 0.100"], cells
    assert cells[4] == "0.050 ± 0.000" and cells[5] == "0.700 ± 0.000", cells
    assert cells[7] == "0.700 ± 0.000 / 0.700 ± 0.000", cells
    assert cells[-1] == "0.500 / 0.200, 0.700 / 0.400", cells
    grid = next(r for r in rows if "--crop-size 128" in r)
    assert "chance: pointing 0.020" in grid and "(one layer)" in grid, grid


def test_unknown_setting_exits_2(tmp_path):
    cmd = [sys.executable, str(REPO / "tools" / "localization_study.py"), "run", "--out"]
    res = subprocess.run([*cmd, str(tmp_path), "nonsense"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown setting(s) ['nonsense']" in res.stderr, res.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", sorted(study.SETTINGS))
def test_every_setting_parses_as_training_flags(name):
    from artlib.engine.cli import parse

    cfg = parse([*study.COMMON, *study.SETTINGS[name][0].split(), "--output-dir", "x"])
    assert cfg.data.workers == 1
