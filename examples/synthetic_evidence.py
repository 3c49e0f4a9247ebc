"""Does ART find the brief local motion? ART against --baseline over seeds on the built-in synthetic
fine-grained set, plus the ablations, as a markdown table (the README's evidence table).

    python examples/synthetic_evidence.py --seeds 0 1 2 --out runs/evidence
    python examples/synthetic_evidence.py --seeds 0 --ablations --out runs/evidence
    python examples/synthetic_evidence.py --pretrain-epochs 30 --out runs/ft -- \
        --synthetic-distractors 2 --epochs 30

Each run is `examples/train_finegym.py` with the synthetic preset in its own process; extra flags
after `--` go to every run. The last line printed is the ART - baseline margin against the spread.

``--pretrain-epochs N`` is the paper's regime (a pretrained backbone, then ART or the baseline head
on the fine-grained task): it first trains the baseline for N epochs on *another* plain synthetic
set (generation seed 1, no distractors; train split only), then starts every run's backbone from
that run's ``backbone.pt``, so ART and the baseline start from the same weights. Without it, the
runs start from the trainer's default: the synthetic preset's packaged ``tiny_cnn`` weights (made
the same way, see artlib/models/weights/README.md); pass ``-- --pretrained none`` to train from
scratch.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ABLATIONS = {
    "ART": [],
    "baseline": ["--baseline"],
    "no SE": ["--no-se"],
    "no TA (mean)": ["--no-ta"],
    "Eq. 9 TA": ["--aggregation", "saliency"],
    "no MTC": ["--mtc-terms", "none"],
    "no L_sema": ["--no-sema-video", "--no-sema-prot"],
    "no MTC, no L_sema": ["--mtc-terms", "none", "--no-sema-video", "--no-sema-prot"],
    "K = 1": ["--num-queries", "1"],
    "K = 4": ["--num-queries", "4"],
}


def run(
    name: str, flags: list[str], seed: int, out: Path, extra: list[str], threads: int = 0
) -> dict:
    target = out / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}_seed{seed}"
    summary = target / "summary.json"
    if not summary.exists():
        cmd = [
            sys.executable,
            str(HERE / "train_finegym.py"),
            "--seed",
            str(seed),
            "--no-progress",
            "--output-dir",
            str(target),
            "--resume",  # an interrupted earlier try continues (a fresh folder starts anew)
            "auto",
            *flags,
            *extra,
        ]
        env = dict(os.environ)
        if threads and "OMP_NUM_THREADS" not in env:  # parallel runs must not oversubscribe
            env["OMP_NUM_THREADS"] = str(threads)
        print("$", " ".join(cmd), flush=True)
        target.mkdir(parents=True, exist_ok=True)
        with open(target / "stdout.log", "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc.returncode:
            tail = (target / "stdout.log").read_text().splitlines()[-15:]
            raise RuntimeError(
                f"{name} seed {seed} failed ({proc.returncode}):\n" + "\n".join(tail)
            )
        print(f"done: {name} seed {seed}: {summary.read_text().strip()}", flush=True)
    return json.loads(summary.read_text())


def _std(values: list[float]) -> float:
    """The sample standard deviation over seeds (0 for a single seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--ablation-seeds",
        type=int,
        nargs="+",
        help="seeds for the variants other than ART and the baseline (default: --seeds)",
    )
    p.add_argument("--ablations", action="store_true", help="also run the ablation variants")
    p.add_argument(
        "--variants",
        type=lambda v: [n.strip() for n in v.split(",") if n.strip()],
        help=f"comma-separated, of: {', '.join(ABLATIONS)} (default: ART, baseline)",
    )
    p.add_argument("--out", default="runs/evidence")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each its own process)")
    p.add_argument("--table", help="also write the markdown table and the margin line to this file")
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        help="first pretrain the backbone (baseline, another plain set) for this many epochs",
    )
    args, extra = p.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    out = Path(args.out)
    unknown = [n for n in args.variants or [] if n not in ABLATIONS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; known: {list(ABLATIONS)}")
    names = args.variants or (list(ABLATIONS) if args.ablations else ["ART", "baseline"])
    names = ["ART", "baseline"] + [n for n in names if n not in ("ART", "baseline")]
    if args.pretrain_epochs > 0:
        pre = ["--baseline", "--synthetic-seed", "1", "--synthetic-distractors", "0"]
        pre += ["--pretrained", "none"]  # from random weights, not the packaged ones
        pre += ["--epochs", str(args.pretrain_epochs)]
        run("pretrain", [], 0, out, extra + pre)  # flags after `extra` win
        extra = extra + ["--pretrained", str(out / "pretrain_seed0" / "backbone.pt")]
    ablation_seeds = args.ablation_seeds or args.seeds
    jobs = [
        (name, seed)
        for seed in dict.fromkeys(args.seeds + ablation_seeds)
        for name in names
        if seed in (args.seeds if name in ("ART", "baseline") else ablation_seeds)
    ]
    # on 2 cores, two runs of 2 threads each (plus their loader workers) ran 2.5-3.5x slower per
    # epoch than one run alone: give each parallel run its share of the cores
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else 0
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {
            job: pool.submit(run, job[0], ABLATIONS[job[0]], job[1], out, extra, threads)
            for job in jobs
        }
        done = {job: f.result() for job, f in futures.items()}
    results: dict[str, list[dict]] = {}
    for name, seed in jobs:
        results.setdefault(name, []).append(done[name, seed])
    lines = [
        "| model | seeds | val Top-1 mean | spread (max-min) | std | per seed | mean class acc "
        "| minutes/run |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for name, rs in results.items():
        top1 = [r["top1"] for r in rs]
        lines.append(
            f"| {name} | {len(rs)} | {statistics.mean(top1):.3f} | {max(top1) - min(top1):.3f} | "
            f"{_std(top1):.3f} | "
            f"{' '.join(f'{t:.3f}' for t in top1)} | "
            f"{statistics.mean(r['mean_class_acc'] for r in rs):.3f} | "
            f"{statistics.mean(r['minutes'] for r in rs):.1f} |"
        )
    print("\n" + "\n".join(lines))
    art = [r["top1"] for r in results["ART"]]
    base = [r["top1"] for r in results["baseline"]]
    margin = statistics.mean(art) - statistics.mean(base)
    std = max(_std(art), _std(base))
    spread = max(max(art) - min(art), max(base) - min(base))
    diffs = [a - b for a, b in zip(art, base)]
    paired = " ".join(f"{d:+.3f}" for d in diffs)
    # two readings of "the seed spread": the std (the +- of mean +- std) and the full max - min,
    # which grows with the number of seeds (about 1.7 std at 3 seeds, 3.1 std at 10)
    verdict = (
        f"ART - baseline = {margin:+.3f} Top-1 (per seed {paired}: {sum(d > 0 for d in diffs)} "
        f"of {len(diffs)} positive); largest seed std {std:.3f}: "
        f"{'beaten' if margin > std else 'not beaten'}; largest seed max-min {spread:.3f}: "
        f"{'beaten' if margin > spread else 'not beaten'}"
    )
    print("\n" + verdict)
    if args.table:
        Path(args.table).write_text("\n".join(lines) + "\n\n" + verdict + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
