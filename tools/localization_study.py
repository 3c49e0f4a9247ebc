"""The region-query localization study of docs/evidence.md ("Do the region queries localize?").

Each setting is the small preset on the synthetic set with two distractors, 128 training clips
(16 per class), 64 validation clips, 8 epochs, changed by the flags below; every run is trained
with ``examples/train_finegym.py`` and measured with ``python -m artlib.evaluate --localization``.

    nice -n 19 python tools/localization_study.py run --out /tmp/study default t025 --seeds 0 1
    python tools/localization_study.py table --out /tmp/study          # the markdown table
    python tools/localization_study.py list                           # the settings

Runs execute one at a time (the trainer uses every core it is given); a run whose
``loc/localization.json`` exists is skipped, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = (
    "--synthetic-distractors 2 --synthetic-train-per-class 16 --synthetic-val-per-class 8 "
    "--epochs 8 --eval-every 4 --workers 1 --no-progress --attn-temperature 1"
).split()  # t = 1 (the paper's scaling) for every setting but the temperature ones
# name -> (flags on top of COMMON, what it is); later flags win over COMMON's
SETTINGS: dict[str, tuple[str, str]] = {
    "default": ("", "preset (SE on, 4 heads of width 16, g1 0.5, 2 decoder layers, t 1)"),
    "nose": ("--no-se", "SE off"),
    "heads1": ("--heads 1", "one head (width 64)"),
    "nomtc": ("--mtc-terms none", "MTC off"),
    "act1": ("--act-layers 1", "one decoder layer"),
    "act4": ("--act-layers 4", "four decoder layers"),
    "gmtc5": ("--gamma-mtc 5", "MTC weight g1 = 5 (the paper's)"),
    "gmtc2": ("--gamma-mtc 2", "MTC weight g1 = 2"),
    "linear": ("--temporal linear", "temporal MTC term linear, not hinge"),
    "t01": ("--attn-temperature 0.1", "attention temperature 0.1"),
    "t025": ("--attn-temperature 0.25", "attention temperature 0.25"),
    "t05": ("--attn-temperature 0.5", "attention temperature 0.5"),
    "t2": ("--attn-temperature 2", "attention temperature 2 (flatter)"),
    "dim128": ("--dim 128", "d = 128 (4 heads of width 32)"),
    "dim32": ("--dim 32", "d = 32 (4 heads of width 8)"),
    "se2": ("--se-layers 2", "two SE layers"),
    "spatial": ("--mtc-terms spatial --gamma-mtc 2", "MTC spatial term only, g1 = 2"),
    "temporal": ("--mtc-terms temporal --gamma-mtc 2", "MTC temporal term only, g1 = 2"),
    "tracklet": ("--mtc-terms tracklet --gamma-mtc 2", "MTC tracklet term only, g1 = 2"),
    "clipbank": (
        "--text-model ViT-B-16 --text-pretrained none",
        "text bank from the class names (a random CLIP text tower)",
    ),
    "grid16": ("--crop-size 128", "token grid 16x16 (input 128: tiny_cnn's grid is size / 8)"),
    "epochs16": ("--epochs 16 --eval-every 8", "16 epochs"),
    "default256": ("--synthetic-train-per-class 32", "preset, 256 training clips"),
    "t025_256": ("--attn-temperature 0.25 --synthetic-train-per-class 32", "t 0.25, 256 clips"),
    "t01_256": ("--attn-temperature 0.1 --synthetic-train-per-class 32", "t 0.1, 256 clips"),
    "heads1_256": ("--heads 1 --synthetic-train-per-class 32", "one head, 256 clips"),
    "act1_256": ("--act-layers 1 --synthetic-train-per-class 32", "one decoder layer, 256 clips"),
    "dim128_256": ("--dim 128 --synthetic-train-per-class 32", "d = 128, 256 clips"),
}


def run(out: Path, names: list[str], seeds: list[int]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for seed in seeds:
            folder = out / f"{name}-s{seed}"
            if (folder / "loc" / "localization.json").is_file():
                continue
            flags = SETTINGS[name][0].split()
            train = [sys.executable, str(REPO / "examples" / "train_finegym.py"), *COMMON]
            train += ["--seed", str(seed), "--output-dir", str(folder), "--overwrite", *flags]
            evaluate = [sys.executable, "-m", "artlib.evaluate", "--localization", "--workers", "1"]
            evaluate += ["--checkpoint", str(folder / "checkpoints" / "best.pt")]
            evaluate += ["--out", str(folder / "loc"), "--no-progress"]
            start = time.time()
            print(f"{time.strftime('%H:%M:%S')} {name} seed {seed}: {' '.join(flags)}", flush=True)
            for cmd, log in ((train, "train.log"), (evaluate, "eval.log")):
                with open(out / f"{name}-s{seed}.{log}", "w") as fh:
                    if subprocess.run(
                        cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT
                    ).returncode:
                        print(f"  failed: see {fh.name}", flush=True)
                        break
            print(f"  {time.time() - start:.0f} s", flush=True)


def _row(rep: dict) -> dict:
    last, first = rep["layers"][-1], rep["layers"][0]
    mean = statistics.fmean
    return {
        "top1": rep["top1"],
        "pointing": last["pointing_best"],
        "mass": max(last["mass"]),
        "body": max(last["body_pointing"]),
        "distractor": max(last["distractor_hits"]),
        "entropy": mean(last["entropy"]),
        "entropy_first": mean(first["entropy"]),
        "intersection": last["map_intersection"],
        "tracklet_cosine": rep["tracklet_cosine"],
        "layers": len(rep["layers"]),
        "chance": last["pointing_chance"],
        "mass_chance": last["mass_chance"],
    }


def _column(rows: list[dict], key: str) -> list:
    return [r[key] for r in rows]


def table(out: Path, names: list[str] | None = None) -> str:
    """The study's markdown table: mean ± half the max - min over the seeds, per seed last."""
    runs: dict[str, dict[int, dict]] = {}
    for f in sorted(out.glob("*-s*/loc/localization.json")):
        name, seed = f.parts[-3].rsplit("-s", 1)
        runs.setdefault(name, {})[int(seed)] = _row(json.loads(f.read_text()))
    order = [n for n in (names or SETTINGS) if n in runs] + sorted(set(runs) - set(SETTINGS))

    def ms(values):
        m = statistics.fmean(values)
        return f"{m:.3f}" + (f" ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else "")

    lines = [
        "| setting (flags) | seeds | Top-1 | pointing best (chance 0.083) | mass (chance 0.026) "
        "| on the body (chance 0.166) | distractor hits (chance 0.112) | entropy last / first "
        "layer | intersection | tracklet cosine | per seed: Top-1 / pointing |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for name in order:
        seeds = sorted(runs[name])
        rows = [runs[name][s] for s in seeds]
        col = functools.partial(_column, rows)
        flags, what = SETTINGS.get(name, ("?", name))
        label = f"{what} (`{flags}`)" if flags else what
        ent = ms(col("entropy")) + (
            " / " + ms(col("entropy_first")) if rows[0]["layers"] > 1 else " (one layer)"
        )
        chance = statistics.fmean(col("chance"))
        if abs(chance - 0.083) > 0.005:  # another token grid
            label += (
                f"; chance: pointing {chance:.3f}, mass {statistics.fmean(col('mass_chance')):.3f}"
            )
        per_seed = ", ".join(f"{r['top1']:.3f} / {r['pointing']:.3f}" for r in rows)
        lines.append(
            f"| {label} | {' '.join(map(str, seeds))} | {ms(col('top1'))} | {ms(col('pointing'))} "
            f"| {ms(col('mass'))} | {ms(col('body'))} | {statistics.fmean(col('distractor')):.3f} "
            f"| {ent} | {ms(col('intersection'))} | {ms(col('tracklet_cosine'))} | {per_seed} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="localization_study.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train and measure settings, one run at a time")
    p_run.add_argument("names", nargs="+", help="settings (see `list`)")
    p_run.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    p_run.add_argument("--out", type=Path, required=True, help="the study's folder")
    p_table = sub.add_parser("table", help="print the markdown table of the finished runs")
    p_table.add_argument("--out", type=Path, required=True, help="the study's folder")
    p_table.add_argument("names", nargs="*", help="settings, in this order (default: all)")
    sub.add_parser("list", help="the settings and their flags")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, (flags, what) in SETTINGS.items():
            print(f"{name:12s} {what}: {flags or '(the preset)'}")
        return 0
    unknown = [n for n in args.names if n not in SETTINGS]
    if unknown and args.command == "run":
        parser.error(f"unknown setting(s) {unknown}; known: {sorted(SETTINGS)}")
    if args.command == "run":
        run(args.out, args.names, args.seeds)
    else:
        print(table(args.out, args.names or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
